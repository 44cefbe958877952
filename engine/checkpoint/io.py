"""Reading and writing safetensors files safely (.pth files: pth.py): reading through `safe_open`, atomic writes.

Tensors come from `safetensors.safe_open(framework="pt")`, which maps the file privately and hands out
tensors that view the mapping: nothing is copied until a page is touched, so a 14B model's bytes are
read once. Measured with bench/bench_reader_rss.py (safetensors 0.8.0, torch 2.13 CPU, 0.75 GiB file of
24 bf16 tensors, VmRSS in a fresh process, MiB): opened +0, views of all 24 +4, 4 tensors touched +134,
all touched +772; the hand-written mmap reader this replaced: +0, +1, +132, +772. Neither copies.
safe_open also reads F8_E8M0 (MX scales) and F4.
Before safe_open sees a file we read its header ourselves, only to check it: every fault (truncation,
overlap, wrong dtype size, an LFS pointer, a FIFO) then is one sentence naming the file and the key.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .files import atomic_write, open_regular
from ..errors import CheckpointError


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
    """One .safetensors file: header checked here, tensors read through safetensors.safe_open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        with open_regular(self.path, "checkpoint") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(64)
            if is_lfs_pointer(head):
                self._fail(LFS_ADVICE)
            if size < 8:
                self._fail("is too short to be a safetensors file (truncated download?)")
            (hlen,) = struct.unpack("<Q", head[:8])
            if hlen > MAX_HEADER or 8 + hlen > size:
                self._fail(f"has a header length of {hlen} bytes but the file is {size} bytes: "
                           "corrupt or not a safetensors file")
            fh.seek(8)
            header = self._parse_header(fh.read(hlen))
        meta = header.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            self._fail("has a `__metadata__` that is not a map of strings to strings: corrupt or written by a "
                       "broken tool; re-save it with safetensors")
        self.metadata: dict[str, str] = meta or {}
        data_len = size - 8 - hlen
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            self._entries[key] = self._check_entry(key, info, data_len)
        self._check_layout(data_len)
        try:
            self._file = safe_open(str(self.path), framework="pt")
        except (SafetensorError, OSError) as e:  # e.g. the file changed between our check and safe_open
            self._fail(f"could not be opened by safetensors ({e}); download it again")

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
        if self._file is None:
            raise CheckpointError(f"{self.path} was closed before tensor {key!r} was read (an engine bug)")
        try:
            t = self._file.get_tensor(key)
        except (SafetensorError, RuntimeError) as e:
            raise CheckpointError(f"{self.path} (tensor {key!r}) could not be read by safetensors ({e}); "
                                  "the file may be corrupt: download it again") from None
        # A writer that did not sort by dtype size leaves a tensor at an address its dtype cannot be
        # aligned to; safe_open hands it out as it is, and we copy that one so kernels see aligned data.
        return t.clone() if t.data_ptr() % dtype.itemsize else t

    def close(self) -> None:
        # Tensors handed out keep the mapping alive through their storage; closing only drops ours.
        self._file = None


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
