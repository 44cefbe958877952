"""RMS norm + SiLU in one Triton kernel, for the Wan VAE decoder (issue 15).

Why: diffusers' WanRMS_norm then SiLU reads and writes the activation five times or more (the fp32
copy, F.normalize's norm and division, the cast back, `* scale * gamma`, SiLU); torch.compile of the
decoder blocks, which fuses those into one pass, took the bf16 decode from 1.64 s to 1.06 s on an H200.
This kernel is that pass without compile: one read, fp32 math, one write (fp16 decode 1.53 -> 1.10 s,
docs/benchmarks.md, 2026-12-04).

Where it goes (diffusers 0.42.1's autoencoder_kl_wan.py, read for each place): WanResidualBlock applies
`self.nonlinearity` (SiLU) right after norm1 and right after norm2 and nowhere else, and WanDecoder3d
applies it right after norm_out and nowhere else in its forward. So norm1/norm2/norm_out become
`RMSNormSiLU` and those modules' `nonlinearity` becomes Identity. WanAttentionBlock's norm is not
followed by SiLU and is left alone. Only the decoder is changed (the encoder is not on the decode path).
The feat_cache logic clones the post-SiLU tensor: the output here has the input's dtype and strides,
as norm + SiLU's output had.

Numerics: everything in fp32 and one rounding at the end; diffusers rounds to fp16/bf16 after the
normalization, again after `* scale * gamma`, and again after SiLU, so the two differ by about one or
two units in the last place of the 16-bit output, with this kernel the closer to the fp32 result.

Layouts: a [B, C, T, H, W] tensor with any batch, channel and frame strides whose H and W flatten to one
pixel stride: contiguous NCTHW, channels-last-3d, and the temporal upsample's permuted [B, T, C, H, W]
view that the next block receives; the output has the input's strides. Each program normalizes BLOCK_P
pixels of one frame over all C channels. fp32 inputs, C over 1024, other strides and CPU tensors
(unless TRITON_INTERPRET=1) run diffusers' code instead.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no Triton: install_fused_norm declines
    triton = None

MAX_C = 1024  # the full Wan decoder's widest norm is 384 channels; one tile holds a pixel's row
TILE = 8192  # elements per program (BLOCK_P * BLOCK_C): untuned on a GPU, a common row-kernel size


if triton is not None:
    @triton.jit
    def _rms_silu(x_ptr, out_ptr, gamma_ptr, bias_ptr, HW, C, T,
                  sx_b, sx_c, sx_t, sx_p, so_b, so_c, so_t, so_p, scale, eps,
                  HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # axis 1: one (batch, frame); axis 0: BLOCK_P of its H*W pixels. Pixels are `p` with stride sx_p
        # (H and W flatten in every layout the decoder makes), so when sx_p or sx_c is 1 (Triton
        # specializes ints equal to 1) the compiler sees which axis is contiguous and lays the threads
        # along it: C for channels-last-3d, the pixels for NCTHW and the temporal upsample's permute
        frame = tl.program_id(1)
        b = frame // T
        t = frame - b * T
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_C)
        mask = (p < HW)[:, None] & (ch < C)[None, :]
        x_base = x_ptr + b.to(tl.int64) * sx_b + t.to(tl.int64) * sx_t
        x = tl.load(x_base + (p.to(tl.int64) * sx_p)[:, None] + (ch.to(tl.int64) * sx_c)[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        # F.normalize: x / max(||x||_2, eps)
        norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        gamma = tl.load(gamma_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)
        y = x / norm[:, None] * (gamma * scale)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[None, :]
        y = y / (1.0 + tl.exp(-y))  # SiLU
        o_base = out_ptr + b.to(tl.int64) * so_b + t.to(tl.int64) * so_t
        tl.store(o_base + (p.to(tl.int64) * so_p)[:, None] + (ch.to(tl.int64) * so_c)[None, :],
                 y.to(out_ptr.dtype.element_ty), mask=mask)


def _pixel_stride(x: torch.Tensor) -> int | None:
    """The stride of the flattened H*W pixel index, or None when H and W do not flatten."""
    h, w = x.shape[3:]
    s_h, s_w = x.stride()[3:]
    return s_w if h == 1 or s_h == w * s_w else None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernel_declines(x: torch.Tensor) -> str | None:
    """Why the kernel would not run on `x` (None: it runs)."""
    if triton is None:
        return "Triton is not installed"
    if x.dim() != 5:
        return f"{x.dim()}-D input"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"{x.dtype} input (the kernel is for fp16/bf16)"
    if not (x.is_cuda or _interpreting()):
        return "not a CUDA tensor"
    if x.shape[1] > MAX_C:
        return f"{x.shape[1]} channels (over {MAX_C})"
    if _pixel_stride(x) is None:
        return f"strides {x.stride()} (H and W do not flatten)"
    if x.shape[0] * x.shape[2] > 65535:
        return f"{x.shape[0] * x.shape[2]} frames (over the grid's 65535)"
    return None


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias, scale: float, eps: float = 1e-12) -> torch.Tensor:
    """silu(F.normalize(x, dim=1) * scale * gamma + bias) for a 5-D fp16/bf16 x (see kernel_declines)."""
    # empty_like keeps a dense input's strides (channels-last-3d stays channels-last-3d, a permuted view
    # stays permuted), as diffusers' elementwise ops do. Under autocast (the -mixed modes) gamma stays
    # fp32 and diffusers' `normalized * scale * gamma` is fp32: the output takes that promoted dtype.
    out = torch.empty_like(x, dtype=torch.promote_types(x.dtype, gamma.dtype))
    B, C, T, H, W = x.shape
    if out.numel() == 0:
        return out
    block_c = triton.next_power_of_2(C)
    block_p = max(1, min(TILE // block_c, triton.next_power_of_2(H * W)))
    has_bias = torch.is_tensor(bias)
    gamma = gamma.reshape(-1).contiguous()
    sx, so = x.stride(), out.stride()
    grid = (triton.cdiv(H * W, block_p), B * T)
    _rms_silu[grid](x, out, gamma, bias.reshape(-1).contiguous() if has_bias else gamma, H * W, C, T,
                    sx[0], sx[1], sx[2], _pixel_stride(x), so[0], so[1], so[2], _pixel_stride(out),
                    float(scale), eps,
                    HAS_BIAS=has_bias, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=8 if block_c >= 256 else 4)
    return out


class RMSNormSiLU(torch.nn.Module):
    """A WanRMS_norm (channel-first) followed by SiLU. Holds the same parameters under the same names
    (gamma, bias), so state dicts and `.to()` behave as before. Falls back to diffusers' computation
    where the kernel declines."""

    def __init__(self, norm):
        super().__init__()
        self.channel_first = norm.channel_first
        self.scale = norm.scale
        self.gamma = norm.gamma
        self.bias = norm.bias

    def forward(self, x):
        if self.channel_first and kernel_declines(x) is None:
            return rms_norm_silu(x, self.gamma, self.bias, self.scale)
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

        # diffusers' own forward: it reads only the attributes this module holds under the same names
        return F.silu(WanRMS_norm.forward(self, x))


def fusion_sites(decoder) -> list[tuple[torch.nn.Module, str]]:
    """(module, norm attribute) for every norm whose output goes straight into SiLU, from the source:
    WanResidualBlock.norm1/norm2 and WanDecoder3d.norm_out. Each owner's `nonlinearity` is used only
    there, so it can become Identity once all of its norms are fused."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanDecoder3d, WanResidualBlock

    sites = []
    for module in decoder.modules():
        if isinstance(module, WanResidualBlock):
            sites += [(module, "norm1"), (module, "norm2")]
        elif isinstance(module, WanDecoder3d):
            sites.append((module, "norm_out"))
    return sites


