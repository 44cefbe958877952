"""GPU memory of the video decode for each decoder choice (engine/vae): full Wan VAE, LightVAE, tiny.

engine.memory calls these for its decode phase. The full VAE's untiled per-pixel transient is fitted to
a measured H200 peak (engine.memory.DECODE_BYTES_PER_PIXEL); the rest is counted from the code, and
checked against bench/bench_e2e.py's decode-phase peaks where a row measured it (H200, 2026-12-03, 480p:
the fp16 decode +0.2%, the tiny decoder -2% and +4%, the tiled fp32 decode +2% after counting the tiles'
blend as below; LightVAE not yet). bench/bench_vae.py prints each decoder's peak at 480p and 720p:
refit the named constants below from those.

- light (LightVAE): the same network as the full VAE at base width 24 instead of 96 (engine/vae/light.py).
  Its activations per pixel are the full decoder's scaled by the channel ratio 24/96: every activation
  of the decoder (and each causal convolution's cached frames) has base_dim x multiplier channels, and
  the spatial sizes and frame counts are the same. Its weights are counted on the module itself.
- tiny (TAEHV-family LightTAE): 2D convolutions on `chunk` latent frames per pass (TinyDecodeVAE,
  `tae_chunk`, default 4). The peak of a pass is the largest live set of one layer (its input, its
  output, and for a memory block the previous-frame input and their concatenation), walked over the
  module's own layers (engine/vae/tae.py, widths 256/128/64/64): 512 values per output pixel per latent
  frame of the pass, at the last 3x3 convolution (64 channels in and out at full size, 4 frames per
  latent frame). The full VAE stays loaded beside it (it encodes).
- `vae_dtype` bf16 / fp16 (or the -mixed modes, engine/vae/speed.py) halves the full and light
  decoders' activations; plain bf16 / fp16 halves their weights too. fp16 is the GPU default, and the
  half ratio is checked: bench_e2e's 14B fp8 row with that decode (then spelled `fp8+fastvae`) measured a
  24.44 GiB decode phase against 24.50 predicted (H200, 2026-12-03).

Refitting from bench/bench_e2e.py (480p rows; decode transient = measured decode-phase peak minus the
predicted decode phase's resident weights, i.e. predicted decode peak minus `transient(...)` here):
  LIGHT_CHANNEL_RATIO = (transient of `fp8+light+fp32vae` - 2 x output bytes) / (DECODE_BYTES_PER_PIXEL x h x w)
  HALF_DECODE_RATIO   = (transient of `fp8` - 2 x output bytes) / (DECODE_BYTES_PER_PIXEL x h x w)
  TINY_PASS_FACTOR    = (transient of `fp8+tiny` - 2 B x output values) / (counted pass bytes)
(output bytes: frames x 3 x h x w x 4 in fp32, x 2 in fp16; `fp8` and `fp8+light` decode in fp16 on a GPU,
`+fp32vae` in fp32.) bench/bench_vae.py's per-decoder peaks (decoder alone, no
pipeline postprocess) check the ratios between decoders at 480p and 720p.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

VAE_PARAMS = 126_892_531  # AutoencoderKLWan default config (the full Wan2.1 VAE), counted
FULL_VAE_WIDTH, LIGHT_VAE_WIDTH = 96, 24  # base_dim of the full Wan VAE and of LightVAE (75% pruned)
VAE_TILE, VAE_STRIDE = 256, 192  # diffusers' Wan VAE tile size and stride in pixels (its encoder's tiling)
# engine/vae/tiling.py's exact tiled decode: the decoder's reach in latent pixels (tiling.reach() on the
# Wan2.1, Wan2.2 and LightVAE decoders; a test checks it) and the trunk's channels (the mid block's width)
TILE_REACH = 13
TRUNK_CHANNELS = {16: 4 * FULL_VAE_WIDTH, 48: 4 * 256}  # z_dim -> mid-block channels (Wan2.2: decoder base 256)
DEFAULT_TILE_SHARE = 0.5  # tiling asked for without a memory budget: tiles of at most half the frame

# From the code, not yet calibrated (see the docstring; each one is a single number to refit):
LIGHT_CHANNEL_RATIO = LIGHT_VAE_WIDTH / FULL_VAE_WIDTH  # light decode transient / full, per pixel
HALF_DECODE_RATIO = 0.5  # vae_dtype bf16/fp16(-mixed): 2-byte activations instead of fp32
TINY_PASS_FACTOR = 1.0  # measured / counted live values of one tiny-decoder pass (cuDNN workspace not counted)
TINY_DTYPE_BYTES = 2  # the tiny decoder runs in bf16 on a GPU (engine.vae.choice.use_decoder)
# Per decoded output value after the tiny decoder's passes: its fp32 result (diffusers hands vae.decode
# fp32 latents; TinyDecodeVAE returns that dtype) and the postprocess's x*0.5+0.5 and clamp copies.
TINY_OUTPUT_BYTES = 12


@dataclass(frozen=True)
class Decoder:
    """What the decode phase runs: engine.vae.choice's kind, engine.vae.speed's dtype, the tiny chunk."""
    kind: str = "full"  # full | light | tiny
    dtype: str = "fp32"  # vae_dtype of the full / light VAE: fp32 | bf16 | fp16 | bf16-mixed | fp16-mixed
    chunk: int = 1  # tiny: latent frames per pass (0: all at once)

    @property
    def half_activations(self) -> bool:
        return self.dtype != "fp32"

    @property
    def half_weights(self) -> bool:
        return self.dtype in ("bf16", "fp16")


def decoder_from_config(raw, device_type: str = "cuda") -> Decoder:
    """From a config (dict or QuantConfig), for a decode on `device_type` (the estimate is of GPU memory,
    so the GPU's default dtype unless said; engine.vae.speed). engine.vae.choice and engine.vae.speed read
    the keys, so a bad value is the same ConfigError here as at load time."""
    from .vae.choice import decoder_choice
    from .vae.speed import speed_settings

    cfg = raw if hasattr(raw, "get") else dict(raw)
    choice = decoder_choice(cfg)
    dtype = speed_settings(cfg, device_type).dtype  # read even for tiny: a bad value is an error either way
    # with the tiny decoder the full VAE only encodes and keeps fp32 (engine.builder.configure_decoder)
    return Decoder(choice.kind, "fp32" if choice.kind == "tiny" else dtype, choice.chunk)


# ---- weights --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def light_vae_params(z_dim: int = 16) -> int:
    """Parameters of LightVAE (encoder included: it replaces the pipeline's VAE), counted on diffusers'
    AutoencoderKLWan(base_dim=24) built on the meta device, as engine/vae/light.py builds it."""
    import torch
    from diffusers import AutoencoderKLWan

    from .vae.light import WAN_DIM_MULT

    with torch.device("meta"):
        vae = AutoencoderKLWan(base_dim=LIGHT_VAE_WIDTH, z_dim=z_dim, dim_mult=list(WAN_DIM_MULT))
    return sum(p.numel() for p in vae.parameters())


@functools.lru_cache(maxsize=None)
def tiny_layout(latent_channels: int = 16, patch: int = 1, widths: tuple[int, ...] | None = None):
    """(parameters, peak live values of one pass per output pixel per latent frame, values per output
    pixel held once per pass) of engine/vae/tae.py's TinyDecoder, walked over its layers on the meta
    device. A layer's live set is its input and output; a memory block also holds the previous-frame
    input and their concatenation, and TinyDecoder._run keeps the last memory block's input view and
    previous-frame tensors referenced until the next one; each memory block keeps one frame of state."""
    import torch
    from torch import nn

    from .vae.tae import MemoryBlock, TimeGrow, TinyDecoder

    with torch.device("meta"):
        dec = TinyDecoder(latent_channels, patch, *([widths] if widths else []))
    params = sum(p.numel() for p in dec.parameters())
    # channels, area of a frame relative to the decoder's output frame, frames per latent frame
    c, area, frames, peak, held, fixed = latent_channels, 1 / 64, 1, 0.0, 0.0, 0.0
    for layer in dec.decoder:
        here = c * area * frames
        if isinstance(layer, MemoryBlock):  # x, the previous-frame input, their concatenation, first conv out
            out = layer.conv[-1].out_channels
            peak = max(peak, (4 * c + out) * area * frames + fixed)
            held, fixed, c = 2 * here + c * area, fixed + c * area, out  # held: cur, past, prev (1 frame)
            continue
        if isinstance(layer, nn.Upsample):
            live, area = 5 * here, area * layer.scale_factor ** 2
        elif isinstance(layer, TimeGrow):
            live, frames = here * (1 + layer.stride), frames * layer.stride
        elif isinstance(layer, nn.Conv2d):
            live, c = here + layer.out_channels * area * frames, layer.out_channels
        elif isinstance(layer, nn.ReLU):  # in place
            continue
        else:  # SoftClamp: tanh(x / 3) * 3
            live = 2 * here
        peak = max(peak, live + held + fixed)
    # per latent frame vs once per pass: `fixed` does not grow with the chunk
    return params, (peak - fixed) / patch ** 2, fixed / patch ** 2


def decoder_weight_bytes(dec: Decoder, z_dim: int = 16, patch: int = 1) -> int:
    """Bytes of what pipe.vae holds: the full VAE; LightVAE instead of it; or the tiny decoder beside the
    full VAE (which then keeps fp32: engine.builder applies vae_dtype to the VAE that decodes)."""
    if dec.kind == "tiny":
        return 4 * VAE_PARAMS + TINY_DTYPE_BYTES * tiny_layout(z_dim, patch)[0]
    params = light_vae_params(z_dim) if dec.kind == "light" else VAE_PARAMS
    return (2 if dec.half_weights else 4) * params


# ---- transients -----------------------------------------------------------------------------------

def vae_transient(per_pixel: float, height: int, width: int, frames: int, tiled: bool, out_bytes: int) -> int:
    """A Wan-VAE-network decode (full or light) with `per_pixel` bytes of activations per output pixel:
    one latent frame (4 output frames) at a time with a 2-frame cache per causal convolution; the output
    (frames x 3 x h x w) held twice while `torch.cat` grows it. Tiled (diffusers' tiled_decode, 256 px
    tiles at a 192 px stride): while the last tile decodes, one tile's activations beside every decoded
    tile (they overlap, and all are kept until the blend); after it, the tiles beside the blended rows,
    their concatenation and its clamped copy (three outputs). The larger of the two, not their sum: the
    activations are freed before the blend."""
    out = frames * 3 * height * width * out_bytes
    if not tiled or (height <= VAE_TILE and width <= VAE_TILE):
        return int(per_pixel * height * width) + 2 * out
    lat_h, lat_w, tile, stride = height // 8, width // 8, VAE_TILE // 8, VAE_STRIDE // 8
    rows = sum(min(tile, lat_h - i) * 8 for i in range(0, lat_h, stride))
    cols = sum(min(tile, lat_w - j) * 8 for j in range(0, lat_w, stride))
    tiles = frames * 3 * rows * cols * out_bytes
    return tiles + max(int(per_pixel * min(height, VAE_TILE) * min(width, VAE_TILE)), 3 * out)


def tiny_transient(height: int, width: int, frames: int, chunk: int, z_dim: int = 16, patch: int = 1) -> int:
    """The largest pass (plus the frames already decoded, kept in bf16) or the output chain after it."""
    latent = (frames - 1) // 4 + 1
    per_frame = chunk if 0 < chunk < latent else latent
    values = frames * 3 * height * width
    _, per_latent_frame, once = tiny_layout(z_dim, patch)
    pass_bytes = TINY_PASS_FACTOR * (per_latent_frame * per_frame + once) * height * width * TINY_DTYPE_BYTES
    return int(max(pass_bytes + TINY_DTYPE_BYTES * values, TINY_OUTPUT_BYTES * values))


def exact_tiled_transient(per_pixel: float, height: int, width: int, frames: int, grid, out_bytes: int,
                          trunk_bytes: int, z_dim: int = 16) -> int:
    """engine/vae/tiling.py's decode with `grid`: while the largest tile decodes, its activations (the
    untiled per-pixel cost over the tile's area, halo included) beside the preallocated output and the
    trunk's features; after it, the output and its clamped copy."""
    from .vae.tiling import tile_area

    lat_h, lat_w = latent_size(height, width, z_dim)
    share = tile_area(lat_h, lat_w, grid, TILE_REACH) / (lat_h * lat_w)
    out = frames * 3 * height * width * out_bytes
    return int(max(per_pixel * height * width * share + out + trunk_bytes, 2 * out))


def latent_size(height: int, width: int, z_dim: int = 16) -> tuple[int, int]:
    ratio = 16 if z_dim == 48 else 8
    return height // ratio, width // ratio


def trunk_bytes(dec: Decoder, height: int, width: int, frames: int, z_dim: int = 16) -> int:
    """The mid block's output for every latent frame, kept while the tiles decode."""
    lat_h, lat_w = latent_size(height, width, z_dim)
    channels = TRUNK_CHANNELS[z_dim] * (LIGHT_CHANNEL_RATIO if dec.kind == "light" else 1)
    return int(channels * ((frames - 1) // 4 + 1) * lat_h * lat_w * (2 if dec.half_activations else 4))


def _per_pixel(full_per_pixel: float, dec: Decoder) -> float:
    per_pixel = full_per_pixel * (LIGHT_CHANNEL_RATIO if dec.kind == "light" else 1.0)
    return per_pixel * (HALF_DECODE_RATIO if dec.half_activations else 1.0)


def tile_grid(full_per_pixel: float, dec: Decoder, height: int, width: int, frames: int, room: float | None,
              z_dim: int = 16):
    """The grid engine/vae/tiling.py decodes with: the least computed area whose transient fits `room`
    bytes (None: tiles of at most DEFAULT_TILE_SHARE of the frame, or one tile when the halo makes none
    that small)."""
    from .vae.tiling import Grid, plan, tile_area

    lat_h, lat_w = latent_size(height, width, z_dim)
    if room is None:  # no budget to protect (the CPU): tiles only where they stay near the target size
        target = DEFAULT_TILE_SHARE * lat_h * lat_w
        grid = plan(lat_h, lat_w, TILE_REACH, target)
        return grid if tile_area(lat_h, lat_w, grid, TILE_REACH) <= target else Grid()
    out = frames * 3 * height * width * (2 if dec.half_weights else 4)
    fixed = out + trunk_bytes(dec, height, width, frames, z_dim)
    share = (room - fixed) / (_per_pixel(full_per_pixel, dec) * height * width)
    return plan(lat_h, lat_w, TILE_REACH, max(share, 0.0) * lat_h * lat_w)


def transient(full_per_pixel: float, dec: Decoder, height: int, width: int, frames: int, tiled: bool,
              z_dim: int = 16, grid=None) -> int:
    """The decode phase's transient for `dec`; `full_per_pixel`: the full VAE's fp32 untiled coefficient.
    `grid`: engine/vae/tiling.py's exact tiled decode; else `tiled`: diffusers' blended tiling (how the
    encoder tiles)."""
    if dec.kind == "tiny":
        return tiny_transient(height, width, frames, dec.chunk, z_dim)
    per_pixel = _per_pixel(full_per_pixel, dec)
    # the -mixed modes run the last convolution in fp32 (engine.vae.speed.FP32_ISLANDS): fp32 output
    out_bytes = 2 if dec.half_weights else 4
    if grid is not None and (height > VAE_TILE or width > VAE_TILE):  # diffusers decodes a small frame whole
        return exact_tiled_transient(per_pixel, height, width, frames, grid, out_bytes,
                                     trunk_bytes(dec, height, width, frames, z_dim), z_dim)
    return vae_transient(per_pixel, height, width, frames, tiled and grid is None, out_bytes)


def encoder_decoder(dec: Decoder) -> Decoder:
    """The VAE that encodes an i2v conditioning video: LightVAE when chosen, else the full VAE as it is
    configured (with the tiny decoder, the full VAE in fp32)."""
    if dec.kind == "tiny":
        return Decoder("full")
    # the -mixed modes' autocast wraps the decode only (engine.vae.speed): the encode runs in fp32
    return Decoder(dec.kind, "fp32", dec.chunk) if dec.dtype.endswith("-mixed") else dec
