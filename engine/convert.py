"""`python -m engine.convert`: LightX2V's converter, with its options, written for this engine.

Reads a bf16/fp16/fp32 (or already quantized-free) Wan DiT, T5 or CLIP checkpoint in any layout,
optionally renames keys (--direction), merges LoRAs, quantizes the linear layers LightX2V quantizes,
and writes LightX2V's keys, dtypes, shapes and file layouts, with self-describing metadata in every
safetensors header. One output file is built at a time; each is written to a temporary name and
renamed when complete. Runs on CPU or GPU (--device).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import torch

from . import __version__
from .apply import WAN_DIT_RULES
from .checkpoint.comfy import to_comfy_quant
from .checkpoint.formats import NVFP4_GS_NUMERATOR, encode_layer
from .checkpoint.dit import read_calib
from .checkpoint.files import os_error_sentence, remove_stale_partials
from .checkpoint.io import save_torch, write_atomic_bytes, write_safetensors
from .checkpoint.sources import INDEX_NAME, TensorSource
from .cli import run_command
from .convert_guard import (check_device, check_model_type, check_not_quantized, check_paths, check_stale,
                            output_name_problem, staging)
from .errors import EngineError
from .formats import FORMATS, get_format
from .checkpoint.keymaps import rename, wan_to_diffusers
from .lora import LoraSet

log = logging.getLogger("engine.convert")
# --linear_type: each convertible format under its LightX2V spelling and its own name (engine/formats)
LINEAR_TYPES = {spelling: name for name, f in FORMATS.items() if f.convertible for spelling in (f.label, name)}
OLD_DTYPES = {"torch.int8": "int8", "torch.float8_e4m3fn": "fp8"}
FLOAT_DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}
_DIT_DIFFUSERS = [re.compile(r) for r in WAN_DIT_RULES]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.convert", description=__doc__.splitlines()[0])
    p.add_argument("-s", "--source", required=True, help="a file, a folder of .safetensors, or an index.json")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-o_n", "--output_name", default="converted")
    p.add_argument("-o_e", "--output_ext", default=".safetensors", choices=[".safetensors", ".pth"])
    p.add_argument("-t", "--model_type", default="wan_dit", choices=["wan_dit", "wan_t5", "wan_clip"])
    p.add_argument("-d", "--direction", default=None, choices=["forward", "backward"],
                   help="forward: LightX2V (Wan) names -> diffusers; backward: diffusers -> LightX2V")
    p.add_argument("-b", "--save_by_block", action="store_true")
    p.add_argument("--single_file", action="store_true")
    p.add_argument("-c", "--chunk-size", "--chunk_size", dest="chunk_size", type=int, default=100,
                   help="tensors per part file when neither --single_file nor --save_by_block (0: one part)")
    p.add_argument("--quantized", action="store_true")
    p.add_argument("--linear_type", choices=sorted(LINEAR_TYPES))
    p.add_argument("--linear_dtype", choices=sorted(OLD_DTYPES), help="older spelling of --linear_type")
    p.add_argument("--non_linear_dtype", default="torch.float32", choices=sorted(FLOAT_DTYPES))
    p.add_argument("--lora_path", nargs="*", default=None)
    p.add_argument("--lora_alpha", type=float, nargs="*", default=None)
    p.add_argument("--lora_strength", type=float, nargs="*", default=None)
    p.add_argument("--comfyui_mode", action="store_true",
                   help="ComfyUI files: fp8 with one per-tensor scale_weight, nvfp4/mxfp8 as comfy_quant layers")
    p.add_argument("--comfy_quant", action="store_true",
                   help="with --comfyui_mode and fp8: ComfyUI's newer per-layer comfy_quant format")
    p.add_argument("--ignore-keys", "--ignore_keys", dest="ignore_keys", nargs="*", default=[],
                   help="drop tensors whose key contains any of these")
    p.add_argument("--ignore-quant-keys", "--ignore_quant_keys", dest="ignore_quant_keys", nargs="*", default=[],
                   help="keep tensors whose key contains any of these in high precision")
    p.add_argument("--copy_no_weight_files", action="store_true")
    p.add_argument("--calib", help="calib.pt of per-layer activation absmax (NVFP4's static activation scale)")
    p.add_argument("--calibrate_prompts", nargs="*", default=None,
                   help="calibrate NVFP4 activation scales by running these prompts through a pipeline")
    p.add_argument("--calibrate_model_path", help="diffusers-format Wan folder to calibrate with ('tiny': built-in)")
    p.add_argument("--calibrate_steps", type=int, default=2, help="denoising steps per calibration prompt")
    p.add_argument("--calibrate_component", default="transformer", choices=["transformer", "transformer_2"],
                   help="which transformer the source is (Wan2.2 A14B: transformer_2 is the low-noise expert)")
    p.add_argument("--calibrate_size", type=int, nargs=3, metavar=("HEIGHT", "WIDTH", "FRAMES"),
                   help="video size for calibration (default: the pipeline's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    args = p.parse_args(argv)
    args.fmt = None
    if output_name_problem(args.output_name):
        p.error(output_name_problem(args.output_name))
    if args.quantized:
        name = args.linear_type or OLD_DTYPES.get(args.linear_dtype or "")
        if not name:
            p.error(f"--quantized needs --linear_type ({', '.join(f.label for f in FORMATS.values() if f.convertible)})")
        args.fmt = LINEAR_TYPES[name] if name in LINEAR_TYPES else name
        if args.comfyui_mode and args.fmt not in ("fp8", "nvfp4", "mxfp8"):
            p.error("--comfyui_mode writes ComfyUI files: scaled fp8 (--linear_type fp8), or the per-layer "
                    "comfy_quant format (--linear_type nvfp4 or mxfp8, or fp8 with --comfy_quant)")
    args.comfy_quant = args.comfyui_mode and (args.comfy_quant or args.fmt in ("nvfp4", "mxfp8"))
    if args.calibrate_prompts is not None:
        if args.calib:
            p.error("give either --calib (a calib.pt) or --calibrate_prompts, not both")
        if not args.calibrate_model_path:
            p.error("--calibrate_prompts needs --calibrate_model_path (the diffusers Wan folder to run)")
        if args.fmt != "nvfp4":
            p.error("calibration is for NVFP4's static activation scale: use it with --quantized --linear_type nvfp4")
    if args.save_by_block and args.single_file:
        p.error("--save_by_block and --single_file are exclusive")
    return args


def is_target(key: str, model_type: str) -> bool:
    """Would LightX2V quantize this 2-D weight (in either naming)?"""
    if not key.endswith(".weight"):
        return False
    parts = key.split(".")
    if model_type == "wan_dit":
        return (len(parts) > 2 and parts[2] in ("self_attn", "cross_attn", "ffn")) or any(
            r.fullmatch(key[:-len(".weight")]) for r in _DIT_DIFFUSERS)
    if model_type == "wan_t5":
        return len(parts) > 2 and parts[2] in ("attn", "ffn")
    return parts[0] == "visual" and len(parts) > 3 and parts[3] in ("attn", "mlp")


class Converter:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.non_linear = FLOAT_DTYPES[args.non_linear_dtype]
        self.lora = LoraSet(args.lora_path, args.lora_alpha, args.lora_strength) if args.lora_path else None
        self.absmax = _read_calib(args.calib) if args.calib else {}
        self.quantized = 0

    def convert_tensor(self, key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """One source tensor (already renamed) -> its output tensors."""
        if self.lora is not None and t.is_floating_point():
            t = self.lora.apply(key, t)
        a = self.args
        quantize = (a.fmt and t.dim() == 2 and is_target(key, a.model_type)
                    and not any(s in key for s in a.ignore_quant_keys))
        if not quantize:
            return {key: t.to(self.non_linear) if t.is_floating_point() else t}
        w = t.to(self.device, torch.float32)
        prefix = key[:-len("weight")]
        self.quantized += 1
        if a.comfy_quant:
            amax = self.absmax.get(wan_to_diffusers(key[:-len(".weight")])) if a.fmt == "nvfp4" else None
            return {prefix + s: v.cpu() for s, v in to_comfy_quant(a.fmt, w, amax).items()}
        if a.comfyui_mode:
            scale = w.abs().amax().clamp(min=1e-12) / 448.0
            return {key: (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn).cpu(), prefix + "scale_weight": scale.cpu()}
        q = get_format(a.fmt).quantize_weight(w)
        buffers = {"weight": q.data, "weight_scale": q.scale}
        if q.global_scale is not None:
            buffers["weight_global_scale"] = q.global_scale
            amax = self.absmax.get(wan_to_diffusers(key[:-len(".weight")]))
            if amax is not None:
                buffers["input_global_scale"] = (NVFP4_GS_NUMERATOR / amax.float().amax().clamp(min=1e-12)).reshape(1)
        return {prefix + s: v.cpu() for s, v in encode_layer(a.fmt, buffers).items()}

    def metadata(self, layout: str, naming: str) -> dict[str, str]:
        a = self.args
        fmt = "fp8" if a.comfyui_mode and not a.comfy_quant else (a.fmt or "none")
        meta = {"format": fmt, "scheme": a.linear_type or a.linear_dtype or "none", "source": Path(a.source).name,
                "layout": layout, "model_type": a.model_type, "naming": naming, "producer": "engine.convert",
                "producer_version": __version__,
                "scales": ("comfyui comfy_quant" if a.comfy_quant else "comfyui per-tensor") if a.comfyui_mode
                else "lightx2v"}
        cfg = Path(a.source) / "config.json" if Path(a.source).is_dir() else None
        if cfg and cfg.is_file() and a.model_type == "wan_dit":
            try:
                data = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as e:
                raise EngineError(f"{cfg}: not a readable JSON model config ({e}); fix or remove it") from None
            if not isinstance(data, dict):
                raise EngineError(f"{cfg}: a model config is a JSON object, not a {type(data).__name__}")
            meta["config"] = json.dumps({k: v for k, v in data.items() if not k.startswith("_")})
        return meta


def _read_calib(path) -> dict[str, torch.Tensor]:
    table = read_calib(path)
    return {wan_to_diffusers(k[:-len(".weight")] if k.endswith(".weight") else k): v for k, v in table.items()}


def plan_files(keys: list[str], args) -> dict[str, list[str]]:
    """Output file name -> the (renamed) source keys it holds, in LightX2V's layouts."""
    if args.single_file or args.output_ext == ".pth":
        return {f"{args.output_name}{args.output_ext}": list(keys)}
    if args.save_by_block:
        files: dict[str, list[str]] = {}
        for key in keys:
            m = re.search(r"blocks\.(\d+)\.", key)
            files.setdefault(f"block_{m.group(1)}.safetensors" if m else "non_block.safetensors", []).append(key)
        return files
    size = args.chunk_size if args.chunk_size > 0 else max(1, len(keys))
    return {f"{args.output_name}_part{i // size}.safetensors": keys[i:i + size] for i in range(0, len(keys), size)}


