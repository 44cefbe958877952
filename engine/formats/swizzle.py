"""The 128x4 tiled scale layout of cuBLAS / CUTLASS block-scaled GEMMs (MXFP8, MXFP4, NVFP4).

LightX2V stores MX and NV block scales in the layout its GEMM consumes: the [rows, blocks] scale
matrix padded to [roundup(rows, 128), roundup(blocks, 4)], cut into 128x4 tiles stored one after
another (row of tiles by row of tiles), and inside each tile the element (r, c) sits at
(r % 32) * 16 + (r // 32) * 4 + c. The flat result is kept as a 2-D [padded rows, padded cols]
tensor. QuantLinear keeps scales unswizzled ([rows, blocks]); files are converted at load and save.
"""
from __future__ import annotations

import torch

TILE_ROWS, TILE_COLS = 128, 4


def roundup(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    return roundup(rows, TILE_ROWS), roundup(cols, TILE_COLS)


def swizzle(scale: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> [roundup(rows,128), roundup(cols,4)] in tile order; padding is zero."""
    rows, cols = scale.shape
    prow, pcol = swizzled_shape(rows, cols)
    raw = _as_bytes(scale)
    padded = torch.zeros((prow, pcol), dtype=raw.dtype, device=scale.device)
    padded[:rows, :cols] = raw
    # [tile_r, 4 (r//32), 32 (r%32), tile_c, 4 (c)] -> [tile_r, tile_c, r%32, r//32, c]
    tiles = padded.view(prow // 128, 4, 32, pcol // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(prow, pcol).view(scale.dtype)


def unswizzle(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of swizzle: the [rows, cols] scale matrix, padding dropped."""
    prow, pcol = swizzled.shape
    if (prow, pcol) != swizzled_shape(rows, cols):
        raise ValueError(f"a swizzled scale for {rows}x{cols} blocks must be {swizzled_shape(rows, cols)}, "
                         f"got {(prow, pcol)}")
    raw = _as_bytes(swizzled)
    tiles = raw.reshape(prow // 128, pcol // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(prow, pcol)[:rows, :cols].contiguous().view(swizzled.dtype)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    # Moving 1-byte float8 values around is safest as raw bytes: no kernel needs to know the dtype.
    return t.view(torch.uint8) if t.element_size() == 1 else t
