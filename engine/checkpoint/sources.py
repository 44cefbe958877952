"""One view over every checkpoint layout users have: a single file, `--save_by_block` folders
(block_<i>.safetensors + non_block.safetensors + index), chunked parts + index, and .pth files."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import torch

from .files import open_regular, regular_file
from .io import SafeTensorsFile, load_pth
from ..errors import CheckpointError

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


class TensorSource:
    """Keys -> tensors across the files of one checkpoint. Tensors are views of memory-mapped files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files: list[Path] = []
        self._where: dict[str, object] = {}  # key -> SafeTensorsFile or a dict (a .pth state dict)
        self.metadata: dict[str, str] = {}
        self.layout = self._open(self.path)
        if not self._where:
            raise CheckpointError(f"{self.path}: no tensors found")

    # ---- layouts -----------------------------------------------------------------------------
    def _open(self, path: Path) -> str:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            is_dir = False
        if not is_dir:
            regular_file(path, "checkpoint")  # names the real cause: missing, loop, permission, FIFO...
            if path.name.endswith(".index.json"):
                self._add_index(path)
                return "sharded (index)"
            if path.suffix in (".pth", ".pt", ".bin"):
                self._add_pth(path)
                return "pth"
            if path.suffix == ".safetensors":
                self._add_safetensors(path)
                return "single file"
            raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r}; expected "
                                  ".safetensors, .pth or an .index.json")
        if not os.access(path, os.R_OK | os.X_OK):
            raise CheckpointError(f"cannot list the checkpoint folder {path}: permission denied; fix the "
                                  "permissions (chmod/chown) or use a folder you own")
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1 and (path / INDEX_NAME).exists():
            indexes = [path / INDEX_NAME]
        if len(indexes) > 1:
            raise CheckpointError(f"{path} holds several index files ({', '.join(i.name for i in indexes)}); "
                                  "point at the one to load")
        blocks = any(re.fullmatch(r"block_\d+\.safetensors", p.name) for p in path.glob("block_*.safetensors"))
        if indexes:
            self._add_index(indexes[0])
            return "save_by_block" if blocks else "sharded (index)"
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            for shard in shards:
                self._add_safetensors(shard)
            return "save_by_block (no index)" if blocks else f"{len(shards)} safetensors files"
        pths = sorted(list(path.glob("*.pth")) + list(path.glob("*.pt")))
        if len(pths) == 1:
            self._add_pth(pths[0])
            return "pth"
        if len(pths) > 1:
            raise CheckpointError(f"{path} holds {len(pths)} .pth/.pt files ({', '.join(p.name for p in pths[:4])}); "
                                  "point at the one to load")
        named = f" (a folder named like a {path.suffix} file)" if path.suffix in (".safetensors", ".pth", ".pt") else ""
        raise CheckpointError(f"{path}{named}: no .safetensors files (or a single .pth) found in this folder")

    def _add_index(self, index: Path) -> None:
        weight_map = _read_weight_map(index)
        opened: dict[str, SafeTensorsFile] = {}
        for key, name in weight_map.items():
            if name not in opened:
                file = index.parent / name
                if not os.path.lexists(file):
                    raise CheckpointError(f"{index} lists {name} (for {key!r}) but {file} is missing; "
                                          "the download is incomplete")
                opened[name] = self._add_safetensors(file, register=False)
            if key not in opened[name]:
                raise CheckpointError(f"{index} says {key!r} is in {name}, but that file does not hold it")
            self._register(key, opened[name], index.parent / name)
        for name, st in opened.items():  # keys present in shards but absent from the index still load
            for key in st.keys():
                if key not in self._where:
                    self._register(key, st, index.parent / name)

    def _add_safetensors(self, file: Path, register: bool = True) -> SafeTensorsFile:
        st = SafeTensorsFile(file)
        self.files.append(file)
        for k, v in st.metadata.items():
            self.metadata.setdefault(k, v)
        if register:
            for key in st.keys():
                self._register(key, st, file)
        return st

    def _add_pth(self, file: Path) -> None:
        sd = load_pth(file)
        self.files.append(file)
        for key in sd:
            self._register(key, sd, file)

    def _register(self, key, holder, file) -> None:
        if key in self._where and self._where[key] is not holder:
            raise CheckpointError(f"tensor {key!r} appears in two files of {self.path} (second: {file}); "
                                  "the folder mixes two checkpoints")
        self._where[key] = holder

    # ---- access ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        holder = self._where[key]
        return holder[key] if isinstance(holder, dict) else holder.get(key)

    def dtype(self, key: str) -> torch.dtype:
        holder = self._where[key]
        return holder[key].dtype if isinstance(holder, dict) else holder.dtype(key)

    def shape(self, key: str) -> tuple[int, ...]:
        holder = self._where[key]
        return tuple(holder[key].shape) if isinstance(holder, dict) else holder.shape(key)

    def file_of(self, key: str) -> str:
        holder = self._where[key]
        return str(holder.path) if isinstance(holder, SafeTensorsFile) else str(self.files[0])

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def close(self) -> None:
        for holder in {id(h): h for h in self._where.values()}.values():
            if isinstance(holder, SafeTensorsFile):
                holder.close()


def _read_weight_map(index: Path) -> dict[str, str]:
    with open_regular(index, "index") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{index}: nested too deeply to be a safetensors index") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index (not JSON: {e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        got = type(weight_map).__name__ if isinstance(data, dict) and "weight_map" in data else "nothing"
        raise CheckpointError(f"{index}: not a valid safetensors index: `weight_map` must be an object of "
                              f"tensor name -> file name, got {got}")
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{index}: `weight_map` maps {key!r} to {name!r}; it must be a file name")
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or len(parts) != 1:
            raise CheckpointError(f"{index}: `weight_map` maps {key!r} to {name!r}, outside the index's folder; "
                                  "an index lists files beside it")
    return weight_map
