"""Peak GPU memory of one Wan generation, from first principles, and the plan that makes it fit.

A generation has three phases, each with its own working set on the GPU:
  encode   the text encoder (UMT5-XXL, 5.7B parameters; CLIP too for i2v) runs once on 512 tokens;
  denoise  the transformer runs `steps` times on tokens = latent frames x (h/16) x (w/16);
  decode   the chosen decoder turns the latents into frames: the Wan VAE (fp16 on a GPU unless
           `vae_dtype`), one latent frame at a time, whole or in tiles; LightVAE; or the tiny decoder in
           chunks (engine/memory_decode.py says which of its terms are calibrated).
Peak = max over phases of (weights resident in that phase + that phase's transient tensors).

Weights are counted exactly from the architecture and the number format (engine.formats gives the
stored shapes: 8-bit = 1 B per weight plus scales, NVFP4 0.5 B plus e4m3 scales, bf16 2 B). Transients
are counted from the code (the live tensors per token in a block, per output pixel in the decoder)
and scaled by one calibration factor each, fitted to peaks measured on an H200 through generate()
(REFERENCE.md section 6, 14B unless said, 480x832, 81 frames, 4 steps):

    run                                    measured   this model
    fp8, all on the GPU                    29.1 GiB   29.1  (weights 20.3 + untiled decode 8.8)
    bf16, all on the GPU                   46.6 GiB   46.6
    fp8, model offload                     17.8 GiB   17.8  (DiT 13.5 + fused activations 4.3)
    fp8, sequential offload + tiled VAE     7.9 GiB    7.9  (unfused activations, weights streamed)
    1.3B fp8, model offload + tiled VAE     6.6 GiB    6.6  (int8 UMT5 6.3 + encode 0.3)
    fp8 under a 24 GiB cap, no offload     OOM        needs 25.8 > 24
    fp8 under 12 GiB, sequential, untiled  OOM        needs 12.0 > 12 (decode with allocator headroom)

Those runs fix the four factors, so the fit above is exact by construction; the error that matters
is on runs that did not set a factor (tiled decode, 1.3B activations, 720p, the streamed tiers), which
bench/bench_e2e.py measures and prints next to this model's prediction. The first-principles counts
alone are low by ~2x for the fused block and ~1.7x for diffusers' own block forward (attention backend
workspace, autograd-free temporaries inside kernels and allocator rounding are not counted).

`need` (what a memory cap must hold) adds 30% headroom on the transient tensors: the caching
allocator fragments during the decode's many differently sized fp32 buffers, and an untiled decode
with ~9.4 GiB allocated failed under a 12 GiB cap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import memory_decode
from .memory_decode import VAE_PARAMS, VAE_STRIDE, VAE_TILE, Decoder, decoder_from_config  # noqa: F401

GIB = 2**30
TEXT_TOKENS = 512  # the pipeline pads every prompt to 512 tokens

# Calibration (see the docstring): measured / counted.
FUSED_FACTOR = 1.95  # 14B fused fp8 block at 32,760 tokens: 4.26 GiB measured, 2.19 counted
UNFUSED_FACTOR = 1.69  # diffusers' block forward: 6.9 GiB measured (7.9 less weights on the GPU), 4.06 counted
DECODE_BYTES_PER_PIXEL = 21_990  # untiled decode transient per output pixel (one chunk of 4 frames)
ENCODE_TRANSIENT = int(0.33 * GIB)  # UMT5-XXL at 512 tokens (1.3B run: 6.6 GiB peak, 6.27 of weights)
HEADROOM = 1.3  # allocator fragmentation on transients, for fit decisions only

# UMT5-XXL encoder (Wan's text encoder) and CLIP ViT-H/14 (i2v image encoder)
T5 = dict(layers=24, dim=4096, ffn=10240, vocab=256384, heads=64)
CLIP = dict(layers=32, dim=1280, ffn=5120, extra_params=32e6)


@dataclass(frozen=True)
class Arch:
    """The dimensions the estimate needs of one Wan pipeline."""
    layers: int
    dim: int
    ffn: int
    in_channels: int = 16
    transformers: int = 1  # Wan2.2 A14B: two experts
    i2v: bool = False
    label: str = "Wan"


ARCHS = {1.3: Arch(30, 1536, 8960, label="1.3B"), 14: Arch(40, 5120, 13824, label="14B"),
         5: Arch(30, 3072, 14336, in_channels=48, label="5B")}


def arch_of_entry(entry) -> Arch:
    """From a catalog ModelEntry (before anything is downloaded)."""
    base = ARCHS[min(ARCHS, key=lambda p: abs(p - entry.dit_params_b))]
    return Arch(base.layers, base.dim, base.ffn, 36 if entry.task == "i2v" and base.dim == 5120 else base.in_channels,
                len(entry.transformers), entry.task == "i2v", entry.label)


def arch_of_pipe(pipe) -> Arch:
    """From a loaded diffusers Wan pipeline's transformer config."""
    c = pipe.transformer.config
    two = getattr(pipe, "transformer_2", None) is not None
    return Arch(c.num_layers, c.num_attention_heads * c.attention_head_dim, c.ffn_dim, c.in_channels,
                2 if two else 1, c.image_dim is not None, "Wan")


