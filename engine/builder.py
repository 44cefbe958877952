"""Build a ready-to-run Wan pipeline from a config: the tiny built-in model, a diffusers-format folder
(with LightX2V pre-quantized DiT/T5/CLIP files where given), or a catalog model from the Hub.

Pre-quantized files go through the checkpoint loaders (engine.checkpoint.load_dit,
engine.encoders.load_t5/load_clip): the model is built on the meta device and never exists in
bf16. Components without such a file are loaded from the base folder and quantized on load.
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .catalog import ModelEntry
from .config import QuantConfig
from .errors import CheckpointError, ConfigError
from .pipeline import quantize_pipeline
from .request import Limits

log = logging.getLogger("engine.builder")

# component -> (module, function) of the loader for LightX2V-format files
LOADERS = {"dit": ("engine.checkpoint", "load_dit"), "t5": ("engine.encoders", "load_t5"),
           "clip": ("engine.encoders", "load_clip")}
TINY_LIMITS = Limits(max_height=64, max_width=64, max_frames=17, max_steps=8)


@dataclass
class LoadedModel:
    pipe: object
    task: str
    label: str
    config: QuantConfig
    device: torch.device
    limits: Limits = Limits()
    reports: dict[str, str] = field(default_factory=dict)  # component -> what was quantized or loaded
    preset: str | None = None
    max_sequence_length: int = 512
    offload: str | None = None  # None | "model" | "block"
    schedule: str = ""  # which sampling schedule is used, for the UI


def loader(component: str):
    """The loader for LightX2V files of `component`, or None when this build has none."""
    module, name = LOADERS[component]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def loadable_components() -> frozenset[str]:
    return frozenset(c for c in LOADERS if loader(c) is not None)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_tiny(task: str, cfg: QuantConfig, seed: int = 0, preset: str | None = None) -> LoadedModel:
    from .tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(task, seed)
    pipe.set_progress_bar_config(disable=True)  # progress goes to our callback, not a terminal bar
    reports = {k: r.summary() for k, r in quantize_pipeline(pipe, cfg).items()}
    return LoadedModel(pipe, task, f"tiny built-in Wan ({task}, random weights)", cfg, torch.device("cpu"),
                       TINY_LIMITS, reports, preset, max_sequence_length=64)


def build_from_dir(model_dir: str | Path, cfg: QuantConfig, *, dit_ckpts: list[str] | None = None,
                   t5_ckpt: str | None = None, clip_ckpt: str | None = None, decoder_ckpt: str | None = None,
                   device=None, dtype=None,
                   label: str | None = None, preset: str | None = None, limits: Limits = Limits()) -> LoadedModel:
    import diffusers
    from diffusers import AutoencoderKLWan

    model_dir = Path(model_dir)
    index = _index(model_dir)
    device = torch.device(device) if device else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    task = "i2v" if "ImageToVideo" in index.get("_class_name", "") else "t2v"
    parts, reports = {}, {}
    names = [n for n in ("transformer", "transformer_2") if (index.get(n) or [None])[0]]
    ckpts = dit_ckpts or dit_ckpts_from_config(cfg, len(names))
    if ckpts and len(ckpts) != len(names):
        raise ConfigError(f"{model_dir} has {len(names)} transformers ({', '.join(names)}) but "
                          f"{len(ckpts)} quantized DiT file(s) were given; give one per transformer")
    for name, ckpt in zip(names, ckpts or []):
        parts[name], reports[name] = _load("dit", ckpt, _sub_config(model_dir, name, "diffusers"), dtype,
                                           cfg.dit.scheme)
    for comp, folder, ckpt in (("t5", "text_encoder", t5_ckpt or cfg.t5.ckpt),
                               ("clip", "image_encoder", clip_ckpt or cfg.clip.ckpt)):
        if ckpt and (model_dir / folder).is_dir():
            if loader(comp) is None:
                reports[folder] = f"{ckpt} not used: this build cannot load LightX2V {comp} files; quantizing on load"
                continue
            parts[folder], reports[folder] = _load(comp, ckpt, _sub_config(model_dir, folder, "transformers"),
                                                   dtype, getattr(cfg, comp).scheme)
    # Wan's VAE is numerically fragile in bf16; diffusers' examples keep it in float32 too.
    parts["vae"] = AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch.float32)
    # The concrete class, not DiffusionPipeline: in diffusers 0.42 DiffusionPipeline.from_pretrained with
    # torch_dtype drops components passed in (our pre-quantized transformer) and loads the folder's own.
    pipeline_class = getattr(diffusers, index.get("_class_name", ""), None)
    if pipeline_class is None or not index["_class_name"].startswith("Wan"):
        raise ConfigError(f"{model_dir} holds a {index.get('_class_name')!r}, not a Wan pipeline")
    try:
        pipe = pipeline_class.from_pretrained(model_dir, torch_dtype=dtype, **parts)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the diffusers pipeline from {model_dir}: {e}") from None
    # Components loaded in high precision (base weights, or a bf16 LightX2V distilled DiT) are quantized
    # here, layer by layer on the GPU when there is one: the bf16 file is memory-mapped, so neither host
    # nor GPU memory ever holds the whole bf16 model.
    work = device if device.type == "cuda" else None
    for attr, report in quantize_pipeline(pipe, cfg, work_device=work).items():
        if report.swapped:
            loaded_from = reports.get(attr)
            reports[attr] = (f"{loaded_from}\n  - quantized on load: {report.summary()}" if loaded_from
                             else report.summary())
    pipe.set_progress_bar_config(disable=True)
    configure_decoder(pipe, cfg, decoder_ckpt, reports)
    offload = _place(pipe, cfg, device)
    if device.type == "cuda" and cfg.get("fused_wan", True):
        _fuse(pipe, reports)
    return LoadedModel(pipe, task, label or model_dir.name, cfg, device, limits, reports, preset, offload=offload)


def configure_decoder(pipe, cfg: QuantConfig, decoder_ckpt: str | None, reports: dict) -> None:
    """The decoder choice (full / light / tiny, engine/vae/choice.py) and the full VAE's speed settings
    (engine/vae/speed.py), both read from the config. `decoder_ckpt`: the file the Hub plan fetched."""
    from .vae.choice import decoder_choice, use_decoder
    from .vae.speed import apply_speed, speed_settings

    choice, speed = decoder_choice(cfg), speed_settings(cfg)
    notes = [use_decoder(pipe, choice, decoder_ckpt)]
    if choice.kind != "tiny":  # the tiny decoder has its own dtype; the full VAE only encodes then
        notes.append(apply_speed(pipe.vae, speed))
    note = "; ".join(n for n in notes if n)
    if note:
        reports["vae"] = note


def _fuse(pipe, reports: dict) -> None:
    """Fold the elementwise work around the quantized linears into their activation quantization
    (engine/fused.py); blocks that cannot take it keep diffusers' forward and the log says why."""
    from .fused import install_fused_wan

    for attr in ("transformer", "transformer_2"):
        module = getattr(pipe, attr, None)
        if module is not None:
            count = install_fused_wan(module)
            planned = sum(1 for m in module.modules() if m.__dict__.get("_fused_plan"))
            note = f"fused Wan block forward on {planned} of {count} blocks"
            if planned < count:
                note += " (the others keep diffusers' forward; the log says why)"
            reports[attr] = f"{reports[attr]}\n  - {note}" if reports.get(attr) else note


