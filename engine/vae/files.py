"""Read a decoder weight file and check it against the module it is loaded into.

Every mismatch is a CheckpointError naming the file and the file's own key, so a user who picked
the wrong file (a Wan2.2 decoder for a Wan2.1 model, a truncated download) is told which one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors or .pth file (LightX2V accepts both for its decoders), through the
    checkpoint readers: regular files only, LFS pointers and corrupt headers named, weights_only pickles."""
    from ..checkpoint.files import regular_file
    from ..checkpoint.io import SafeTensorsFile, load_pth

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"decoder file {path} does not exist; download it from the Hub repo "
                              "lightx2v/Autoencoders or fix the path in the config")
    regular_file(path, "decoder file")
    if path.suffix == ".safetensors":
        f = SafeTensorsFile(path)
        return {key: f.get(key) for key in f.keys()}
    if path.suffix not in (".pth", ".pt"):
        raise CheckpointError(f"decoder file {path}: unsupported extension {path.suffix!r} (use .safetensors or .pth)")
    data = load_pth(path, raw=True)
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise CheckpointError(f"decoder file {path} is not a map of names to tensors (a state dict)")
    return data


def need(tensors: dict, key: str, path, what: str) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(f"{path}: key {key!r} is missing ({what}); this is not a {what} file, or it "
                              "is incomplete")
    return tensors[key]


def load_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path,
                 rename: Callable[[str], str | None], kind: str, ignore: tuple[str, ...] = ()) -> None:
    """Load `tensors` into `module` strictly. `rename` maps a file key to the module's key (None: the
    key has no place in the module). Keys starting with one of `ignore` are expected in the file but
    not used (e.g. the tiny autoencoder's encoder)."""
    expected = module.state_dict()
    loaded, seen = {}, {}
    for key, value in tensors.items():
        if key.startswith(ignore):
            continue
        target = rename(key)
        if target is None or target not in expected:
            raise CheckpointError(f"{path}: unexpected key {key!r}: not part of a {kind}. Is this the right file "
                                  "for this decoder choice?")
        if tuple(value.shape) != tuple(expected[target].shape):
            raise CheckpointError(f"{path}: key {key!r} has shape {tuple(value.shape)} but this {kind} needs "
                                  f"{tuple(expected[target].shape)}; the file is for a different model variant")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: key {key!r} holds {value.dtype}, not floating-point weights")
        loaded[target], seen[target] = value, key
    missing = [k for k in expected if k not in loaded]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} weight(s) of the {kind} are missing from the file, "
                              f"first: {missing[0]!r}; the file is incomplete or for another decoder")
    module.load_state_dict(loaded, strict=True)
