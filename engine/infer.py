"""LightX2V-style command line: one video from a diffusers-format Wan folder and a JSON config.

    python -m engine.infer --model_cls wan2.1 --task t2v --model_path DIR --config_json CFG \\
        --prompt "..." [--negative_prompt ...] [--image_path IMG] [--seed N] --save_result_path out.mp4

The config uses LightX2V's keys: infer_steps, target_video_length, target_height, target_width,
sample_guide_scale, sample_shift, fps, dit_quantized_ckpt, mm_config or dit_quant_scheme, t5_*, clip_*,
and denoising_step_list (LightX2V's distill configs: sample with its 4-step distilled Euler schedule).

    python -m engine.infer --save_tiny DIR [--task t2v|i2v]

writes the tiny built-in model as a diffusers-format folder (for tests and trying the command offline).

    torchrun --nproc_per_node N -m engine.infer ... (config with "parallel": {"seq_p_size": ..., "cfg_p_size": ...})

runs one video across N processes (engine/parallel); rank 0 writes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import parallel
from .cli import run_command
from .errors import EngineError

MODEL_CLASSES = {"wan2.1": 1, "wan2.2_moe": 2}  # --model_cls -> number of transformers
TINY_MARKER = "quantwan_tiny.json"  # written by --save_tiny: the folder holds the tiny model (and its limits)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.infer", description=__doc__.split("\n")[0])
    p.add_argument("--model_cls", choices=sorted(MODEL_CLASSES), default="wan2.1")
    p.add_argument("--task", choices=("t2v", "i2v"), default="t2v")
    p.add_argument("--model_path", help="diffusers-format Wan folder (model_index.json, vae/, tokenizer/, ...)")
    p.add_argument("--config_json", help="LightX2V-style JSON config")
    p.add_argument("--prompt", default="")
    p.add_argument("--negative_prompt", default="")
    p.add_argument("--image_path", help="input image for i2v")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save_result_path", default="output.mp4")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--save_tiny", metavar="DIR", help="write the tiny built-in model to DIR and exit")
    return p.parse_args(argv)


def save_tiny(folder: str | Path, task: str = "t2v", seed: int = 0) -> Path:
    from .tiny import build_tiny_pipeline

    import json
    from dataclasses import asdict

    from .builder import TINY_LIMITS

    folder = Path(folder)
    build_tiny_pipeline(task, seed).save_pretrained(folder)
    (folder / TINY_MARKER).write_text(json.dumps({"task": task, "limits": asdict(TINY_LIMITS)}, indent=1))
    return folder


def folder_limits(model_dir: Path):
    """The request limits of a model folder, known before loading it: the tiny model's (marker file, or a
    transformer of the tiny model's size saved before the marker existed) or the general ones."""
    import json

    from .builder import TINY_LIMITS
    from .request import Limits
    from .tiny import TINY_DIM

    if (model_dir / TINY_MARKER).is_file():
        return TINY_LIMITS
    try:
        config = json.loads((model_dir / "transformer" / "config.json").read_text())
        width = config["num_attention_heads"] * config["attention_head_dim"]
    except (OSError, ValueError, KeyError, TypeError):
        return Limits()  # the loader names what is wrong with the folder
    return TINY_LIMITS if width == TINY_DIM and config.get("num_layers") == 2 else Limits()