# ---- weights --------------------------------------------------------------------------------------

def linear_bytes(out_f: int, in_f: int, fmt: str | None) -> int:
    """Stored bytes of one linear's weight in `fmt` (None: bf16), scales included, bias bf16."""
    if fmt is None:
        return 2 * out_f * in_f + 2 * out_f
    from .formats import get_format

    f = get_format(fmt)
    size = lambda shape, dtype: math.prod(shape) * _itemsize(dtype)  # noqa: E731
    return (size(f.data_shape(out_f, in_f), f.data_dtype) + size(f.weight_scale_shape(out_f, in_f), f.scale_dtype)
            + (4 if f.has_global_scale else 0) + 2 * out_f)


def _itemsize(dtype) -> int:
    import torch

    return torch.empty(0, dtype=dtype).element_size()


def dit_block_bytes(a: Arch, fmt: str | None) -> int:
    d, f = a.dim, a.ffn
    linears = [(d, d)] * 8 + [(f, d), (d, f)] + ([(d, d)] * 2 if a.i2v else [])
    norms_fp32 = 4 * (6 * d + 4 * d + 2 * d)  # scale_shift_table, q/k norms of both attentions, norm2
    return sum(linear_bytes(o, i, fmt) for o, i in linears) + norms_fp32


def dit_rest_bytes(a: Arch) -> int:
    """Everything outside the blocks stays bf16 (embedders, time projection, proj_out)."""
    d = a.dim
    params = (4096 * d + d * d) + (256 * d + d * d) + 6 * d * d + a.in_channels * 4 * d + d * 64 + 4 * d
    if a.i2v:
        params += 1280 * 1280 + 1280 * d + d * d
    return 2 * params


def dit_bytes(a: Arch, fmt: str | None) -> int:
    return a.transformers * (a.layers * dit_block_bytes(a, fmt) + dit_rest_bytes(a))


def t5_layer_bytes(fmt: str | None) -> int:
    d, f = T5["dim"], T5["ffn"]
    return 4 * linear_bytes(d, d, fmt) + 2 * linear_bytes(f, d, fmt) + linear_bytes(d, f, fmt) - 7 * 2 * d


def t5_bytes(fmt: str | None) -> int:
    """The token embedding (1.05B of the 5.7B parameters) is never quantized."""
    return T5["layers"] * t5_layer_bytes(fmt) + 2 * T5["vocab"] * T5["dim"]


def clip_bytes(fmt: str | None) -> int:
    d, f = CLIP["dim"], CLIP["ffn"]
    layer = 4 * linear_bytes(d, d, fmt) + linear_bytes(f, d, fmt) + linear_bytes(d, f, fmt)
    return CLIP["layers"] * layer + int(2 * CLIP["extra_params"])