def convert(args) -> list[Path]:
    """Everything is checked before a byte is written; the files appear all at once (convert_guard)."""
    from tqdm import tqdm

    out_dir = Path(args.output)
    check_paths(args.source, out_dir)
    check_device(args.device)
    src = TensorSource(args.source)
    check_model_type(src.keys(), args.model_type, args.source)
    check_not_quantized(src, args.source)
    for leftover in remove_stale_partials(out_dir):
        log.info("removed %s, left by an interrupted run", leftover)
    if args.calibrate_prompts is not None:
        args.calib = str(_calibrate(args, out_dir))
    conv = Converter(args)
    names = {}
    for key in src.keys():
        if any(s in key for s in args.ignore_keys) or (args.model_type == "wan_clip" and key.startswith("textual.")):
            continue
        new = rename(key, args.direction)
        if new in names:
            raise EngineError(f"{args.source}: {key!r} and {names[new]!r} both become {new!r}; the source mixes "
                              "two namings (converted half-way?)")
        names[new] = key
    if conv.lora is not None:
        conv.lora.check_targets(names)
    naming = {"forward": "diffusers", "backward": "Wan/LightX2V"}.get(args.direction, "as source")
    plan = plan_files(list(names), args)
    check_stale(out_dir, list(plan) + [INDEX_NAME])
    layout = "single file" if len(plan) == 1 else ("save_by_block" if args.save_by_block else "chunked parts")
    meta = conv.metadata(layout, naming)
    index = {"metadata": {"total_size": 0, **meta}, "weight_map": {}}
    with staging(out_dir) as stage, tqdm(total=len(names), desc="Converting", unit="tensor", disable=None) as bar:
        for filename, keys in plan.items():
            tensors = {}
            for key in keys:
                bar.set_postfix_str(key, refresh=False)
                tensors.update(conv.convert_tensor(key, src.get(names[key])))
                bar.update()
            if args.comfyui_mode and not args.comfy_quant and filename == next(iter(plan)):
                tensors["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
            if args.output_ext == ".pth":
                save_torch(stage / filename, {k: v.contiguous() for k, v in tensors.items()})
            else:
                index["metadata"]["total_size"] += write_safetensors(stage / filename, tensors, meta)
                index["weight_map"].update({k: filename for k in tensors})
        if conv.lora is not None:
            conv.lora.finish()
        if len(plan) > 1:
            write_atomic_bytes(stage / INDEX_NAME, json.dumps(index, indent=2).encode())
    written = [out_dir / f for f in plan] + ([out_dir / INDEX_NAME] if len(plan) > 1 else [])
    if args.copy_no_weight_files and Path(args.source).is_dir():
        _copy_non_weight_files(Path(args.source), out_dir)
    log.info("quantized %d linear weights to %s; wrote %d files to %s", conv.quantized, meta["format"], len(written), out_dir)
    return written


def _calibrate(args, out_dir: Path) -> Path:
    """Run the prompts; calib files land in the output folder, where load_dit finds calib.pt."""
    from .calibrate import calibrate_to_folder

    size = dict(zip(("height", "width", "num_frames"), args.calibrate_size or ()))
    written = calibrate_to_folder(args.calibrate_model_path, args.calibrate_prompts, out_dir,
                                  steps=args.calibrate_steps, device=args.device,
                                  primary=args.calibrate_component, **size)
    return written[args.calibrate_component]


def _copy_non_weight_files(source: Path, target: Path) -> None:
    for item in source.rglob("*"):
        if item.is_file() and not item.name.endswith((".safetensors", ".pth", ".pt", ".index.json")):
            dest = target / item.relative_to(source)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, dest)
            except OSError as e:
                raise EngineError(os_error_sentence(e, dest, "copy to")) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(lambda: convert(args), debug=args.debug or None)


if __name__ == "__main__":
    sys.exit(main())
