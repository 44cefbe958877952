"""What a loaded pipeline holds: weight memory per component and the kernel each layer type runs."""
from __future__ import annotations

import re

import torch
from torch import nn

from .apply import model_bytes
from .kernels import select_kernel
from .linear import QuantLinear

COMPONENTS = ("transformer", "transformer_2", "text_encoder", "image_encoder", "vae")


def weight_bytes(pipe) -> dict[str, int]:
    out = {}
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            out[name] = model_bytes(module)
    return out


def layer_type(name: str) -> str:
    """`blocks.3.attn1.to_q` -> `attn1.to_q`: one row per kind of layer, not per block."""
    return re.sub(r"^(.*?\.)?(blocks|block|layers)\.\d+\.", "", name)


def kernel_table(pipe, device: torch.device) -> dict[str, dict[str, str]]:
    """component -> layer type -> "format: kernel" for every quantized layer: the kernel the layer
    runs on `device` (its cached choice, or the registry's choice for its format and shape). With
    per-layer schemes (engine/layer_rules.py) each entry also says which rule chose it, and how many
    layers of that type it holds when the blocks differ: "nvfp4: triton_mx (rule 2 `...`) x28; bf16
    (rule 1 `...`) x2"."""
    table: dict[str, dict[str, str]] = {}
    for comp in COMPONENTS:
        module = getattr(pipe, comp, None)
        if not isinstance(module, nn.Module):
            continue
        rows: dict[str, dict[str, int]] = {}
        for name, layer in module.named_modules():
            rule = layer.__dict__.get("quant_rule")
            if isinstance(layer, nn.Linear) and not isinstance(layer, QuantLinear) and rule:
                entry = f"bf16 ({rule})"  # kept in high precision by a rule
                rows.setdefault(layer_type(name), {}).setdefault(entry, 0)
                rows[layer_type(name)][entry] += 1
            elif isinstance(layer, QuantLinear):
                try:
                    # the layer's cached choice if it ran here; else the same selection, without
                    # preparing anything (offload hooks may have moved its tensors since)
                    kernel = layer._kernels.get(torch.device(device)) or select_kernel(
                        layer.fmt, device, layer.kernel_preference, layer=layer)
                    kernel = kernel.name
                except Exception as e:  # noqa: BLE001 - shown as text in the table
                    kernel = f"none ({type(e).__name__})"
                entry = f"{layer.fmt}: {kernel}" + (f" ({rule})" if rule else "")
                rows.setdefault(layer_type(name), {}).setdefault(entry, 0)
                rows[layer_type(name)][entry] += 1
        if rows:
            table[comp] = {kind: next(iter(e)) if len(e) == 1 else "; ".join(f"{k} x{n}" for k, n in e.items())
                           for kind, e in rows.items()}
    return table