VAE_BYTES = 4 * VAE_PARAMS  # fp32: Wan's VAE is numerically fragile in bf16


# ---- transients -----------------------------------------------------------------------------------

def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


def tokens(height: int, width: int, frames: int) -> int:
    return latent_frames(frames) * (height // 16) * (width // 16)


def dit_transient(a: Arch, n_tokens: int, fused: bool) -> int:
    """Live tensors while one block runs (the residual stream is one of them), per token:
    fused: attention  hidden 2D + 8-bit norm1 output 1D + q,k,v 6D + roped q,k 4D (old ones freed after)
           feed-forward hidden 2D + up-projection 2F + its 8-bit copy 1F + down output 2D
           the output norm: fp32 copies 12D + hidden 2D;
    diffusers' forward: fp32 norm/modulation copies 12D, q,k,v 6D, fp32 rotary temporaries 8D;
           feed-forward with the GELU output and 8-bit copies: 6D + 5F."""
    d, f = a.dim, a.ffn
    if fused:
        per_token = max(13 * d, 4 * d + 3 * f, 14 * d)
        return int(FUSED_FACTOR * n_tokens * per_token)
    per_token = max(26 * d, 6 * d + 5 * f)
    return int(UNFUSED_FACTOR * n_tokens * per_token)


def decode_transient(height: int, width: int, frames: int, tiled: bool, decoder: Decoder = Decoder(),
                     z_dim: int = 16, grid=None) -> int:
    """The full fp32 decoder works on one latent frame (4 output frames) at a time, keeping a 2-frame
    cache per causal convolution: ~22 KB per output pixel of fp32 activations, whatever the frame count
    (fitted, above). LightVAE, half-precision and the tiny decoder: engine/memory_decode.py (counted from
    the code; see there what is calibrated)."""
    return memory_decode.transient(DECODE_BYTES_PER_PIXEL, decoder, height, width, frames, tiled, z_dim, grid)


# ---- plans ----------------------------------------------------------------------------------------

DIT_MODES = {"gpu": "the transformer stays on the GPU",
             "block": "the transformer is streamed to the GPU block by block with prefetch on a second CUDA stream",
             "leaf": "the transformer is streamed to the GPU layer by layer (LightX2V's phase granularity)",
             "model": "each component moves to the GPU only while it runs (model offload)"}
GRANULARITY = {"block": "block", "phase": "leaf", "model": "model"}  # LightX2V offload_granularity -> mode


@dataclass(frozen=True)
class Placement:
    dit: str = "gpu"  # gpu | block | leaf | model
    text: str = "gpu"  # gpu | stream | model
    tiling: bool | None = None  # None: decide from memory


@dataclass(frozen=True)
class Formats:
    dit: str | None = None  # None: bf16
    t5: str | None = None
    clip: str | None = None
    fused: bool = True  # the fused Wan block (engine/fused.py) runs: 8-bit DiT on a GPU with Triton


@dataclass
class Estimate:
    peak: int  # predicted torch.cuda.max_memory_allocated, bytes
    need: int  # what a memory cap must hold: transients with allocator headroom
    phases: dict[str, int]  # phase -> predicted allocated peak
    weights: dict[str, int]  # component -> bytes
    tiled: bool
    placement: Placement
    dominant: str = ""  # the phase that sets `need`
    decoder: Decoder = Decoder()
    grid: object = None  # engine.vae.tiling.Grid of the exact tiled decode, when tiled


def formats_from_config(cfg) -> Formats:
    """From a QuantConfig (engine.config)."""
    fmt = lambda comp: getattr(cfg, comp).scheme.format if getattr(cfg, comp).quantized else None  # noqa: E731
    dit = fmt("dit")
    from .formats import ACT_KINDS, get_format

    # fused Wan blocks (engine/fused.py) take formats whose GEMMs read a row/group-quantized activation
    fused = dit is not None and get_format(dit).act_kind in ACT_KINDS and cfg.get("fused_wan", True) is not False
    return Formats(_heaviest(cfg, "dit", dit), _heaviest(cfg, "t5", fmt("t5")), _heaviest(cfg, "clip", fmt("clip")), fused)


def _heaviest(cfg, comp: str, fmt: str | None) -> str | None:
    """With per-layer rules (`<comp>_layer_schemes`) the component is counted as if every linear took the
    heaviest format among its scheme and its rules (bf16 when a rule keeps layers unquantized): an upper
    bound, so a rule never makes the chosen tier run out of memory; the rules' layer counts are not modelled."""
    rules = getattr(getattr(cfg, comp, None), "rules", ())
    if not rules:
        return fmt
    options = [fmt] + [r.scheme.format if r.scheme is not None else None for r in rules]
    return max(options, key=lambda f: linear_bytes(5120, 5120, f))


def placement_from_config(raw: dict) -> Placement:
    """LightX2V's keys: `cpu_offload` (bool), `offload_granularity` ("block" | "phase" | "model", default
    "model" as before), `t5_cpu_offload` (bool), `use_tiling_vae` (true / false / absent = from memory)."""
    from .errors import ConfigError

    for key in ("cpu_offload", "t5_cpu_offload", "use_tiling_vae"):
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise ConfigError(f"`{key}` must be true or false, got {raw[key]!r}")
    gran = raw.get("offload_granularity", "model")
    if gran not in GRANULARITY:
        raise ConfigError(f"`offload_granularity` must be one of {', '.join(GRANULARITY)}, got {gran!r}")
    tiling = raw.get("use_tiling_vae")
    if not raw.get("cpu_offload"):
        return Placement("gpu", "stream" if raw.get("t5_cpu_offload") else "gpu", tiling)
    mode = GRANULARITY[gran]
    if mode == "model":
        return Placement("model", "model", tiling)
    return Placement(mode, "stream" if raw.get("t5_cpu_offload", True) else "gpu", tiling)


def estimate(a: Arch, fm: Formats, place: Placement, height: int, width: int, frames: int,
             budget: int | None = None, decoder: Decoder = Decoder()) -> Estimate:
    """Predicted peak for one request. `budget` (bytes) decides tiling when `place.tiling` is None.
    `decoder`: what decodes (and, for i2v, what encodes the conditioning video; engine/memory_decode.py)."""
    z_dim = 48 if a.in_channels == 48 else 16  # Wan2.2 TI2V-5B's VAE; every other Wan model's is 16
    w = {"transformer": dit_bytes(a, fm.dit), "text_encoder": t5_bytes(fm.t5),
         "vae": memory_decode.decoder_weight_bytes(decoder, z_dim, 2 if z_dim == 48 else 1)}
    if a.i2v:
        w["image_encoder"] = clip_bytes(fm.clip)
    text = w["text_encoder"] + w.get("image_encoder", 0)
    fused = fm.fused and fm.dit is not None and place.dit != "leaf"  # leaf hooks need diffusers' forward
    act = dit_transient(a, tokens(height, width, frames), fused)
    block = dit_block_bytes(a, fm.dit)
    streamed_dit = {"block": dit_rest_bytes(a) + 2 * block,
                    "leaf": dit_rest_bytes(a) + 2 * linear_bytes(a.ffn, a.dim, fm.dit)}
    streamed_text = 2 * T5["vocab"] * T5["dim"] + 2 * linear_bytes(T5["ffn"], T5["dim"], fm.t5)  # embedding + 2 leaves

    resident = w["vae"] if place.dit != "model" else 0
    resident += w["transformer"] if place.dit == "gpu" else 0
    resident += text if place.text == "gpu" else 0
    enc_w, enc_t = {"gpu": 0, "stream": streamed_text, "model": text}[place.text], ENCODE_TRANSIENT
    if place.text == "stream":
        # leaf-level streaming moves the token embedding (1.05B bf16 parameters) to the GPU alone for the
        # lookup, before any layer's activations exist; the layers then run two leaves at a time. The
        # larger of the two moments (measured on an H200: 2.47 GiB with 0.51 resident, the embedding's
        # 1.96 on top; the sum of both, 2.84 predicted before, was 15% high)
        leaf = linear_bytes(T5["ffn"], T5["dim"], fm.t5)
        enc_w, enc_t = max(((streamed_text - leaf, 0), (2 * leaf, ENCODE_TRANSIENT)), key=sum)
    dit_w = 0 if place.dit == "gpu" else streamed_dit.get(place.dit, w["transformer"] // a.transformers)
    vae_w = w["vae"] if place.dit == "model" else 0
    if a.i2v:  # the conditioning video is VAE-encoded at full size before the first step
        enc_w += vae_w
    phases_t = {"encode": (resident + enc_w, enc_t), "denoise": (resident + dit_w, act)}

    def with_decode(tiled, grid=None):
        p = dict(phases_t, decode=(resident + vae_w, decode_transient(height, width, frames, tiled, decoder, z_dim, grid)))
        if a.i2v:
            encoder = memory_decode.encoder_decoder(decoder)  # the encode is counted like its VAE's decode
            p["encode"] = (p["encode"][0], max(p["encode"][1],
                                               decode_transient(height, width, frames, tiled, encoder, z_dim, grid)))
        return p

    tiled = place.tiling
    if tiled is None:
        untiled = with_decode(False)
        tiled = budget is not None and max(r + t * HEADROOM for r, t in untiled.values()) > budget
    grid = None
    if tiled and (decoder.kind != "tiny" or a.i2v):  # the largest tiles that fit what each tiled phase has left
        rooms = []
        if budget is not None and decoder.kind != "tiny":
            rooms.append((budget - resident - vae_w) / HEADROOM)
        if budget is not None and a.i2v:  # the same grid tiles the conditioning video's encode
            rooms.append((budget - phases_t["encode"][0]) / HEADROOM)
        sizing = decoder if decoder.kind != "tiny" else memory_decode.encoder_decoder(decoder)
        grid = memory_decode.tile_grid(DECODE_BYTES_PER_PIXEL, sizing, height, width, frames,
                                       min(rooms) if rooms else None, z_dim)
        if grid.tiles == 1 and budget is not None and max(r + t * HEADROOM for r, t in with_decode(False).values()) <= budget:
            tiled, grid = False, None  # whole frames fit after all (use_tiling_vae: true on a roomy GPU)
    phases = with_decode(tiled, grid)
    need = {k: int(r + t * HEADROOM) for k, (r, t) in phases.items()}
    peaks = {k: r + t for k, (r, t) in phases.items()}
    dominant = max(need, key=need.get)
    return Estimate(max(peaks.values()), need[dominant], peaks, w, tiled, place, dominant, decoder, grid)


# ---- sentences for the UI -------------------------------------------------------------------------

def size_text(height: int, width: int, frames: int) -> str:
    return f"{width}x{height}, {frames} frames ({tokens(height, width, frames):,} tokens)"


DECODE_TEXT = {"full": "the VAE", "light": "the light decoder (LightVAE)"}


def describe(est: Estimate, budget: int | None, what: str = "") -> str:
    """One sentence: what is offloaded or tiled, and why."""
    parts = [DIT_MODES[est.placement.dit]]
    if est.placement.text == "stream":
        parts.append("the text encoder is streamed while it runs")
    dec = est.decoder
    if dec.kind == "tiny":
        per = (f"{dec.chunk} latent frame{'s' if dec.chunk > 1 else ''}" if dec.chunk else "all frames")
        parts.append(f"the tiny decoder (LightTAE) decodes {per} per pass")
    else:
        tiles = f"in tiles ({est.grid.text()}, each widened by the decoder's reach: the untiled frames)" if est.grid else "in tiles"
        if est.grid is not None and est.grid.tiles == 1:  # the exact decode's one tile: whole frames, output preallocated
            tiles = "whole frames in two passes (mid block, then the rest into a preallocated output)"
        parts.append(f"{DECODE_TEXT[dec.kind]} decodes {tiles if est.tiled else 'whole frames'}")
    room = f"{budget / GIB:.1f} GiB" if budget else "the GPU"
    why = (f"because {what or 'this request'} needs about {est.need / GIB:.1f} GiB this way "
           f"(peak in the {est.dominant} phase) and {room} is available")
    return f"{_join(parts)}, {why}."


def refusal(height: int, width: int, frames: int, est: Estimate, budget: int, setup: str, limit: str = "") -> str:
    """Why a size cannot run even with the lightest setup (`setup`: its words), naming the limit."""
    phase = {"denoise": "the transformer's activations", "decode": "the decode",
             "encode": "the text encoder"}[est.dominant]
    limit = f"; on this GPU {limit}" if limit else ""
    return (f"{size_text(height, width, frames)} does not fit: even the lightest setup ({setup}) needs about "
            f"{est.need / GIB:.1f} GiB, mostly {phase}, and {budget / GIB:.1f} GiB of GPU memory is available"
            f"{limit}. Lower the resolution or the frame count.")


def _join(parts: list[str]) -> str:
    text = ", ".join(parts[:-1]) + (f" and {parts[-1]}" if len(parts) > 1 else parts[-1])
    return text[0].upper() + text[1:]


# ---- at run time ----------------------------------------------------------------------------------

def gpu_budget(device) -> int:
    """Bytes this process may hold on `device`: free memory plus what it already holds, within the
    cap set by torch.cuda.set_per_process_memory_fraction (how consumer cards are simulated)."""
    import torch

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index  # the cap API wants an index
    free, total = torch.cuda.mem_get_info(index)
    budget = free + torch.cuda.memory_reserved(index)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # newer torch only
    fraction = get_fraction(index) if get_fraction else 1.0
    return min(budget, int(fraction * total))


def estimate_loaded(model, height: int, width: int, frames: int, budget: int | None = None) -> Estimate:
    """The estimate for a LoadedModel (engine.builder) and a request size."""
    return estimate(arch_of_pipe(model.pipe), formats_from_config(model.config),
                    placement_from_config(model.config.raw), height, width, frames, budget,
                    decoder_from_config(model.config.raw, model.device.type))


def prepare_decode(model, req) -> Estimate | None:
    """generate() calls this before the pipeline runs. VAE tiling follows LightX2V's `use_tiling_vae`:
    true / false as given; absent: tiled when this model says the untiled decode would not fit the
    GPU's budget. Returns the estimate (None on CPU, where only an explicit true tiles)."""
    vae = getattr(model.pipe, "vae", None)
    place = placement_from_config(model.config.raw)
    est = None
    if model.device.type == "cuda":
        est = estimate_loaded(model, req.height, req.width, req.num_frames, gpu_budget(model.device))
        tiled = est.tiled
    else:
        tiled = bool(place.tiling)
    if vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling() if tiled else vae.disable_tiling()
        if tiled:
            _exact_tiles(vae, getattr(est, "grid", None), req)
    return est


def _exact_tiles(vae, grid, req) -> None:
    """Decode tiles through engine/vae/tiling.py (the untiled frames, no seams) instead of diffusers'
    blended tiles; a VAE it does not take keeps diffusers' tiling, said in the log."""
    import logging

    from .vae import tiling

    vae = getattr(vae, "full", vae)  # the tiny-decoder wrapper decodes by itself; its full VAE encodes (i2v)
    if grid is None:  # on the CPU (no budget), or the tiny decoder's encode: tiles of at most half the frame
        grid = memory_decode.tile_grid(DECODE_BYTES_PER_PIXEL, Decoder(), req.height, req.width, req.num_frames, None,
                                       getattr(vae.config, "z_dim", 16))
    why = tiling.install(vae, grid)
    log = logging.getLogger("engine.vae")
    if why is None:
        log.info("VAE tiles: %s (exact tiled decode and encode, engine/vae/tiling.py)", grid.text())
    else:
        log.info("VAE decode tiled by diffusers (blended seams): %s", why)
