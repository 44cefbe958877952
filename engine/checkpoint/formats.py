"""How each number format lays out one quantized linear layer in a LightX2V file, both ways.

In a file, layer `<p>` is `<p>.weight` + `<p>.weight_scale` (+ `<p>.weight_global_scale`, and for
NVFP4 a static activation scale as `<p>.input_global_scale`, `<p>.alpha` or `<p>.input_absmax`).
MX/NV elements are raw uint8 and their scales are swizzled (formats/swizzle.py). ComfyUI's scaled
fp8 uses one per-tensor `<p>.scale_weight`. QuantLinear's buffers are the unswizzled, typed form.
The format of a layer is inferred from dtypes and shapes against the (rows, cols) the model expects.
"""
from __future__ import annotations

import logging
import math

import torch

from ..errors import CheckpointError
from ..formats import FORMATS, get_format
from ..formats.swizzle import swizzle, swizzled_shape, unswizzle

NVFP4_GS_NUMERATOR = 6.0 * 448.0  # a global scale maps amax onto e2m1 max times e4m3 max
log = logging.getLogger("engine.checkpoint")
_REPORTED: set[tuple[str, tuple[str, ...]]] = set()
QUANT_SUFFIXES = ("weight_scale", "weight_global_scale", "input_global_scale", "alpha", "input_absmax",
                  "scale_weight", "input_scale")
FP8 = torch.float8_e4m3fn
SWIZZLED = tuple(n for n, f in FORMATS.items() if f.block_scaled)  # MX/NV: swizzled one-byte scales in files


def is_quantized_layer(dtypes: dict[str, torch.dtype]) -> bool:
    """dtypes: suffix -> dtype of the tensors a file holds for one layer."""
    w = dtypes.get("weight")
    return w in (torch.int8, torch.uint8, FP8) or "weight_scale" in dtypes or "scale_weight" in dtypes


def candidates(shapes: dict[str, tuple], dtypes: dict[str, torch.dtype], rows: int, cols: int) -> list[str]:
    """Every format whose file layout matches this layer's tensors, for a rows x cols nn.Linear. Read
    from each format's declared layout (engine/formats): element dtype (MX/NV also as raw bytes),
    stored shape, scale grid (MX/NV also swizzled), global scale, and the format's extra file spellings."""
    w, ws = dtypes.get("weight"), shapes.get("weight")
    s_shape = tuple(shapes["weight_scale"]) if "weight_scale" in shapes else None
    s_dtype = dtypes.get("weight_scale")
    has_gs = "weight_global_scale" in shapes
    fits = {name: f for name, f in FORMATS.items() if f.inferred and
            _holds(f, w, ws, s_shape, s_dtype, has_gs, rows, cols)}
    # a single-number scale is read as per-tensor only where it is not another format's own scale grid
    # (a matrix within one 128x128 block has a [1, 1] block-128 grid)
    grids = {f.weight_scale_shape(rows, cols) for n, f in fits.items() if f.data_dtype == w}
    return [n for n, f in fits.items() if not (_per_tensor_only(f, s_shape, rows, cols) and s_shape in grids - {
        f.weight_scale_shape(rows, cols)})]


def _holds(f, w, ws, s_shape, s_dtype, has_gs, rows, cols) -> bool:
    if cols % f.col_multiple or f.has_global_scale != has_gs:
        return False
    if w not in (f.data_dtype, *((torch.uint8,) if f.block_scaled else ())) or ws != f.data_shape(rows, cols):
        return False
    grid = f.weight_scale_shape(rows, cols)
    if f.block_scaled:  # one-byte scales, plain or in the 128x4 tiles (formats/swizzle.py)
        return s_shape in (grid, swizzled_shape(*grid)) and s_dtype in (torch.uint8, f.scale_dtype)
    if s_shape is None:
        return "unscaled" in f.file_scales
    return (s_shape == grid or (_per_row(f) and s_shape == (rows,))  # per row also as [rows]
            or ("per_tensor" in f.file_scales and _numel(s_shape) == 1))


