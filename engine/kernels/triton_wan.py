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


if triton is not None:

    @triton.jit
    def _rmsnorm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, D, S, eps,
                             HEAD: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr):
        """One token: x [D] -> RMSNorm over all heads (* w) -> rotate (even, odd) pairs per head."""
        row = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, HALF)  # pair index across the row
        live = i < D // 2
        base = x_ptr + row * D
        x0 = tl.load(base + 2 * i, mask=live, other=0.0).to(tl.float32)
        x1 = tl.load(base + 2 * i + 1, mask=live, other=0.0).to(tl.float32)
        ms = (tl.sum(x0 * x0, axis=0) + tl.sum(x1 * x1, axis=0)) / D
        r = tl.rsqrt(ms + eps)
        y0 = (x0 * r * tl.load(w_ptr + 2 * i, mask=live, other=0.0).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        y1 = (x1 * r * tl.load(w_ptr + 2 * i + 1, mask=live, other=0.0).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        if ROPE:
            tok = row % S
            j = 2 * (i % (HEAD // 2))  # position of the pair inside its head
            c = tl.load(cos_ptr + tok * HEAD + j, mask=live, other=1.0)
            s = tl.load(sin_ptr + tok * HEAD + j + 1, mask=live, other=0.0)
            y0, y1 = y0 * c - y1 * s, y0 * s + y1 * c
        ob = out_ptr + row * D
        tl.store(ob + 2 * i, y0.to(out_ptr.dtype.element_ty), mask=live)
        tl.store(ob + 2 * i + 1, y1.to(out_ptr.dtype.element_ty), mask=live)

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
    half = triton.next_power_of_2(d // 2)
    rope = cos is not None
    _rmsnorm_rope_kernel[(b * s_len,)](x, weight, cos if rope else x, sin if rope else x, out, d, s_len, eps,
                                       HEAD=head_dim, ROPE=rope, HALF=half,
                                       num_warps=max(4, min(16, half // 256)))
    return out


def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """bf16(h + y * gate): h, y [B, S, D]; gate [B, 1, D] or [1, 1, D] float32."""
    b, s_len, d = h.shape
    g = gate.reshape(-1, d).float().contiguous()
    out = torch.empty_like(h)
    block = triton.next_power_of_2(d)
    _gated_residual_kernel[(b * s_len,)](h, y, g, out, d, s_len, d if g.shape[0] > 1 else 0, BLOCK=block,
                                         num_warps=max(4, min(16, block // 512)))
    return out
