"""Reading and writing tensor files safely: memory-mapped safetensors, weights-only .pth, atomic writes.

Our own safetensors reader maps the file and hands out tensors that *view* the mapping, so loading
a 14B quantized model touches each byte once and never holds a second copy (safetensors' own
`get_tensor` copies). Parsing the header ourselves also lets every fault name the file and the key.
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
from pathlib import Path

import torch

from .errors import CheckpointError

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # safetensors' own limit


class SafeTensorsFile:
    """One .safetensors file, memory-mapped copy-on-write: tensors are views of the mapping."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"cannot open {self.path}: {e.strerror}") from None
        size = os.fstat(self._fh.fileno()).st_size
        if size < 8:
            self._fail("is too short to be a safetensors file (truncated download?)")
        (hlen,) = struct.unpack("<Q", self._fh.read(8))
        if hlen > MAX_HEADER or 8 + hlen > size:
            self._fail(f"has a header length of {hlen} bytes but the file is {size} bytes: "
                       "corrupt or not a safetensors file")
        try:
            header = json.loads(self._fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._fail("has a header that is not valid JSON: corrupt or not a safetensors file")
        if not isinstance(header, dict):
            self._fail("has a malformed header")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start, data_len = 8 + hlen, size - 8 - hlen
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            self._entries[key] = self._check_entry(key, info, data_len)
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else None

    def _fail(self, why: str, key: str | None = None):
        self.close()
        where = f" (tensor {key!r})" if key else ""
        raise CheckpointError(f"{self.path}{where} {why}")

    def _check_entry(self, key, info, data_len):
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except KeyError:
            self._fail(f"has dtype {info.get('dtype')!r}, which this engine cannot read", key)
        except (TypeError, ValueError):
            self._fail("has a malformed header entry", key)
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize or begin < 0:
            self._fail(f"declares shape {list(shape)} {info['dtype']} but {end - begin} bytes", key)
        if end > data_len:
            self._fail(f"ends at byte {end} of the data but the file holds only {data_len} bytes: "
                       "the file is truncated (interrupted download or copy); download it again", key)
        return dtype, shape, begin, end

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
    """Write atomically: a temporary name in the same folder, renamed when complete. Returns the size."""
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
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, t in items:
                if t.numel():
                    f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def write_atomic_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_pth(path: str | Path, raw: bool = False):
    """A .pth/.pt state dict, through torch.load(weights_only=True) only, memory-mapped when possible.
    raw=True returns the loaded object as it is (e.g. calib.pt's nested dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zipfile" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} is a pickle that needs more than plain tensors to load ({str(e).splitlines()[0]}). "
            "This engine loads .pth files with torch.load(weights_only=True) only, because a full pickle "
            "can run arbitrary code. Re-save it as a plain state dict (torch.save(model.state_dict())) "
            "or convert it to .safetensors.") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} could not be read as a PyTorch file ({e}); it may be truncated or "
                              "corrupt: download it again") from None
    return obj if raw else _state_dict_of(obj, path)


def _state_dict_of(obj, path) -> dict[str, torch.Tensor]:
    # Training checkpoints wrap the weights: {"state_dict": {...}} or {"module": {...}}.
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors
