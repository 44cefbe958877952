"""The registry's `triton_mx` kernel: MXFP8, MXFP4 and NVFP4 emulated on GPUs without block-scaled
tensor cores (triton_mx.py has the Triton code and says how). Slower than bf16; on Blackwell the
native GEMM (torch_mx.py) ranks above it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import FORMATS
from . import triton_mx
from .base import Kernel, needs_cuda, register_kernel
from .triton_quant import MAX_ROW


class TritonMXKernel(Kernel):
    name = "triton_mx"
    # block-scaled formats of the elements its Triton code rounds to (e4m3, e2m1)
    formats = frozenset(n for n, f in FORMATS.items() if f.block_scaled and f.element in triton_mx.ELEMENT_MAX)
    priority = 5
    native = False  # a bf16 GEMM on the format's values

    def can_implement(self, fmt, capability, shape=None):
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        if triton_mx.triton is None:
            return "triton is not installed (pip install triton)"
        # Its Triton code reads and writes float8 e4m3 (MXFP8 elements, NVFP4 scales), which Triton
        # supports from sm89; it was built and tested on FP8-capable GPUs only.
        why = needs_cuda(capability, (8, 9), "the MX/NVFP4 emulation (Triton float8)")
        if why or shape is None:
            return why
        if shape[0] > MAX_ROW:
            return f"rows of at most {MAX_ROW} features; this layer has {shape[0]}"
        return None

    def forward(self, layer, x):
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        xq = triton_mx.fake_quantize(x, layer.fmt, layer.static_input_scale(), dtype)
        w = triton_mx.unpack_weight(layer, dtype)
        bias = layer.bias.to(dtype) if layer.bias is not None else None
        return F.linear(xq, w, bias).to(x.dtype)


register_kernel(TritonMXKernel())
