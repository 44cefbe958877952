"""Fused one-pass activation quantization in Triton, and the producers it folds into.

Why fused: quantizing a [32760, 5120] bf16 activation with plain torch ops (abs, amax, div, clamp,
cast) takes several passes over 335 MB and costs more than the 8-bit GEMM saves. Here one program
holds one whole row (token) in registers: it reads the row once, and writes the 8-bit row and its
scale(s) once. The same row kernel also does the elementwise work that produces the activation in a
Wan block (residual + gate, LayerNorm, modulation, GELU), so that work costs no extra pass either.

Activation kinds (what the GEMM that follows expects; declared by each format's `act_kind`):
  "fp8_row"   e4m3, one fp32 scale per token               (formats fp8)
  "int8_row"  int8, one fp32 scale per token               (formats int8)
  "fp8_g128"  e4m3, one fp32 scale per 128 columns per token (format fp8_block128); the scale tensor
              is [M, K/128] stored column-major, the layout cuBLAS blockwise scaling reads.
Numerics follow engine/formats: scale = max(amax, floor) / elem_max, element = round(x * (1/scale)).
"""
from __future__ import annotations

import math
import os

import torch

from ..formats import ACT_KINDS  # kind -> (element dtype, elem_max, amax floor, group), from the formats

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU-only installs: the registry reports "triton is not installed"
    triton = None

MAX_ROW = 16384  # longest activation row the fused quantizers hold in registers


def row_block(k: int) -> int:
    return max(128, triton.next_power_of_2(k))


# Warps per one-row program. Measured on H100 at K=5120 (bench/tune_rowkernels.py, docs/benchmarks.md):
# 4 warps beat 16 by 7-23% for the quantizers, 8 at K=13824; the q/k norm + rotary kernel wants 16.
# Entries here override the rule (the bench sets them to sweep).
ROW_WARPS: dict[str, int] = {}


