"""MXFP8 (OCP microscaling): e4m3 elements, one power-of-two (e8m0) scale per 32 along K.

The scale is rounded up to the next power of two so that no element overflows e4m3.
"""
import torch

from .base import Format, register_format
from .elements import FP8_MAX, decode_e4m3, encode_e4m3

MXFP8 = register_format(Format(
    name="mxfp8", description="MXFP8: e4m3 elements, e8m0 scale per 32 along K",
    elem_max=FP8_MAX, encode=encode_e4m3, decode=decode_e4m3,
    weight_block=(1, 32), act_block=(1, 32), scale_kind="e8m0", col_multiple=32,
    scale_dtype=torch.float8_e8m0fnu, act_kind="block"))
