"""LightX2V's JSON config vocabulary, both styles, validated when loaded.

Old style: `mm_config: {mm_type: ...}` + `dit_quantized_ckpt`. New style: `dit_quantized: true` +
`dit_quant_scheme`. Encoders: `t5_quantized`, `t5_quant_scheme`, `t5_quantized_ckpt`, and `clip_*`.
Each component picks its own scheme (mixed strategies).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, SchemeError
from .schemes import Scheme, resolve_scheme

COMPONENTS = ("dit", "t5", "clip")


@dataclass
class ComponentQuant:
    scheme: Scheme | None = None  # None: keep in high precision
    ckpt: str | None = None  # a pre-quantized checkpoint to load instead of quantizing on the fly

    @property
    def quantized(self) -> bool:
        return self.scheme is not None and self.scheme.quantized


@dataclass
class QuantConfig:
    dit: ComponentQuant = field(default_factory=ComponentQuant)
    t5: ComponentQuant = field(default_factory=ComponentQuant)
    clip: ComponentQuant = field(default_factory=ComponentQuant)
    raw: dict[str, Any] = field(default_factory=dict)  # every key, for inference settings
    source: str = "<dict>"

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    def summary(self) -> str:
        parts = []
        for name in COMPONENTS:
            c = getattr(self, name)
            parts.append(f"{name}: {c.scheme.name if c.quantized else 'bf16'}" + (f" from {c.ckpt}" if c.ckpt else ""))
        return "; ".join(parts)


def load_config(source: str | Path | dict) -> QuantConfig:
    if isinstance(source, dict):
        return parse_config(source, "<dict>")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    return parse_config(data, str(path))


def parse_config(data: Any, source: str = "<dict>") -> QuantConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a JSON object, got {type(data).__name__}")
    cfg = QuantConfig(raw=dict(data), source=source)
    cfg.dit = _dit(data, source)
    for comp in ("t5", "clip"):
        setattr(cfg, comp, _encoder(data, comp, source))
    return cfg


def _typed(data, key, kind, source):
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        want = {bool: "true or false", str: "a string", dict: "an object"}[kind]
        raise ConfigError(f"{source}: `{key}` must be {want}, got {json.dumps(value)}")
    return value


def _scheme(name, key, source) -> Scheme:
    try:
        return resolve_scheme(name)
    except SchemeError as e:
        raise ConfigError(f"{source}: `{key}`: {e}") from None


def _dit(data, source) -> ComponentQuant:
    mm = _typed(data, "mm_config", dict, source) or {}
    mm_type = mm.get("mm_type")
    if mm_type is not None and not isinstance(mm_type, str):
        raise ConfigError(f"{source}: `mm_config.mm_type` must be a string, got {json.dumps(mm_type)}")
    flag = _typed(data, "dit_quantized", bool, source)
    short = _typed(data, "dit_quant_scheme", str, source)
    ckpt = _typed(data, "dit_quantized_ckpt", str, source)
    old = _scheme(mm_type, "mm_config.mm_type", source) if mm_type else None
    new = _scheme(short, "dit_quant_scheme", source) if short else None
    if flag and new is None and old is None:
        raise ConfigError(f"{source}: `dit_quantized` is true but no `dit_quant_scheme` is given "
                          "(e.g. \"fp8-sgl\" or \"int8-vllm\")")
    if flag is False:
        new = None
    if old and new and old.format != new.format:
        raise ConfigError(f"{source}: `mm_config.mm_type` ({old.name}) and `dit_quant_scheme` ({new.name}) "
                          "name different formats; keep one of them")
    scheme = new or old
    if ckpt and (scheme is None or not scheme.quantized) and flag is not False:
        scheme = None  # format is read from the checkpoint itself
    return ComponentQuant(scheme if scheme and scheme.quantized else None, ckpt)


def _encoder(data, comp, source) -> ComponentQuant:
    flag = _typed(data, f"{comp}_quantized", bool, source)
    name = _typed(data, f"{comp}_quant_scheme", str, source)
    ckpt = _typed(data, f"{comp}_quantized_ckpt", str, source)
    if not flag:
        return ComponentQuant()
    if not name:
        raise ConfigError(f"{source}: `{comp}_quantized` is true but `{comp}_quant_scheme` is missing "
                          "(e.g. \"fp8\" or \"int8\")")
    scheme = _scheme(name, f"{comp}_quant_scheme", source)
    return ComponentQuant(scheme if scheme.quantized else None, ckpt)
