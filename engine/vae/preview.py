"""Live preview: decode the current latents with the tiny decoder after each denoising step.

diffusers' Wan pipelines call `callback_on_step_end(pipe, step, timestep, callback_kwargs)` with the
latents the DiT works in (normalised); the preview un-normalises them as the pipeline does before
its own decode, then runs the tiny decoder. Costs one tiny decode per step (LightX2V publishes 0.25 s
for 81 frames at 480p on an H100), so it is optional per run.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from .wrapper import TinyDecodeVAE, decode_tiny


def preview_frames(pipe, latents: torch.Tensor, tiny=None, need_scaled: bool | None = None) -> np.ndarray:
    """(N, C, T, H, W) normalised latents -> uint8 frames (T', H', W', 3) of the first video."""
    tiny, need_scaled = _tiny(pipe, tiny, need_scaled)
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
    device = next(tiny.parameters()).device
    with torch.no_grad():
        video = decode_tiny(tiny, (latents[:1].float() * std + mean).to(device), cfg, need_scaled)
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).clamp(0, 255).round().byte().cpu().numpy()


def preview_callback(pipe, on_frames: Callable[[int, np.ndarray], None], tiny=None, every: int = 1,
                     need_scaled: bool | None = None):
    """A `callback_on_step_end` for the pipeline call (pass `callback_on_step_end_tensor_inputs=["latents"]`,
    the default): calls on_frames(step, frames) every `every` steps. `tiny`: a TinyDecoder (from
    engine.vae.tae.load_tiny_decoder); None uses the pipeline's own when the tiny decoder is chosen."""
    _tiny(pipe, tiny, need_scaled)  # fail before the run, not in its first step

    def callback(pipeline, step, timestep, kwargs):
        if step % every == 0 or step == getattr(pipeline, "num_timesteps", 0) - 1:
            on_frames(step, preview_frames(pipeline, kwargs["latents"], tiny, need_scaled))
        return {}

    return callback


def _tiny(pipe, tiny, need_scaled):
    if tiny is not None:
        return tiny, True if need_scaled is None else need_scaled  # lighttae files: un-normalised input
    if isinstance(pipe.vae, TinyDecodeVAE):
        return pipe.vae.tiny, pipe.vae.need_scaled if need_scaled is None else need_scaled
    raise ConfigError("live preview needs the tiny decoder: choose decoder 'tiny', or pass a tiny decoder "
                      "loaded from lighttaew2_1.safetensors (engine.vae.tae.load_tiny_decoder)")
