"""What fits on a GPU when the asked setup does not: the ladder of tiers and decoders, the lightest
setup, the limit (frames, size) when nothing fits, and the faster decoders when the full VAE must tile.
engine.presets' choose_preset and check_fits say these sentences; the estimates are engine.memory's."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import memory
from .preset_files import TIERS, load_preset, plan_for, preset_runs

if TYPE_CHECKING:
    from .gpu import GpuInfo

GB = 1024**3

# The keys that say which decoder runs and how (engine/vae): carried from a config onto other presets
# when looking for one that fits, so the plan always counts the decoder the config or the UI chose.
DECODER_KEYS = ("decoder", "use_tae", "use_tiny_vae", "tae_path", "tiny_vae_path", "use_lightvae", "vae_path",
                "need_scaled", "tae_chunk", "vae_dtype", "vae_channels_last", "vae_cudnn_benchmark", "vae_compile",
                "vae_fused_norm")
# The decoder choice on a tight GPU: the full VAE stays the default, decoding in tiles when whole frames
# would not fit (no extra download, the same weights and frames: engine/vae/tiling.py; slower by the tiles'
# overlap, measured by bench/bench_vae_tiles.py). LightVAE and the tiny
# decoder are offered, with their predicted need, as the faster options: each is an extra download from
# lightx2v/Autoencoders and gives lower quality, so it is the user's choice, never a silent switch.
LIGHTER_DECODERS = ("light", "tiny")
# Decode seconds at 480p x 81 frames said next to them, measured with bench/bench_vae.py on an H200
# (2026-12-04, docs/benchmarks.md): full VAE and LightVAE at the GPU default (fp16, fused norm), LightTAE bf16
DECODE_SECONDS = {"full": 1.10, "light": 0.30, "tiny": 0.10}


def kind_of(gpu: GpuInfo) -> str:
    return "fp8" if gpu.has_fp8 else "int8"


def tiers(gpu: GpuInfo) -> list[str]:
    """The memory tiers whose every format some kernel runs on this GPU, fastest first; before Ampere
    (no 8-bit kernel) the bf16 preset alone."""
    runs = [name for tier in TIERS if preset_runs(name := f"{tier}-{kind_of(gpu)}", gpu)]
    return runs or ["pre-ampere-bf16"]


def decoder_keys(config: dict) -> dict:
    return {k: config[k] for k in DECODER_KEYS if k in config}


def decoder_kind(config: dict) -> str:
    return memory.decoder_from_config(config).kind


def as_decoder(config: dict, kind: str) -> dict:
    """`config` with the decoder switched to `kind` (the other decoders' flags dropped; each kind reads
    only its own path key)."""
    out = {k: v for k, v in config.items() if k not in ("decoder", "use_tae", "use_tiny_vae", "use_lightvae")}
    out["decoder"] = kind
    return out


def option_text(preset: str, config: dict, est) -> str:
    dec = est.decoder.kind
    what = {"full": "the full VAE", "light": "the light decoder (LightVAE)", "tiny": "the tiny decoder (LightTAE)"}
    tiles = " in tiles" if est.tiled and dec != "tiny" else ""
    extra = "" if dec == decoder_kind(config) or dec == "full" else ", an extra download with lower quality"
    return f"preset {preset} with {what[dec]}{tiles}{extra}"


def ladder(gpu, config):
    """(preset, config) from the fastest fitting idea to the lightest: the tiers with this config's
    decoder, then the lightest tier with each lighter decoder."""
    keys = decoder_keys(config)
    for tier in tiers(gpu):
        yield tier, {**load_preset(tier), **keys}
    current = decoder_kind(config)
    for kind in LIGHTER_DECODERS[LIGHTER_DECODERS.index(current) + 1 if current in LIGHTER_DECODERS else 0:]:
        yield tiers(gpu)[-1], as_decoder({**load_preset(tiers(gpu)[-1]), **keys}, kind)


def first_fit(gpu, model, config, size, budget):
    for preset, cfg in ladder(gpu, config):
        est = plan_for(model, cfg, size, budget)
        if est.need <= budget:
            return option_text(preset, config, est), est.need
    return None


def lightest(gpu, model, config, size, budget):
    """The setup with the smallest need (on a tie the one asking less of the user: earlier on the ladder)."""
    best = None
    for preset, cfg in ladder(gpu, config):
        est = plan_for(model, cfg, size, budget)
        if best is None or est.need < best[2].need:
            best = (preset, cfg, est)
    return best


def does_not_fit(gpu, model, config, size, budget) -> str:
    """One sentence: the lightest setup's need and the limit on this GPU (frames at this size, size at
    these frames)."""
    preset, cfg, est = lightest(gpu, model, config, size, budget)
    h, w, n = size
    frames = next((f for f in range(n - 4, 0, -4) if plan_for(model, cfg, (h, w, f), budget).need <= budget), None)
    side = None
    for k in range(1, 64):  # shrink both sides by the same factor, in steps of 16 px on the shorter one
        short = min(h, w) - 16 * k
        if short < 16:
            break
        hh, ww = (short, max(16, w * short // h // 16 * 16)) if h <= w else (max(16, h * short // w // 16 * 16), short)
        if plan_for(model, cfg, (hh, ww, n), budget).need <= budget:
            side = (hh, ww)
            break
    limit = []
    if frames:
        limit.append(f"at {w}x{h} at most {frames} frames fit")
    if side:
        limit.append(f"{n} frames fit up to {side[1]}x{side[0]}")
    return memory.refusal(*size, est, budget, option_text(preset, config, est),
                          " and ".join(limit) if limit else "the weights alone do not fit")


def faster_decoders(model, est, config, size, budget) -> str:
    """When the full VAE must decode in tiles: the light and tiny decoders' predicted need, as the
    faster (extra download, lower quality) options; empty otherwise."""
    if est.decoder.kind != "full" or not est.tiled:
        return ""
    needs = [f"{plan_for(model, as_decoder(config, kind), size, budget).phases['decode'] / GB:.1f}"
             for kind in LIGHTER_DECODERS]
    secs = DECODE_SECONDS
    return (" Decoding in tiles keeps the full VAE and its quality but is slower; the light or tiny decoder "
            "(decoder: light / tiny; an extra download from lightx2v/Autoencoders, lower quality) decodes faster "
            f"({secs['light']} s and {secs['tiny']} s against {secs['full']} s for the full VAE at 480p x 81, "
            f"measured on an H200): decode-phase peak about {est.phases['decode'] / GB:.1f} GiB tiled, "
            f"{' and '.join(needs)} GiB with light and tiny.")
