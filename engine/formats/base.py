"""What every number format is: elements with one scale per block, and a registry of formats.

A format is data, not code paths: the element type, the block a weight scale covers, the block an
activation scale covers, and how the scale itself is stored. One generic quantizer serves all five.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..errors import FormatError

FULL = None  # a block dimension that spans the whole row


@dataclass
class Quantized:
    """A quantized 2-D tensor: stored elements, per-block scales, optional per-tensor global scale."""

    data: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor | None = None
    cols: int = 0  # logical number of columns (packed formats store fewer)


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    elem_max: float
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    weight_block: tuple[int, int | None]
    act_block: tuple[int, int | None]
    scale_kind: str = "fp32"  # "fp32" | "e8m0" (power of two, rounded up) | "e4m3" (with global scale)
    col_multiple: int = 1  # K must be a multiple of this
    amax_floor: float = 1e-12
    elem_bits: int = 8
    data_dtype: torch.dtype = torch.float8_e4m3fn
    scale_dtype: torch.dtype = torch.float32
    # ---- what the rest of the engine reads instead of keeping its own tables -----------------
    element: str = "e4m3"  # "int8" | "e4m3" | "e2m1": the stored element type
    # The activation quantizer its GEMMs consume: a row/group kind of ACT_KINDS ("int8_row", "fp8_row",
    # "fp8_g128"), "tensor" (one scale per tensor, a whole-tensor reduction) or "block" (MX/NV blocks).
    act_kind: str = "tensor"
    scheme_name: str = ""  # the short LightX2V scheme / --linear_type spelling; "" = the format name
    in_menu: bool = True  # offered in the UI's per-component scheme menus
    convertible: bool = True  # a --linear_type of `python -m engine.convert`
    # Reading files (engine/checkpoint/formats.py): inferred from a layer's tensors, or only when named
    # (fp8_tensor looks like per-tensor fp8); extra scale spellings beyond the scale grid: "unscaled" (no
    # scale: the values are the weights), "per_tensor" (one number broadcast to the grid, ComfyUI).
    inferred: bool = True
    file_scales: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The name users write (scheme, converter, UI menu)."""
        return self.scheme_name or self.name

    @property
    def block_scaled(self) -> bool:
        """MX/NV formats: one-byte block scales along K (swizzled in files, native GEMMs on Blackwell)."""
        return self.scale_kind != "fp32"

    # ---- shape and value checks -------------------------------------------------------------
    def check(self, t: torch.Tensor, what: str = "weight") -> None:
        if t.dim() != 2:
            raise FormatError(f"{self.name}: {what} must be 2-D, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise FormatError(f"{self.name}: {what} must be floating point, got {t.dtype}")
        if t.shape[1] % self.col_multiple:
            raise FormatError(
                f"{self.name}: {what} has {t.shape[1]} input features; this format needs a multiple of "
                f"{self.col_multiple}. Keep this layer in high precision or choose int8/fp8.")
        if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise FormatError(f"{self.name}: {what} contains NaN or Inf; fix the checkpoint before quantizing")

    # ---- quantize / dequantize --------------------------------------------------------------
    def quantize_weight(self, w: torch.Tensor) -> Quantized:
        self.check(w, "weight")
        return self._quantize(w.to(torch.float32), self.weight_block, None)

    def quantize_activation(self, x: torch.Tensor, global_scale: torch.Tensor | None = None) -> Quantized:
        """x: [M, K]. global_scale: a calibrated (static) one for formats that have it."""
        if x.shape[-1] % self.col_multiple:
            raise FormatError(f"{self.name}: activation width {x.shape[-1]} is not a multiple of {self.col_multiple}")
        return self._quantize(x.to(torch.float32), self.act_block, global_scale)

    def dequantize(self, q: Quantized, block: tuple[int, int | None]) -> torch.Tensor:
        vals = self.decode(q.data)
        scale = q.scale.to(torch.float32)
        if q.global_scale is not None:
            scale = scale / q.global_scale.to(torch.float32)
        return vals * expand_blocks(scale, block, vals.shape)

    def dequantize_weight(self, q: Quantized) -> torch.Tensor:
        return self.dequantize(q, self.weight_block)

    def dequantize_activation(self, q: Quantized) -> torch.Tensor:
        return self.dequantize(q, self.act_block)

    # ---- sizes ------------------------------------------------------------------------------
    def scale_shape(self, rows: int, cols: int, block) -> tuple[int, int]:
        br, bc = block
        br = max(rows, 1) if br is None else br
        return math.ceil(rows / br), (1 if bc is None else math.ceil(cols / bc))

    def data_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, cols * self.elem_bits // 8

    def weight_scale_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return self.scale_shape(rows, cols, self.weight_block)

    @property
    def has_global_scale(self) -> bool:
        return self.scale_kind == "e4m3"

    def _quantize(self, t: torch.Tensor, block, global_scale):
        rows, cols = t.shape
        amax = block_amax(t, block)
        gs = None
        if self.scale_kind == "e4m3":
            if global_scale is None:
                tmax = t.abs().amax() if t.numel() else t.new_ones(())  # empty input: any scale works
                global_scale = (self.elem_max * 448.0) / tmax.clamp(min=self.amax_floor)
            gs = torch.as_tensor(global_scale, dtype=torch.float32, device=t.device).reshape(1)
            scale = (amax / self.elem_max * gs).clamp(max=448.0).to(torch.float8_e4m3fn)
            real = scale.to(torch.float32) / gs
        elif self.scale_kind == "e8m0":
            exp = torch.ceil(torch.log2(amax.clamp(min=2.0 ** -127) / self.elem_max)).clamp(-127, 127)
            real = torch.exp2(exp)
            scale = real.to(torch.float8_e8m0fnu)
        else:
            scale = amax.clamp(min=self.amax_floor) / self.elem_max
            real = scale
        inv = torch.where(real > 0, 1.0 / real, torch.zeros_like(real))
        data = self.encode(t * expand_blocks(inv, block, (rows, cols)))
        return Quantized(data=data, scale=scale, global_scale=gs, cols=cols)


def block_amax(t: torch.Tensor, block) -> torch.Tensor:
    """Absolute max of each (br, bc) block; edge blocks may be partial."""
    rows, cols = t.shape
    br, bc = block
    br = max(rows, 1) if br is None else br
    bc = cols if bc is None else bc
    nr, nc = math.ceil(rows / br), math.ceil(cols / bc)
    padded = torch.nn.functional.pad(t.abs(), (0, nc * bc - cols, 0, nr * br - rows))
    return padded.view(nr, br, nc, bc).amax(dim=(1, 3))


def expand_blocks(scale: torch.Tensor, block, shape) -> torch.Tensor:
    rows, cols = shape
    br, bc = block
    br = max(rows, 1) if br is None else br
    bc = cols if bc is None else bc
    return scale.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]


class ActKind(NamedTuple):
    """A per-row (group == 0) or per-group activation quantizer the 8-bit GEMMs consume."""

    dtype: torch.dtype
    elem_max: float
    amax_floor: float
    group: int


FORMATS: dict[str, Format] = {}
ACT_KINDS: dict[str, ActKind] = {}  # filled from the formats that name a row/group act_kind


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    if fmt.act_kind not in ("tensor", "block"):
        ACT_KINDS[fmt.act_kind] = ActKind(fmt.data_dtype, fmt.elem_max, fmt.amax_floor, fmt.act_block[1] or 0)
    return fmt


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown number format {name!r}; known: {', '.join(sorted(FORMATS))}") from None