def row_warps(block: int, kernel: str = "") -> int:
    if kernel in ROW_WARPS:
        return ROW_WARPS[kernel]
    if kernel == "rmsnorm_rope":
        return max(4, min(16, block // 512))
    return max(4, min(16, block // 2048))


if triton is not None:
    # On a GPU the e4m3 cast is one hardware instruction (round to nearest even). Triton's CPU
    # interpreter rounds that cast differently, so there we round by hand, to the same values.
    HW_FP8_CAST = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")

    @triton.jit
    def _round_half_even(v):
        r = tl.floor(v + 0.5)
        tie = (r - v) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)

    @triton.jit
    def _rint(v):
        """Round to the nearest integer, ties to even: one instruction on a GPU (cvt.rni); the
        hand-written version costs ~10 instructions per element and made the int8 quantizer
        compute-bound (0.31 ms vs fp8's 0.19 ms on [32760, 5120], H100)."""
        if HW_FP8_CAST:
            return libdevice.rint(v)
        return _round_half_even(v)

    @triton.jit
    def _gelu_tanh(v):
        """0.5 v (1 + tanh(u)) written as v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3): no
        cancellation in 1 + tanh(u) for negative v, and on a GPU one ex2 and one fast division
        (the exact division made the GELU quantizer compute-bound on H100)."""
        e = -2.0 * 1.4426950408889634 * 0.7978845608028654 * (v + 0.044715 * v * v * v)  # -2u log2(e)
        if HW_FP8_CAST:
            return libdevice.fast_dividef(v, 1.0 + libdevice.exp2(e))
        return v / (1.0 + tl.exp2(e))

    @triton.jit
    def _round_e4m3(v):
        """float32 (|v| <= 448) -> the nearest e4m3 value as float32, ties to even."""
        if HW_FP8_CAST:
            return v.to(tl.float8e4nv).to(tl.float32)
        biased = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF
        q_exp = tl.maximum(biased - 127, -6) - 3  # 3 mantissa bits; subnormals below 2**-6
        quantum = ((q_exp + 127) << 23).to(tl.float32, bitcast=True)
        inv_quantum = ((127 - q_exp) << 23).to(tl.float32, bitcast=True)  # exact: powers of two
        return _round_half_even(v * inv_quantum) * quantum

    @triton.jit
    def _to_e4m3(v):
        if HW_FP8_CAST:
            return v.to(tl.float8e4nv)
        return _round_e4m3(v).to(tl.float8e4nv)  # exact cast of an e4m3 value

    @triton.jit
    def _store_quantized(v, offs, mask, row, q_ptr, s_ptr, K, stride_sm, stride_sg,
                         QMAX: tl.constexpr, FLOOR: tl.constexpr, IS_INT: tl.constexpr,
                         GROUP: tl.constexpr, BLOCK: tl.constexpr):
        """v: one row as float32 [BLOCK] (zeros past K). Writes the elements and the scale(s)."""
        if GROUP == 0:
            amax = tl.max(tl.abs(v), axis=0)
            scale = tl.maximum(amax, FLOOR) / QMAX
            y = v * (1.0 / scale)
            tl.store(s_ptr + row * stride_sm, scale)
        else:
            v2 = tl.reshape(v, (BLOCK // GROUP, GROUP))
            amax = tl.max(tl.abs(v2), axis=1)
            scale = tl.maximum(amax, FLOOR) / QMAX
            y = tl.reshape(v2 * (1.0 / scale)[:, None], (BLOCK,))
            g = tl.arange(0, BLOCK // GROUP)
            tl.store(s_ptr + row * stride_sm + g * stride_sg, scale, mask=g * GROUP < K)
        y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        if IS_INT:
            tl.store(q_ptr + row * K + offs, _rint(y).to(tl.int8), mask=mask)
        else:
            tl.store(q_ptr + row * K + offs, _to_e4m3(y), mask=mask)

    @triton.jit
    def _quant_kernel(x_ptr, q_ptr, s_ptr, M, K, rows_per_batch, stride_xb, stride_xs, stride_xh,
                      stride_sm, stride_sg,
                      GELU: tl.constexpr, QMAX: tl.constexpr, FLOOR: tl.constexpr, IS_INT: tl.constexpr,
                      GROUP: tl.constexpr, HEAD: tl.constexpr, BLOCK: tl.constexpr):
        """Row `row` of x is token (row // rows_per_batch, row % rows_per_batch); its column c lives at
        (c // HEAD) * stride_xh + c % HEAD. That reads attention's [B, S, H, Dh] output in place,
        a permuted view, with no copy; a plain [M, K] matrix has HEAD = BLOCK."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        # rows past M are padding some GEMMs need: they come out as zeros
        live = offs < tl.where(row < M, K, 0)
        src = (x_ptr + (row // rows_per_batch) * stride_xb + (row % rows_per_batch) * stride_xs
               + (offs // HEAD) * stride_xh + offs % HEAD)
        v = tl.load(src, mask=live, other=0.0).to(tl.float32)
        if GELU:  # tanh approximation, as diffusers' "gelu-approximate"; bf16 result like F.gelu on bf16
            v = _gelu_tanh(v).to(tl.bfloat16).to(tl.float32)
        _store_quantized(v, offs, mask, row, q_ptr, s_ptr, K, stride_sm, stride_sg,
                         QMAX, FLOOR, IS_INT, GROUP, BLOCK)

    @triton.jit
    def _norm_quant_kernel(h_ptr, y_ptr, gate_ptr, hout_ptr, w_ptr, b_ptr, shift_ptr, scl_ptr,
                           q_ptr, s_ptr, M, K, rows_per_batch, stride_mod, stride_sm, stride_sg, eps,
                           HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr, HAS_NORM: tl.constexpr,
                           HAS_AFFINE: tl.constexpr,
                           HAS_MOD: tl.constexpr, QMAX: tl.constexpr, FLOOR: tl.constexpr,
                           IS_INT: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr):
        """h' = bf16(h + y*gate); n = LayerNorm(h')(*w+b); n = n*(1+scale)+shift; quantize bf16(n)."""
        row = tl.program_id(0).to(tl.int64)
        batch = row // rows_per_batch
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        live = offs < tl.where(row < M, K, 0)
        h = tl.load(h_ptr + row * K + offs, mask=live, other=0.0).to(tl.float32)
        if HAS_RES:
            y = tl.load(y_ptr + row * K + offs, mask=live, other=0.0).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(gate_ptr + batch * stride_mod + offs, mask=mask, other=0.0)
            h = (h + y).to(tl.bfloat16)
            tl.store(hout_ptr + row * K + offs, h, mask=live)
            h = h.to(tl.float32)
        if HAS_NORM:
            mean = tl.sum(h, axis=0) / K
            xc = tl.where(mask, h - mean, 0.0)
            var = tl.sum(xc * xc, axis=0) / K
            n = xc * tl.rsqrt(var + eps)
        else:  # the block has no norm here (Wan's cross_attn_norm=False): quantize h itself
            n = h
        if HAS_AFFINE:
            n = (n * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                     + tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32))
        if HAS_MOD:
            sc = tl.load(scl_ptr + batch * stride_mod + offs, mask=mask, other=0.0)
            sh = tl.load(shift_ptr + batch * stride_mod + offs, mask=mask, other=0.0)
            n = n * (1.0 + sc) + sh
        n = tl.where(live, n.to(tl.bfloat16).to(tl.float32), 0.0)
        _store_quantized(n, offs, mask, row, q_ptr, s_ptr, K, stride_sm, stride_sg,
                         QMAX, FLOOR, IS_INT, GROUP, BLOCK)


def padded(m: int, pad: int) -> int:
    return -(-m // pad) * pad


def _outputs(m: int, k: int, kind: str, device):
    """m already includes any padding rows."""
    dtype, _, _, group = ACT_KINDS[kind]
    q = torch.empty((m, k), dtype=dtype, device=device)
    if group:
        # column-major [M, K/128]: cuBLAS blockwise scaling wants the token dimension contiguous
        s = torch.empty((math.ceil(k / group), m), dtype=torch.float32, device=device).t()
    else:
        s = torch.empty((m, 1), dtype=torch.float32, device=device)
    return q, s


def _consts(kind: str):
    _, qmax, floor, group = ACT_KINDS[kind]
    return dict(QMAX=qmax, FLOOR=floor, IS_INT=kind.startswith("int8"), GROUP=group)


def quantize_rows(x: torch.Tensor, kind: str, gelu: bool = False, pad: int = 1):
    """x: [M, K] (any float dtype, last dim contiguous) -> (q [Mp, K], scale), Mp = M rounded up to
    a multiple of `pad` (padding rows are zero). One pass over x."""
    m, k = x.shape
    mp = padded(m, pad)
    q, s = _outputs(mp, k, kind, x.device)
    if mp == 0:
        return q, s
    if x.stride(1) != 1:
        x = x.contiguous()
    block = row_block(k)
    _quant_kernel[(mp,)](x, q, s, m, k, max(m, 1), 0, x.stride(0), 0, s.stride(0), s.stride(1),
                        GELU=gelu, HEAD=block, BLOCK=block, num_warps=row_warps(block, "quantize_rows"),
                        **_consts(kind))
    return q, s


def quantize_heads(x: torch.Tensor, kind: str, pad: int = 1):
    """x: [B, S, H, Dh] with Dh contiguous (e.g. attention output, permuted) -> like
    quantize_rows(x.flatten(2).reshape(B*S, H*Dh)), without materializing that copy."""
    b, s_len, heads, hd = x.shape
    m, k = b * s_len, heads * hd
    mp = padded(m, pad)
    q, s = _outputs(mp, k, kind, x.device)
    if mp == 0:
        return q, s
    if x.stride(3) != 1 or hd & (hd - 1):
        return quantize_rows(x.reshape(m, k), kind, pad=pad)
    block = row_block(k)
    _quant_kernel[(mp,)](x, q, s, m, k, s_len, x.stride(0), x.stride(1), x.stride(2), s.stride(0), s.stride(1),
                        GELU=False, HEAD=hd, BLOCK=block, num_warps=row_warps(block, "quantize_heads"),
                        **_consts(kind))
    return q, s


def norm_quant(h, kind: str, eps: float, y=None, gate=None, weight=None, bias=None, shift=None, scale=None,
               pad: int = 1, norm: bool = True):
    """Fused (residual [+gate]) + LayerNorm (if `norm`) [+affine] [+modulation] + quantization.

    h, y: [B, S, D] bf16 contiguous. gate/shift/scale: [B, 1, D] (or [1, D]) fp32 per batch.
    Returns (new_h or None, q [Mp, D], scale), Mp = B*S rounded up to a multiple of `pad`.
    new_h is h + y*gate in h's dtype (when y is given).
    """
    b, s_len, d = h.shape
    m = b * s_len
    mp = padded(m, pad)
    q, s = _outputs(mp, d, kind, h.device)
    new_h = torch.empty_like(h) if y is not None else None
    # per-batch modulation rows [B, D]; a single row is shared by every batch (stride 0)
    gate_t, shift_t, scale_t = (
        (t.reshape(-1, d).float().contiguous() if t is not None else h) for t in (gate, shift, scale))
    mod_rows = max((t.shape[0] for t in (gate_t, shift_t, scale_t) if t is not h), default=1)
    stride_mod = d if mod_rows > 1 else 0
    block = row_block(d)
    _norm_quant_kernel[(mp,)](
        h, y if y is not None else h, gate_t, new_h if new_h is not None else h,
        weight if weight is not None else h, bias if bias is not None else h, shift_t, scale_t,
        q, s, m, d, s_len, stride_mod, s.stride(0), s.stride(1), eps,
        HAS_RES=y is not None, HAS_GATE=gate is not None, HAS_NORM=norm, HAS_AFFINE=weight is not None,
        HAS_MOD=shift is not None, BLOCK=block, num_warps=row_warps(block, "norm_quant"), **_consts(kind))
    return new_h, q, s
