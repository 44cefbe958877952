"""The registry's `triton` kernel: int8 / fp8 / fp8_block128 through our Triton GEMM (triton_gemm.py),
the activation quantized by our Triton quantizer (triton_quant.py)."""
from __future__ import annotations

import torch

from . import base, triton_gemm
from .base import needs_cuda, register_kernel
from .eightbit import MAX_ROW, EightBitKernel, layer_cache, ops

FP8_TRITON_MIN_WEIGHTS = 50_000_000  # between 14B's 5120x5120 (26M) and its FFN (71M)


class TritonGemmKernel(EightBitKernel):
    name = "triton"
    formats = frozenset({"int8", "fp8", "fp8_block128"})

    def rank(self, fmt, device=None, layer=None):
        if fmt == "fp8" and layer is not None and self.beats_cublas_fp8(device, layer):
            return 35
        return 20  # above torch for int8 (fused epilogue), below cuBLAS for FP8

    @staticmethod
    def beats_cublas_fp8(device, layer) -> bool:
        """Hopper's TMA kernel outran cuBLAS's row-wise FP8 GEMM on the 14B FFN layers (5120x13824
        and 13824x5120: 2-8% in two interleaved H100 runs, docs/benchmarks.md), tied on 5120x5120
        and lost on 1.3B's smaller layers; so: large layers only, where the TMA kernel runs."""
        cap = base.cuda_capability(torch.device(device)) if device is not None else None
        return (triton_gemm.USE_TMA and triton_gemm.TensorDescriptor is not None and cap is not None
                and cap[0] == 9 and layer.in_features * layer.out_features >= FP8_TRITON_MIN_WEIGHTS)

    def can_implement(self, fmt, capability, shape=None):
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        if triton_gemm.triton is None or ops is None:
            return "triton is not installed (pip install triton)"
        why = needs_cuda(capability, (8, 0) if fmt == "int8" else (8, 9),
                         "int8 tensor cores" if fmt == "int8" else "FP8 tensor cores")
        if why or shape is None:
            return why
        if shape[0] > MAX_ROW:
            return f"the fused activation quantizer holds rows of at most {MAX_ROW} features; this layer has {shape[0]}"
        return None

    def prepare(self, layer):
        cache = layer_cache(layer)
        cache["bias"] = layer.bias.detach() if layer.bias is not None else None
        cache["w_scale"] = layer.weight_scale.float().contiguous()

    def forward_quantized(self, layer, q, s, rows, out_dtype=torch.bfloat16):
        cache = layer_cache(layer)
        y = ops.scaled_gemm(q, layer.weight, s, cache["w_scale"], cache["bias"], out_dtype,
                            layer.fmt == "fp8_block128")
        return y[:rows]


register_kernel(TritonGemmKernel())
