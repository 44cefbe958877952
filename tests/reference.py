"""An independent float64 model of every format, written from REFERENCE.md, not from engine/formats.

Each function returns the value the format should reconstruct for every element, so tests can
compare the engine's dequantized tensors and kernel outputs against it.
"""
import math

import torch

E4M3_MAX = 448.0
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def round_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values to the nearest e4m3 value (ties to even), saturating at 448."""
    v = v.clamp(-E4M3_MAX, E4M3_MAX)
    a = v.abs()
    exp = torch.floor(torch.log2(a.clamp(min=2.0 ** -9))).clamp(min=-6)  # below 2^-6: subnormal spacing 2^-9
    step = torch.exp2(exp - 3)
    q = torch.round(a / step) * step  # torch.round: half to even on the mantissa grid
    return torch.sign(v) * q


def round_e2m1(v: torch.Tensor) -> torch.Tensor:
    a = v.abs().clamp(max=6.0)
    dist = (a.unsqueeze(-1) - E2M1_GRID).abs()
    best = dist.min(-1, keepdim=True).values
    # among equally near grid points prefer the even code (even index)
    cand = (dist == best) & (torch.arange(8) % 2 == 0) | ((dist == best) & ((dist == best).sum(-1, keepdim=True) == 1))
    idx = cand.to(torch.int64).argmax(-1)
    return torch.sign(v) * E2M1_GRID[idx]


def blocks(t: torch.Tensor, br, bc):
    rows, cols = t.shape
    br, bc = br or rows, bc or cols
    out = torch.empty_like(t)
    for i in range(0, rows, br):
        for j in range(0, cols, bc):
            out[i:i + br, j:j + bc] = t[i:i + br, j:j + bc].abs().max()
    return out


def ref_int8(t, br=1, bc=None):
    scale = blocks(t, br, bc).clamp(min=1e-5) / 127
    return torch.round(t / scale).clamp(-127, 127) * scale


def ref_fp8(t, br=1, bc=None):
    scale = blocks(t, br, bc).clamp(min=1e-12) / E4M3_MAX
    return round_e4m3(t / scale) * scale


def ref_mxfp8(t):
    amax = blocks(t, 1, 32)
    scale = torch.exp2(torch.ceil(torch.log2(amax.clamp(min=2.0 ** -127) / E4M3_MAX)))
    return round_e4m3(t / scale) * scale


def ref_nvfp4(t, global_scale=None):
    gs = global_scale if global_scale is not None else 6 * 448 / t.abs().max()
    s = round_e4m3(blocks(t, 1, 16) / 6 * gs) / gs  # block scale as stored (e4m3), in real units
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.where(s > 0, round_e2m1(t / safe) * s, torch.zeros_like(t))


def reference_dequant(fmt: str, t: torch.Tensor, role: str) -> torch.Tensor:
    t = t.to(torch.float64)
    if fmt == "int8":
        return ref_int8(t)
    if fmt == "fp8":
        return ref_fp8(t)
    if fmt == "fp8_tensor":
        return ref_fp8(t, None, None)
    if fmt == "fp8_block128":
        return ref_fp8(t, 128, 128) if role == "weight" else ref_fp8(t, 1, 128)
    if fmt == "mxfp8":
        return ref_mxfp8(t)
    if fmt == "nvfp4":
        return ref_nvfp4(t)
    raise KeyError(fmt)


def ceil_div(a, b):
    return math.ceil(a / b)
