"""LightX2V's encoder files -> transformers classes, with quantized linears.

T5: Wan's own UMT5-XXL naming (`models_t5_umt5-xxl-enc-{bf16,int8,fp8}.pth`) -> UMT5EncoderModel.
CLIP: open-clip XLM-RoBERTa ViT-H/14 (`models_clip_open-clip-xlm-roberta-large-vit-huge-14*.pth`)
-> CLIPVisionModel, the fused `to_qkv` split row-wise (scales travel with their rows). Both are built
on the meta device and filled from memory-mapped tensors, like the DiT (dit.py).
"""
from __future__ import annotations

import math
import time
import types

import torch

from .assemble import (Decoded, assemble, finish_load, format_of, group_by_module, kernel_of, open_checkpoint,
                       settle_format)
from .formats import decode_layer, is_quantized_layer, split_rows
from ..errors import CheckpointError
from .keymaps import FUSED_QKV, clip_to_hf, strip_prefix, t5_to_hf


# ---- T5 --------------------------------------------------------------------------------------
def load_t5(path, config=None, *, device="cpu", dtype=torch.bfloat16, scheme=None):
    """Returns (UMT5EncoderModel, LoadReport). config: a UMT5Config, or None to read it from shapes."""
    from accelerate import init_empty_weights
    from transformers import UMT5EncoderModel

    start = time.perf_counter()
    src, report = open_checkpoint(path, "T5")
    keys = src.keys()
    prefix = strip_prefix(keys)
    tensors, origin = {}, {}
    for key in keys:
        name = t5_to_hf(key[len(prefix):])
        if name is None:
            raise CheckpointError(f"{src.file_of(key)}: {key!r} is not a tensor of Wan's UMT5 encoder; "
                                  "is this a T5 file in Wan/LightX2V naming?")
        tensors[name] = src.get(key)
        origin[name] = src.file_of(key)
    if "shared.weight" in tensors:  # transformers keeps the embedding under two tied names
        tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
    report.naming = "Wan/LightX2V"
    cfg = config if config is not None else _inferred(infer_t5_config, tensors, src.path, "T5")
    with init_empty_weights():
        model = UMT5EncoderModel(cfg)
    state = assemble(model, tensors, lambda k: origin.get(k, str(src.path)), hint=format_of(scheme), dtype=dtype,
                     keep_fp32=(), report=report, kernel=kernel_of(scheme))
    fix_t5_wo_cast(model)
    return finish_load(model, state, device, report, start)


def fix_t5_wo_cast(model) -> int:
    """transformers' gated T5 FFN casts its input to `wo.weight.dtype` unless that is int8, which
    turns activations into float8 when `wo` is an fp8 QuantLinear. Give those FFNs a forward without
    the cast (QuantLinear quantizes its own input). Returns how many were patched."""
    from ..linear import QuantLinear

    patched = 0
    for module in model.modules():
        if type(module).__name__.endswith("DenseGatedActDense") and isinstance(getattr(module, "wo", None), QuantLinear):
            module.forward = types.MethodType(_gated_ffn_forward, module)
            patched += 1
    return patched


def _gated_ffn_forward(self, hidden_states):
    hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
    return self.wo(self.dropout(hidden))


def infer_t5_config(tensors, where):
    from transformers import UMT5Config

    def shape(key):
        if key not in tensors:
            raise CheckpointError(f"{where}: no {key!r}; cannot infer the T5 config (pass one)")
        return tuple(tensors[key].shape)

    vocab, d_model = shape("shared.weight")
    buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.block."))
    return UMT5Config(vocab_size=vocab, d_model=d_model, num_heads=heads, num_layers=layers,
                      d_kv=shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
                      d_ff=shape("encoder.block.0.layer.1.DenseReluDense.wi_1.weight")[0],
                      relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False)


def _inferred(infer, tensors, where, component):
    try:
        return infer(tensors, where)
    except (ValueError, IndexError, TypeError, ZeroDivisionError):
        raise CheckpointError(f"{where}: the tensor shapes or names do not look like Wan's {component} encoder "
                              "(cannot infer its config); pass its config, or check the file") from None


