"""One view over every checkpoint layout users have: a single file, `--save_by_block` folders
(block_<i>.safetensors + non_block.safetensors + index), chunked parts + index, and .pth files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .checkpoint_io import SafeTensorsFile, load_pth
from .errors import CheckpointError

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
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if path.is_file():
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
        raise CheckpointError(f"{path}: no .safetensors files (or a single .pth) found in this folder")

    def _add_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        opened: dict[str, SafeTensorsFile] = {}
        for key, name in weight_map.items():
            if name not in opened:
                file = index.parent / name
                if not file.is_file():
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
