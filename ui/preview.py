"""Live preview: a small picture of the current latents after each denoising step.

Where the picture comes from, in order:
- the tiny decoder, when the run decodes with it (decoder "tiny": engine/vae/preview.py);
- LightX2V's tiny decoder file already in the local Hugging Face cache (lighttaew2_1 / lighttaew2_2),
  loaded once per process beside any decoder the run uses;
- the built-in demo model: its own VAE is tiny (a few thousand parameters), so it decodes each step.
Otherwise the preview is not offered, and the checkbox says why (nothing is downloaded for a preview).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("ui.preview")
_decoders: dict[str, object] = {}  # file path -> loaded tiny decoder (one per process)


def cached_tiny_file(z_dim: int = 16) -> str | None:
    """The tiny decoder file in the local Hub cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    from engine.catalog import AUTOENCODERS, tiny_vae_file

    try:
        path = try_to_load_from_cache(AUTOENCODERS, tiny_vae_file(z_dim))
    except Exception:  # noqa: BLE001 - a cache that cannot be read: no preview, said by the caller
        return None
    return path if isinstance(path, str) else None


def availability(service, model: str, preset: str = "auto", decoder: str = "preset") -> tuple[bool, str]:
    """(can preview, one sentence for the checkbox) for `model` with the chosen preset and decoder."""
    from engine.errors import EngineError
    from engine.presets import load_preset
    from engine.service import TINY

    if model == TINY:
        return True, "Decodes the latents after each step with the built-in model's own (tiny) VAE."
    chosen = decoder
    if chosen in (None, "", "preset"):
        from engine.vae.choice import decoder_choice

        try:
            cfg = service.preset_for(model).config if preset in (None, "", "auto") else load_preset(preset)
            chosen = decoder_choice(cfg).kind
        except EngineError:  # the preset line above the fields already explains it
            chosen = "full"
    if chosen == "tiny":
        return True, "Decodes the latents after each step with the tiny decoder this run uses."
    if cached_tiny_file() is not None:
        return True, "Decodes the latents after each step with LightTAE (lighttaew2_1, in the local cache)."
    return False, ("Needs the tiny decoder lighttaew2_1.safetensors (lightx2v/Autoencoders), which is not "
                   "downloaded: run once with VAE decoder 'tiny' to fetch it, or choose that decoder.")


def frames_for(pipe, latents: torch.Tensor, own_vae: bool = False) -> np.ndarray | None:
    """uint8 frames (T, H, W, 3) of the first video in `latents` (normalised, as the DiT sees them), or
    None when no preview decoder is at hand. `own_vae`: the built-in model, decoded by its own VAE."""
    from engine.vae.preview import preview_frames
    from engine.vae.wrapper import TinyDecodeVAE

    if own_vae:
        return _own_vae_frames(pipe.vae, latents)
    if isinstance(pipe.vae, TinyDecodeVAE):
        return preview_frames(pipe, latents)
    z_dim = pipe.vae.config.z_dim
    path = cached_tiny_file(z_dim)
    if path is not None:
        tiny = _decoders.get(path)
        if tiny is None:
            from engine.vae.tae import load_tiny_decoder

            device = latents.device
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            tiny = _decoders[path] = load_tiny_decoder(path, dtype).to(device)
        return preview_frames(pipe, latents, tiny)
    return None


PICTURE_SIDE = 256  # small previews (the demo's 32x32) are enlarged to about this, pixel for pixel


def picture(frames: np.ndarray) -> np.ndarray:
    """The middle frame, the preview shown; enlarged by a whole factor (nearest) when it is small."""
    frame = frames[len(frames) // 2]
    factor = max(1, PICTURE_SIDE // max(frame.shape[:2]))
    return frame.repeat(factor, 0).repeat(factor, 1) if factor > 1 else frame


def _own_vae_frames(vae, latents: torch.Tensor) -> np.ndarray:
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
    with torch.no_grad():  # the pipeline's own un-normalisation before its decode
        video = vae.decode((latents[:1].float() * std + mean).to(vae.dtype), return_dict=False)[0]
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).clamp(0, 255).round().byte().cpu().numpy()