def build_from_hub(entry: ModelEntry, cfg: QuantConfig, progress=None, *, preset: str | None = None,
                   endpoint: str | None = None, cache_dir=None) -> LoadedModel:
    from . import hub

    plan = hub.plan_downloads(entry, cfg, loadable_components())
    paths = hub.fetch(plan, progress, endpoint=endpoint, cache_dir=cache_dir)
    dit = None
    if plan.distilled_dit:  # pre-quantized, or bf16 distilled and quantized on load by build_from_dir
        folder = paths["dit"].parent
        dit = [str(folder / name) for name in plan.distilled_dit]
    size = entry.max_size
    loaded = build_from_dir(paths["base"], cfg, dit_ckpts=dit, t5_ckpt=_path(paths.get("t5")),
                            clip_ckpt=_path(paths.get("clip")), decoder_ckpt=_path(paths.get("decoder")),
                            label=entry.label, preset=preset,
                            limits=Limits(max_height=max(size), max_width=max(size)))
    if dit:
        use_distill_sampler(loaded.pipe, cfg.get("sample_shift", 5.0), cfg.get("denoising_step_list"))
    loaded.schedule = entry.schedule()
    return loaded


def use_distill_sampler(pipe, shift: float, denoising_step_list=None) -> None:
    """LightX2V samples its 4-step distilled DiTs with first-order flow-matching (Euler) steps at the
    timesteps of `denoising_step_list` (default [1000, 750, 500, 250]) shifted by `shift`; the base repos
    ship UniPC (multistep), tuned for 40-50 steps. Swap in that sampler (engine.schedulers)."""
    from .schedulers import distill_scheduler

    pipe.scheduler = distill_scheduler(shift, denoising_step_list)


def dit_ckpts_from_config(cfg: QuantConfig, transformers: int) -> list[str]:
    """LightX2V names the two Wan2.2 experts' files `high_noise_quantized_ckpt` / `low_noise_quantized_ckpt`."""
    if transformers == 2 and cfg.get("high_noise_quantized_ckpt"):
        return [cfg.get("high_noise_quantized_ckpt"), cfg.get("low_noise_quantized_ckpt")]
    return [cfg.dit.ckpt] if cfg.dit.ckpt else []


def _index(model_dir: Path) -> dict:
    path = model_dir / "model_index.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a diffusers-format model folder (no model_index.json). Use a "
                          "Wan-AI/...-Diffusers repo, or save one with `python -m engine.infer --save_tiny DIR`.")
    return json.loads(path.read_text())


def _sub_config(model_dir: Path, folder: str, library: str):
    if library == "diffusers":
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel.load_config(model_dir / folder)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir / folder)


def _load(component, path, config, dtype, scheme):
    load = loader(component)
    if load is None:
        raise CheckpointError(f"{path}: this build has no loader for LightX2V {component} files")
    model, report = load(path, config, dtype=dtype, scheme=scheme)
    return model, report.summary()


def _place(pipe, cfg: QuantConfig, device: torch.device) -> str | None:
    """Move to the device, or offload as the config asks (only meaningful on a GPU)."""
    if device.type == "cuda" and cfg.get("cpu_offload"):
        if cfg.get("offload_granularity", "model") == "model":
            pipe.enable_model_cpu_offload(device=device)
            return "model"
        pipe.enable_sequential_cpu_offload(device=device)
        return "block"
    pipe.to(device)
    return None


def _path(p) -> str | None:
    return str(p) if p else None
