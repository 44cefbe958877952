"""Walk a model once, swap the nn.Linear layers that the rules select for QuantLinear, report it."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import ConfigError, EngineError, FormatError
from .layer_rules import LayerRule, assign
from .linear import QuantLinear
from .schemes import Scheme, resolve_scheme

log = logging.getLogger("engine.apply")

# What LightX2V quantizes, in diffusers / transformers module names.
WAN_DIT_RULES = (
    r"blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)",
    r"blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)",
    r"blocks\.\d+\.ffn\.net\.(0\.proj|2)",
)
T5_RULES = (
    r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.(q|k|v|o)",
    r"encoder\.block\.\d+\.layer\.1\.DenseReluDense\.(wi_0|wi_1|wi|wo)",
)
CLIP_RULES = (
    r"(vision_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    r"(vision_model\.)?encoder\.layers\.\d+\.mlp\.(fc1|fc2)",
)
DEFAULT_RULES = {"WanTransformer3DModel": WAN_DIT_RULES, "UMT5EncoderModel": T5_RULES,
                 "T5EncoderModel": T5_RULES, "CLIPVisionModel": CLIP_RULES,
                 "CLIPVisionModelWithProjection": CLIP_RULES}


@dataclass
class QuantReport:
    format: str  # the one format, or "+"-joined formats when layer rules mix them
    swapped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # nn.Linear layers left in high precision
    bytes_before: int = 0
    bytes_after: int = 0
    # with layer rules: layer -> (format or "bf16", what chose it: "rule 2 `...`" or the scheme's key)
    chosen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def summary(self) -> str:
        ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
        text = (f"{self.format}: {len(self.swapped)} linear layers quantized, {len(self.kept)} kept; "
                f"weights {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB "
                f"({ratio:.0%})")
        counts: dict[tuple[str, str], int] = {}
        for fmt_why in self.chosen.values():
            counts[fmt_why] = counts.get(fmt_why, 0) + 1
        return text + "".join(f"\n  - {n} layers {fmt} by {why}" for (fmt, why), n in counts.items())


def model_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def rules_for(model: nn.Module) -> tuple[str, ...]:
    name = type(model).__name__
    if name not in DEFAULT_RULES:
        raise EngineError(f"no default quantization rules for {name}; pass `rules=` with regular "
                          f"expressions of module names (known models: {', '.join(DEFAULT_RULES)})")
    return DEFAULT_RULES[name]


def quantize_model(model: nn.Module, scheme: Scheme | str | None, rules: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
                   kernel: str | None = None, work_device: torch.device | str | None = None,
                   layer_rules: tuple[LayerRule, ...] = (), rules_key: str = "layer_schemes",
                   scheme_key: str = "the scheme") -> QuantReport:
    """Replace the selected nn.Linear layers of `model` in place. `rules`: regexes matched against the
    full module name, or a predicate; by default those of the model's class (WAN_DIT_RULES, ...).
    work_device: quantize there (e.g. the GPU), one layer at a time, and put each quantized layer back
    where the linear was: the high-precision weights never all sit on that device at once.
    layer_rules: per-layer schemes among the selected layers (engine/layer_rules.py; the config key
    `rules_key` names them in errors); layers no rule matches take `scheme` (named `scheme_key`)."""
    scheme = resolve_scheme(scheme) if isinstance(scheme, str) else scheme
    if not layer_rules and (scheme is None or not scheme.quantized):
        return QuantReport(format="none", bytes_before=model_bytes(model), bytes_after=model_bytes(model))
    select = _selector(rules if rules is not None else rules_for(model))
    report = QuantReport(format=scheme.format if scheme is not None and scheme.quantized else "none",
                         bytes_before=model_bytes(model))
    targets, loaded = [], []  # loaded: layers a pre-quantized file already holds quantized
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            if select(name, module):
                loaded.append(name)
        elif isinstance(module, nn.Linear):
            (targets if select(name, module) else report.kept).append(name)
    per_layer = {name: (scheme, None) for name in targets}
    if layer_rules:
        per_layer = assign(targets + loaded, layer_rules, scheme, scheme_key, rules_key)
        _check_loaded(model, loaded, per_layer, rules_key)
        report.chosen = {n: (s.format if s is not None else "bf16", why) for n, (s, why) in per_layer.items()}
        report.format = "+".join(dict.fromkeys(f for f, _ in report.chosen.values() if f != "bf16")) or "none"
    for name in targets:
        parent, attr = _parent(model, name)
        linear = getattr(parent, attr)
        layer_scheme, why = per_layer[name]
        if layer_scheme is None or not layer_scheme.quantized:
            linear.quant_rule = why  # kept in high precision by a rule: the kernel table says so
            report.kept.append(name)
            continue
        home = linear.weight.device
        moved = work_device is not None and torch.device(work_device) != home
        try:
            with torch.no_grad():
                source = _copy_to(linear, work_device) if moved else linear
                quant = QuantLinear.from_linear(source, layer_scheme.format, kernel or layer_scheme.kernel)
                if moved:
                    quant = quant.to(home)
                    del source
        except FormatError as e:
            raise FormatError(f"layer {name}: {e}") from None
        if why is not None:
            quant.quant_rule = why
        setattr(parent, attr, quant)
        report.swapped.append(name)
    report.bytes_after = model_bytes(model)
    log.info("%s", report.summary())
    return report


def _check_loaded(model: nn.Module, loaded: list[str], per_layer: dict, rules_key: str) -> None:
    """Layers a checkpoint already holds quantized stay as they are; a rule that asks for another format
    (or for bf16) for one of them contradicts the file, and is refused rather than ignored."""
    for name in loaded:
        layer = model.get_submodule(name)
        want, why = per_layer.pop(name)
        if why.startswith("rule"):
            if (want.format if want is not None else "bf16") != layer.fmt:
                raise ConfigError(f"`{rules_key}`: {why} asks for {want.format if want else 'bf16'} for layer {name}, "
                                  f"which the loaded checkpoint holds in {layer.fmt}; convert the checkpoint with "
                                  "the same rules, or change the rule")
            layer.quant_rule = why


def _copy_to(linear: nn.Linear, device) -> nn.Linear:
    """A copy of the linear on `device`; the original (perhaps memory-mapped) stays untouched."""
    copy = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
    copy.weight = nn.Parameter(linear.weight.detach().to(device), requires_grad=False)
    if linear.bias is not None:
        copy.bias = nn.Parameter(linear.bias.detach().to(device), requires_grad=False)
    return copy


def _selector(rules):
    if callable(rules):
        return rules
    compiled = [re.compile(r) for r in rules]
    return lambda name, _m: any(c.fullmatch(name) for c in compiled)


def _parent(model: nn.Module, name: str):
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr
