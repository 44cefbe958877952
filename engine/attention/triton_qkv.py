"""The quantize launch of our 8-bit attention: q, k, v [B, S, H, D] -> INT8 q/k, FP8 v.

Numerics are engine/attention/reference.py's: K smoothed by its per-channel mean over tokens,
INT8 with round-half-away and one scale per token (or per block of tokens, or, for K, per lane
group: reference.quantize_int8_lanes, the sage8 recipe), V in FP8 e4m3 with
one scale per channel. Two kernels: per-chunk K channel sums and V channel maxima (reduced in
torch: a few KB), then one program per 128 tokens of one head that writes all three copies.
Layouts of the copies: q8, k8 [B, H, Sp, D] and v8 transposed [B, H, D, Sp], Sp = S padded to
a multiple of 128 with zeros (Hopper's FP8 matrix instruction reads its B operand with the
reduction dimension, tokens, contiguous). Q's scales carry softmax's scale and log2(e), so the
attention kernel uses exp2 directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the registry reports it
    triton = None

LOG2E = 1.4426950408889634
P_SCALE = 448.0
LOG2_P_SCALE = math.log2(P_SCALE)  # the attention kernels put P's FP8 scale in the exponent
PAD = 128  # token padding of the 8-bit copies: a multiple of every BLOCK_M / BLOCK_N we use
QUANT_TOKENS = 128  # tokens per program of the quantize kernel


@dataclass
class Quantized:
    q8: torch.Tensor  # int8 [B, H, Sp, D]
    qs: torch.Tensor  # fp32 [B, H, Sp] per token: amax/127 · softmax scale · log2(e)
    k8: torch.Tensor  # int8 [B, H, Sp, D] of the smoothed k
    ks: torch.Tensor  # fp32 [B, H, Sp] per token
    v8: torch.Tensor  # fp8 e4m3 [B, H, D, Sp]
    vs: torch.Tensor  # fp32 [B, H, D]: amax/448
    seq: int
    k_block: int | str = 1  # what the K scales were computed over (quantize_qkv's k_block)


if triton is not None:
    @triton.jit
    def _qkv_stats_kernel(K, V, KSUM, VMAX, seq, H, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
                      CHUNK: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr):
        """Per (batch·head, chunk of tokens): K's channel sums and V's channel |max|."""
        bh, c = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        d = tl.arange(0, D)
        ksum = tl.zeros([D], dtype=tl.float32)
        vmax = tl.zeros([D], dtype=tl.float32)
        for r in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, seq), ROWS):
            s = r + tl.arange(0, ROWS)
            ok = (s < seq)[:, None]
            k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :], mask=ok, other=0.0)
            v = tl.load(V + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :], mask=ok, other=0.0)
            ksum += tl.sum(k.to(tl.float32), axis=0)
            vmax = tl.maximum(vmax, tl.max(tl.abs(v.to(tl.float32)), axis=0))
        n = tl.num_programs(1)
        tl.store(KSUM + (bh * n + c) * D + d, ksum)
        tl.store(VMAX + (bh * n + c) * D + d, vmax)

    @triton.jit
    def _round_i8(x):
        return tl.where(x >= 0, x + 0.5, x - 0.5).to(tl.int8)  # the cast truncates toward zero

    @triton.jit
    def _int8_rows(x, ROWWISE: tl.constexpr):
        """INT8 values and per-row scales [R] of a [R, D] float tile: one scale per row, or one for
        the whole tile (broadcast to every row)."""
        amax = tl.max(tl.abs(x), axis=1)
        if not ROWWISE:
            amax = tl.zeros_like(amax) + tl.max(amax, axis=0)
        scale = tl.where(amax > 0, amax / 127.0, 1.0)
        return _round_i8(x / scale[:, None]), scale

    @triton.jit
    def _qkv_quant_kernel(Q, K, V, KMEAN, VSCALE, Q8, QS, K8, KS, V8, seq, sp, H, q_scale,
                      sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
                      BQ: tl.constexpr, BK: tl.constexpr, QROW: tl.constexpr, D: tl.constexpr):
        """One block of BQ tokens of one (batch, head): q8 (scales per token or per BQ tokens),
        k8 of the smoothed k (per token, per BK tokens when BK > 1, per lane group when BK == 0), v8 transposed. Scales
        are stored per token either way, so the attention kernel reads one layout. Rows past
        `seq` are written as zeros."""
        blk, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        d = tl.arange(0, D)
        s = blk * BQ + tl.arange(0, BQ)
        ok = (s < seq)[:, None]
        q = tl.load(Q + b * sq_b + h * sq_h + s[:, None] * sq_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
        q8, qscale = _int8_rows(q, QROW)
        tl.store(Q8 + (bh * sp + s[:, None]) * D + d[None, :], q8)
        tl.store(QS + bh * sp + s, qscale * q_scale)
        kmean = tl.load(KMEAN + bh * D + d)
        if BK == 1:
            k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :], mask=ok, other=0.0)
            k8, kscale = _int8_rows(tl.where(ok, k.to(tl.float32) - kmean[None, :], 0.0), True)
            tl.store(K8 + (bh * sp + s[:, None]) * D + d[None, :], k8)
            tl.store(KS + bh * sp + s, kscale)
        elif BK == 0:  # lane groups (reference.lane_group): token n's group is (n % 8) // 2 of its block
            k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :], mask=ok, other=0.0)
            k = tl.where(ok, k.to(tl.float32) - kmean[None, :], 0.0)
            amax = tl.reshape(tl.max(tl.abs(k), axis=1), [BQ // 8, 4, 2])
            amax = tl.max(tl.max(amax, axis=2), axis=0)  # [4]
            amax = tl.reshape(tl.broadcast_to(amax[None, :, None], [BQ // 8, 4, 2]), [BQ])
            kscale = tl.where(amax > 0, amax / 127.0, 1.0)
            tl.store(K8 + (bh * sp + s[:, None]) * D + d[None, :], _round_i8(k / kscale[:, None]))
            tl.store(KS + bh * sp + s, kscale)
        else:
            for part in tl.static_range(BQ // BK):
                sk = blk * BQ + part * BK + tl.arange(0, BK)
                okk = (sk < seq)[:, None]
                k = tl.load(K + b * sk_b + h * sk_h + sk[:, None] * sk_s + d[None, :], mask=okk, other=0.0)
                k8, kscale = _int8_rows(tl.where(okk, k.to(tl.float32) - kmean[None, :], 0.0), False)
                tl.store(K8 + (bh * sp + sk[:, None]) * D + d[None, :], k8)
                tl.store(KS + bh * sp + sk, kscale)
        v = tl.load(V + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
        vscale = tl.load(VSCALE + bh * D + d)
        v8 = (v / vscale[None, :]).to(tl.float8e4nv)
        tl.store(V8 + (bh * D + d[None, :]) * sp + s[:, None], v8)


def quantize_qkv(q, k, v, scale: float | None = None, q_block: int = 1, k_block: int | str = 1) -> Quantized:
    """q, k, v [B, S, H, D] (D contiguous; any other strides) -> the 8-bit copies the kernel reads.

    q_block: tokens of Q per scale, 1 or 128; k_block: tokens of K per scale, 1 or a divisor of 128,
    or "lanes": one scale per lane group (reference.quantize_int8_lanes), stored per token."""
    b, seq, h, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    if k_block == "lanes":
        bk = 0  # the kernel's BK for lane groups
    elif isinstance(k_block, int) and not isinstance(k_block, bool) and k_block >= 1:
        bk = k_block
    else:
        raise ValueError(f"quantize_qkv: k_block {k_block!r}: a token count or 'lanes'")
    if seq == 0 or q_block not in (1, QUANT_TOKENS) or (bk and QUANT_TOKENS % bk):
        raise ValueError(f"quantize_qkv: seq {seq}, q_block {q_block}, k_block {k_block} not supported")
    sp = math.ceil(seq / PAD) * PAD
    dev = q.device
    chunk = 1024
    chunks = math.ceil(seq / chunk)
    ksum = torch.empty(b * h, chunks, d, device=dev, dtype=torch.float32)
    vmax = torch.empty_like(ksum)
    _qkv_stats_kernel[(b * h, chunks)](k, v, ksum, vmax, seq, h, *k.stride()[:3], *v.stride()[:3],
                                   CHUNK=chunk, ROWS=64, D=d, num_warps=4)
    kmean = (ksum.sum(dim=1) / seq).contiguous()
    vscale = vmax.amax(dim=1)
    vscale = torch.where(vscale > 0, vscale / P_SCALE, torch.ones_like(vscale)).contiguous()
    q8 = torch.empty(b, h, sp, d, device=dev, dtype=torch.int8)
    k8 = torch.empty_like(q8)
    v8 = torch.empty(b, h, d, sp, device=dev, dtype=torch.float8_e4m3fn)
    qs = torch.empty(b, h, sp, device=dev, dtype=torch.float32)
    ks = torch.empty_like(qs)
    _qkv_quant_kernel[(sp // QUANT_TOKENS, b * h)](
        q, k, v, kmean, vscale, q8, qs, k8, ks, v8, seq, sp, h, scale * LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        BQ=QUANT_TOKENS, BK=bk, QROW=q_block == 1, D=d, num_warps=4)
    return Quantized(q8, qs, k8, ks, v8, vscale.view(b, h, d), seq, k_block)


