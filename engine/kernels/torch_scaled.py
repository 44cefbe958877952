"""cuBLAS through torch: `torch._scaled_mm` for the FP8 formats, `torch._int_mm` for int8.

fp8          row-wise scaling (activation [M,1], weight [1,N]) with the bias in cuBLAS's epilogue.
fp8_block128 blockwise scaling (activation 1x128, weight 128x128), a cuBLAS mode of sm90 and newer.
fp8_tensor   tensor-wise scaling; its activation amax needs a whole-tensor reduction, done in torch.
int8         `torch._int_mm` writes int32 [M, N]; the dequantization is a second pass (the Triton
             kernel fuses it, and wins where it is faster).
The weight is used as stored: [N, K] row-major is the column-major [K, N] operand cuBLAS wants.
"""
from __future__ import annotations

import torch

from ..formats import get_format
from .base import needs_cuda, register_kernel
from .eightbit import EightBitKernel, layer_cache, pad_rows

FP8_FORMATS = ("fp8", "fp8_block128", "fp8_tensor")
# Row-wise FP8: let the tensor cores accumulate at their native precision instead of promoting to
# fp32 every few K steps. Faster; its error is far below fp8 rounding (the bench measures both).
FAST_ACCUM = True


class TorchScaledKernel(EightBitKernel):
    name = "torch"
    formats = frozenset(FP8_FORMATS + ("int8",))

    def rank(self, fmt, device=None, layer=None):
        return 10 if fmt == "int8" else 30  # cuBLAS FP8: the fastest FP8 GEMM we have, except see triton

    def can_implement(self, fmt, capability, shape=None):
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        if fmt == "int8":
            why = needs_cuda(capability, (8, 0), "torch._int_mm")
        elif fmt == "fp8_block128":
            why = needs_cuda(capability, (9, 0), "cuBLAS blockwise FP8 scaling")
        else:
            why = needs_cuda(capability, (8, 9), "FP8 tensor cores")
        if why or shape is None:
            return why
        k, n = shape
        if k % 16 or n % 16:
            return f"cuBLAS 8-bit GEMMs need in/out features that are multiples of 16; this layer is {k}->{n}"
        if fmt == "fp8_block128" and k % 512:
            # cuBLAS reads the weight's K-block scales with a leading dimension padded to 4 blocks;
            # measured on H100: K = 8960 (70 blocks) gave garbage, so such layers go to Triton
            return f"cuBLAS blockwise scaling needs in_features a multiple of 512 (4 blocks of 128); this layer has {k}"
        return None

    def act_kind(self, layer):
        return None if layer.fmt == "fp8_tensor" else super().act_kind(layer)

    def prepare(self, layer):
        cache = layer_cache(layer)
        n = layer.out_features
        cache["bias"] = layer.bias.detach().to(torch.bfloat16) if layer.bias is not None else None
        if layer.fmt == "fp8_block128":
            cache["w_scale"] = layer.weight_scale.float().t()  # [K/128, N/128], as the [K, N] operand's
        elif layer.fmt == "fp8_tensor":
            cache["w_scale"] = layer.weight_scale.float().reshape(())
        else:
            cache["w_scale"] = layer.weight_scale.float().reshape(1, n)

    def forward(self, layer, x):
        if layer.fmt == "fp8_tensor":
            q = get_format("fp8_tensor").quantize_activation(x)
            rows = -(-x.shape[0] // 16) * 16
            cache = layer_cache(layer)
            y = torch._scaled_mm(pad_rows(q.data, rows), layer.weight.t(), q.scale.reshape(()),
                                 cache["w_scale"], bias=cache["bias"], out_dtype=torch.bfloat16)
            return y[:x.shape[0]].to(x.dtype)
        return super().forward(layer, x)

    def forward_quantized(self, layer, q, s, rows, out_dtype=torch.bfloat16):
        cache = layer_cache(layer)
        w = layer.weight.t()
        if layer.fmt == "int8":
            if q.shape[0] <= 16:  # _int_mm refuses 16 rows or fewer
                q, s = pad_rows(q, 32), pad_rows(s, 32)
            acc = torch._int_mm(q, w)
            y = acc[:rows].float() * s[:rows] * cache["w_scale"]
            if cache["bias"] is not None:
                y += cache["bias"].float()
            return y.to(out_dtype)
        fast = FAST_ACCUM and layer.fmt == "fp8"  # cuBLAS refuses fast accumulation with blockwise scales
        bias = cache["bias"]
        if bias is not None and cache.get("bias_in_epilogue", True):
            try:
                y = torch._scaled_mm(q, w, s, cache["w_scale"], bias=bias, out_dtype=torch.bfloat16,
                                     use_fast_accum=fast)
                return y[:rows].to(out_dtype)
            except RuntimeError:  # some scaling modes take no bias: add it after, and remember
                cache["bias_in_epilogue"] = False
        y = torch._scaled_mm(q, w, s, cache["w_scale"], out_dtype=torch.bfloat16, use_fast_accum=fast)
        if bias is not None:
            y += bias
        return y[:rows].to(out_dtype)


register_kernel(TorchScaledKernel())
