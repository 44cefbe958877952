"""The converter's guards: everything checked before a byte is written, and the staging folder that
makes a conversion appear all at once or not at all.

Nothing lost: -o may not be (or contain) the source. Nothing left behind: a conversion is written into
`<out>/.convert.partial-<pid>/` and moved into place only when every file is complete; a kill -9 leaves
just that folder, which the next run removes (checkpoint.files.remove_stale_partials). Nothing mixed:
weight files of an earlier, different layout in the output folder are refused, because load_dit would
load them together with the new ones.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint.files import PARTIAL, os_error_sentence
from .checkpoint.sources import INDEX_NAME
from .errors import CheckpointError, EngineError
from .checkpoint.keymaps import strip_prefix, t5_to_hf

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".index.json")
QUANT_KEYS = ("weight_scale", "weight_global_scale", "input_global_scale", "input_absmax", "scale_weight",
              "weight_scale_2", "comfy_quant")
CODE_DTYPES = (torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2)
MODEL_TYPES = {"wan_dit": "a Wan DiT", "wan_t5": "Wan's T5 (UMT5) text encoder", "wan_clip": "Wan's CLIP image encoder"}


def output_name_problem(name: str) -> str | None:
    """Why --output_name cannot be used as a file name inside the output folder, or None."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return f"--output_name {name!r} must be a plain file name (no folders, no '..'); use -o for the folder"
    if name.startswith("."):
        return f"--output_name {name!r} must not start with '.' (hidden files are this tool's temporary files)"
    return None


def check_paths(source: str, out_dir: Path) -> None:
    src = Path(source).resolve()
    out = out_dir.resolve()
    if out == src:
        raise EngineError(f"-o {out_dir} is the source itself; writing there would overwrite the original "
                          "weights. Choose another output folder.")
    if out in src.parents:
        raise EngineError(f"-o {out_dir} contains the source {source}; the output would be mixed with (or "
                          "overwrite) the original weights. Choose a folder outside it.")
    if out_dir.exists() and not out_dir.is_dir():
        raise EngineError(f"-o {out_dir} is a file; give a folder")


def check_device(device: str) -> None:
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise EngineError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise EngineError(f"--device {device!r}: the converter runs on cpu or cuda")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"--device {device}: PyTorch sees no CUDA GPU here; use --device cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise EngineError(f"--device {device}: there are only {torch.cuda.device_count()} GPU(s) (cuda:0..)")


def guess_model_type(keys: list[str]) -> str | None:
    prefix = strip_prefix(keys)
    names = [k[len(prefix):] for k in keys]
    if any(k.startswith(("visual.", "textual.")) for k in keys):
        return "wan_clip"
    if "patch_embedding.weight" in names:
        return "wan_dit"
    if names and all(t5_to_hf(k) is not None for k in names):
        return "wan_t5"
    return None


def check_model_type(keys: list[str], model_type: str, source: str) -> None:
    guess = guess_model_type(keys)
    if guess is not None and guess != model_type:
        raise EngineError(f"{source} looks like {MODEL_TYPES[guess]}, not {MODEL_TYPES[model_type]}: pass "
                          f"-t {guess}, or check the source path")
    if guess is None and model_type != "wan_dit":
        raise EngineError(f"{source}: its keys (e.g. {sorted(keys)[0]!r}) are not those of {MODEL_TYPES[model_type]}; "
                          "check the source path and -t")


def check_not_quantized(src, source: str) -> None:
    """Quantizing int8/fp8 codes as if they were weights gives garbage with exit 0: refuse."""
    for key in src.keys():
        suffix = key.rpartition(".")[2]
        code = key.endswith(".weight") and src.dtype(key) in CODE_DTYPES and len(src.shape(key)) == 2
        if suffix in QUANT_KEYS or key == "scaled_fp8" or code:
            what = f"{key!r} is {str(src.dtype(key)).replace('torch.', '')}" if code else f"it holds {key!r}"
            raise EngineError(f"{source} is already quantized ({what}); the converter reads bf16/fp16/fp32 "
                              "weights. Convert from the original (unquantized) checkpoint.")


def check_stale(out_dir: Path, planned: list[str]) -> None:
    if not out_dir.is_dir():
        return
    stale = sorted(p.name for p in out_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)
                   and not p.name.startswith(("calib", ".")) and p.name not in planned)
    if stale:
        raise EngineError(f"-o {out_dir} already holds {', '.join(stale[:4])}{' ...' if len(stale) > 4 else ''}, "
                          "which this conversion would not replace; load_dit would then load old and new files "
                          "together. Remove them, or choose an empty folder.")


@contextmanager
def staging(out_dir: Path):
    """Yields a fresh folder inside out_dir; on success its files move into out_dir (the index last)."""
    stage = out_dir / f".convert{PARTIAL}{os.getpid()}"
    moved: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
        yield stage
        for item in sorted(stage.iterdir(), key=lambda p: (p.name == INDEX_NAME, p.name)):
            os.replace(item, out_dir / item.name)
            moved.append(out_dir / item.name)
        stage.rmdir()
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        for done in moved:  # a failure half-way through the moves: no incomplete set under final names
            done.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(os_error_sentence(e, out_dir, "write into")) from None
        raise
