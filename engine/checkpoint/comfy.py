"""ComfyUI's per-layer quantized format (`<p>.comfy_quant`), both ways, via the LightX2V layer layout.

Facts read from ComfyUI (comfy/ops.py, comfy/quant_ops.py, comfy/float.py) and comfy_kitchen:
- `<p>.comfy_quant` is a uint8 tensor holding UTF-8 JSON, e.g. {"format": "nvfp4"}; optional keys such
  as "full_precision_matrix_mult" only change how ComfyUI runs the layer, not the numbers.
- "float8_e4m3fn": weight fp8 [N, K]; `weight_scale` one fp32 scalar per tensor (w = q * scale);
  optional `input_scale`, a static per-tensor activation scale.
- "nvfp4": weight uint8 [roundup(N,16), roundup(K,16)/2] with the *even* element in the *high* nibble
  (LightX2V and this engine: low nibble); `weight_scale` e4m3 per 16 along K in the cuBLAS 128x4 tiled
  layout (the same tiling LightX2V uses); `weight_scale_2` fp32 per-tensor = amax/(6*448), so
  w = e2m1 * block_scale * weight_scale_2: the reciprocal of LightX2V's weight_global_scale.
  `input_scale` is the activation's per-tensor scale in the same sense (1 / input_global_scale).
- "mxfp8": weight fp8 [N, K]; `weight_scale` e8m0 per 32 along K, 128x4 tiled.
- "int8_tensorwise": weight int8; `weight_scale` one scalar or one per row. Its "convrot" variants
  rotate activations first, and "convrot_w4a4", "asym_w4a8_int8", "awq_w4a16", "float8_e5m2" have
  no format here: those are refused by name.
"""
from __future__ import annotations

import json
from collections import Counter

import torch

from ..errors import CheckpointError
from ..formats import get_format
from ..formats.swizzle import swizzle

MARKER = "comfy_quant"
COMFY_SUFFIXES = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")
SUPPORTED = {"float8_e4m3fn": "fp8", "nvfp4": "nvfp4", "mxfp8": "mxfp8", "int8_tensorwise": "int8"}


def has_comfy_quant(keys) -> bool:
    return any(k.endswith("." + MARKER) for k in keys)


def parse_conf(t: torch.Tensor, where: str) -> dict:
    try:
        conf = json.loads(bytes(t.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: the comfy_quant tensor is not UTF-8 JSON; the file is corrupt") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("format"), str):
        raise CheckpointError(f"{where}: comfy_quant {conf!r} names no \"format\"; the file is corrupt")
    return conf


def from_comfy_quant(tensors: dict[str, torch.Tensor], where: str) -> Counter:
    """Rewrite, in place, every layer that has a `<p>.comfy_quant` into the LightX2V layer layout that
    formats.py reads (format inference then confirms it). Returns ComfyUI format -> layers."""
    found: Counter = Counter()
    for key in [k for k in tensors if k.endswith("." + MARKER)]:
        layer = key[:-len(MARKER) - 1]
        here = f"{where} (layer {layer!r})"
        conf = parse_conf(tensors.pop(key), here)
        fmt = conf["format"]
        group = {s: tensors.pop(f"{layer}.{s}") for s in COMFY_SUFFIXES if f"{layer}.{s}" in tensors}
        if "weight" not in group:
            raise CheckpointError(f"{here}: comfy_quant says {fmt} but the layer has no weight")
        tensors.update({f"{layer}.{s}": v for s, v in _to_lightx2v(fmt, conf, group, here).items()})
        found[fmt] += 1
    return found


def _to_lightx2v(fmt: str, conf: dict, t: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    if fmt not in SUPPORTED or conf.get("convrot"):
        kind = f"{fmt} with convrot" if conf.get("convrot") else fmt
        raise CheckpointError(f"{where}: ComfyUI format {kind!r} has no equivalent in this engine (it reads "
                              f"{', '.join(SUPPORTED)}); use a bf16, fp8 or NVFP4 file of this model instead")
    if "pre_quant_scale" in t:
        raise CheckpointError(f"{where}: a pre_quant_scale (activation smoothing) is not supported; "
                              "use a file quantized without it")
    w, scale = t["weight"], t.get("weight_scale")
    if scale is None:
        raise CheckpointError(f"{where}: {fmt} layer without weight_scale (a missing scale); the file is incomplete")
    if fmt in ("float8_e4m3fn", "int8_tensorwise"):
        if scale.numel() == 1:
            scale = scale.float().reshape(())
            if fmt == "int8_tensorwise":  # one scale for every row: the per-row layout holds it exactly
                scale = scale.expand(w.shape[0], 1).contiguous()
        # fp8's static input_scale is dropped: activations are quantized per token, which is finer.
        return {"weight": w, "weight_scale": scale}
    if fmt == "mxfp8":
        return {"weight": w, "weight_scale": scale}
    if "weight_scale_2" not in t:
        raise CheckpointError(f"{where}: nvfp4 layer without weight_scale_2 (its per-tensor scale)")
    out = {"weight": _swap_nibbles(w), "weight_scale": scale,
           "weight_global_scale": 1.0 / t["weight_scale_2"].float().reshape(1)}
    if "input_scale" in t:
        out["input_global_scale"] = 1.0 / t["input_scale"].float().reshape(1)
    return out


def _swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    # A copy, not a view of the file: 4-bit weights are a quarter of bf16, so the peak stays ~1x the file.
    b = packed.view(torch.uint8)
    return (b >> 4) | (b << 4)


def to_comfy_quant(fmt: str, w: torch.Tensor, input_absmax: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One float weight -> ComfyUI's tensors for that layer (suffix -> tensor), comfy_quant included."""
    if fmt == "fp8":
        scale = (w.abs().amax().float() / 448.0).clamp(min=1e-12)
        out = {"weight": (w.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), "weight_scale": scale.reshape(())}
        name = "float8_e4m3fn"
    elif fmt in ("nvfp4", "mxfp8"):
        if w.shape[0] % 16:  # ComfyUI pads rows to 16; Wan's widths are all multiples of 16
            raise CheckpointError(f"a {w.shape[0]}-row weight cannot be written as ComfyUI {fmt}; rows must be a multiple of 16")
        q = get_format(fmt).quantize_weight(w)
        out = {"weight": q.data, "weight_scale": swizzle(q.scale)}
        if fmt == "nvfp4":
            out["weight"] = _swap_nibbles(q.data)
            out["weight_scale_2"] = (1.0 / q.global_scale.float()).reshape(())
            if input_absmax is not None:
                out["input_scale"] = (input_absmax.float().amax().clamp(min=1e-12) / (6.0 * 448.0)).reshape(())
        name = fmt
    else:
        raise CheckpointError(f"ComfyUI's comfy_quant format is written for fp8, nvfp4 and mxfp8, not {fmt}")
    out[MARKER] = torch.tensor(list(json.dumps({"format": name}).encode("utf-8")), dtype=torch.uint8)
    return out
