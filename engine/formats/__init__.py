"""Number formats, pure torch: quantize weights and activations, dequantize. Runs on CPU and GPU."""
from .base import FORMATS, Format, Quantized, get_format, register_format
from .fp8 import FP8
from .fp8_block import FP8_BLOCK
from .fp8_tensor import FP8_TENSOR
from .int8 import INT8
from .mxfp4 import MXFP4
from .mxfp8 import MXFP8
from .nvfp4 import NVFP4

__all__ = ["FORMATS", "Format", "Quantized", "get_format", "register_format",
           "INT8", "FP8", "FP8_BLOCK", "FP8_TENSOR", "MXFP8", "MXFP4", "NVFP4"]
