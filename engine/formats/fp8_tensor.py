"""FP8 e4m3 with one scale per tensor for weights and for activations (LightX2V `fp8-pertensor`).

Coarser than per-channel and more prone to artifacts from outlier activations; offered because users
have configs that name it. Not a converter output (LightX2V's converter writes none) nor a UI choice.
"""
from .base import Format, register_format
from .elements import FP8_MAX, decode_e4m3, encode_e4m3

FP8_TENSOR = register_format(Format(
    name="fp8_tensor", description="FP8 e4m3 per-tensor weights and per-tensor dynamic activations",
    elem_max=FP8_MAX, encode=encode_e4m3, decode=decode_e4m3,
    weight_block=(None, None), act_block=(None, None), act_kind="tensor",
    scheme_name="fp8-pertensor", in_menu=False, convertible=False, inferred=False))
