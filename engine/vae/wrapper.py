"""The pipeline's `vae` when the tiny decoder is chosen: the full VAE encodes, the tiny one decodes."""
from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..errors import ConfigError


class TinyDecodeVAE(nn.Module):
    """Stands in for the pipeline's AutoencoderKLWan: encodes with the full VAE (image-to-video needs
    it), decodes with the tiny decoder. It exposes what diffusers' Wan pipelines read from `vae`:
    `config` (z_dim, latents_mean/std, scale factors), `dtype`, `encode`, `decode(z, return_dict)`."""

    def __init__(self, full, tiny, need_scaled: bool, chunk: int = 1):
        super().__init__()
        self.full, self.tiny, self.need_scaled, self.chunk = full, tiny, need_scaled, chunk
        if tiny.latent_channels != full.config.z_dim:
            raise ConfigError(f"the tiny decoder takes {tiny.latent_channels}-channel latents but this model's "
                              f"are {full.config.z_dim}-channel; use lighttaew2_1 for Wan2.1 / Wan2.2 A14B "
                              "models and lighttaew2_2 for Wan2.2 TI2V-5B")
        if tiny.spatial_scale != full.config.scale_factor_spatial:
            raise ConfigError(f"the tiny decoder upscales {tiny.spatial_scale}x but this model's VAE "
                              f"{full.config.scale_factor_spatial}x; use the decoder made for this model")

    @property
    def config(self):
        return self.full.config

    @property
    def dtype(self) -> torch.dtype:
        return self.full.dtype

    @property
    def device(self) -> torch.device:
        return self.full.device

    # Tiling (LightX2V's use_tiling_vae, engine.memory) reaches the full VAE, i.e. the encoder; the tiny
    # decoder bounds its own peak by decoding `chunk` latent frames per pass.
    def enable_tiling(self, *args, **kwargs):
        self.full.enable_tiling(*args, **kwargs)

    def disable_tiling(self):
        self.full.disable_tiling()

    # apply_forward_hook: under model CPU offload, diffusers' hook moves this module to the GPU before
    # encode/decode (the pipeline calls them, not forward), as it does for AutoencoderKLWan.
    @apply_forward_hook
    def encode(self, x, return_dict: bool = True):
        return self.full.encode(x, return_dict=return_dict)

    @apply_forward_hook
    @torch.no_grad()
    def decode(self, z: torch.Tensor, return_dict: bool = True):
        video = decode_tiny(self.tiny, z, self.config, self.need_scaled, self.chunk).to(z.dtype)
        return DecoderOutput(sample=video) if return_dict else (video,)


def decode_tiny(tiny, z, vae_config, need_scaled: bool, chunk: int | None = None) -> torch.Tensor:
    """Un-normalised latents (what diffusers hands `vae.decode`) -> video in [-1, 1]."""
    dtype = next(tiny.parameters()).dtype
    if not need_scaled:  # this file was trained on the normalised latents the DiT works in
        mean = torch.tensor(vae_config.latents_mean, device=z.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae_config.latents_std, device=z.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        z = (z.float() - mean) / std
    return tiny(z.to(dtype), chunk=chunk or None).mul(2).sub(1)


