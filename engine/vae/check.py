"""The decoder settings of a config, checked before the pipeline loads and before any download.

engine.infer and engine.service call `check_decoder_setting` first, so a wrong `decoder` value, both
use_tae and use_lightvae, a bad `vae_dtype` or `tae_chunk`, or a `tae_path` / `vae_path` that is
missing or holds the wrong network is reported in seconds, naming the config key and the file, instead
of after minutes of loading. A named file is read by the same loader the pipeline uses (the decoder
files are small: tens of MB), on the CPU; the result is remembered per file version.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import CheckpointError, ConfigError, EngineError
from .choice import DecoderChoice, decoder_choice
from .speed import speed_settings

log = logging.getLogger("engine.vae")
FULL_WAN_WIDTH = 384  # decoder.conv1's output channels in the full Wan2.1 VAE (base 96 x 4); LightVAE: 96
_checked: dict[tuple, None] = {}  # (kind, path, size, mtime_ns, z_dim) of files that loaded cleanly


def path_key(cfg, kind: str) -> str:
    """The config key that named the file (LightX2V's old spelling when that is the one set)."""
    if kind == "light":
        return "vae_path"
    return "tiny_vae_path" if cfg.get("tiny_vae_path") and not cfg.get("tae_path") else "tae_path"


def check_decoder_setting(cfg, *, from_hub: bool, z_dim: int | None = None) -> DecoderChoice:
    """Raise ConfigError / CheckpointError for a bad decoder setting; returns the choice.
    `from_hub`: a light/tiny choice without a file is fetched by the Hub plan (the app); without the Hub
    (engine.infer on a local folder) it needs its path key. `z_dim`: the model's latent channels."""
    choice = decoder_choice(cfg)
    speed_settings(cfg)
    _unused_paths(cfg, choice.kind)
    if choice.kind == "full":
        return choice
    key = path_key(cfg, choice.kind)
    if choice.kind == "light" and z_dim not in (None, 16):
        raise ConfigError(f"decoder 'light' (LightVAE) is made for 16-channel latents (Wan2.1, Wan2.2 A14B) but "
                          f"this model's are {z_dim}-channel; choose decoder tiny or full")
    if not choice.path:
        if from_hub:
            return choice
        raise ConfigError(f"decoder {choice.kind!r} needs its file: set `{key}` in the config to a local "
                          f"{'lightvaew2_1' if choice.kind == 'light' else 'lighttaew2_1'}.safetensors (from the "
                          "Hub repo lightx2v/Autoencoders); this command does not download")
    path = Path(choice.path)
    try:
        _check_file(choice.kind, path, z_dim)
    except EngineError as e:
        raise type(e)(f"config key `{key}`: {e}") from None
    return choice


def _unused_paths(cfg, kind: str) -> None:
    """LightX2V configs often carry `vae_path` to the full Wan VAE file; this engine reads the full VAE
    from the model folder (diffusers format), so such a path is not used: said, not silently skipped."""
    used = {"light": ("vae_path",), "tiny": ("tae_path", "tiny_vae_path")}.get(kind, ())
    for key in ("vae_path", "tae_path", "tiny_vae_path"):
        if cfg.get(key) and key not in used:
            log.warning("`%s` (%s) is not used: the decoder is %r%s", key, cfg.get(key), kind,
                        "; the full VAE is read from the model's vae/ folder" if key == "vae_path" else
                        "; set use_tae or decoder tiny to decode with it")


def _check_file(kind: str, path: Path, z_dim: int | None) -> None:
    from ..checkpoint.files import regular_file

    st = regular_file(path, "decoder file")
    memo = (kind, str(path.resolve()), st.st_size, st.st_mtime_ns, z_dim)
    if memo in _checked:
        return
    if kind == "tiny":
        from .tae import load_tiny_decoder

        tiny = load_tiny_decoder(path)
        if z_dim is not None and tiny.latent_channels != z_dim:
            raise CheckpointError(f"{path} is a tiny decoder for {tiny.latent_channels}-channel latents but this "
                                  f"model's are {z_dim}-channel; use lighttaew2_1 for Wan2.1 / Wan2.2 A14B and "
                                  "lighttaew2_2 for Wan2.2 TI2V-5B")
    else:
        from .light import load_light_vae

        vae = load_light_vae(path)
        width = vae.decoder.conv_in.out_channels
        if width >= FULL_WAN_WIDTH:
            raise CheckpointError(f"{path} is the full-width Wan VAE (decoder.conv1 has {width} channels), not "
                                  "LightVAE (96): use lightvaew2_1.safetensors, or choose decoder full")
        if z_dim is not None and vae.config.z_dim != z_dim:
            raise CheckpointError(f"{path} is a VAE for {vae.config.z_dim}-channel latents but this model's are "
                                  f"{z_dim}-channel; LightVAE is made for Wan2.1 (and Wan2.2 A14B) models")
    if len(_checked) > 64:
        _checked.clear()
    _checked[memo] = None
