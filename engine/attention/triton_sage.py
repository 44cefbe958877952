"""Our 8-bit attention in Triton, on the recipe engine/attention/reference.py defines.

Two launches: `quantize_qkv` (triton_qkv.py: K's channel means and V's channel maxima, then INT8
q/k with per-token or block scales and FP8 v with channel scales), and `attention_quantized`
here (a flash-attention forward with INT8 q·kᵀ into INT32, exp2 softmax, FP8 p·v into FP32).

Layouts: inputs and output [B, S, H, D] (diffusers'); the 8-bit copies' layouts are triton_qkv's.
Tiles were chosen by measurement on an H200 (docs/benchmarks.md); every option measured is kept
in Config so that the next GPU can re-run the sweep (bench/bench_attention.py --sweep).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - registry reports it
    triton = None

from .triton_qkv import LOG2_P_SCALE, PAD, Quantized, quantize_qkv  # noqa: F401  (quantize_qkv: re-exported)

if triton is not None:
    from .fma_exp2 import exp2_split

    LOG2_448 = tl.constexpr(LOG2_P_SCALE)


@dataclass(frozen=True)
class Config:
    """Tiles and pipelining of the attention kernel (speed only; numerics depend on block_n).
    Default: the fastest of the H200 sweeps in docs/benchmarks.md (31.1 ms at the 14B 480p shape)."""
    block_m: int = 64
    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3
    tma: bool = True
    warp_specialize: bool = False
    fast_convert: bool = True  # int32 scores to float by bit tricks, scales folded into exp2
    overlap: bool = False  # next block's Q·Kᵀ issued before this block's softmax (fast_convert only)
    # numerics, not only speed: softmax's sum over the FP8 P (reference.Recipe.sum_fp8_p), taken
    # by the tensor cores; not yet timed on a GPU (fast_convert only)
    sum_fp8_p: bool = False
    # numerics: each key block's FP8 P·V added to the FP32 accumulator at full precision (Hopper's
    # FP8 matrix instruction accumulates in ~13 mantissa bits otherwise); on by default because
    # V with a per-channel offset measured 0.056-0.083 error at Wan's lengths without it
    fp32_pv: bool = True
    # speed, numerics within 1.02e-4 relative of each P value before its FP8 rounding: of every 4
    # scores, how many take exp2 by a polynomial on the FMA pipe instead of MUFU (0-4; fma_exp2.py;
    # fast_convert only). poly_asm: the split by inline PTX over 4 registers (any count), else by
    # tl.split into even/odd columns (count 2 only). Slower on an H200 (14B 480p: 32.4 ms default,
    # px1 34.6, px2 35.6, px4 40.4; docs/benchmarks.md 2026-12-04): kept for other GPUs' sweeps.
    poly_exp2: int = 0
    poly_asm: bool = True
    # speed, same numerics as fp32_pv (which it implies): each block's P·V into a fresh FP32
    # accumulator, then acc·alpha + pv in one FMA. With max_num_imprecise_acc, ptxas 13.4 serialises
    # every wgmma of the kernel, Q·Kᵀ's included (advisory C7514, bench/attention_sm90_compile.py);
    # this form compiles without it. Same accuracy on an H200 but not faster (32.9 vs 32.4 ms, 2026-12-04).
    pv_fresh: bool = False
    # speed, same numerics: with K scales per lane group (quantize_qkv k_block="lanes"), the row max over
    # raw scores and the scales folded into the exponent's FMA, the form that took the Gluon kernel from
    # 32.4 to 26.3 ms on an H200. Off in DEFAULT (its copies are per token); LANES below turns it on
    lane_fold: bool = False

    def label(self) -> str:
        parts = [f"M{self.block_m}N{self.block_n}w{self.num_warps}s{self.num_stages}",
                 "tma" if self.tma else "", "ws" if self.warp_specialize else "", "" if self.fast_convert else "i2f",
                 "ov" if self.overlap else "", "sum8" if self.sum_fp8_p else "", "" if self.fp32_pv else "acc22",
                 "pvf" if self.pv_fresh else "", "lanes" if self.lane_fold else "",
                 f"px{self.poly_exp2}{'' if self.poly_asm or self.poly_exp2 == 4 else 't'}" if self.poly_exp2 else ""]
        return "-".join(p for p in parts if p)

    def poly_split(self) -> str:
        """The kernel's SPLIT constexpr (fma_exp2.exp2_split); asm's stand-in under the interpreter."""
        if not 0 <= self.poly_exp2 <= 4:
            raise ValueError(f"poly_exp2 must be 0-4 (of every 4 scores), got {self.poly_exp2}")
        if not self.poly_asm:
            if self.poly_exp2 not in (0, 2, 4):
                raise ValueError(f"poly_exp2={self.poly_exp2} needs poly_asm (the tl split does 2 of 4 only)")
            return "tl"
        return "where" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else "asm"


DEFAULT = Config()
# what the sage8 family runs on this kernel (engine/attention/paths.py: Ada, Blackwell; Hopper without
# Gluon): the lane-group recipe with its scales folded into the exponent, 29.5 ms against 32.6 per
# token at Wan 14B 480p on an H200 (docs/benchmarks.md)
LANES = Config(lane_fold=True)


if triton is not None:
    @triton.jit
    def _load_kv(K8, V8, start, sp, bh, desc_k, desc_v, BLOCK_N: tl.constexpr, D: tl.constexpr,
                 TMA: tl.constexpr):
        n = start + tl.arange(0, BLOCK_N)
        d = tl.arange(0, D)
        if TMA:
            k = desc_k.load([bh * sp + start, 0])
            v = desc_v.load([bh * D, start]).T
        else:
            k = tl.load(K8 + (bh * sp + n[:, None]) * D + d[None, :])
            v = tl.load(V8 + (bh * D + d[:, None]) * sp + n[None, :]).T  # tokens contiguous
        return k, v

    @triton.jit
    def _scores(q, K8, KS, start, seq, sp, bh, desc_k, BLOCK_N: tl.constexpr, D: tl.constexpr,
                MASK: tl.constexpr, TMA: tl.constexpr):
        """t = (q8·k8ᵀ) · k_scale, FP32, masked past `seq`; Q's scale is applied in the exponent.

        int32 -> float32 without the quarter-rate I2F: |q8·k8| <= 127²·D < 2^22, so adding the
        bits of 1.5·2^23 gives the float 1.5·2^23 + q8·k8 exactly; one FMA removes the offset
        and applies K's scale."""
        n = start + tl.arange(0, BLOCK_N)
        d = tl.arange(0, D)
        if TMA:
            k = desc_k.load([bh * sp + start, 0])
        else:
            k = tl.load(K8 + (bh * sp + n[:, None]) * D + d[None, :])
        ks = tl.load(KS + bh * sp + n)
        si = tl.dot(q, k.T, out_dtype=tl.int32)
        t = (si + 0x4B400000).to(tl.float32, bitcast=True) * ks[None, :] + (ks * -12582912.0)[None, :]
        if MASK:
            t = tl.where((n < seq)[None, :], t, -float("inf"))
        return t

    @triton.jit
    def _update(acc, l_i, m_i, t, qs, V8, start, sp, bh, desc_v, BLOCK_N: tl.constexpr, D: tl.constexpr,
                TMA: tl.constexpr, SUM_MMA: tl.constexpr, PROMOTE: tl.constexpr, POLY: tl.constexpr,
                SPLIT: tl.constexpr, FRESH: tl.constexpr):
        """Online softmax and P·V for one key block. p448 = exp2(qs·(t − m) + log2 448) = 448·p:
        P's FP8 scale rides in the exponent, and l sums p448 too, so 448 cancels at the end.
        SUM_MMA: l is the row sum of the FP8 P itself, taken by the tensor cores (P times a
        [BLOCK_N, 16] block of ones; l_i is then [BLOCK_M, 16], every column the same), so that
        P·V / l is an exact weighted mean of V even where small P values underflow FP8.
        PROMOTE: on sm90 an FP8 wgmma accumulates in reduced precision (about 13 mantissa bits,
        SageAttention2's and DeepSeek-V3's finding); Triton's default there lets the whole loop
        accumulate so (max_num_imprecise_acc 2**30). Passing BLOCK_N adds each block's P·V into the
        FP32 accumulator with a full-precision add; None keeps Triton's default. FRESH: the same sum
        as a separate dot from zero (imprecise over this block's BLOCK_N keys only) and one FMA.
        POLY, SPLIT: POLY of every 4 exp2 of P by a polynomial (fma_exp2.exp2_split); alpha's stays
        MUFU's (one per row, and it rescales everything accumulated so far)."""
        n = start + tl.arange(0, BLOCK_N)
        d = tl.arange(0, D)
        if TMA:
            v = desc_v.load([bh * D, start]).T
        else:
            v = tl.load(V8 + (bh * D + d[:, None]) * sp + n[None, :]).T
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        e0 = LOG2_448 - qs * m_new
        p = exp2_split(t * qs[:, None] + e0[:, None], POLY, SPLIT)
        alpha = tl.math.exp2(qs * (m_i - m_new))
        p8 = p.to(tl.float8e4nv)
        if SUM_MMA:
            ones = tl.full([BLOCK_N, 16], 1.0, tl.float32).to(tl.float8e4nv)
            l_i = tl.dot(p8, ones, l_i * alpha[:, None], max_num_imprecise_acc=PROMOTE)
        else:
            l_i = l_i * alpha + tl.sum(p, axis=1)
        if FRESH:
            acc = acc * alpha[:, None] + tl.dot(p8, v)
        else:
            acc = acc * alpha[:, None]
            acc = tl.dot(p8, v, acc, max_num_imprecise_acc=PROMOTE)
        return acc, l_i, m_new

    @triton.jit
    def _attn_step(acc, l_i, m_i, q, qs, K8, KS, V8, start, seq, sp, bh, desc_k, desc_v,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, LANES: tl.constexpr,
                   MASK: tl.constexpr, TMA: tl.constexpr, FAST: tl.constexpr,
                   SUM_MMA: tl.constexpr, PROMOTE: tl.constexpr, POLY: tl.constexpr, SPLIT: tl.constexpr,
                   FRESH: tl.constexpr):
        if FAST and LANES:
            # K scales per lane group (quantize_qkv k_block="lanes"): the row max over raw scores, then
            # scales and the float offset fold into the exponent's FMA (gluon_sage._scaled_exp2's form)
            n = start + tl.arange(0, BLOCK_N)
            k, v = _load_kv(K8, V8, start, sp, bh, desc_k, desc_v, BLOCK_N, D, TMA)
            bits = (tl.dot(q, k.T, out_dtype=tl.int32) + 0x4B400000).to(tl.float32, bitcast=True)
            if MASK:
                bits = tl.where((n < seq)[None, :], bits, -float("inf"))
            b4 = tl.reshape(bits, [BLOCK_M, BLOCK_N // 8, 4, 2])  # key 8·g + 2·t + e: t is its lane group
            ks4 = tl.load(KS + bh * sp + start + 2 * tl.arange(0, 4))  # key 2·t stands for group t
            bmax = tl.max(tl.max(b4, axis=3), axis=1)
            m_new = tl.maximum(m_i, tl.max((bmax - 12582912.0) * ks4[None, :], axis=1))
            c1 = qs[:, None] * ks4[None, :]
            c0 = LOG2_448 - c1 * 12582912.0 - (qs * m_new)[:, None]
            p = tl.reshape(tl.math.exp2(b4 * c1[:, None, :, None] + c0[:, None, :, None]), [BLOCK_M, BLOCK_N])
            alpha = tl.math.exp2(qs * (m_i - m_new))
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(tl.float8e4nv), v, acc, max_num_imprecise_acc=PROMOTE)
        elif FAST:
            t = _scores(q, K8, KS, start, seq, sp, bh, desc_k, BLOCK_N, D, MASK, TMA)
            acc, l_i, m_new = _update(acc, l_i, m_i, t, qs, V8, start, sp, bh, desc_v, BLOCK_N, D, TMA,
                                      SUM_MMA, PROMOTE, POLY, SPLIT, FRESH)
        else:  # the plain form, kept to measure what the above saves
            n = start + tl.arange(0, BLOCK_N)
            k, v = _load_kv(K8, V8, start, sp, bh, desc_k, desc_v, BLOCK_N, D, TMA)
            ks = tl.load(KS + bh * sp + n)
            s = tl.dot(q, k.T, out_dtype=tl.int32).to(tl.float32) * qs[:, None] * ks[None, :]
            if MASK:
                s = tl.where((n < seq)[None, :], s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None]
            acc = tl.dot((p * 448.0).to(tl.float8e4nv), v, acc, max_num_imprecise_acc=PROMOTE)
        return acc, l_i, m_new

    @triton.jit
    def _attn_kernel(Q8, QS, K8, KS, V8, VS, OUT, seq, sp, H, so_b, so_s, so_h,
                     desc_q, desc_k, desc_v,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                     TMA: tl.constexpr, WS: tl.constexpr, FAST: tl.constexpr,
                     OVERLAP: tl.constexpr, SUM_MMA: tl.constexpr, PROMOTE: tl.constexpr,
                     POLY: tl.constexpr, SPLIT: tl.constexpr, FRESH: tl.constexpr, LANES: tl.constexpr):
        pid, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, D)
        if TMA:
            q = desc_q.load([bh * sp + pid * BLOCK_M, 0])
        else:
            q = tl.load(Q8 + (bh * sp + m[:, None]) * D + d[None, :])
        qs = tl.load(QS + bh * sp + m)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        if SUM_MMA:
            l_i = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
        else:
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
        full = (seq // BLOCK_N) * BLOCK_N
        if OVERLAP and full > 0:
            # issue the next block's Q·Kᵀ before this block's softmax, so that the tensor cores
            # work while the other units do exp2 (FlashAttention-3's intra-warpgroup overlap)
            t = _scores(q, K8, KS, 0, seq, sp, bh, desc_k, BLOCK_N, D, False, TMA)
            for start in tl.range(BLOCK_N, full, BLOCK_N, warp_specialize=WS):
                t_next = _scores(q, K8, KS, start, seq, sp, bh, desc_k, BLOCK_N, D, False, TMA)
                acc, l_i, m_i = _update(acc, l_i, m_i, t, qs, V8, start - BLOCK_N, sp, bh, desc_v, BLOCK_N, D, TMA,
                                       SUM_MMA, PROMOTE, POLY, SPLIT, FRESH)
                t = t_next
            acc, l_i, m_i = _update(acc, l_i, m_i, t, qs, V8, full - BLOCK_N, sp, bh, desc_v, BLOCK_N, D, TMA,
                                   SUM_MMA, PROMOTE, POLY, SPLIT, FRESH)
        else:
            for start in tl.range(0, full, BLOCK_N, warp_specialize=WS):
                acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, qs, K8, KS, V8, start, seq, sp, bh, desc_k, desc_v,
                                           BLOCK_M, BLOCK_N, D, LANES, False, TMA, FAST, SUM_MMA, PROMOTE, POLY, SPLIT,
                                           FRESH)
        if full < seq:
            acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, qs, K8, KS, V8, full, seq, sp, bh, desc_k, desc_v,
                                       BLOCK_M, BLOCK_N, D, LANES, True, TMA, FAST, SUM_MMA, PROMOTE, POLY, SPLIT,
                                       FRESH)
        vs = tl.load(VS + bh * D + d)
        if not FAST:
            vs = vs / 448.0
        if SUM_MMA:
            l_row = tl.sum(l_i, axis=1) / 16.0
        else:
            l_row = l_i
        out = acc / l_row[:, None] * vs[None, :]
        tl.store(OUT + b * so_b + h * so_h + m[:, None] * so_s + d[None, :], out.to(OUT.dtype.element_ty),
                 mask=(m < seq)[:, None])


