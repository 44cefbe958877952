"""Build a ready-to-run Wan pipeline from a config: the tiny built-in model, a diffusers-format folder
(with LightX2V pre-quantized DiT/T5/CLIP files where given), or a catalog model from the Hub.

Pre-quantized files go through the checkpoint loaders (engine.checkpoint.dit.load_dit,
engine.checkpoint.encoders.load_t5/load_clip): the model is built on the meta device and never exists in
bf16. Components without such a file are loaded from the base folder and quantized on load.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .catalog import ModelEntry
from .checkpoint.files import regular_file
from .config import QuantConfig
from .errors import CheckpointError, ConfigError
from .pipeline import quantize_pipeline
from .request import Limits

log = logging.getLogger("engine.builder")

# component -> (module, function) of the loader for LightX2V-format files
LOADERS = {"dit": ("engine.checkpoint.dit", "load_dit"), "t5": ("engine.checkpoint.encoders", "load_t5"),
           "clip": ("engine.checkpoint.encoders", "load_clip")}
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
    offload: str | None = None  # None | "text" (T5 streamed) | "model" | "block" | "leaf"
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
    from .attention import install_for_pipeline

    install_for_pipeline(pipe, cfg)  # on the CPU the 8-bit choice runs the reference that defines its numerics
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
    configure_decoder(pipe, cfg, decoder_ckpt, reports, device.type)  # before placement: offload hooks must see the decoder
    offload = place_pipeline(pipe, cfg, device, reports)
    return LoadedModel(pipe, task, label or model_dir.name, cfg, device, limits, reports, preset, offload=offload)


def configure_decoder(pipe, cfg: QuantConfig, decoder_ckpt: str | None, reports: dict,
                      device_type: str = "cpu") -> None:
    """The decoder choice (full / light / tiny, engine/vae/choice.py) and the full VAE's speed settings
    (engine/vae/speed.py), both read from the config. `decoder_ckpt`: the file the Hub plan fetched."""
    from .vae.choice import decoder_choice, use_decoder
    from .vae.speed import apply_speed, speed_settings

    choice, speed = decoder_choice(cfg), speed_settings(cfg, device_type)
    notes = [use_decoder(pipe, choice, decoder_ckpt)]
    if choice.kind != "tiny":  # the tiny decoder has its own dtype; the full VAE only encodes then
        notes.append(apply_speed(pipe.vae, speed, device_type))
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
            if planned < count and module.device.type != "cuda":
                note = f"fused Wan block forward on {count} blocks, planned at their first run on the GPU"
            elif planned < count:
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
    if os.path.lexists(path) and not path.is_file():
        try:
            regular_file(path, "model index")
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a diffusers-format model folder (no model_index.json). Use a "
                          "Wan-AI/...-Diffusers repo, or save one with `python -m engine.infer --save_tiny DIR`.")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path} is not a readable JSON file ({e}); download the model again or fix the file") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name", ""), str) or not all(
            v is None or isinstance(v, list) for k, v in index.items() if k in ("transformer", "transformer_2")):
        raise ConfigError(f"{path} is not a diffusers model_index.json (it needs an object with `_class_name` and "
                          "[library, class] pairs); download the model again")
    return index


def _sub_config(model_dir: Path, folder: str, library: str):
    try:
        if library == "diffusers":
            from diffusers import WanTransformer3DModel

            return WanTransformer3DModel.load_config(model_dir / folder)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_dir / folder)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{model_dir / folder}: its config.json cannot be read ({str(e).splitlines()[0]}); "
                          "download the model again") from None


def _load(component, path, config, dtype, scheme):
    load = loader(component)
    if load is None:
        raise CheckpointError(f"{path}: this build has no loader for LightX2V {component} files")
    model, report = load(path, config, dtype=dtype, scheme=scheme)
    return model, report.summary()


def place_pipeline(pipe, cfg: QuantConfig, device: torch.device, reports: dict) -> str | None:
    """Put each component where the config's offload keys say (engine.memory.placement_from_config):

    cpu_offload false             everything on the GPU; `t5_cpu_offload` streams the text encoder
    offload_granularity "block"   diffusers' group offloading of each transformer block with prefetch on a
                                  second CUDA stream (`use_stream`); the VAE stays on the GPU
    offload_granularity "phase"   the same per layer (leaf level); the fused block is not installed, since
                                  it calls the quantized kernels directly and would skip the layers' hooks
    offload_granularity "model"   diffusers' model offload: each component on the GPU only while it runs
    The fused Wan block goes in first: offload hooks capture a block's `forward` when they are registered.
    """
    from .memory import placement_from_config

    from .attention import install_for_pipeline

    place = placement_from_config(cfg.raw)
    install_for_pipeline(pipe, cfg)  # attn1's path (self_attn_1_type); chosen per device at first run
    if device.type != "cuda":
        pipe.to(device)
        return None
    fuse = cfg.get("fused_wan", True) is not False and place.dit != "leaf"
    if place.dit == "model":
        pipe.enable_model_cpu_offload(device=device)
        if fuse:
            _fuse(pipe, reports)
        return "model"
    transformers = [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m]
    for module in transformers:
        if place.dit == "gpu":
            module.to(device)
    if fuse:
        _fuse(pipe, reports)  # before any offload hook; streamed blocks plan their kernels at first use
    for module in transformers:
        if place.dit != "gpu":
            stream_module(module, device, "block_level" if place.dit == "block" else "leaf_level",
                          use_stream=cfg.get("offload_use_stream", True))
    for attr in ("text_encoder", "image_encoder"):
        module = getattr(pipe, attr, None)
        if module is None:
            continue
        if place.text == "stream":
            stream_module(module, device, "leaf_level", use_stream=cfg.get("offload_use_stream", True))
        else:
            module.to(device)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.to(device)
    if place.dit == "gpu":
        return "text" if place.text == "stream" else None
    return place.dit


def stream_module(module, device, level: str, use_stream: bool = True) -> None:
    """diffusers' group offloading (block_level or leaf_level): weights live in pinned CPU memory and a
    group is copied to `device` just before it runs, the next one prefetched on a side stream when
    `use_stream`. Its hooks move every parameter and buffer of a group, so QuantLinear's quantized
    buffers (codes and scales) stream like weights. Kernel caches are dropped after each forward."""
    from diffusers.hooks import apply_group_offloading

    kwargs = {"num_blocks_per_group": 1} if level == "block_level" else {}
    apply_group_offloading(module, onload_device=torch.device(device), offload_type=level, use_stream=use_stream,
                           **kwargs)
    offload_buffers_too(module)
    drop_kernel_caches_after_forward(module)


def offload_buffers_too(module) -> int:
    """diffusers 0.42's group offloading with `use_stream` onloads a group's module buffers but, when it
    offloads, restores only their parameters: QuantLinear keeps its codes and scales in buffers, so every
    streamed block stayed on the GPU after it ran (measured on an H200: 14B fp8 under a 12 GiB cap ran out of
    memory at 11.6 GiB allocated in the first step, 0.5 GiB resident after placement). Each group's offload
    also puts its buffers back on their pinned CPU copies; a no-op where diffusers already does it."""
    groups = {}
    for mod in module.modules():
        registry = getattr(mod, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        group = getattr(hook, "group", None)
        if group is not None and group.stream is not None and getattr(group, "cpu_param_dict", None) is not None:
            groups[id(group)] = group
    for group in groups.values():
        def offload(group=group, original=group._offload_to_memory):
            original()  # synchronizes the compute stream first (record_stream off), then restores parameters
            for member in group.modules:
                for buf in member.buffers():
                    cpu = group.cpu_param_dict.get(buf)
                    if cpu is not None and buf.data.device != cpu.device:
                        buf.data = cpu
        group._offload_to_memory = offload
    return len(groups)


def drop_kernel_caches_after_forward(module) -> int:
    """A QuantLinear's kernel keeps derived tensors (bf16 bias, fp32 scales, and on Blackwell the weight
    operand itself) made from the buffers it saw on the GPU. Group offloading swaps `buffer.data` without
    calling `_apply`, so those caches would keep a GPU copy of every layer alive after it is offloaded.
    Forward hooks on each QuantLinear (layers called as modules) and each Wan block (the fused forward
    calls the kernels directly) drop them once the module has run; the next run prepares them again."""
    from .linear import QuantLinear

    def drop(mod, _args, _out):
        for layer in mod.modules():
            if isinstance(layer, QuantLinear):
                layer._kernels.clear()
                layer.__dict__.pop("_kernel_cache", None)

    count = 0
    for mod in module.modules():
        if isinstance(mod, QuantLinear) or type(mod).__name__ == "WanTransformerBlock":
            mod.register_forward_hook(drop)
            count += 1
    return count


def _path(p) -> str | None:
    return str(p) if p else None
