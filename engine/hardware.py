"""Read the GPU, pick a preset for it and say why; check that a config's schemes can run on it.

Every function takes the GPU as an input (`GpuInfo`, or None for no GPU) so the choice can be
tested for every GPU class on a CPU machine; `detect_gpu()` reads the real one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import memory
from .catalog import ModelEntry
from .config import COMPONENTS, QuantConfig
from .errors import ConfigError, HardwareError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
GB = 1024**3

FP8_MIN = (8, 9)  # Ada and newer have FP8 tensor cores
MICROSCALE_MIN = (10, 0)  # Blackwell (sm100, sm120): native MXFP8 / NVFP4 GEMMs exist there
NATIVE_MICROSCALE_MAJORS = (10, 12)  # where engine/kernels/torch_mx.py may run (its BLACKWELL_MAJORS)
FP8_GPUS = "compute capability 8.9 or newer: RTX 40, L40S, H100/H200, Blackwell"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int

    @property
    def label(self) -> str:
        major, minor = self.capability
        return f"{self.name} (sm{major}{minor}, {self.free_bytes / GB:.0f} of {self.total_bytes / GB:.0f} GB free)"

    @property
    def has_fp8(self) -> bool:
        return self.capability >= FP8_MIN

    @property
    def family(self) -> str:
        if self.capability >= MICROSCALE_MIN:
            return "blackwell"
        if self.capability >= (9, 0):
            return "hopper"
        if self.capability >= FP8_MIN:
            return "ada"
        if self.capability >= (8, 0):
            return "ampere"
        return "pre-ampere"


@dataclass(frozen=True)
class PresetChoice:
    name: str
    config: dict
    reason: str


def detect_gpu(index: int = 0) -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)), total, free)


def zerogpu_gpu() -> GpuInfo | None:
    """On a ZeroGPU Space the GPU is attached only inside `spaces.GPU` calls, so at start-up CUDA looks
    absent. The platform says so in SPACES_ZERO_GPU; its GPUs are H200 slices (Hopper, about 70 GB)."""
    import os

    if not os.environ.get("SPACES_ZERO_GPU"):
        return None
    return GpuInfo("ZeroGPU (H200 slice)", (9, 0), 70 * GB, 70 * GB)


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    return {p.stem: json.loads(p.read_text()).get("_about", "") for p in sorted(PRESET_DIR.glob("*.json"))}


def load_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.json"
    if "/" in name or "\\" in name or not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}")
    return json.loads(path.read_text())


TIERS = ("vram24", "vram16", "vram12")  # fastest first; each adds offloading or tiling (presets/vram*.json)
DEFAULT_SIZE = (480, 832, 81)  # height, width, frames: the presets' target size
# The keys that say which decoder runs and how (engine/vae): carried from a config onto other presets
# when looking for one that fits, so the plan always counts the decoder the config or the UI chose.
DECODER_KEYS = ("decoder", "use_tae", "use_tiny_vae", "tae_path", "tiny_vae_path", "use_lightvae", "vae_path",
                "need_scaled", "tae_chunk", "vae_dtype", "vae_channels_last", "vae_cudnn_benchmark", "vae_compile")
# The decoder choice on a tight GPU: the full VAE stays the default, decoding in tiles when whole frames
# would not fit (no extra download, within 0.5 dB of the untiled decode, slower). LightVAE and the tiny
# decoder are offered, with their predicted need, as the faster options: each is an extra download from
# lightx2v/Autoencoders and gives lower quality, so it is the user's choice, never a silent switch.
LIGHTER_DECODERS = ("light", "tiny")


def choose_preset(gpu: GpuInfo | None, model: ModelEntry | None = None,
                  size: tuple[int, int, int] | None = None, decoder: str | None = None) -> PresetChoice:
    """The fastest preset whose predicted memory need (engine.memory) fits this GPU's free memory for
    `size` (height, width, frames; default: the model's default size, 81 frames) with `decoder` (the
    UI's full / light / tiny; None or "preset": the preset's own), with the reason."""
    if gpu is None:
        return _choice("cpu-demo", "No CUDA GPU found, so the app runs the tiny built-in model on CPU.")
    family = {"blackwell": ("blackwell-fp8", "Blackwell has FP8 tensor cores: fastest with FP8 (the NVFP4 and "
                                             "MXFP8 presets save memory; their native block-scaled GEMM is new "
                                             "and checked at first use)"),
              "hopper": ("hopper-fp8", "Hopper has FP8 tensor cores: fastest with FP8"),
              "ada": ("ada-fp8", "Ada has FP8 tensor cores: fastest with FP8"),
              "ampere": ("ampere-int8", "Ampere has no FP8, so INT8 (per-channel weights, per-token activations)"),
              "pre-ampere": ("ampere-int8", "this GPU predates Ampere; INT8 is the only 8-bit option and may "
                                            "fall back to slower kernels")}
    name, why = family[gpu.family]
    size = size or ((*model.default_size, 81) if model else DEFAULT_SIZE)
    budget = gpu.free_bytes
    what = f"{model.label if model else 'a 14B model'} at {memory.size_text(*size)}"
    for candidate in (name, *_tiers(gpu)):
        config = apply_overrides(load_preset(candidate), decoder=decoder)
        est = plan_for(model, config, size, budget)
        if est.need <= budget:
            lead = f"{gpu.label}: {why}." if candidate == name else f"{gpu.label}, {_kind(gpu).upper()}:"
            hint = _faster_decoders(model, est, config, size, budget)
            return _choice(candidate, f"{lead} {memory.describe(est, budget, what)}{hint}")
    lightest = _tiers(gpu)[-1]
    user = apply_overrides(load_preset(lightest), decoder=decoder)
    return _choice(lightest, _does_not_fit(gpu, model, user, size, budget))


def plan_for(model: ModelEntry | None, config: dict, size: tuple[int, int, int], budget: int | None):
    """engine.memory's estimate for a catalog model (None: Wan2.1 14B t2v) run with a config (preset plus
    overrides), counting the decoder the config chooses."""
    from .catalog import get_model
    from .config import load_config

    arch = memory.arch_of_entry(model or get_model("wan2.1-t2v-14b"))
    cfg = load_config(config)
    return memory.estimate(arch, memory.formats_from_config(cfg), memory.placement_from_config(cfg.raw), *size,
                           budget=budget, decoder=memory.decoder_from_config(cfg.raw))


def check_fits(gpu: GpuInfo | None, model: ModelEntry | None, config: dict, size: tuple[int, int, int],
               strict: bool = False) -> str:
    """For the UI before a run: one sentence on what is offloaded or tiled and why (and the faster
    decoders when the full VAE must tile), or, when this config does not fit, what would: the fastest
    tier with this config's decoder, else a lighter decoder, and the lightest setup. HardwareError names
    the limit (frames, size) when nothing fits; `strict` also raises when only another setup fits."""
    if gpu is None:
        return "The tiny built-in model runs on the CPU."
    budget = gpu.free_bytes
    est = plan_for(model, config, size, budget)
    if est.need <= budget:
        return memory.describe(est, budget) + _faster_decoders(model, est, config, size, budget)
    fits = _first_fit(gpu, model, config, size, budget)
    if fits is None:
        raise HardwareError(_does_not_fit(gpu, model, config, size, budget))
    option, need = fits
    preset, _, light = _lightest(gpu, model, config, size, budget)
    lightest = _option_text(preset, config, light)
    text = (f"{memory.describe(est, budget)} That is more than this GPU has. What fits: {option} (about "
            f"{need / GB:.1f} GiB)")
    text += "." if lightest == option else f"; the lightest setup, {lightest}, needs about {light.need / GB:.1f} GiB."
    if strict:
        raise HardwareError(f"{text} Choose it (or preset auto), or a smaller size or fewer frames.")
    return text


def _kind(gpu: GpuInfo) -> str:
    return "fp8" if gpu.has_fp8 else "int8"


def _tiers(gpu: GpuInfo) -> list[str]:
    return [f"{tier}-{_kind(gpu)}" for tier in TIERS]


def _decoder_keys(config: dict) -> dict:
    return {k: config[k] for k in DECODER_KEYS if k in config}


def _decoder_kind(config: dict) -> str:
    return memory.decoder_from_config(config).kind


def _as_decoder(config: dict, kind: str) -> dict:
    """`config` with the decoder switched to `kind` (the other decoders' flags dropped; each kind reads
    only its own path key)."""
    out = {k: v for k, v in config.items() if k not in ("decoder", "use_tae", "use_tiny_vae", "use_lightvae")}
    out["decoder"] = kind
    return out


def _option_text(preset: str, config: dict, est) -> str:
    dec = est.decoder.kind
    what = {"full": "the full VAE", "light": "the light decoder (LightVAE)", "tiny": "the tiny decoder (LightTAE)"}
    tiles = " in tiles" if est.tiled and dec != "tiny" else ""
    extra = "" if dec == _decoder_kind(config) or dec == "full" else ", an extra download with lower quality"
    return f"preset {preset} with {what[dec]}{tiles}{extra}"


def _ladder(gpu, config):
    """(preset, config) from the fastest fitting idea to the lightest: the tiers with this config's
    decoder, then the lightest tier with each lighter decoder."""
    keys = _decoder_keys(config)
    for tier in _tiers(gpu):
        yield tier, {**load_preset(tier), **keys}
    current = _decoder_kind(config)
    for kind in LIGHTER_DECODERS[LIGHTER_DECODERS.index(current) + 1 if current in LIGHTER_DECODERS else 0:]:
        yield _tiers(gpu)[-1], _as_decoder({**load_preset(_tiers(gpu)[-1]), **keys}, kind)


def _first_fit(gpu, model, config, size, budget):
    for preset, cfg in _ladder(gpu, config):
        est = plan_for(model, cfg, size, budget)
        if est.need <= budget:
            return _option_text(preset, config, est), est.need
    return None


def _lightest(gpu, model, config, size, budget):
    """The setup with the smallest need (on a tie the one asking less of the user: earlier on the ladder)."""
    best = None
    for preset, cfg in _ladder(gpu, config):
        est = plan_for(model, cfg, size, budget)
        if best is None or est.need < best[2].need:
            best = (preset, cfg, est)
    return best


def _does_not_fit(gpu, model, config, size, budget) -> str:
    """One sentence: the lightest setup's need and the limit on this GPU (frames at this size, size at
    these frames)."""
    preset, cfg, est = _lightest(gpu, model, config, size, budget)
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
    return memory.refusal(*size, est, budget, _option_text(preset, config, est),
                          " and ".join(limit) if limit else "the weights alone do not fit")


def _faster_decoders(model, est, config, size, budget) -> str:
    """When the full VAE must decode in tiles: the light and tiny decoders' predicted need, as the
    faster (extra download, lower quality) options; empty otherwise."""
    if est.decoder.kind != "full" or not est.tiled:
        return ""
    needs = [f"{plan_for(model, _as_decoder(config, kind), size, budget).phases['decode'] / GB:.1f}"
             for kind in LIGHTER_DECODERS]
    return (" Decoding in tiles keeps the full VAE and its quality but is slower; the light or tiny decoder "
            "(decoder: light / tiny; an extra download from lightx2v/Autoencoders, lower quality) decodes faster: "
            f"decode-phase peak about {est.phases['decode'] / GB:.1f} GiB tiled, {' and '.join(needs)} GiB with "
            "light and tiny.")


def _choice(name: str, reason: str) -> PresetChoice:
    return PresetChoice(name, load_preset(name), reason)


# Run options the UI offers beside the schemes, as LightX2V config keys ("preset" keeps the config's).
RUN_OPTIONS = {
    "attention": {"bf16": {"self_attn_1_type": "torch_sdpa"}, "8-bit": {"self_attn_1_type": "sage_attn2"}},
    "decoder": {"full": {"decoder": "full"}, "light": {"decoder": "light"}, "tiny": {"decoder": "tiny"}},
}


def apply_overrides(config: dict, **schemes: str | None) -> dict:
    """A copy of `config` with per-component schemes replaced: dit=, t5=, clip= a scheme name,
    "bf16" (no quantization) or None/"preset" (keep the config's); attention= and decoder= one of
    RUN_OPTIONS."""
    out = dict(config)
    for option, choices in RUN_OPTIONS.items():
        name = schemes.pop(option, None)
        if name in (None, "", "preset"):
            continue
        if name not in choices:
            raise ConfigError(f"{option} {name!r} is not one of {', '.join(['preset', *choices])}")
        out.update(choices[name])
    for comp, name in schemes.items():
        if comp not in COMPONENTS:
            raise ConfigError(f"unknown component {comp!r}; use one of {', '.join(COMPONENTS)}")
        if name in (None, "", "preset"):
            continue
        off = name in ("bf16", "none", "Default")
        if comp == "dit":
            out.pop("mm_config", None)
            out["dit_quantized"] = not off
            out.pop("dit_quant_scheme", None) if off else out.update(dit_quant_scheme=name)
        else:
            out[f"{comp}_quantized"] = not off
            out.pop(f"{comp}_quant_scheme", None) if off else out.update({f"{comp}_quant_scheme": name})
    return out


def check_config_for_gpu(cfg: QuantConfig, gpu: GpuInfo | None) -> None:
    """Raise HardwareError with a sentence per component whose format this GPU cannot run."""
    if gpu is None:
        return  # on CPU every format runs on the reference kernel
    problems = []
    for comp in COMPONENTS:
        quant = getattr(cfg, comp)
        if quant.quantized:
            why = format_problem(quant.scheme.format, gpu)
            if why:
                problems.append(f"{comp.upper() if comp != 'dit' else 'DiT'} scheme {quant.scheme.name}: {why}")
    from .attention import plan_from_config
    from .attention.paths import gpu_problem

    family = plan_from_config(cfg, announce=False).self_attn
    why = gpu_problem(family, gpu.capability, gpu.name) if family != "sdpa" else None
    if why:
        problems.append(f"self-attention: {why}")
    if problems:
        raise HardwareError("\n".join(problems))


def format_problem(fmt: str, gpu: GpuInfo) -> str | None:
    major, minor = gpu.capability
    here = f"{gpu.name} is compute capability {major}.{minor}"
    if fmt.startswith("fp8") and not gpu.has_fp8:
        return f"FP8 needs an FP8-capable GPU ({FP8_GPUS}); {here}. Choose int8 instead (preset ampere-int8)."
    if fmt in MICROSCALED and not gpu.has_fp8:
        # the emulation's kernels are built and tested for FP8-capable GPUs only
        return (f"{fmt.upper()} runs (emulated) on FP8-capable GPUs only ({FP8_GPUS}); {here}. "
                "Choose int8 instead (preset ampere-int8).")
    return None


MICROSCALED = ("mxfp8", "nvfp4", "mxfp4")


def format_notices(cfg: QuantConfig, gpu: GpuInfo | None) -> list[str]:
    """Sentences about MX/NVFP4 formats: emulated before Blackwell; on Blackwell a native GEMM, verified at
    first use because it was written without a Blackwell GPU to test on (engine.kernels.torch_mx)."""
    if gpu is None:
        return []
    notes = []
    for comp in COMPONENTS:
        quant = getattr(cfg, comp)
        if not (quant.quantized and quant.scheme.format in MICROSCALED):
            continue
        what = f"{'DiT' if comp == 'dit' else comp.upper()} {quant.scheme.format.upper()}"
        if gpu.capability[0] in NATIVE_MICROSCALE_MAJORS:
            notes.append(f"{what} runs on the native block-scaled GEMM of {gpu.name} (Blackwell), checked against "
                         "the reference kernel at first use; if that check fails it runs emulated (slower than "
                         "bf16) and the log says why. Its speed has not been measured yet.")
        else:
            notes.append(f"{what} runs emulated on {gpu.name}: the weights stay packed (the memory saving is real) "
                         "but it is slower than bf16 and FP8 (0.8-1.0x bf16 per layer, measured on an H100); native "
                         "block-scaled GEMMs need Blackwell (sm100/sm120). Choose fp8 for speed.")
    return notes


def lighter_preset(name: str) -> str | None:
    """The next preset down in memory use, for out-of-memory advice."""
    kind = "int8" if name.endswith("int8") else "fp8"
    if name in ("hopper-fp8", "ada-fp8", "blackwell-fp8", "blackwell-nvfp4", "blackwell-mxfp8", "ampere-int8"):
        return f"{TIERS[0]}-{kind}"
    tier = name.rsplit("-", 1)[0]
    if tier in TIERS[:-1]:
        return f"{TIERS[TIERS.index(tier) + 1]}-{kind}"
    return {"lowmem-fp8-offload": "lowmem-fp8-block-offload", "lowmem-int8-offload": "lowmem-int8-block-offload"}.get(name)
