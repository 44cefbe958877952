"""LightX2V's LightVAE (`lightvaew2_1.safetensors`): the Wan2.1 VAE with 75% of its channels pruned.

Facts (LightX2V `models/video_encoders/hf/wan/vae.py`): the same Wan VAE module tree in Wan's original
key names (`decoder.middle.0.residual.2.weight`, ...), built with base width 96 and every width
multiplied by (1 - 0.75), i.e. base width 24 with the same multipliers [1, 2, 4, 4], z_dim 16, the same
latent mean/std, encoder included. diffusers' AutoencoderKLWan(base_dim=24) is that network, and
diffusers' own Wan-to-diffusers key conversion maps the names, so both are reused here.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from .files import load_checked, need, read_tensors

WAN_DIM_MULT = (1, 2, 4, 4)


def _rename_fn(tensors: dict):
    """file key -> diffusers key. Files already in diffusers' names pass through."""
    if any(k.startswith("decoder.up_blocks.") for k in tensors):
        return lambda k: k
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    def rename(key):
        out = convert_wan_vae_to_diffusers({key: tensors[key]})
        return next(iter(out), None) if len(out) == 1 else None

    return rename


def load_light_vae(path, like=None, dtype=torch.float32):
    """An AutoencoderKLWan holding the file's weights. `like`: the pipeline's own VAE, whose latent
    mean/std and scale factors are kept (LightVAE uses Wan2.1's)."""
    from diffusers import AutoencoderKLWan

    tensors = read_tensors(path)
    rename = _rename_fn(tensors)
    first = next((k for k in ("decoder.conv1.weight", "decoder.conv_in.weight") if k in tensors), None)
    conv_in = need(tensors, first or "decoder.conv1.weight", path, "Wan-layout VAE (LightVAE)")
    width, z_dim = conv_in.shape[0], conv_in.shape[1]
    if width % WAN_DIM_MULT[-1]:
        raise CheckpointError(f"{path}: key {first!r} has {width} output channels, not a multiple of "
                              f"{WAN_DIM_MULT[-1]}; not a Wan-layout VAE")
    kwargs = dict(base_dim=width // WAN_DIM_MULT[-1], z_dim=z_dim, dim_mult=list(WAN_DIM_MULT))
    if like is not None:
        if like.config.z_dim != z_dim:
            raise CheckpointError(f"{path}: this VAE has {z_dim} latent channels but the model's latents have "
                                  f"{like.config.z_dim}; use a decoder made for this model")
        kwargs.update(latents_mean=list(like.config.latents_mean), latents_std=list(like.config.latents_std),
                      temperal_downsample=list(like.config.temperal_downsample))
    vae = AutoencoderKLWan(**kwargs)
    load_checked(vae, tensors, path, rename, "Wan-layout VAE (LightVAE)")
    if dtype != torch.float32:
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)