def _per_tensor_only(f, s_shape, rows, cols) -> bool:
    """`f` took this scale only as a per-tensor spelling, not as its own grid."""
    grid = f.weight_scale_shape(rows, cols)
    return s_shape is not None and s_shape != grid and not (_per_row(f) and s_shape == (rows,))


def _per_row(f) -> bool:
    return f.weight_block == (1, None)


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def decode_layer(fmt: str, t: dict[str, torch.Tensor], rows: int, cols: int, where: str) -> dict[str, torch.Tensor]:
    """File tensors of one layer -> QuantLinear buffers. Large tensors stay views of the file."""
    f = get_format(fmt)
    _report_unused(fmt, t, where)
    out = {"weight": t["weight"]}
    scale = t.get("weight_scale", t.get("scale_weight"))
    if not f.block_scaled:  # int8, fp8, fp8_tensor, fp8_block128: float scales
        if scale is None:  # plain fp8: the values are the weights
            scale = torch.ones((rows, 1), dtype=torch.float32)
        scale = scale.to(torch.float32)
        if fmt == "fp8" and scale.numel() == 1:
            scale = scale.reshape(1, 1).expand(rows, 1).contiguous()  # per-tensor scale, same for every row
        elif fmt == "fp8_tensor":
            scale = scale.reshape(1, 1)
        out["weight_scale"] = scale.reshape(f.weight_scale_shape(rows, cols))
        check_scale(out["weight_scale"], f"{where}: weight_scale")
        return out
    if out["weight"].dtype != f.data_dtype:
        out["weight"] = out["weight"].view(f.data_dtype)
    want = f.weight_scale_shape(rows, cols)
    raw = scale.view(torch.uint8) if scale.element_size() == 1 else scale
    # LightX2V and ComfyUI store these scales swizzled. When rows % 128 == 0 and blocks % 4 == 0 (every
    # real Wan layer) the swizzled shape equals the plain one, so the shape cannot tell: swizzled wins.
    if tuple(raw.shape) == swizzled_shape(*want):
        raw = unswizzle(raw, *want)
    out["weight_scale"] = raw.view(f.scale_dtype)
    check_block_scale(out["weight_scale"], f"{where}: weight_scale")
    if f.has_global_scale:
        gs = _one(t["weight_global_scale"], f"{where}: weight_global_scale")
        check_scale(gs, f"{where}: weight_global_scale")
        out["weight_global_scale"] = gs
        igs = static_input_scale(t, gs, where)
        if igs is not None:
            out["input_global_scale"] = igs
    return out


def _report_unused(fmt: str, t: dict, where: str) -> None:
    """Static activation scales beside a format that quantizes activations per token (or per block) at run
    time are not used: say so once per format and set of keys, never drop them silently."""
    used = ("weight_global_scale", "input_global_scale", "alpha", "input_absmax") if get_format(fmt).has_global_scale else ()
    extra = tuple(sorted(k for k in t if k in QUANT_SUFFIXES and k not in used
                         and k not in ("weight_scale", "scale_weight")))
    if extra and (fmt, extra) not in _REPORTED:
        _REPORTED.add((fmt, extra))
        log.warning("%s: %s not used: %s activations are quantized dynamically at run time, which is finer than "
                    "a static scale (other %s layers with them are not reported again)", where, ", ".join(extra),
                    fmt, fmt)


def _one(t: torch.Tensor, where: str) -> torch.Tensor:
    """A per-tensor scale: exactly one number."""
    if t.numel() != 1:
        raise CheckpointError(f"{where} has shape {list(t.shape)}; it is one number per layer: the file is corrupt "
                              "or from another tool")
    return t.to(torch.float32).reshape(1)


