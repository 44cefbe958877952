"""Reading .pth/.pt files as plain tensors only: torch.load(weights_only=True), memory-mapped when the
file is a zip archive; every refusal says what the file is instead (an LFS pointer, a renamed safetensors
file, a text page saved by a failed download, a pickle that needs code)."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

from .files import open_regular, os_error_sentence
from .io import DTYPE_NAMES, LFS_ADVICE, is_lfs_pointer
from ..errors import CheckpointError

log = logging.getLogger("engine.checkpoint")


def load_pth(path: str | Path, raw: bool = False):
    """A .pth/.pt state dict, through torch.load(weights_only=True) only, memory-mapped when possible.
    raw=True returns the loaded object as it is (e.g. calib.pt's nested dict)."""
    path = Path(path)
    with open_regular(path, "checkpoint") as f:
        head = f.read(64)
    _check_pth_head(path, head)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zipfile" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        needs = re.search(r"(?:Unsupported global|Unsupported operand).{0,40}?:\s*(?:GLOBAL\s+)?([\w.]+)", str(e))
        what = f" ({needs.group(1)})" if needs else ""
        raise CheckpointError(
            f"{path} is a pickle that needs more than plain tensors to load{what}. This engine loads .pth "
            "files as plain tensors only, because a full pickle can run arbitrary code. Re-save it as a plain "
            "state dict (torch.save(model.state_dict())) or convert it to .safetensors.") from None
    except OSError as e:
        raise CheckpointError(os_error_sentence(e, path)) from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a state dict: corrupt or hostile") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError... for corrupt archives
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} could not be read as a PyTorch file ({first}); it may be truncated or "
                              "corrupt: download it again") from None
    return obj if raw else _state_dict_of(obj, path)


def _check_pth_head(path: Path, head: bytes) -> None:
    if is_lfs_pointer(head):
        raise CheckpointError(f"{path} {LFS_ADVICE}")
    if len(head) >= 9 and head[8:9] == b"{" and head[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path} is a safetensors file named {path.suffix}: rename it to "
                              f"{path.stem}.safetensors")
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download; download it again")
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # zip archive, or a legacy pickle (protocol 2+)
        text = head.decode("utf-8", "replace")
        if text.isprintable() or text.strip().isprintable():
            raise CheckpointError(f"{path} is a text file (it starts with {text[:40]!r}), not a PyTorch file: "
                                  "the download saved a page or a note instead of the weights; download it again")
        raise CheckpointError(f"{path} is not a PyTorch file (neither a zip archive nor a pickle): corrupt or "
                              "another format")


def _state_dict_of(obj, path) -> dict[str, torch.Tensor]:
    # Training checkpoints wrap the weights: {"state_dict": {...}} or {"module": {...}}.
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        if not isinstance(k, str):
            raise CheckpointError(f"{path} holds a tensor under the {type(k).__name__} key {k!r}; a state dict's "
                                  "keys are parameter names (strings): this is not a model state dict")
        if v.layout != torch.strided:
            raise CheckpointError(f"{path}: tensor {k!r} is a {v.layout} tensor; only dense tensors are weights "
                                  "(re-save it with .to_dense())")
        if v.is_meta:
            raise CheckpointError(f"{path}: tensor {k!r} is on the meta device (a shape without data); the file "
                                  "was saved from a model that was never loaded")
        if v.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {v.dtype}, which this engine cannot read")
        tensors[k] = v
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    skipped = len(obj) - len(tensors)
    if skipped:
        log.info("%s: %d entries that are not tensors (e.g. %r) are not weights and are skipped", path, skipped,
                 next(k for k, v in obj.items() if not isinstance(v, torch.Tensor)))
    return tensors
