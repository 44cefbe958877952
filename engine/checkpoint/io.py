"""Reading and writing tensor files safely: memory-mapped safetensors, weights-only .pth, atomic writes.

Our own safetensors reader maps the file and hands out tensors that *view* the mapping, so loading
a 14B quantized model touches each byte once and never holds a second copy (safetensors' own
`get_tensor` copies). Parsing the header ourselves also lets every fault name the file and the key.
"""
from __future__ import annotations

import json
import logging
import math
import mmap
import os
import pickle
import re
import struct
from pathlib import Path

import torch

from .files import atomic_write, open_regular, os_error_sentence
from ..errors import CheckpointError

log = logging.getLogger("engine.checkpoint")

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # safetensors' own limit
LFS_ADVICE = ("is a Git LFS pointer, not the weights: run `git lfs pull` in that repository, or download the "
              "file with huggingface_hub (hf_hub_download / `hf download`)")


class SafeTensorsFile:
    """One .safetensors file, memory-mapped copy-on-write: tensors are views of the mapping."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = open_regular(self.path, "checkpoint")
        size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(64)
        if is_lfs_pointer(head):
            self._fail(LFS_ADVICE)
        if size < 8:
            self._fail("is too short to be a safetensors file (truncated download?)")
        (hlen,) = struct.unpack("<Q", head[:8])
        if hlen > MAX_HEADER or 8 + hlen > size:
            self._fail(f"has a header length of {hlen} bytes but the file is {size} bytes: "
                       "corrupt or not a safetensors file")
        self._fh.seek(8)
        header = self._parse_header(self._fh.read(hlen))
        meta = header.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            self._fail("has a `__metadata__` that is not a map of strings to strings: corrupt or written by a "
                       "broken tool; re-save it with safetensors")
        self.metadata: dict[str, str] = meta or {}
        self._start, data_len = 8 + hlen, size - 8 - hlen
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            self._entries[key] = self._check_entry(key, info, data_len)
        self._check_layout(data_len)
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else None

    def _fail(self, why: str, key: str | None = None):
        self.close()
        where = f" (tensor {key!r})" if key else ""
        raise CheckpointError(f"{self.path}{where} {why}")

    def _parse_header(self, raw: bytes) -> dict:
        def no_duplicates(pairs):
            seen = {}
            for k, v in pairs:
                if k in seen:
                    raise ValueError(f"the key {k!r} appears twice")
                seen[k] = v
            return seen

        try:
            header = json.loads(raw, object_pairs_hook=no_duplicates)
        except RecursionError:
            self._fail("has a header nested too deeply to be a safetensors header: corrupt or hostile")
        except (ValueError, UnicodeDecodeError) as e:
            self._fail(f"has a header that is not valid JSON ({e}): corrupt or not a safetensors file")
        if not isinstance(header, dict):
            self._fail(f"has a header that is a JSON {type(header).__name__}, not an object: corrupt or not a "
                       "safetensors file")
        return header

    def _check_entry(self, key, info, data_len):
        if not isinstance(info, dict):
            self._fail(f"has a header entry of type {type(info).__name__}, not an object: corrupt", key)
        dtype = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
        if dtype is None:
            self._fail(f"has dtype {info.get('dtype')!r}, which this engine cannot read", key)
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(_whole(d) and d >= 0 for d in shape)):
            self._fail(f"has shape {shape!r}; a shape is a list of non-negative whole numbers: corrupt header", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(x) and x >= 0 for x in offsets)
                and offsets[0] <= offsets[1]):
            self._fail(f"has data_offsets {offsets!r}; they must be [begin, end] with 0 <= begin <= end: "
                       "corrupt header", key)
        shape, (begin, end) = tuple(shape), offsets
        if end - begin != math.prod(shape) * dtype.itemsize:
            self._fail(f"declares shape {list(shape)} {info['dtype']} ({math.prod(shape) * dtype.itemsize} bytes) "
                       f"but its data_offsets span {end - begin} bytes: corrupt header or wrong dtype", key)
        if end > data_len:
            self._fail(f"ends at byte {end} of the data but the file holds only {data_len} bytes: "
                       "the file is truncated (interrupted download or copy); download it again", key)
        return dtype, shape, begin, end

    def _check_layout(self, data_len: int) -> None:
        # safetensors' own rule: tensors tile the data exactly, no overlap, no gap, nothing after.
        spans = sorted((b, e, k) for k, (_, _, b, e) in self._entries.items() if e > b)
        pos, prev = 0, None
        for begin, end, key in spans:
            if begin < pos:
                self._fail(f"overlaps tensor {prev!r} (bytes {begin}..{pos}): two tensors share data; corrupt "
                           "or hand-edited header", key)
            if begin > pos:
                self._fail(f"starts at byte {begin} but the previous tensor ends at {pos}: a gap in the data; "
                           "corrupt or hand-edited header", key)
            pos, prev = end, key
        if pos != data_len:
            self._fail(f"has {data_len - pos} bytes after its last tensor: corrupt, or a header from another file")

    # ---- access ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key][0]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def get(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[key]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        offset = self._start + begin
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=end - begin, offset=offset)
        if offset % dtype.itemsize:
            raw = raw.clone()  # misaligned (a writer that did not sort by dtype size): copy this one
        return raw.view(dtype).reshape(shape)

    def close(self) -> None:
        # Views handed out keep the mapping alive through their storage; closing only drops ours.
        self._mm = None
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write atomically (see atomic_write). Returns the size."""
    path = Path(path)
    items = sorted(tensors.items(), key=lambda kv: -kv[1].element_size())  # stable: keeps alignment
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    for key, t in items:
        if t.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"cannot write tensor {key!r} of dtype {t.dtype} to {path}")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, t in items:
            if t.numel():
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    atomic_write(path, write)
    return path.stat().st_size


def write_atomic_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def save_torch(path: str | Path, obj) -> None:
    """torch.save, atomically. torch's zip writer turns the OSError of a full disk into a RuntimeError
    without the errno; the file's own write records it, so the real cause is raised instead."""
    def write(f):
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    atomic_write(path, write)


class _WriteRecorder:
    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def is_lfs_pointer(head: bytes) -> bool:
    return head.startswith(b"version https://git-lfs.github.com/spec/")


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