# ---- CLIP ------------------------------------------------------------------------------------
def load_clip(path, config=None, *, device="cpu", dtype=torch.bfloat16, scheme=None):
    """Returns (CLIPVisionModel, LoadReport). config: a CLIPVisionConfig, or None to read it from shapes
    (heads assume ViT-H/14's 80-wide heads). The text tower and `visual.head` have no place in
    CLIPVisionModel and are skipped (Wan's image-to-video uses the penultimate vision hidden state)."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionModel

    start = time.perf_counter()
    src, report = open_checkpoint(path, "CLIP")
    keys = src.keys()
    prefix = strip_prefix(keys)
    tensors, origin, skipped = {}, {}, 0
    for key in keys:
        name = clip_to_hf(key[len(prefix):])
        if name is None:
            skipped += 1
            continue
        t = src.get(key)
        if name.endswith("class_embedding"):
            t = t.reshape(-1)  # open-clip [1,1,D] -> [D]
        elif name.endswith("position_embedding.weight"):
            if t.dim() < 2:
                raise CheckpointError(f"{src.file_of(key)}: {key!r} has shape {list(t.shape)}; a position "
                                      "embedding is [1, L, D] or [L, D]: the file is corrupt or not Wan's CLIP")
            t = t.reshape(t.shape[-2], t.shape[-1])  # [1,L,D] -> [L,D]
        tensors[name] = t
        origin[name] = src.file_of(key)
    if skipped:
        report.notes.append(f"skipped {skipped} tensors CLIPVisionModel has no place for (text tower, head)")
    report.naming = "open-clip (Wan)"
    cfg = config if config is not None else _inferred(infer_clip_config, tensors, src.path, "CLIP")
    with init_empty_weights():
        model = CLIPVisionModel(cfg)
    file_of = lambda k: origin.get(k, str(src.path))  # noqa: E731
    tensors = _split_fused_qkv(tensors, file_of, format_of(scheme))
    if not any(k.startswith("vision_model.") for k in model.state_dict()):
        tensors = {k.removeprefix("vision_model."): v for k, v in tensors.items()}
        file_of = lambda k, f=file_of: f("vision_model." + k)  # noqa: E731
    state = assemble(model, tensors, file_of, hint=format_of(scheme), dtype=dtype, keep_fp32=(), report=report,
                     kernel=kernel_of(scheme))
    return finish_load(model, state, device, report, start)


def _split_fused_qkv(tensors, file_of, hint):
    out = {}
    groups = group_by_module(tensors)
    for prefix, group in groups.items():
        m = FUSED_QKV.match(prefix)
        if not m:
            out.update({f"{prefix}.{s}": t for s, t in group.items()})
            continue
        names = [f"{m.group(1)}.self_attn.{p}_proj" for p in ("q", "k", "v")]
        rows, cols = group["weight"].shape[0], _logical_cols(group)
        bias = group.get("bias")
        dtypes = {s: t.dtype for s, t in group.items()}
        if is_quantized_layer(dtypes):
            where = f"{file_of(prefix + '.weight')} (layer {prefix!r})"
            shapes = {s: tuple(t.shape) for s, t in group.items()}
            fmt = settle_format(where, shapes, dtypes, rows, cols, hint)
            parts = split_rows(fmt, decode_layer(fmt, group, rows, cols, where), 3)
            for i, (name, piece) in enumerate(zip(names, parts)):
                if bias is not None:
                    piece["bias"] = bias.chunk(3)[i]
                out[name] = Decoded(fmt, piece)
        else:
            for i, name in enumerate(names):
                out[f"{name}.weight"] = group["weight"].chunk(3)[i]
                if bias is not None:
                    out[f"{name}.bias"] = bias.chunk(3)[i]
    return out


def _logical_cols(group) -> int:
    # A fused qkv maps D -> 3D, so its input width is a third of its rows, packed or not.
    rows = group["weight"].shape[0]
    if rows % 3:
        raise CheckpointError(f"a fused qkv projection has {rows} rows, not a multiple of 3")
    return rows // 3


def infer_clip_config(tensors, where):
    from transformers import CLIPVisionConfig

    def shape(key):
        key = "vision_model." + key
        if key not in tensors:
            raise CheckpointError(f"{where}: no {key!r}; cannot infer the CLIP config (pass one)")
        return tuple(tensors[key].shape)

    positions, hidden = shape("embeddings.position_embedding.weight")
    patch = shape("embeddings.patch_embedding.weight")[-1]
    grid = math.isqrt(positions - 1)
    if hidden % 80:
        raise CheckpointError(f"{where}: width {hidden} is not ViT-H/14's; pass a CLIPVisionConfig")
    layers = 1 + max(int(k.split(".")[3]) for k in tensors if k.startswith("vision_model.encoder.layers."))
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=shape("encoder.layers.0.mlp.fc1.weight")[0],
                            num_hidden_layers=layers, num_attention_heads=hidden // 80, image_size=grid * patch,
                            patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-5)