def check_scale(scale: torch.Tensor, where: str) -> None:
    """Float scales (per row, per tensor, per 128x128 block, global): NaN/Inf gives a NaN video, zero a
    zeroed channel, a negative one a flipped channel. Refuse them, naming the layer and the first row."""
    bad = ~torch.isfinite(scale) | (scale <= 0)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise CheckpointError(f"{where} holds {float(scale.reshape(-1)[i])} at position {i} (of {scale.numel()}); "
                              "scales must be finite and > 0: the file is corrupt, convert or download it again")


def check_block_scale(scale: torch.Tensor, where: str) -> None:
    """MX (e8m0) / NV (e4m3) block scales: a NaN code or (e4m3) a negative scale is corrupt. A zero e4m3
    block scale is what an all-zero block quantizes to, so it stays allowed."""
    raw = scale.view(torch.uint8)
    if scale.dtype == torch.float8_e8m0fnu:
        bad = raw == 0xFF
    else:
        bad = ((raw & 0x7F) == 0x7F) | ((raw & 0x80) != 0)  # e4m3fn NaN, or the sign bit set
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise CheckpointError(f"{where} holds the code 0x{int(raw.reshape(-1)[i]):02x} at position {i}: a NaN or "
                              "negative block scale; the file is corrupt, convert or download it again")


def static_input_scale(t: dict[str, torch.Tensor], weight_gs: torch.Tensor, where: str) -> torch.Tensor | None:
    """NVFP4's calibrated activation global scale, from whichever form the file gives it in."""
    if "input_global_scale" in t:
        igs = _one(t["input_global_scale"], f"{where}: input_global_scale")
    elif "alpha" in t:  # alpha = 1 / (input_gs * weight_gs)
        igs = 1.0 / (_one(t["alpha"], f"{where}: alpha") * weight_gs)
    elif "input_absmax" in t:
        igs = NVFP4_GS_NUMERATOR / t["input_absmax"].to(torch.float32).reshape(-1).amax().clamp(min=1e-12).reshape(1)
    else:
        return None
    if not bool(torch.isfinite(igs).all()) or float(igs) <= 0:
        raise CheckpointError(f"{where}: the activation scale is {float(igs)}; the calibration data is corrupt")
    return igs


def encode_layer(fmt: str, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """QuantLinear buffers (or a formats.Quantized as a dict) -> tensors in LightX2V's file layout."""
    out = {"weight": buffers["weight"]}
    scale = buffers["weight_scale"]
    if fmt in SWIZZLED:
        out["weight"] = out["weight"].view(torch.uint8)  # LightX2V stores MX/NV elements as raw bytes
        out["weight_scale"] = swizzle(scale)
    else:
        out["weight_scale"] = scale.to(torch.float32)
    if "weight_global_scale" in buffers:
        out["weight_global_scale"] = buffers["weight_global_scale"].to(torch.float32).reshape(1)
    if "input_global_scale" in buffers:
        igs = buffers["input_global_scale"].to(torch.float32).reshape(1)
        out["input_global_scale"] = igs
        out["alpha"] = 1.0 / (igs * out["weight_global_scale"])
    return out


def split_rows(fmt: str, buffers: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Split a fused projection (CLIP's to_qkv) row-wise into equal parts, scales with their rows."""
    f = get_format(fmt)
    rows = buffers["weight"].shape[0]
    if rows % parts:
        raise CheckpointError(f"a fused projection of {rows} rows does not split into {parts} equal parts")
    n = rows // parts
    br = f.weight_block[0]
    if br is None or (br > 1 and n % br):
        raise CheckpointError(f"{fmt}: scales of {br}-row blocks cannot be split at row {n}; "
                              "use int8, fp8 or an MX/NV format for this encoder")
    out = []
    for i in range(parts):
        piece = {"weight": buffers["weight"][i * n:(i + 1) * n],
                 "weight_scale": buffers["weight_scale"][i * n // br:(i + 1) * n // br]}
        for k in ("weight_global_scale", "input_global_scale"):
            if k in buffers:
                piece[k] = buffers[k]
        out.append(piece)
    return out
