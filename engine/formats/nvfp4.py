"""NVFP4: e2m1 elements packed two per byte, one e4m3 scale per 16 along K, fp32 global scale.

Global scale = 6*448/amax, so the largest block scale lands on e4m3's largest value. Activations take
a dynamic global scale, or a static one from calibration (LightX2V's input_global_scale).
"""
import torch

from .base import Format, register_format
from .elements import E2M1_MAX, pack_e2m1, unpack_e2m1

NVFP4 = register_format(Format(
    name="nvfp4", description="NVFP4: packed e2m1 elements, e4m3 scale per 16 along K, global fp32 scale",
    elem_max=E2M1_MAX, encode=pack_e2m1, decode=unpack_e2m1,
    weight_block=(1, 16), act_block=(1, 16), scale_kind="e4m3", col_multiple=16, elem_bits=4,
    data_dtype=torch.uint8, scale_dtype=torch.float8_e4m3fn, element="e2m1", act_kind="block"))
