"""LightX2V's JSON config vocabulary, both styles, validated when loaded.

Old style: `mm_config: {mm_type: ...}` + `dit_quantized_ckpt`. New style: `dit_quantized: true` +
`dit_quant_scheme`. Encoders: `t5_quantized`, `t5_quant_scheme`, `t5_quantized_ckpt`, and `clip_*`.
Each component picks its own scheme (mixed strategies), and per layer with `<component>_layer_schemes`
(engine/layer_rules.py).
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_keys import ENGINE_KEYS, KNOWN_KEYS
from .checkpoint.files import regular_file
from .errors import CheckpointError, ConfigError, SchemeError
from .layer_rules import LayerRule, parse_rules
from .schemes import Scheme, resolve_scheme

log = logging.getLogger("engine.config")
COMPONENTS = ("dit", "t5", "clip")
_INT, _NUM, _BOOL, _STR = "a whole number", "a number", "true or false", "a string"
# What the values of the keys this engine acts on must be (bool is not a number here: `true` steps).
VALUE_KINDS = {"infer_steps": _INT, "target_video_length": _INT, "target_height": _INT, "target_width": _INT,
               "fps": _INT, "seed": _INT, "sample_shift": _NUM, "enable_cfg": _BOOL, "cpu_offload": _BOOL,
               "t5_cpu_offload": _BOOL, "fused_wan": _BOOL, "use_tiling_vae": _BOOL, "use_tiny_vae": _BOOL,
               "use_lightvae": _BOOL, "offload_use_stream": _BOOL, "offload_granularity": _STR,
               "high_noise_quantized_ckpt": _STR, "low_noise_quantized_ckpt": _STR, "vae_path": _STR,
               "tiny_vae_path": _STR, "use_tae": _BOOL, "need_scaled": _BOOL, "tae_path": _STR, "decoder": _STR,
               "vae_channels_last": _BOOL, "vae_cudnn_benchmark": _BOOL, "vae_compile": _BOOL,
               "vae_fused_norm": _BOOL}


@dataclass
class ComponentQuant:
    scheme: Scheme | None = None  # None: keep in high precision
    ckpt: str | None = None  # a pre-quantized checkpoint to load instead of quantizing on the fly
    rules: tuple[LayerRule, ...] = ()  # `<component>_layer_schemes`, first match wins

    @property
    def quantized(self) -> bool:
        """The component-wide scheme quantizes (rules may quantize layers without one: see `formats`)."""
        return self.scheme is not None and self.scheme.quantized

    @property
    def formats(self) -> list[str]:
        """Every format this component may hold: its scheme's and its rules'."""
        fmts = [self.scheme.format] if self.quantized else []
        return list(dict.fromkeys(fmts + [r.format for r in self.rules if r.format]))


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
            parts.append(f"{name}: {c.scheme.name if c.quantized else 'bf16'}" + (f" from {c.ckpt}" if c.ckpt else "")
                         + (f" + {len(c.rules)} layer rules" if c.rules else ""))
        return "; ".join(parts)


def load_config(source: str | Path | dict) -> QuantConfig:
    if isinstance(source, dict):
        return parse_config(source, "<dict>")
    path = Path(source)
    try:
        regular_file(path, "config file")  # missing, a symlink loop, a folder, a FIFO: the true cause
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    return parse_config(data, str(path))


def parse_config(data: Any, source: str = "<dict>") -> QuantConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a JSON object, got {type(data).__name__}")
    check_keys(data, source)
    cfg = QuantConfig(raw=dict(data), source=source)
    cfg.dit = _dit(data, source)
    for comp in ("t5", "clip"):
        setattr(cfg, comp, _encoder(data, comp, source))
    for comp in COMPONENTS:
        key = f"{comp}_layer_schemes"
        rules = parse_rules(data.get(key), key, source)
        if rules and data.get(f"{comp}_quantized") is False:
            raise ConfigError(f"{source}: `{comp}_quantized` is false but `{key}` quantizes layers; set "
                              f"`{comp}_quantized` to true or remove `{key}`")
        getattr(cfg, comp).rules = rules
    return cfg


def check_keys(data: dict, source: str) -> None:
    """Warn on every unknown key (naming the closest known one), note LightX2V keys this engine does not
    act on, and refuse values of the wrong type for keys it does act on."""
    unused = []
    for key in data:
        if not isinstance(key, str) or key in ENGINE_KEYS or key.startswith("_"):
            continue  # `_about`, `_comment`: JSON has no comments, a leading underscore marks one
        if key in KNOWN_KEYS:
            unused.append(key)
            continue
        close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        log.warning("%s: unknown config key `%s` is ignored%s", source, key, hint)
    if unused:
        log.info("%s: LightX2V keys not used by this engine: %s", source, ", ".join(sorted(unused)))
    for key, kind in VALUE_KINDS.items():
        value = data.get(key)
        if value is not None and not _is_kind(value, kind):
            raise ConfigError(f"{source}: `{key}` must be {kind}, got {json.dumps(value)}")
    guide = data.get("sample_guide_scale")
    if guide is not None and not (_is_kind(guide, _NUM) or (
            isinstance(guide, list) and len(guide) == 2 and all(_is_kind(g, _NUM) for g in guide))):
        raise ConfigError(f"{source}: `sample_guide_scale` must be a number or [high_noise, low_noise], "
                          f"got {json.dumps(guide)}")
    steps = data.get("denoising_step_list")
    if steps is not None and not (isinstance(steps, list) and steps and all(_is_kind(t, _INT) for t in steps)):
        raise ConfigError(f"{source}: `denoising_step_list` must be a list of whole-number timesteps, e.g. "
                          f"[1000, 750, 500, 250]; got {json.dumps(steps)}")


def _is_kind(value, kind) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == _INT:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


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
    if flag and new is None and old is None and not data.get("dit_layer_schemes"):
        raise ConfigError(f"{source}: `dit_quantized` is true but no `dit_quant_scheme` is given "
                          "(e.g. \"fp8-sgl\" or \"int8-vllm\")")
    if flag is False and old is not None and old.quantized:
        raise ConfigError(f"{source}: `dit_quantized` is false but `mm_config.mm_type` asks for {old.name}; "
                          "remove one of them")
    if flag is False and ckpt:
        raise ConfigError(f"{source}: `dit_quantized` is false but `dit_quantized_ckpt` names a quantized "
                          f"checkpoint ({ckpt}); set `dit_quantized` to true or remove the checkpoint")
    if flag is False and new is not None and new.quantized:
        log.warning("%s: `dit_quant_scheme` %s is ignored because `dit_quantized` is false", source, new.name)
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
        if flag is False and ckpt:
            raise ConfigError(f"{source}: `{comp}_quantized` is false but `{comp}_quantized_ckpt` names a "
                              f"quantized checkpoint ({ckpt}); set `{comp}_quantized` to true or remove it")
        if name or ckpt:
            log.warning("%s: `%s` is ignored because `%s_quantized` is not true", source,
                        f"{comp}_quant_scheme" if name else f"{comp}_quantized_ckpt", comp)
        return ComponentQuant()
    if not name:
        if data.get(f"{comp}_layer_schemes"):
            return ComponentQuant(None, ckpt)  # every quantized layer named by a rule
        raise ConfigError(f"{source}: `{comp}_quantized` is true but `{comp}_quant_scheme` is missing "
                          "(e.g. \"fp8\" or \"int8\")")
    scheme = _scheme(name, f"{comp}_quant_scheme", source)
    return ComponentQuant(scheme if scheme.quantized else None, ckpt)
