"""FP8 e4m3, symmetric per output channel; activations per token."""
from .base import FULL, Format, register_format
from .elements import FP8_MAX, decode_e4m3, encode_e4m3

FP8 = register_format(Format(
    name="fp8", description="FP8 e4m3 per-channel weights, per-token dynamic activations",
    elem_max=FP8_MAX, encode=encode_e4m3, decode=decode_e4m3,
    weight_block=(1, FULL), act_block=(1, FULL), act_kind="fp8_row",
    file_scales=("unscaled", "per_tensor")))
