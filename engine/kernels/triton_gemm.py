"""8-bit GEMM in Triton with the dequantization fused into the epilogue (or the main loop).

y[m, n] = sum_k a[m, k] * w[n, k] * sa[m] * sw[n] + bias[n], written once in bf16/fp16.
  - int8 x int8 -> int32 accumulators (sm80+), fp8 x fp8 -> fp32 accumulators (sm89+);
  - per-token / per-channel scales applied once in the epilogue, so there is no int32 [M, N]
    intermediate (torch._int_mm writes one, and the dequantization then reads it back);
  - BLOCKWISE: fp8 with 1x128 activation groups and 128x128 weight blocks (DeepSeek style): each
    128-wide K step is scaled as it is accumulated. Used where cuBLAS has no blockwise mode (sm89).
Both operands are K-major ([M, K] and [N, K] row-major), which is what 8-bit tensor-core
instructions need on Hopper, so the stored weight is used as is.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":  # CPU interpreter (tests): one small tile
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 2})]
    cfgs = []
    for bm, bn, bk, warps, stages in ((128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (256, 128, 128, 8, 3),
                                      (128, 128, 128, 8, 4), (128, 128, 128, 4, 4), (64, 128, 128, 4, 4),
                                      (128, 256, 64, 8, 4)):
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=warps, num_stages=stages))
    return cfgs


def _m_bucket(m: int) -> int:
    return 1 << max(4, (m - 1).bit_length())  # retune per power-of-two token count, not per exact M


if triton is not None:

    @triton.jit
    def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """This program's (row tile, column tile), in grouped order: GROUP_M row tiles share each
        weight tile while it is in L2."""
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        return first_m + (pid % group) % size_m, (pid % group) // size_m

    @triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "BLOCKWISE"])
    @triton.jit
    def _scaled_gemm_kernel(a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, bias_ptr, M, N, K, M_BUCKET,
                            stride_am, stride_wn, stride_cm, stride_sam, stride_sag, stride_swn, stride_swg,
                            HAS_BIAS: tl.constexpr, ACC_INT: tl.constexpr, BLOCKWISE: tl.constexpr,
                            EVEN_K: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr):
        pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        rm = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
        rn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
        a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + offs_k[None, :]
        w_ptrs = w_ptr + rn[None, :].to(tl.int64) * stride_wn + offs_k[:, None]

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if ACC_INT else tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:  # no tail: unmasked loads (and the CPU interpreter cannot mask fp8 loads)
                a = tl.load(a_ptrs)
                w = tl.load(w_ptrs)
            else:
                k_left = K - kb * BLOCK_K
                zero = 0 if ACC_INT else 0.0  # the fill value must cast to the element type
                a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=zero)
                w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=zero)
            if BLOCKWISE:  # BLOCK_K is 128 here: one activation group, one weight block along K
                sa = tl.load(sa_ptr + rm * stride_sam + kb * stride_sag)
                sw = tl.load(sw_ptr + (rn // 128) * stride_swn + kb * stride_swg)
                acc += tl.dot(a, w) * sa[:, None] * sw[None, :]
            elif ACC_INT:
                acc = tl.dot(a, w, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, w, acc)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K

        if BLOCKWISE:
            out = acc
        else:
            sa = tl.load(sa_ptr + rm * stride_sam)
            sw = tl.load(sw_ptr + rn * stride_swn)
            out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    def _tma_configs():
        cfgs = []
        for bm, bn, bk, warps, stages, group in TMA_CONFIGS:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                                      num_warps=warps, num_stages=stages, pre_hook=_set_tma_blocks))
        return cfgs

    def _set_tma_blocks(nargs):
        nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
        nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]

    @triton.jit
    def _tma_gemm(a_desc, w_desc, c_ptr, sa_ptr, sw_ptr, bias_ptr, M, N, K, M_BUCKET,
                       stride_cm, stride_sam, stride_swn,
                       HAS_BIAS: tl.constexpr, ACC_INT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
        """Per-row/per-column scaled GEMM whose operand tiles come in through TMA (Hopper's bulk
        tensor copy engine: no address arithmetic, out-of-range rows and K tails read as zeros)."""
        pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if ACC_INT else tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
            w = w_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
            if ACC_INT:
                acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, w.T, acc)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        sa = tl.load(sa_ptr + offs_m * stride_sam, mask=offs_m < M, other=0.0)
        sw = tl.load(sw_ptr + offs_n * stride_swn, mask=offs_n < N, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    # BLOCKWISE pins BLOCK_K to 128, the group size; autotune only picks among those configs.
    def _blockwise_configs():
        return [c for c in _configs() if c.kwargs["BLOCK_K"] == 128]


def scaled_gemm(a: torch.Tensor, w: torch.Tensor, sa: torch.Tensor, sw: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype, blockwise: bool = False) -> torch.Tensor:
    """a: [M, K] int8/fp8; w: [N, K] same dtype; sa: [M, 1] (or [M, K/128]); sw: [N, 1] (or
    [N/128, K/128]); bias: [N] or None. Returns [M, N] in out_dtype."""
    m, k = a.shape
    n = w.shape[0]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0:
        return c
    if blockwise:
        sa_strides, sw_strides = (sa.stride(0), sa.stride(1)), (sw.stride(0), sw.stride(1))
    else:
        sa_strides, sw_strides = (sa.stride(0), 0), (sw.stride(0), 0)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    if not blockwise and _tma_ok(a, w):
        block = [16, 16]  # the autotuner's pre-hook sets each config's tile shape
        _tma_kernel()[grid](TensorDescriptor.from_tensor(a, block), TensorDescriptor.from_tensor(w, block), c,
                            sa, sw, bias if bias is not None else c, m, n, k, _m_bucket(m),
                            c.stride(0), sa.stride(0), sw.stride(0),
                            HAS_BIAS=bias is not None, ACC_INT=a.dtype == torch.int8)
        return c
    kernel = _blockwise_kernel() if blockwise else _scaled_gemm_kernel
    kernel[grid](a, w, c, sa, sw, bias if bias is not None else c, m, n, k, _m_bucket(m),
                 a.stride(0), w.stride(0), c.stride(0), *sa_strides, *sw_strides,
                 HAS_BIAS=bias is not None, ACC_INT=a.dtype == torch.int8, BLOCKWISE=blockwise,
                 EVEN_K=k % 128 == 0)
    return c


_BLOCKWISE = None
_TMA = None
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M) for the TMA kernel
# (the fastest of a 13-config sweep at the 14B shapes on H100, bench/tune_int8.py, 2026-11-24)
TMA_CONFIGS = ((128, 256, 128, 8, 3, 8), (128, 256, 128, 8, 4, 8), (256, 128, 128, 8, 3, 8),
               (256, 128, 128, 8, 4, 8), (128, 256, 128, 8, 3, 16), (128, 128, 128, 8, 4, 8))
# WANQ_GEMM_TMA=0 keeps the pointer-based kernel on Hopper too
USE_TMA = os.environ.get("WANQ_GEMM_TMA", "1") != "0"


def _tma_ok(a, w) -> bool:
    """TMA path: Hopper or newer, a real GPU (not the interpreter), K-contiguous 16-byte-aligned
    operands (TMA's rules)."""
    if not USE_TMA or TensorDescriptor is None or os.environ.get("TRITON_INTERPRET") == "1" or not a.is_cuda:
        return False
    if torch.cuda.get_device_capability(a.device) < (9, 0):
        return False
    return all(t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
               for t in (a, w))


def _tma_kernel():
    """The TMA GEMM, autotuned (built on first use)."""
    global _TMA
    if _TMA is None:
        _TMA = triton.autotune(configs=_tma_configs(), key=["M_BUCKET", "N", "K", "ACC_INT"])(_tma_gemm)
    return _TMA


def _blockwise_kernel():
    """The same kernel, autotuned over BLOCK_K == 128 configs only (built on first use)."""
    global _BLOCKWISE
    if _BLOCKWISE is None:
        _BLOCKWISE = triton.autotune(configs=_blockwise_configs(), key=["M_BUCKET", "N", "K", "BLOCKWISE"])(
            _scaled_gemm_kernel.fn)
    return _BLOCKWISE