def install_fused_norm(vae, device_type: str | None = None) -> tuple[int, str | None]:
    """Swap the decoder's norm + SiLU pairs for RMSNormSiLU. Returns (modules swapped, reason for
    declining or None). Declines without CUDA (unless TRITON_INTERPRET=1) or without Triton.
    `device_type`: where the VAE will decode (the engine configures it on the CPU before placing it
    on the GPU); default: where its weights are now."""
    if triton is None:
        return 0, "Triton is not installed"
    kind = device_type or next(vae.parameters()).device.type
    if kind != "cuda" and not _interpreting():
        return 0, f"the VAE decodes on {kind}, the kernel is CUDA-only"
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    sites = fusion_sites(vae.decoder)
    owners = {id(m): m for m, _ in sites}
    # every owner must be the diffusers code read above: a SiLU nonlinearity and channel-first norms
    for owner in owners.values():
        if not isinstance(owner.nonlinearity, (torch.nn.SiLU, torch.nn.Identity)):
            return 0, f"{type(owner).__name__}.nonlinearity is {type(owner.nonlinearity).__name__}, not SiLU"
    for owner, name in sites:  # all checked before any swap: a half-done swap would apply SiLU twice
        norm = getattr(owner, name)
        if not isinstance(norm, RMSNormSiLU) and not (isinstance(norm, WanRMS_norm) and norm.channel_first):
            return 0, f"{type(owner).__name__}.{name} is not a channel-first WanRMS_norm"
    swapped = 0
    for owner, name in sites:
        norm = getattr(owner, name)
        if not isinstance(norm, RMSNormSiLU):  # else installed before
            setattr(owner, name, RMSNormSiLU(norm))
            swapped += 1
    for owner in owners.values():
        owner.nonlinearity = torch.nn.Identity()
    return swapped, None
