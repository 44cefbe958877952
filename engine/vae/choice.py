"""Which decoder turns the latents into frames: the full Wan VAE, LightVAE or a tiny (TAEHV) one.

Config keys (LightX2V's own, plus one engine-level choice):
- `decoder`: "full" | "light" | "tiny" (engine key; the UI's choice).
- `use_lightvae` + `vae_path` (LightX2V): LightVAE, from `vae_path` or the Hub.
- `use_tae` + `tae_path` (LightX2V's names since its commit dbac70d1, Oct 2025; the earlier
  `use_tiny_vae` / `tiny_vae_path` are accepted too): the tiny decoder, from `tae_path` or the Hub.
- `need_scaled` (LightX2V): whether the tiny decoder takes the un-normalised latent. LightX2V sets it
  for files whose name holds "lighttae"; madebyollin's taew2_* files take the normalised latent.
- `tae_chunk`: latent frames per tiny-decoder pass (default 1); 0 decodes all at once. The result is
  the same; the peak grows with the chunk (H200, 480p x 81: 1.09 GB and 0.096 s with 1, 3.48 GB and
  0.089 s with 4, 17 GB with all; bench/bench_vae.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..catalog import AUTOENCODERS, LIGHT_VAE_FILE, tiny_vae_file
from ..errors import ConfigError

DECODERS = ("full", "light", "tiny")
# What the UI shows next to each choice (LightX2V's published H100 bf16 numbers, 480p x 81 frames;
# bench/bench_vae.py measures ours).
DECODER_NOTES = {
    "full": "Wan VAE: best quality; slowest decode and the largest memory peak",
    "light": "LightVAE (75% of channels pruned): published 2.1 s / 5.6 GB vs 5.5 s for the full VAE",
    "tiny": "LightTAE (tiny autoencoder): published 0.25 s / 0.4 GB; softer detail; also drives live previews",
}


@dataclass(frozen=True)
class DecoderChoice:
    kind: str  # full | light | tiny
    path: str | None = None  # a local file; None: fetched from the Hub
    need_scaled: bool | None = None  # tiny only; None: from the file name, as LightX2V does
    chunk: int = 4

    def hub_file(self, z_dim: int = 16) -> str | None:
        """The file to fetch from lightx2v/Autoencoders, or None when nothing is to be fetched."""
        if self.kind == "full" or self.path:
            return None
        return LIGHT_VAE_FILE if self.kind == "light" else tiny_vae_file(z_dim)


def _flag(cfg, key: str) -> bool:
    value = cfg.get(key)
    if value is not None and not isinstance(value, bool):  # "false" is a string, and bool("false") is True
        raise ConfigError(f"`{key}` must be true or false, got {value!r}")
    return bool(value)


def decoder_choice(cfg) -> DecoderChoice:
    use_tae = _flag(cfg, "use_tae") if cfg.get("use_tae") is not None else _flag(cfg, "use_tiny_vae")
    use_light = _flag(cfg, "use_lightvae")
    if use_tae and use_light:
        raise ConfigError("the config sets both use_tae (tiny decoder) and use_lightvae; choose one")
    implied = "tiny" if use_tae else "light" if use_light else None
    kind = cfg.get("decoder")
    if kind is not None and kind not in DECODERS:
        raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {kind!r}")
    if kind and implied and kind != implied:
        raise ConfigError(f"the config asks for decoder {kind!r} but also sets "
                          f"{'use_tae' if use_tae else 'use_lightvae'}; remove one of them")
    kind = kind or implied or "full"
    path = None
    if kind == "tiny":
        path = cfg.get("tae_path") or cfg.get("tiny_vae_path")
    elif kind == "light":
        path = cfg.get("vae_path")
    need_scaled = _flag(cfg, "need_scaled") if cfg.get("need_scaled") is not None else None
    chunk = cfg.get("tae_chunk", 1)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise ConfigError(f"tae_chunk must be a whole number >= 0 (0: all frames at once), got {chunk!r}")
    return DecoderChoice(kind, str(path) if path else None, None if need_scaled is None else bool(need_scaled),
                         chunk)


def plan_entry(cfg, z_dim: int = 16):
    """(repo, file) to add to the Hub download plan for the chosen decoder, or None."""
    name = decoder_choice(cfg).hub_file(z_dim)
    return (AUTOENCODERS, name) if name else None


def use_decoder(pipe, choice: DecoderChoice, path: str | Path | None = None, dtype=None) -> str:
    """Install the chosen decoder on a diffusers Wan pipeline; returns one line for the load report.
    `path`: the local file (the choice's own, or the one the Hub plan fetched)."""
    if choice.kind == "full":
        return ""
    path = path or choice.path
    if not path:
        raise ConfigError(f"decoder {choice.kind!r} needs a file: set "
                          f"{'tae_path' if choice.kind == 'tiny' else 'vae_path'} or load the model from the Hub")
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if choice.kind == "light":
        from .light import load_light_vae

        pipe.vae = load_light_vae(path, like=pipe.vae, dtype=pipe.vae.dtype)
        return f"LightVAE decoder from {Path(path).name} (encodes too, as LightX2V does)"
    from .tae import load_tiny_decoder
    from .wrapper import TinyDecodeVAE

    need_scaled = choice.need_scaled if choice.need_scaled is not None else "lighttae" in Path(path).name
    pipe.vae = TinyDecodeVAE(pipe.vae, load_tiny_decoder(path, dtype), need_scaled, choice.chunk)
    return (f"tiny decoder from {Path(path).name} ({'un-normalised' if need_scaled else 'normalised'} latents, "
            f"{dtype}); the full VAE still encodes")