def _check_before_loading(args, cfg, model_dir: Path):
    """The request against the folder's limits and the config against the GPU, before any weights load."""
    from dataclasses import replace

    import json

    from .builder import TINY_LIMITS
    from .gpu import detect_gpu
    from .presets import check_config_for_gpu
    from .request import VideoRequest, validate

    try:
        index = json.loads((model_dir / "model_index.json").read_text())
        pipeline_class = str(index.get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        raise EngineError(f"{model_dir} is not a diffusers-format model folder (no readable model_index.json); "
                          "save one with `python -m engine.infer --save_tiny DIR`") from None
    folder_task = "i2v" if "ImageToVideo" in pipeline_class else "t2v"
    if folder_task != args.task:
        raise EngineError(f"{model_dir} is a {folder_task} model but --task {args.task} was given")
    from .vae.check import check_decoder_setting

    check_decoder_setting(cfg, from_hub=False, z_dim=_folder_z_dim(model_dir))  # this command never downloads
    device = _device(args.device)
    if device.type == "cuda":
        gpu = detect_gpu(device.index or 0)
        if gpu is None:
            raise EngineError(f"--device {args.device} asks for CUDA but no CUDA GPU is visible; use --device cpu")
        check_config_for_gpu(cfg, gpu)
    image = _image(args.image_path) if args.task == "i2v" else None
    req = VideoRequest.from_lightx2v(cfg.raw, prompt=args.prompt, negative_prompt=args.negative_prompt,
                                     task=args.task, image=image, seed=args.seed)
    limits = folder_limits(model_dir)
    if limits == TINY_LIMITS:
        limits = replace(limits, name=f"the tiny model in {model_dir} takes at most {limits.max_height}x"
                                      f"{limits.max_width}, {limits.max_frames} frames and {limits.max_steps} steps: "
                                      "set target_height, target_width, target_video_length and infer_steps in the "
                                      "config, as presets/cpu-demo.json does")
    return validate(req, limits), device


def _folder_z_dim(model_dir: Path) -> int | None:
    import json

    try:
        z_dim = json.loads((model_dir / "vae" / "config.json").read_text()).get("z_dim", 16)
    except (OSError, ValueError, AttributeError):
        return None  # the loader names what is wrong with the folder
    return z_dim if isinstance(z_dim, int) else None


def _device(name):
    import torch

    if not name:
        from .builder import default_device

        return default_device()
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise EngineError(f"--device {name!r} is not a device; use cuda, cuda:1 or cpu") from None


def run(args: argparse.Namespace) -> Path:
    from .builder import build_from_dir
    from .config import load_config
    from .generate import generate

    if not args.model_path or not args.config_json:
        raise EngineError("--model_path and --config_json are required (or --save_tiny DIR)")
    cfg = load_config(args.config_json)
    par = parallel.start(cfg, args.device)  # None unless the config has "parallel" (under torchrun)
    req, device = _check_before_loading(args, cfg, Path(args.model_path))
    model = build_from_dir(args.model_path, cfg, device=par.device if par else device,
                           limits=folder_limits(Path(args.model_path)))
    if cfg.get("denoising_step_list") is not None:  # LightX2V's distill configs: its 4-step sampler
        from .builder import use_distill_sampler

        use_distill_sampler(model.pipe, cfg.get("sample_shift", 5.0), cfg.get("denoising_step_list"))
        print(f"sampler: distilled Euler, denoising_step_list {cfg.get('denoising_step_list')}, "
              f"shift {cfg.get('sample_shift', 5.0)}")
    want = MODEL_CLASSES[args.model_cls]
    have = 2 if getattr(model.pipe, "transformer_2", None) is not None else 1
    if have != want:
        raise EngineError(f"--model_cls {args.model_cls} expects {want} transformer(s) but {args.model_path} has "
                          f"{have}; use --model_cls {'wan2.2_moe' if have == 2 else 'wan2.1'}")
    if model.task != args.task:
        raise EngineError(f"{args.model_path} is a {model.task} model but --task {args.task} was given")
    out = Path(args.save_result_path)
    if par is not None:
        return parallel.run_rank(par, model, req, out, generate)

    def step(info):
        print(f"step {info.step}/{info.total}: {info.seconds:.2f} s", flush=True)

    result = generate(model, req, out.parent if str(out.parent) else ".", on_step=step)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.path.replace(out)
    for comp, text in model.reports.items():
        print(f"{comp}: {text}")
    print(f"saved {out} ({result.frames} frames, {result.width}x{result.height}) in "
          f"{result.stats.seconds_total:.1f} s")
    return out


def _image(path):
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise EngineError("--task i2v needs --image_path")
    from .request import MAX_IMAGE_SIDE

    try:
        with Image.open(path) as image:  # lazy: the size is known before the pixels are decoded
            if max(image.size) > MAX_IMAGE_SIDE:
                raise EngineError(f"the image {path} is {image.size[0]}x{image.size[1]}; sides up to "
                                  f"{MAX_IMAGE_SIDE} pixels are accepted: scale it down first")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as e:
        raise EngineError(f"cannot read the image {path}: {e}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.save_tiny:
        return run_command(lambda: print(f"saved the tiny {args.task} model to {save_tiny(args.save_tiny, args.task)}"))
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
