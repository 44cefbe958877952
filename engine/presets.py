"""Pick a preset for a GPU and say why; check that a config's schemes can run on it; per-component overrides.

What fits instead when a setup does not, and the decoder policy on a tight GPU: engine/fit.py.
Every function takes the GPU as an input (engine.gpu's `GpuInfo`, or None for no GPU); what runs where is
asked of the kernels' registry (engine.kernels).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import fit, memory
from .catalog import ModelEntry
from .config import COMPONENTS, QuantConfig
from .errors import ConfigError, HardwareError
from .formats import get_format
from .gpu import GB, GENERATIONS, GpuInfo
from .kernels import capable, formats_for, runnable
from .kernels.base import min_capability
from .preset_files import PRESET_DIR, TIERS, list_presets, load_preset, plan_for, preset_runs  # noqa: F401

@dataclass(frozen=True)
class PresetChoice:
    name: str
    config: dict
    reason: str


DEFAULT_SIZE = (480, 832, 81)  # height, width, frames: the presets' target size


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
              "pre-ampere": ("pre-ampere-bf16", pre_ampere_reason(gpu))}
    name, why = family[gpu.family]
    size = size or ((*model.default_size, 81) if model else DEFAULT_SIZE)
    budget = gpu.free_bytes
    what = f"{model.label if model else 'a 14B model'} at {memory.size_text(*size)}"
    for candidate in (name, *fit.tiers(gpu)):
        config = apply_overrides(load_preset(candidate), decoder=decoder)
        est = plan_for(model, config, size, budget)
        if est.need <= budget:
            lead = f"{gpu.label}: {why}." if candidate == name else f"{gpu.label}, {fit.kind_of(gpu).upper()}:"
            hint = fit.faster_decoders(model, est, config, size, budget)
            return _choice(candidate, f"{lead} {memory.describe(est, budget, what)}{hint}")
    lightest = fit.tiers(gpu)[-1]
    user = apply_overrides(load_preset(lightest), decoder=decoder)
    return _choice(lightest, fit.does_not_fit(gpu, model, user, size, budget))


def pre_ampere_reason(gpu: GpuInfo) -> str:
    """The sentence for a GPU on which no 8-bit format runs: what runs instead and what that costs."""
    major, minor = gpu.capability
    needs = ", ".join(f"{get_format(f).label.upper()} {c[0]}.{c[1]}" for f in ("int8", "fp8")
                      if (c := min_capability(f)))
    return (f"no kernel of this engine runs an 8-bit format on compute capability {major}.{minor} (the lowest each "
            f"needs: {needs}), so nothing is quantized: the model runs in bf16, streamed to the GPU block by block. "
            "bf16 weights take twice the memory of 8-bit ones, and this GPU has no bf16 tensor cores, so expect "
            "it to be slow (not measured)")


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
        return memory.describe(est, budget) + fit.faster_decoders(model, est, config, size, budget)
    fits = fit.first_fit(gpu, model, config, size, budget)
    if fits is None:
        raise HardwareError(fit.does_not_fit(gpu, model, config, size, budget))
    option, need = fits
    preset, _, light = fit.lightest(gpu, model, config, size, budget)
    lightest = fit.option_text(preset, config, light)
    text = (f"{memory.describe(est, budget)} That is more than this GPU has. What fits: {option} (about "
            f"{need / GB:.1f} GiB)")
    text += "." if lightest == option else f"; the lightest setup, {lightest}, needs about {light.need / GB:.1f} GiB."
    if strict:
        raise HardwareError(f"{text} Choose it (or preset auto), or a smaller size or fewer frames.")
    return text


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
        for rule in quant.rules:  # per-layer schemes (engine/layer_rules.py)
            why = format_problem(rule.format, gpu) if rule.format else None
            if why:
                problems.append(f"`{comp}_layer_schemes` {rule.label} ({rule.scheme.name}): {why}")
    from .attention import plan_from_config
    from .attention.paths import gpu_problem

    family = plan_from_config(cfg, announce=False).self_attn
    why = gpu_problem(family, gpu.capability, gpu.name) if family != "sdpa" else None
    if why:
        problems.append(f"self-attention: {why}")
    if problems:
        raise HardwareError("\n".join(problems))


def format_problem(fmt: str, gpu: GpuInfo) -> str | None:
    """Why no kernel runs `fmt` on `gpu` (without being asked for by name), with what to choose instead;
    None when one does. Read from the kernels' registry: the same answer the kernels give at load time."""
    if runnable(fmt, gpu.capability):
        return None
    major, minor = gpu.capability
    low = min_capability(fmt)
    label = get_format(fmt).label.upper()
    if low is None:
        why = "; ".join(f"{name}: {why}" for name, why in capable(fmt, gpu.capability))
        need = f"{label} runs on no GPU here ({why or 'no GPU kernel implements it; the CPU reference kernel does'})"
    else:
        native = any(k.native for k in runnable(fmt, low))
        gpus = ", ".join(names for cap, _, names in reversed(GENERATIONS) if cap >= low)
        need = (f"{label} needs" if native else f"{label} runs (emulated) on") + \
               f" compute capability {low[0]}.{low[1]} or newer ({gpus})"
    return f"{need}; {gpu.name} is compute capability {major}.{minor}. {_instead(gpu)}"


