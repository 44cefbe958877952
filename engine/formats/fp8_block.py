"""FP8 e4m3 with 128x128 weight blocks and 1x128 activation groups (DeepSeek-style).

Edge blocks may be partial: a scale covers whatever part of its block exists, as in LightX2V's
ceil-sized scale grid.
"""
from .base import Format, register_format
from .elements import FP8_MAX, decode_e4m3, encode_e4m3

FP8_BLOCK = register_format(Format(
    name="fp8_block128", description="FP8 e4m3 128x128 weight blocks, 1x128 activation groups",
    elem_max=FP8_MAX, encode=encode_e4m3, decode=decode_e4m3,
    weight_block=(128, 128), act_block=(1, 128), act_kind="fp8_g128",
    scheme_name="fp8-block128"))
