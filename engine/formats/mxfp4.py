"""MXFP4 (OCP microscaling): packed e2m1 elements, one e8m0 scale per 32 along K (LightX2V `mxfp4`).

Loaded and converted; not offered in the UI's per-component menus."""
import torch

from .base import Format, register_format
from .elements import E2M1_MAX, pack_e2m1, unpack_e2m1

MXFP4 = register_format(Format(
    name="mxfp4", description="MXFP4: packed e2m1 elements, e8m0 scale per 32 along K",
    elem_max=E2M1_MAX, encode=pack_e2m1, decode=unpack_e2m1,
    weight_block=(1, 32), act_block=(1, 32), scale_kind="e8m0", col_multiple=32, elem_bits=4,
    data_dtype=torch.uint8, scale_dtype=torch.float8_e8m0fnu, element="e2m1", act_kind="block",
    in_menu=False))
