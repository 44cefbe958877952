"""Per-layer schemes: `<component>_layer_schemes` maps module-name patterns to schemes.

    "dit_layer_schemes": [
        ["blocks\\.(0|29)\\..*", "bf16"],                  keep the first and last block in high precision
        ["blocks\\.\\d+\\.ffn\\..*", "nvfp4"],             FFNs in NVFP4
        ["blocks\\.\\d+\\.attn\\d\\..*", "fp8-sgl"]        attention projections in FP8
    ]

A pattern is a Python regular expression that must match the whole module name (diffusers / transformers
names, as the default quantization rules in engine/apply.py use). Rules are tried in the order written and
the first that matches decides (a list, not a JSON object, so that the order is the file's; as torchao's
regex entries, tried in order). Only the layers the engine quantizes by default are candidates (attention
projections and FFNs); a layer no rule matches takes the component's scheme (`dit_quant_scheme`, ...) or
stays in high precision when there is none. "bf16" (or "none", "Default") keeps a layer in high precision.
A rule whose pattern chooses no layer is an error, so a typo cannot silently quantize nothing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import ConfigError, SchemeError
from .schemes import Scheme, resolve_scheme

HIGH_PRECISION = ("bf16", "none", "default")


@dataclass(frozen=True)
class LayerRule:
    index: int  # 1-based position in the list, as users count
    pattern: str
    scheme: Scheme | None  # None: high precision

    @property
    def label(self) -> str:
        return f"rule {self.index} `{self.pattern}`"

    @property
    def format(self) -> str | None:
        return self.scheme.format if self.scheme is not None else None


def parse_rules(value, key: str, source: str) -> tuple[LayerRule, ...]:
    """The config value of `key` -> rules; ConfigError naming the entry for a bad pattern or scheme."""
    if value is None:
        return ()
    example = '[["blocks\\\\.\\\\d+\\\\.ffn\\\\..*", "nvfp4"], ["blocks\\\\.0\\\\..*", "bf16"]]'
    if not isinstance(value, list):
        raise ConfigError(f"{source}: `{key}` must be a list of [pattern, scheme] pairs, e.g. {example}; "
                          f"got {json.dumps(value)}")
    rules = []
    for i, entry in enumerate(value, 1):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise ConfigError(f"{source}: `{key}` entry {i} must be [pattern, scheme] (two strings), "
                              f"got {json.dumps(entry)}")
        pattern, name = entry
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{source}: `{key}` entry {i}: {pattern!r} is not a valid regular expression "
                              f"({e})") from None
        if name.strip().lower() in HIGH_PRECISION:
            scheme = None
        else:
            try:
                scheme = resolve_scheme(name)
            except SchemeError as e:
                raise ConfigError(f"{source}: `{key}` entry {i}: {e}") from None
            scheme = scheme if scheme.quantized else None
        rules.append(LayerRule(i, pattern, scheme))
    return tuple(rules)


def assign(names: list[str], rules: tuple[LayerRule, ...], default: Scheme | None, default_label: str,
           key: str) -> dict[str, tuple[Scheme | None, str]]:
    """Each candidate layer -> (its scheme or None for high precision, what chose it). Raises ConfigError
    naming every rule that chose no layer (a pattern matching nothing, or only layers an earlier rule took)."""
    compiled = [(rule, re.compile(rule.pattern)) for rule in rules]
    chosen: dict[str, tuple[Scheme | None, str]] = {}
    used: set[int] = set()
    for name in names:
        for rule, rx in compiled:
            if rx.fullmatch(name):
                chosen[name] = (rule.scheme, rule.label)
                used.add(rule.index)
                break
        else:
            quantized = default is not None and default.quantized
            chosen[name] = (default if quantized else None, default_label if quantized else f"no rule (no {default_label})")
    unused = [rule for rule in rules if rule.index not in used]
    if unused:
        example = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"`{key}`: " + "; ".join(
            f"{r.label} chooses no layer" + (" (every layer it matches is taken by an earlier rule)"
                                              if any(re.fullmatch(r.pattern, n) for n in names) else "")
            for r in unused) + f". Patterns must match whole module names among the {len(names)} quantizable "
            f"layers, e.g. {example}")
    return chosen
