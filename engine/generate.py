"""Run one generation on a loaded model: progress per denoising step, cancellation, mp4 export, stats.

One job at a time per process (GPU_LOCK, the only such lock: the service holds it across load and
generate, re-entering it here): two videos at once would only fight over GPU memory.
Cancellation is cooperative: the step callback raises, so the pipeline stops between steps.
An out-of-memory error frees what it can and suggests a lighter preset.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .attention import set_denoising_step
from .builder import LoadedModel
from .errors import EngineError
from .presets import lighter_preset
from .memory import prepare_decode
from .request import VideoRequest, validate
from .stats import kernel_table, weight_bytes

log = logging.getLogger("engine.generate")
GPU_LOCK = threading.RLock()


class GenerationError(EngineError):
    """Generation failed in a way the user can act on (out of memory, ...)."""


class Cancelled(EngineError):
    """The user stopped the generation."""


@dataclass
class StepInfo:
    step: int  # 1-based
    total: int
    seconds: float  # this step's duration
    latents: object = None  # the latents after this step (normalised, as the DiT sees them): live previews
    pipe: object = None  # the pipeline that made them (its VAE config un-normalises them)


@dataclass
class RunStats:
    seconds_total: float
    seconds_encode: float  # prompt/image encoding before the first step
    seconds_per_step: list[float]
    seconds_decode: float
    peak_gpu_bytes: int | None
    weight_bytes: dict[str, int]
    kernels: dict[str, dict[str, str]]  # component -> layer type -> "format: kernel"
    device: str
    offload: str | None = None
    seconds_load: float | None = None  # building the model (None: it was already loaded)
    seconds_download: float | None = None  # fetching files from the Hub (0: all were in the cache)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        per_step = self.seconds_per_step
        return {
            "device": self.device, "offload": self.offload or "none",
            "total_s": round(self.seconds_total, 3), "encode_s": round(self.seconds_encode, 3),
            "per_step_s": [round(s, 3) for s in per_step],
            "mean_step_s": round(sum(per_step) / len(per_step), 3) if per_step else None,
            "decode_s": round(self.seconds_decode, 3),
            "load_s": None if self.seconds_load is None else round(self.seconds_load, 3),
            "download_s": None if self.seconds_download is None else round(self.seconds_download, 3),
            "peak_gpu_mem_GiB": round(self.peak_gpu_bytes / 2**30, 3) if self.peak_gpu_bytes is not None else None,
            "weights_MiB": {k: round(v / 2**20, 2) for k, v in self.weight_bytes.items()},
            "kernels": self.kernels, **self.extra,
        }


@dataclass
class VideoResult:
    path: Path
    frames: int
    height: int
    width: int
    stats: RunStats
    request: VideoRequest


def generate(model: LoadedModel, req: VideoRequest, out_dir: str | Path, *,
             on_step: Callable[[StepInfo], None] | None = None, cancel: threading.Event | None = None,
             wait: bool = True) -> VideoResult:
    """Validate, run, export. `wait=False` raises GenerationError at once when another thread's job is
    running (the thread already holding GPU_LOCK, e.g. VideoService.run, re-enters it)."""
    req = validate(req, model.limits, model.task)
    if not GPU_LOCK.acquire(blocking=wait):
        raise GenerationError("another generation is running; wait for it to finish")
    try:
        return _run(model, req, Path(out_dir), on_step, cancel)
    finally:
        GPU_LOCK.release()


def _run(model, req, out_dir, on_step, cancel) -> VideoResult:
    pipe = model.pipe
    _set_shift(pipe, req.shift)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    def clock() -> float:
        # CUDA kernels run asynchronously: without a synchronize, a mark would time the CPU's queueing and
        # the decode would absorb the steps' real work.
        if cuda:
            torch.cuda.synchronize(model.device)
        return time.perf_counter()

    marks = {"start": clock()}

    def first_forward(_module, _args):
        if "denoise" not in marks:
            marks["denoise"] = clock()

    def step_end(_pipe, index, _t, kwargs):
        set_denoising_step(index + 1, req.steps)  # the attention plan's bf16 first/last steps
        now = clock()
        last = marks.get("last", marks.get("denoise", now))
        marks.setdefault("steps", []).append(now - last)
        marks["last"] = now
        if on_step:
            on_step(StepInfo(index + 1, req.steps, now - last, kwargs.get("latents"), pipe))
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped after step {index + 1} of {req.steps}")
        return kwargs

    prepare_decode(model, req)  # VAE tiling: LightX2V's use_tiling_vae, or engine.memory's estimate
    hook = pipe.transformer.register_forward_pre_hook(first_forward)
    args = dict(prompt=req.prompt, negative_prompt=req.negative_prompt or None, height=req.height, width=req.width,
                num_frames=req.num_frames, num_inference_steps=req.steps, guidance_scale=req.guidance,
                generator=torch.Generator("cpu").manual_seed(req.seed), output_type="pt",
                max_sequence_length=model.max_sequence_length, callback_on_step_end=step_end)
    if getattr(pipe, "transformer_2", None) is not None:
        args["guidance_scale_2"] = req.guidance if req.guidance_2 is None else req.guidance_2
    if req.task == "i2v":
        args["image"] = req.image
    try:
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped before the first step")
        with torch.inference_mode():
            set_denoising_step(0, req.steps)
            frames = to_uint8(pipe(**args).frames[0])
    except torch.OutOfMemoryError:
        raise _out_of_memory(model, req) from None
    finally:
        set_denoising_step(None)
        hook.remove()
        if cancel is not None:
            cancel.clear()
    decoded = clock()
    path = out_dir / f"video-{uuid.uuid4().hex[:12]}.mp4"
    export_mp4(frames, path, req.fps)
    steps = marks.get("steps", [])
    stats = RunStats(
        seconds_total=decoded - marks["start"],
        seconds_encode=marks.get("denoise", decoded) - marks["start"],
        seconds_per_step=steps, seconds_decode=decoded - marks.get("last", decoded),
        peak_gpu_bytes=torch.cuda.max_memory_allocated(model.device) if cuda else None,
        weight_bytes=weight_bytes(pipe), kernels=kernel_table(pipe, model.device), device=str(model.device),
        offload=model.offload)
    return VideoResult(path, len(frames), frames.shape[1], frames.shape[2], stats, req)


def to_uint8(video: torch.Tensor):
    """The pipeline's [F, C, H, W] frames in [0, 1] -> [F, H, W, C] uint8 numpy, converted where they are.
    Why not diffusers' output_type="np": that copies float frames (388 MB at 480p x 81) to the host and
    converts them there: the tiny decoder's 0.10 s decode (bench_vae) took 0.44 s through generate()
    that way. uint8 copies a quarter of the bytes. Same rounding as export_mp4's float path (float32 multiply, round half to even)."""
    video = (video.float().clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def export_mp4(frames, path: Path, fps: int) -> None:
    """H.264 mp4 through imageio-ffmpeg (the ffmpeg binary ships in its wheel). `frames`: [F, H, W, C]
    uint8, or floats in [0, 1]."""
    import imageio.v2 as imageio
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    video = frames if frames.dtype == np.uint8 else (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    # Written under a temporary name and renamed when complete: a failed export leaves no video-*.mp4.
    tmp = path.with_name(f".{path.stem}.partial.mp4")
    try:
        # macro_block_size=1: sizes are multiples of 16 already; never let imageio resize silently.
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=8,
                                pixelformat="yuv420p") as writer:
            for frame in video:
                writer.append_data(frame)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _set_shift(pipe, shift: float | None) -> None:
    """Flow-matching timestep shift: `shift` for FlowMatchEuler, `flow_shift` for UniPC; None keeps the
    scheduler's own (a base model's repo value)."""
    if shift is None:
        return
    sched = pipe.scheduler
    for key in ("flow_shift", "shift"):
        if key in sched.config and sched.config[key] != shift:
            pipe.scheduler = type(sched).from_config(sched.config, **{key: shift})
            return


def _out_of_memory(model: LoadedModel, req: VideoRequest) -> GenerationError:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    lighter = lighter_preset(model.preset) if model.preset else None
    advice = f"choose the lighter preset {lighter!r}" if lighter else "close other GPU programs"
    return GenerationError(f"out of GPU memory at {req.width}x{req.height}, {req.num_frames} frames. Memory was "
                           f"freed; {advice}, or lower the resolution or frame count.")
