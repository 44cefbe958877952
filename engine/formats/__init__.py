"""Number formats, pure torch: quantize weights and activations, dequantize. Runs on CPU and GPU.

Each format file declares its layout once (engine/formats/base.py's Format); the kernels, the checkpoint
readers, the converter's choices and the UI's menus read it from here. Import order is menu order.
"""
from .base import ACT_KINDS, FORMATS, ActKind, Format, Quantized, get_format, register_format
from .fp8 import FP8
from .int8 import INT8
from .fp8_block import FP8_BLOCK
from .fp8_tensor import FP8_TENSOR
from .mxfp8 import MXFP8
from .nvfp4 import NVFP4
from .mxfp4 import MXFP4

__all__ = ["ACT_KINDS", "ActKind", "FORMATS", "Format", "Quantized", "get_format", "register_format",
           "INT8", "FP8", "FP8_BLOCK", "FP8_TENSOR", "MXFP8", "MXFP4", "NVFP4"]
