"""Load a quantized (or plain) Wan DiT checkpoint into diffusers' WanTransformer3DModel.

The model is built on the meta device, the linears the file holds quantized become meta QuantLinear
of the format read from the tensors, and every tensor is assigned from a memory-mapped file: a
quantized 14B never exists in bf16, in host or GPU memory. LightX2V (Wan) and diffusers key names,
all LightX2V layouts, ComfyUI scaled fp8 and plain fp8 are understood; see formats.py.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .assemble import ASKED, LoadReport, assemble, finish_load, format_of, kernel_of, open_checkpoint
from .comfy import from_comfy_quant, has_comfy_quant
from .pth import load_pth
from .sources import TensorSource
from ..errors import CheckpointError
from ..formats import FORMATS
from .keymaps import detect_naming, strip_prefix, wan_to_diffusers

KEEP_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")  # diffusers' _keep_in_fp32_modules
MARKERS = ("scaled_fp8",)  # ComfyUI's "this file is scaled fp8" tensor


def load_dit(path, config=None, *, device="cpu", dtype=torch.bfloat16, scheme=None, calib=None):
    """Returns (WanTransformer3DModel, LoadReport).

    config: None (read from the file's metadata, else inferred from tensor shapes), a config dict
    (e.g. `WanTransformer3DModel.load_config(repo, subfolder="transformer")`) or a model whose config
    to reuse. scheme: a Scheme or format name the file must hold (disambiguates, else inferred).
    calib: a calib.pt with NVFP4 activation absmax; by default one beside the checkpoint is used.
    """
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    start = time.perf_counter()
    src, report = open_checkpoint(path, "DiT")
    tensors, file_of = dit_tensors(src, report)
    _add_calibration(tensors, calib, Path(path), report)
    cfg = _config(config, src, tensors)
    try:
        with init_empty_weights():  # parameters on meta; rope's computed buffers stay real
            model = WanTransformer3DModel.from_config(cfg)
    except (TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the model config ({'given' if config is not None else 'from the file'}) "
                              f"cannot build a Wan transformer: {e}") from None
    hint, hint_from = _hint(scheme, src.metadata, src.path)
    state = assemble(model, tensors, file_of, hint=hint, dtype=dtype, keep_fp32=KEEP_FP32, report=report,
                     hint_from=hint_from, kernel=kernel_of(scheme))
    return finish_load(model, state, device, report, start)


def dit_tensors(src: TensorSource, report: LoadReport):
    """File keys -> diffusers keys, with lazily mapped tensors; and key -> file for error messages."""
    keys = [k for k in src.keys() if k not in MARKERS]
    prefix = strip_prefix(keys)
    naming = detect_naming([k[len(prefix):] for k in keys])
    if naming == "mixed":
        raise CheckpointError(f"{src.path}: mixes Wan (LightX2V) and diffusers key names; it was converted "
                              "half-way. Convert it again from the original.")
    report.naming = "Wan/LightX2V" if naming == "wan" else naming
    if "scaled_fp8" in src:
        report.notes.append("ComfyUI scaled fp8 file: per-tensor weight scales, activations quantized per token")
    if src.metadata.get("producer_version"):
        report.notes.append(f"written by {src.metadata.get('producer', '?')} {src.metadata['producer_version']}")
    rename = wan_to_diffusers if naming == "wan" else (lambda k: k)
    tensors, origin = {}, {}
    for key in keys:
        name = rename(key[len(prefix):])
        tensors[name] = src.get(key)
        origin[name] = src.file_of(key)
    if has_comfy_quant(tensors):
        found = from_comfy_quant(tensors, str(src.path))
        report.notes.append("ComfyUI comfy_quant layers: " + ", ".join(f"{n} {f}" for f, n in sorted(found.items())))
    return tensors, (lambda k: origin.get(k, str(src.path)))


def _hint(scheme, metadata, where) -> tuple[str | None, str]:
    if scheme is not None:
        return format_of(scheme), ASKED
    fmt = metadata.get("format")
    if fmt in (None, "none", "mixed"):
        return None, ASKED
    if fmt not in FORMATS:
        raise CheckpointError(f"{where}: the file's metadata names format {fmt!r}, which this engine does not know "
                              f"({', '.join(FORMATS)}); the metadata is corrupt or from a newer tool")
    return fmt, "the file's own metadata (format)"


def _add_calibration(tensors, calib, path: Path, report) -> None:
    """NVFP4 activation absmax from LightX2V's calib.pt ({"absmax": {layer: tensor}})."""
    if calib is None:
        beside = (path if path.is_dir() else path.parent) / "calib.pt"
        if not beside.is_file() or not any(k.endswith(".weight_global_scale") for k in tensors):
            return  # only NVFP4 layers use it: a calib.pt beside a non-NVFP4 file is not read
        calib = beside
    absmax = read_calib(calib)
    used = 0
    for name, value in absmax.items():
        layer = wan_to_diffusers(name[:-len(".weight")] if name.endswith(".weight") else name)
        weight = tensors.get(f"{layer}.weight")
        if weight is not None and weight.dim() == 2 and f"{layer}.input_global_scale" not in tensors:
            tensors[f"{layer}.input_absmax"] = value
            used += 1
    report.notes.append(f"calibration {calib}: activation absmax for {used} layers")


def read_calib(calib) -> dict[str, torch.Tensor]:
    """calib.pt -> {layer name: absmax}, every value checked: a tensor, finite and > 0."""
    data = load_pth(calib, raw=True)
    if not isinstance(data, dict):
        raise CheckpointError(f"{calib} holds a {type(data).__name__}; a calib.pt is {{\"absmax\": {{layer: tensor}}}}")
    absmax = data["absmax"] if isinstance(data.get("absmax"), dict) else data
    for name, value in absmax.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{calib}: key {name!r} is not a layer name; a calib.pt is {{\"absmax\": {{layer: tensor}}}}")
        if not isinstance(value, torch.Tensor) or value.numel() == 0 or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise CheckpointError(f"{calib}: {name!r} is {type(value).__name__ if not isinstance(value, torch.Tensor) else f'an empty or {value.dtype} tensor'}, "
                                  "not an activation absmax (a positive number)")
        v = value.detach().float()
        if not bool(torch.isfinite(v).all()) or float(v.amax()) <= 0:
            raise CheckpointError(f"{calib}: the activation absmax of {name!r} is {v.reshape(-1)[:4].tolist()}; it must "
                                  "be finite and > 0: calibrate again")
    if not absmax:
        raise CheckpointError(f"{calib} holds no activation absmax values")
    return absmax


def _config(config, src: TensorSource, tensors) -> dict:
    if config is not None:
        cfg = getattr(config, "config", config)
        return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    if "config" in src.metadata:
        try:
            cfg = json.loads(src.metadata["config"])
        except (ValueError, RecursionError):
            raise CheckpointError(f"{src.path}: the config in the file's metadata is not valid JSON") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{src.path}: the config in the file's metadata is a JSON {type(cfg).__name__}, "
                                  "not an object; pass the config of the base model")
        return cfg
    return infer_wan_config(tensors, src.path)


def infer_wan_config(tensors, where) -> dict:
    """WanTransformer3DModel arguments read from tensor shapes (rows are never packed, so they are safe)."""
    try:
        return _infer_wan_config(tensors, where)
    except (ValueError, IndexError, ZeroDivisionError, TypeError):
        raise CheckpointError(f"{where}: the tensor shapes or names do not look like a Wan DiT (cannot infer its "
                              "config); pass the config of the base model, or check --model_type") from None


def _infer_wan_config(tensors, where) -> dict:
    def shape(key):
        if key not in tensors:
            raise CheckpointError(f"{where}: cannot infer the model config without {key!r}; pass the config "
                                  "of the base model (e.g. from Wan-AI/...-Diffusers, subfolder transformer)")
        return tuple(tensors[key].shape)

    dim, in_ch, *patch = shape("patch_embedding.weight")
    layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    if dim % 128:
        raise CheckpointError(f"{where}: model width {dim} is not a multiple of Wan's head size 128; pass the config")
    cfg = dict(patch_size=tuple(patch), num_attention_heads=dim // 128, attention_head_dim=128,
               in_channels=in_ch, out_channels=shape("proj_out.weight")[0] // math.prod(patch),
               text_dim=shape("condition_embedder.text_embedder.linear_1.weight")[1],
               freq_dim=shape("condition_embedder.time_embedder.linear_1.weight")[1],
               ffn_dim=shape("blocks.0.ffn.net.0.proj.weight")[0], num_layers=layers,
               cross_attn_norm="blocks.0.norm2.weight" in tensors,
               qk_norm="rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in tensors else None,
               eps=1e-6, rope_max_seq_len=1024)
    if "condition_embedder.image_embedder.norm1.weight" in tensors:
        cfg["image_dim"] = shape("condition_embedder.image_embedder.norm1.weight")[0]
        cfg["added_kv_proj_dim"] = dim
    if "condition_embedder.image_embedder.pos_embed" in tensors:
        cfg["pos_embed_seq_len"] = shape("condition_embedder.image_embedder.pos_embed")[1]
    return cfg
