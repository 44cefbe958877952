"""The quantize launches of the cuDNN FP8 attention path: q, k, v [B, S, H, D] -> e4m3 copies with one
scale per tensor, K smoothed by its per-channel token mean (engine/attention/reference.py's
`fp8_tensor_reference` defines the numerics).

Two Triton launches and a few tiny torch ops, no host synchronisation:
  1. statistics per (batch·head, chunk of tokens): K's channel sums, maxima and minima, |Q| and |V|
     channel maxima. The per-tensor amax of the smoothed K is then exact without a second pass:
     max |k − mean| over tokens and channels = max over channels of (max k − mean, mean − min k)
     (rounding to float32 is monotone, so this holds for the float32 values the kernel writes);
  2. one program per 128 tokens of one (batch, head) writes q8, k8 (smoothed), v8 in [B, S, H, D]
     (contiguous), the layout the cuDNN graph is declared with.
Scales stay on the GPU as a float32 [3, 4] tensor (q, k, v: amax / 448) that cuDNN reads as descales.
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

FP8_MAX = 448.0
TOKENS = 128  # tokens per program of the quantize kernel
CHUNK = 1024  # tokens per program of the statistics kernel


@dataclass
class Fp8Tensors:
    q8: torch.Tensor  # e4m3 [B, S, H, D] contiguous
    k8: torch.Tensor  # e4m3, of the smoothed k
    v8: torch.Tensor  # e4m3
    scales: torch.Tensor  # float32 [3, 4]: q, k, v scales (amax / 448) in column 0; cuDNN's descales
    # (one row per scale so that each scalar cuDNN reads starts on a 16-byte boundary)
    k_mean: torch.Tensor  # float32 [B·H, D], kept for tests


if triton is not None:
    @triton.jit
    def _fp8qkv_stats_kernel(Q, K, V, STATS, seq, H, sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
                      CHUNK: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr):
        """STATS[bh, chunk] = [K sum, K max, K min, |Q| max, |V| max], each [D] float32."""
        bh, c = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        d = tl.arange(0, D)
        ksum = tl.zeros([D], dtype=tl.float32)
        kmax = tl.full([D], -float("inf"), dtype=tl.float32)
        kmin = tl.full([D], float("inf"), dtype=tl.float32)
        qmax = tl.zeros([D], dtype=tl.float32)
        vmax = tl.zeros([D], dtype=tl.float32)
        for r in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, seq), ROWS):
            s = r + tl.arange(0, ROWS)
            ok = (s < seq)[:, None]
            k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
            q = tl.load(Q + b * sq_b + h * sq_h + s[:, None] * sq_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
            v = tl.load(V + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
            ksum += tl.sum(k, axis=0)
            kmax = tl.maximum(kmax, tl.max(tl.where(ok, k, -float("inf")), axis=0))
            kmin = tl.minimum(kmin, tl.min(tl.where(ok, k, float("inf")), axis=0))
            qmax = tl.maximum(qmax, tl.max(tl.abs(q), axis=0))
            vmax = tl.maximum(vmax, tl.max(tl.abs(v), axis=0))
        base = STATS + (bh * tl.num_programs(1) + c) * 5 * D + d
        tl.store(base, ksum)
        tl.store(base + D, kmax)
        tl.store(base + 2 * D, kmin)
        tl.store(base + 3 * D, qmax)
        tl.store(base + 4 * D, vmax)

    @triton.jit
    def _to_fp8(x, scale):
        y = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        return y.to(tl.float8e4nv)

    @triton.jit
    def _fp8qkv_quant_kernel(Q, K, V, KMEAN, SCALES, Q8, K8, V8, seq, H,
                      sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
                      TOKENS: tl.constexpr, D: tl.constexpr):
        blk, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        d = tl.arange(0, D)
        s = blk * TOKENS + tl.arange(0, TOKENS)
        ok = (s < seq)[:, None]
        out = ((b * seq + s[:, None]) * H + h) * D + d[None, :]  # [B, S, H, D] contiguous
        sq = tl.load(SCALES)
        sk = tl.load(SCALES + 4)
        sv = tl.load(SCALES + 8)
        q = tl.load(Q + b * sq_b + h * sq_h + s[:, None] * sq_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(Q8 + out, _to_fp8(q, sq), mask=ok)
        kmean = tl.load(KMEAN + bh * D + d)
        k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(K8 + out, _to_fp8(k - kmean[None, :], sk), mask=ok)
        v = tl.load(V + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(V8 + out, _to_fp8(v, sv), mask=ok)


def fp8_stats(q, k, v):
    """(k_mean [B·H, D], amax [3] of q, smoothed k, v), float32 on q's device."""
    b, seq, h, d = q.shape
    chunks = math.ceil(seq / CHUNK)
    stats = torch.empty(b * h, chunks, 5, d, device=q.device, dtype=torch.float32)
    _fp8qkv_stats_kernel[(b * h, chunks)](q, k, v, stats, seq, h, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
                                   CHUNK=CHUNK, ROWS=32, D=d, num_warps=4)
    k_mean = stats[:, :, 0].sum(dim=1) / seq
    k_amax = torch.maximum(stats[:, :, 1].amax(dim=1) - k_mean, k_mean - stats[:, :, 2].amin(dim=1)).amax()
    amax = torch.stack((stats[:, :, 3].amax(), k_amax, stats[:, :, 4].amax()))
    return k_mean.contiguous(), amax


def quantize_fp8(q, k, v) -> Fp8Tensors:
    """q, k, v [B, S, H, D] bf16/fp16 (D contiguous, any other strides) -> e4m3 copies and scales."""
    b, seq, h, d = q.shape
    if seq == 0 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"quantize_fp8: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} not supported")
    k_mean, amax = fp8_stats(q, k, v)
    amax = amax[:, None].expand(3, 4)
    scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).contiguous()
    q8 = torch.empty(b, seq, h, d, device=q.device, dtype=torch.float8_e4m3fn)
    k8, v8 = torch.empty_like(q8), torch.empty_like(q8)
    _fp8qkv_quant_kernel[(math.ceil(seq / TOKENS), b * h)](
        q, k, v, k_mean, scales, q8, k8, v8, seq, h, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        TOKENS=TOKENS, D=d, num_warps=4)
    return Fp8Tensors(q8, k8, v8, scales, k_mean)