def _instead(gpu: GpuInfo) -> str:
    here = formats_for(gpu.capability, native=True)
    if here:
        preferred = "fp8" if "fp8" in here else here[0]
        family = {"blackwell": "blackwell-fp8", "hopper": "hopper-fp8", "ada": "ada-fp8", "ampere": "ampere-int8"}
        return f"Choose {get_format(preferred).label} instead (preset {family.get(gpu.family, 'auto')})."
    return ("This GPU runs no quantized format with this engine's kernels: choose bf16 for every component "
            "(preset pre-ampere-bf16, which auto picks here).")


def format_notices(cfg: QuantConfig, gpu: GpuInfo | None) -> list[str]:
    """Sentences about formats that run, but not on tensor cores made for them (emulated), or on a kernel
    checked against the reference at first use (Blackwell's native block-scaled GEMM, written without a
    Blackwell GPU to test on: engine.kernels.torch_mx). Asked of the kernels' registry."""
    if gpu is None:
        return []
    notes = []
    formats = [(comp, fmt) for comp in COMPONENTS for fmt in getattr(cfg, comp).formats]  # scheme's and rules'
    for comp, fmt in formats:
        kernels = runnable(fmt, gpu.capability)
        if not kernels:
            continue  # check_config_for_gpu refuses it
        what = f"{'DiT' if comp == 'dit' else comp.upper()} {fmt.upper()}"
        if getattr(kernels[0], "checked_at_first_use", False):
            notes.append(f"{what} runs on the native block-scaled GEMM of {gpu.name} (Blackwell), checked against "
                         "the reference kernel at first use; if that check fails it runs emulated (slower than "
                         "bf16) and the log says why. Its speed has not been measured yet.")
        elif not kernels[0].native:
            notes.append(f"{what} runs emulated on {gpu.name}: the weights stay packed (the memory saving is real) "
                         "but it is slower than bf16 and FP8 (0.8-1.0x bf16 per layer, measured on an H100); native "
                         "block-scaled GEMMs need Blackwell (sm100/sm120). Choose fp8 for speed.")
    return notes


def lighter_preset(name: str) -> str | None:
    """The next preset down in memory use, for out-of-memory advice."""
    name = name.removesuffix("-speed")  # a family's speed preset weighs what the family's does
    kind = "int8" if name.endswith("int8") else "fp8"
    if name in ("hopper-fp8", "ada-fp8", "blackwell-fp8", "blackwell-nvfp4", "blackwell-mxfp8", "ampere-int8"):
        return f"{TIERS[0]}-{kind}"
    tier = name.rsplit("-", 1)[0]
    if tier in TIERS[:-1]:
        return f"{TIERS[TIERS.index(tier) + 1]}-{kind}"
    return {"lowmem-fp8-offload": "lowmem-fp8-block-offload", "lowmem-int8-offload": "lowmem-int8-block-offload"}.get(name)