def attention_quantized(x: Quantized, out: torch.Tensor, config: Config = DEFAULT) -> torch.Tensor:
    """Writes out [B, S, H, D] (any strides with D contiguous) from the 8-bit copies."""
    b, h, sp, d = x.q8.shape
    if PAD % config.block_m or PAD % config.block_n:
        raise ValueError(f"attention_quantized: tiles of {config.label()} must divide {PAD}")
    dq = dk = dv = None
    if config.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        dq = TensorDescriptor.from_tensor(x.q8.view(b * h * sp, d), [config.block_m, d])
        dk = TensorDescriptor.from_tensor(x.k8.view(b * h * sp, d), [config.block_n, d])
        dv = TensorDescriptor.from_tensor(x.v8.view(b * h * d, sp), [d, config.block_n])
    lanes = config.lane_fold
    if lanes and (x.k_block != "lanes" or not config.fast_convert or config.overlap or config.sum_fp8_p
                  or config.poly_exp2 or config.pv_fresh):
        raise ValueError(f"attention_quantized: lane_fold needs copies quantized with k_block='lanes' (got "
                         f"{x.k_block!r}) and the plain fast form (no overlap, sum_fp8_p, poly_exp2, pv_fresh)")
    grid = (math.ceil(x.seq / config.block_m), b * h)
    _attn_kernel[grid](x.q8, x.qs, x.k8, x.ks, x.v8, x.vs, out, x.seq, sp, h,
                       out.stride(0), out.stride(1), out.stride(2), dq, dk, dv,
                       BLOCK_M=config.block_m, BLOCK_N=config.block_n, D=d, TMA=config.tma, WS=config.warp_specialize,
                       FAST=config.fast_convert, OVERLAP=config.overlap and config.fast_convert,
                       SUM_MMA=config.sum_fp8_p and config.fast_convert,
                       PROMOTE=config.block_n if config.fp32_pv else None,
                       POLY=config.poly_exp2 if config.fast_convert else 0, SPLIT=config.poly_split(),
                       FRESH=config.pv_fresh and config.fast_convert, LANES=lanes,
                       num_warps=config.num_warps, num_stages=config.num_stages,
                       enable_fp_fusion=True)  # as measured: triton 3.10 turns the default off
    return out


def attention_8bit(q, k, v, scale: float | None = None, config: Config = DEFAULT, q_block: int = 1,
                   k_block: int | str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v on [B, S, H, D] tensors through the 8-bit path; returns q's dtype.
    k_block: quantize_qkv's (default: "lanes" for a lane_fold config, else 1, per token)."""
    if k_block is None:
        k_block = "lanes" if config.lane_fold else 1
    x = quantize_qkv(q, k, v, scale, q_block, k_block)
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return attention_quantized(x, out, config)
