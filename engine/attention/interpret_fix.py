"""Correct FP8 rounding for Triton's CPU interpreter (TRITON_INTERPRET=1), for checks and --tiny runs.

Why: the interpreter's float32 -> fp8 e4m3 cast (triton.runtime.interpreter._convert_float, seen
in triton 3.9) rounds the mantissa up without carrying into the exponent, so 7.9 becomes 4 and
125.9 becomes 64, where the GPU's cvt gives 8 and 128. About 6% of P and V values land in that
case, which would swamp the kernel's real error. This replaces only that one conversion with
torch's round-to-nearest-even one; everything else stays the interpreter's.
"""
from __future__ import annotations

import numpy as np
import torch


def install() -> bool:
    """Patch the interpreter (no-op when it is not importable); returns whether it patched."""
    try:
        import triton.language as tl
        import triton.runtime.interpreter as interp
    except ImportError:
        return False
    if getattr(interp._convert_float, "_fp8_fixed", False):
        return True
    original = interp._convert_float

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if output_dtype == tl.float8e4nv and input_dtype in (tl.float32, tl.float16, tl.bfloat16):
            x = torch.from_numpy(np.ascontiguousarray(input).astype(np.float32))
            return x.to(torch.float8_e4m3fn).view(torch.uint8).numpy().reshape(input.shape)
        return original(input, input_dtype, output_dtype, rounding_mode)

    convert._fp8_fixed = True
    interp._convert_float = convert
    return True
