"""Elementwise work of a Wan block, one pass each (no quantization here).

diffusers runs q/k RMSNorm and the rotary embedding as about ten eager kernels over [S, 5120]
(the rotary tables are float64, so half of them move float64), and the gated residual as four.
These kernels read each row once and write it once, with the same rounding points as diffusers
(RMSNorm result rounded to bf16 before the rotation; residual rounded to bf16 at the end).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

from .triton_quant import row_warps


if triton is not None:

    @triton.jit
    def _rmsnorm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, D, S, eps,
                             HEAD: tl.constexpr, HEADS: tl.constexpr, ROPE: tl.constexpr):
        """One token: x [D] -> RMSNorm over all heads (* w) -> rotate (even, odd) pairs per head.

        The row is a [HEADS, HEAD] tile (HEADS padded to a power of two) loaded with contiguous,
        vectorized accesses, the pairs split in registers, and every head shares one [HEAD] row of
        each table. Loading even and odd elements as two strided loads ran at 1.5 TB/s on H100;
        this runs at 2.5 (bench/tune_rowkernels.py)."""
        row = tl.program_id(0).to(tl.int64)
        col = tl.arange(0, HEADS)[:, None] * HEAD + tl.arange(0, HEAD)[None, :]
        live = col < D
        x = tl.load(x_ptr + row * D + col, mask=live, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / D + eps)
        y = (x * r * tl.load(w_ptr + col, mask=live, other=0.0).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        if ROPE:
            t = tl.arange(0, HEAD)
            tok = row % S
            c, _ = tl.split(tl.reshape(tl.load(cos_ptr + tok * HEAD + t), (HEAD // 2, 2)))
            _, s = tl.split(tl.reshape(tl.load(sin_ptr + tok * HEAD + t), (HEAD // 2, 2)))
            y0, y1 = tl.split(tl.reshape(y, (HEADS, HEAD // 2, 2)))
            c, s = c[None, :], s[None, :]
            y = tl.reshape(tl.join(y0 * c - y1 * s, y0 * s + y1 * c), (HEADS, HEAD))
        tl.store(out_ptr + row * D + col, y.to(out_ptr.dtype.element_ty), mask=live)

    @triton.jit
    def _gated_residual_kernel(h_ptr, y_ptr, gate_ptr, out_ptr, D, S, stride_gate, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < D
        h = tl.load(h_ptr + row * D + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gate_ptr + (row // S) * stride_gate + offs, mask=mask, other=0.0)
        tl.store(out_ptr + row * D + offs, (h + y * g).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, head_dim: int,
                 cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
    """x: [B, S, D] contiguous; cos/sin: [S, head_dim] float32 (diffusers' interleaved tables)."""
    b, s_len, d = x.shape
    out = torch.empty_like(x)
    if d % head_dim or head_dim & (head_dim - 1):
        raise ValueError(f"rmsnorm_rope needs a power-of-two head_dim dividing {d}; got {head_dim}")
    heads = triton.next_power_of_2(d // head_dim)
    rope = cos is not None
    _rmsnorm_rope_kernel[(b * s_len,)](x, weight, cos if rope else x, sin if rope else x, out, d, s_len, eps,
                                       HEAD=head_dim, HEADS=heads, ROPE=rope,
                                       num_warps=row_warps(heads * head_dim, "rmsnorm_rope"))
    return out


def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """bf16(h + y * gate): h, y [B, S, D]; gate [B, 1, D] or [1, 1, D] float32."""
    b, s_len, d = h.shape
    g = gate.reshape(-1, d).float().contiguous()
    out = torch.empty_like(h)
    block = triton.next_power_of_2(d)
    _gated_residual_kernel[(b * s_len,)](h, y, g, out, d, s_len, d if g.shape[0] > 1 else 0, BLOCK=block,
                                         num_warps=row_warps(block, "gated_residual"))
    return out
