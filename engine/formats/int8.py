"""INT8, symmetric per output channel; activations symmetric per token (LightX2V's int8)."""
import torch

from .base import FULL, Format, register_format
from .elements import decode_int8, encode_int8

INT8 = register_format(Format(
    name="int8", description="INT8 per-channel weights, per-token dynamic activations",
    elem_max=127.0, encode=encode_int8, decode=decode_int8,
    weight_block=(1, FULL), act_block=(1, FULL), amax_floor=1e-5, data_dtype=torch.int8,
    element="int8", act_kind="int8_row"))
