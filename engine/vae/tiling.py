"""Tiled decode (and encode) for the Wan VAE (full and LightVAE) that gives the untiled frames (latents).

diffusers' `tiled_decode` runs the whole decoder on overlapping 256 px tiles and blends the seams. That
changes the result twice: the mid block's spatial attention sees one tile instead of the frame, and every
convolution near a tile edge reads zero padding instead of its neighbour. On a random-weight 14B VAE
this measured 35.3 dB against the untiled decode (H200, 2026-12-04, bench/bench_vae_tiles.py), where
issue 10 asks for 0.5 dB.

Here the decoder is split where it stops being global:
1. the trunk (post_quant_conv, conv_in and the mid block, whose attention spans the frame) runs once on
   the whole latent, frame by frame with its causal caches, at latent resolution (small: 384 channels
   at 1/64 of the pixels);
2. the rest (the up blocks and the head: convolutions, per-pixel RMS norms, nearest upsampling, all
   local) runs per tile on the trunk's output, each tile widened by the decoder's reach (a halo, counted
   from the convolutions themselves: `reach()`), and only the tile's core is kept.
Inside the core every value depends only on inputs the tile holds, so the tiles join without a seam and
the frames equal the untiled ones up to the convolutions' summation order. Both passes call diffusers'
own `WanDecoder3d.forward` (with its cache bookkeeping), with the other pass's modules swapped for
pass-throughs for the duration of the call.

The price is the halo: each tile computes its core plus `reach()` latent pixels (13 for the Wan VAE,
104 output pixels) on each inner side. `plan()` picks the grid with the least computed area whose largest
tile fits a memory limit (engine.memory_decode.tile_grid), so a tight GPU takes more, smaller tiles.

The encoder (i2v's conditioning video, tiled when tiling is on) is split the other way round: its down
blocks are local and run per tile widened by `encoder_reach()` (10 latent pixels for Wan), and the mid
block and head then run once over the whole latent. It uses the decode's grid.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

MAX_SPLITS = 8  # tiles per side; beyond this the halo is most of each tile


@dataclass(frozen=True)
class Grid:
    rows: int = 1
    cols: int = 1

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    def text(self) -> str:
        return f"{self.rows}x{self.cols}"


class _Pass(nn.Module):
    """Stands in for a skipped module; accepts the cache arguments diffusers passes."""

    def forward(self, x, *args, **kwargs):
        return x


def supports(vae) -> str | None:
    """None when `vae` has the decoder layout this module splits (diffusers' AutoencoderKLWan: Wan2.1,
    Wan2.2, LightVAE); otherwise why not (then diffusers' blended tiling is used)."""
    dec = getattr(vae, "decoder", None)
    need = ("conv_in", "mid_block", "up_blocks", "norm_out", "nonlinearity", "conv_out")
    if dec is None or not all(hasattr(dec, name) for name in need) or not hasattr(vae, "clear_cache"):
        return f"{type(vae).__name__} has no Wan decoder layout (conv_in, mid_block, up_blocks, head)"
    attention = [n for n, m in dec.up_blocks.named_modules() if "attention" in type(m).__name__.lower()]
    if attention:  # global across the frame: would need to run in the trunk
        return f"the decoder's up blocks contain attention ({attention[0]})"
    return None


def reach(decoder) -> int:
    """How far (latent pixels, rounded up) a value of the decoder's output depends on its up blocks'
    input: the sum of the spatial radii of every convolution after the mid block, each divided by the
    upsampling applied before it. Wan's decoder: 4 stages of 6 3x3 convolutions at scales 1, 2, 4, 8
    plus 3 upsampling convolutions and conv_out: 12.25, so 13."""
    scale, radius = 1.0, 0.0
    for module in [*decoder.up_blocks.modules(), decoder.conv_out]:
        scale *= _upsampling(module)
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            k, dil = module.kernel_size, module.dilation
            radius += max((k[-1] - 1) * dil[-1], (k[-2] - 1) * dil[-2]) / 2 / scale
    return math.ceil(radius - 1e-9)


def upscale(decoder) -> int:
    """Output pixels per latent pixel of the decoder itself (before any unpatchify)."""
    return int(math.prod(_upsampling(m) for m in decoder.up_blocks.modules()))


def _upsampling(module) -> float:
    if not isinstance(module, nn.Upsample):
        return 1.0
    factor = module.scale_factor
    return float(factor[-1] if isinstance(factor, tuple) else factor)


def _spans(n: int, parts: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(start, stop) of each core and of its widened tile along one axis of n latent pixels. Every
    widened tile has the same length (edge tiles slide inward and see more than the halo, which keeps
    them exact): one shape for cuDNN's autotuning and for compiled blocks (vae_compile), instead of a
    graph per tile shape."""
    edges = [round(i * n / parts) for i in range(parts + 1)]
    length = max(min(n, b + halo) - max(0, a - halo) for a, b in zip(edges, edges[1:]))
    spans = []
    for a, b in zip(edges, edges[1:]):
        start = max(0, min(a - halo, n - length))
        spans.append((a, b, start, start + length))
    return spans


def tile_area(lat_h: int, lat_w: int, grid: Grid, halo: int) -> int:
    """Latent pixels of the largest widened tile."""
    h = max(t1 - t0 for _, _, t0, t1 in _spans(lat_h, grid.rows, halo))
    w = max(t1 - t0 for _, _, t0, t1 in _spans(lat_w, grid.cols, halo))
    return h * w


def computed_area(lat_h: int, lat_w: int, grid: Grid, halo: int) -> int:
    """Latent pixels the up blocks compute over all tiles (the untiled decode: lat_h x lat_w)."""
    rows = sum(t1 - t0 for _, _, t0, t1 in _spans(lat_h, grid.rows, halo))
    cols = sum(t1 - t0 for _, _, t0, t1 in _spans(lat_w, grid.cols, halo))
    return rows * cols


def plan(lat_h: int, lat_w: int, halo: int, max_tile_area: float) -> Grid:
    """The grid with the least computed area whose largest tile has at most `max_tile_area` latent
    pixels; the finest grid when none fits (the caller's estimate then says it does not fit)."""
    grids = [Grid(r, c) for r in range(1, min(MAX_SPLITS, lat_h) + 1) for c in range(1, min(MAX_SPLITS, lat_w) + 1)]
    fitting = [g for g in grids if tile_area(lat_h, lat_w, g, halo) <= max_tile_area]
    if not fitting:
        return min(grids, key=lambda g: (tile_area(lat_h, lat_w, g, halo), computed_area(lat_h, lat_w, g, halo)))
    return min(fitting, key=lambda g: (computed_area(lat_h, lat_w, g, halo), g.tiles))


@contextlib.contextmanager
def _swapped(module: nn.Module, **replacements):
    saved = {name: getattr(module, name) for name in replacements}
    try:
        for name, new in replacements.items():
            setattr(module, name, new)
        yield
    finally:
        for name, old in saved.items():
            setattr(module, name, old)


def _frames(vae, x: torch.Tensor):
    """diffusers' own per-latent-frame loop (AutoencoderKLWan._decode): yields each call's output. The
    causal caches are dropped even when a call fails (out of memory), so they do not outlive the decode."""
    vae.clear_cache()
    try:
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            yield vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
    finally:
        vae.clear_cache()


def _format(t: torch.Tensor) -> torch.memory_format:
    """channels-last-3d when `t` is laid out so (engine.vae.speed's default on a GPU), else contiguous."""
    cl = t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()
    return torch.channels_last_3d if cl else torch.contiguous_format


def trunk(vae, z: torch.Tensor) -> torch.Tensor:
    """post_quant_conv, conv_in and the mid block over the whole latent: [B, C, T, h, w]."""
    dec = vae.decoder
    x = vae.post_quant_conv(z)
    out = None
    with _swapped(dec, up_blocks=nn.ModuleList(), norm_out=_Pass(), nonlinearity=_Pass(), conv_out=_Pass()):
        for i, frame in enumerate(_frames(vae, x)):
            if out is None:  # in the frames' layout, so that the tiles see what the untiled decode sees
                out = torch.empty(frame.shape[:2] + (x.shape[2],) + frame.shape[3:], dtype=frame.dtype,
                                  device=frame.device, memory_format=_format(frame))
            out[:, :, i:i + 1] = frame
    return out


def decode_tiles(vae, z: torch.Tensor, grid: Grid, halo: int | None = None) -> torch.Tensor:
    """The decoder's output (before unpatchify and clamp) for latents z, tile by tile."""
    dec = vae.decoder
    halo = reach(dec) if halo is None else halo
    up = upscale(dec)
    feats = trunk(vae, z)
    lat_h, lat_w = feats.shape[-2:]
    out = None
    with _swapped(dec, conv_in=_Pass(), mid_block=_Pass()):
        for r0, r1, h0, h1 in _spans(lat_h, grid.rows, halo):
            for c0, c1, w0, w1 in _spans(lat_w, grid.cols, halo):
                rows = slice((r0 - h0) * up, (r1 - h0) * up)
                cols = slice((c0 - w0) * up, (c1 - w0) * up)
                # a copy, not a view: a view's H and W strides do not flatten, and the fused norm
                # (engine/vae/fused_norm.py) would decline it and round differently from the untiled decode
                tile = feats[:, :, :, h0:h1, w0:w1].contiguous(memory_format=_format(feats))
                t = 0
                for frame in _frames(vae, tile):
                    if out is None:  # frames per latent frame: 1 for the first, then the time upsampling's
                        count = frame.shape[2] + (z.shape[2] - 1) * _later_frames(dec)
                        out = frame.new_empty(frame.shape[:2] + (count, lat_h * up, lat_w * up))
                    n = frame.shape[2]
                    out[:, :, t:t + n, r0 * up:r1 * up, c0 * up:c1 * up] = frame[:, :, :, rows, cols]
                    t += n
    return out


def _later_frames(decoder) -> int:
    """Output frames per latent frame after the first: 2 per temporal upsampling (Wan: 2 -> 4)."""
    n = 1
    for module in decoder.up_blocks.modules():
        if getattr(module, "mode", None) == "upsample3d":
            n *= 2
    return n


def tiled_decode(vae, z: torch.Tensor, return_dict: bool = True, grid: Grid = Grid(2, 2)):
    """AutoencoderKLWan.tiled_decode's contract (clamped frames, DecoderOutput or a tuple), exact."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
    from diffusers.models.autoencoders.vae import DecoderOutput

    out = decode_tiles(vae, z, grid)
    if vae.config.patch_size is not None:
        out = unpatchify(out, patch_size=vae.config.patch_size)
    out = torch.clamp(out, min=-1.0, max=1.0)
    return DecoderOutput(sample=out) if return_dict else (out,)


# ---- the encoder (i2v's conditioning video), split the other way round ----------------------------

def encoder_supports(vae) -> str | None:
    """None when the encoder has Wan's layout: local down blocks, then the mid block (frame-wide
    attention) and the head; otherwise why not (diffusers' blended tiles then)."""
    enc = getattr(vae, "encoder", None)
    need = ("conv_in", "down_blocks", "mid_block", "norm_out", "nonlinearity", "conv_out")
    if enc is None or not all(hasattr(enc, name) for name in need):
        return f"{type(vae).__name__} has no Wan encoder layout (conv_in, down_blocks, mid_block, head)"
    attention = [n for n, m in enc.down_blocks.named_modules() if "attention" in type(m).__name__.lower()]
    return f"the encoder's down blocks contain attention ({attention[0]})" if attention else None


def encoder_reach(encoder) -> int:
    """How far (latent pixels, rounded up) a value of the down blocks' output depends on the encoder's
    input: each convolution's reach at its input's scale, a strided one counted on one side in full
    (its zero padding is on the right and bottom), over the total downsampling. Wan: 9.375, so 10."""
    scale, radius = 1.0, 0.0
    for module in [encoder.conv_in, *encoder.down_blocks.modules()]:
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            k, dil, stride = module.kernel_size, module.dilation, module.stride[-1]
            reach = max((k[-1] - 1) * dil[-1], (k[-2] - 1) * dil[-2])
            radius += (reach if stride > 1 else reach / 2) * scale
            scale *= stride
    return math.ceil(radius / scale - 1e-9)


def _encoder_chunks(vae, x: torch.Tensor):
    """diffusers' own encode loop (AutoencoderKLWan._encode): the first frame, then 4 at a time."""
    vae.clear_cache()
    try:
        for i in range(1 + (x.shape[2] - 1) // 4):
            vae._enc_conv_idx = [0]
            part = x[:, :, :1] if i == 0 else x[:, :, 1 + 4 * (i - 1):1 + 4 * i]
            yield vae.encoder(part, feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx)
    finally:
        vae.clear_cache()


def encode_tiles(vae, x: torch.Tensor, grid: Grid, halo: int | None = None) -> torch.Tensor:
    """quant_conv(encoder(x)) for an (already patchified) video x: the down blocks per tile, widened by
    the encoder's reach, then the mid block and the head once over the whole latent."""
    enc = vae.encoder
    halo = encoder_reach(enc) if halo is None else halo
    down = _downsampling(enc)
    if x.shape[-2] % down or x.shape[-1] % down:  # tiles must align to the strided convolutions: whole frames
        return vae.quant_conv(torch.cat(list(_encoder_chunks(vae, x)), 2))
    lat_h, lat_w = x.shape[-2] // down, x.shape[-1] // down
    feats = None
    with _swapped(enc, mid_block=_Pass(), norm_out=_Pass(), nonlinearity=_Pass(), conv_out=_Pass()):
        for r0, r1, h0, h1 in _spans(lat_h, grid.rows, halo):
            for c0, c1, w0, w1 in _spans(lat_w, grid.cols, halo):
                tile = x[:, :, :, h0 * down:h1 * down, w0 * down:w1 * down].contiguous(memory_format=_format(x))
                t = 0
                for part in _encoder_chunks(vae, tile):
                    if feats is None:
                        count = 1 + (x.shape[2] - 1) // 4
                        feats = torch.empty(part.shape[:2] + (count, lat_h, lat_w), dtype=part.dtype,
                                            device=part.device, memory_format=_format(part))
                    n = part.shape[2]
                    feats[:, :, t:t + n, r0:r1, c0:c1] = part[:, :, :, r0 - h0:r1 - h0, c0 - w0:c1 - w0]
                    t += n
    parts = []
    with _swapped(enc, conv_in=_Pass(), down_blocks=nn.ModuleList()):
        vae.clear_cache()
        try:
            for i in range(feats.shape[2]):
                vae._enc_conv_idx = [0]
                parts.append(enc(feats[:, :, i:i + 1], feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx))
        finally:
            vae.clear_cache()
    return vae.quant_conv(torch.cat(parts, 2))


def _downsampling(encoder) -> int:
    return math.prod(m.stride[-1] for m in encoder.down_blocks.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))


def install(vae, grid: Grid) -> str | None:
    """Route `vae`'s tiled decode through the exact one with `grid` (diffusers' `_decode` calls
    `self.tiled_decode` when tiling is on and a frame is larger than its 256 px tile; smaller frames
    decode whole, which is the same result). The encoder's tiling is left as diffusers does it.
    Returns why not (`vae` keeps diffusers' blended tiling), or None."""
    why = supports(vae)
    if why is not None:
        return why
    vae.tiled_decode = lambda z, return_dict=True: tiled_decode(vae, z, return_dict, grid)
    if encoder_supports(vae) is None:  # i2v's conditioning video, when tiling is on (same grid)
        vae.tiled_encode = lambda x: encode_tiles(vae, x, grid)
    return None


def uninstall(vae) -> None:
    vae.__dict__.pop("tiled_decode", None)
    vae.__dict__.pop("tiled_encode", None)
