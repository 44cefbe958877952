"""Key names: Wan's original (LightX2V's) naming <-> diffusers / transformers naming.

Pure functions, no tensors. The DiT map is an ordered list of regex rewrites (REFERENCE.md §1);
every rule ends at a dot or the end of the name, so it applies to module names and full keys alike.
"""
from __future__ import annotations

import re

_END = r"(?=\.|$)"
# (wan pattern, diffusers replacement) pairs; the reverse direction is derived below.
_DIT_PAIRS = [
    (r"^head\.head", "proj_out"),
    (r"^head\.modulation", "scale_shift_table"),
    (r"^text_embedding\.0", "condition_embedder.text_embedder.linear_1"),
    (r"^text_embedding\.2", "condition_embedder.text_embedder.linear_2"),
    (r"^time_embedding\.0", "condition_embedder.time_embedder.linear_1"),
    (r"^time_embedding\.2", "condition_embedder.time_embedder.linear_2"),
    (r"^time_projection\.1", "condition_embedder.time_proj"),
    (r"^img_emb\.proj\.0", "condition_embedder.image_embedder.norm1"),
    (r"^img_emb\.proj\.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"^img_emb\.proj\.3", "condition_embedder.image_embedder.ff.net.2"),
    (r"^img_emb\.proj\.4", "condition_embedder.image_embedder.norm2"),
    (r"^img_emb\.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    (r"^blocks\.(\d+)\.self_attn\.q", r"blocks.\1.attn1.to_q"),
    (r"^blocks\.(\d+)\.self_attn\.k", r"blocks.\1.attn1.to_k"),
    (r"^blocks\.(\d+)\.self_attn\.v", r"blocks.\1.attn1.to_v"),
    (r"^blocks\.(\d+)\.self_attn\.o", r"blocks.\1.attn1.to_out.0"),
    (r"^blocks\.(\d+)\.self_attn\.norm_q", r"blocks.\1.attn1.norm_q"),
    (r"^blocks\.(\d+)\.self_attn\.norm_k", r"blocks.\1.attn1.norm_k"),
    (r"^blocks\.(\d+)\.cross_attn\.q", r"blocks.\1.attn2.to_q"),
    (r"^blocks\.(\d+)\.cross_attn\.k", r"blocks.\1.attn2.to_k"),
    (r"^blocks\.(\d+)\.cross_attn\.v", r"blocks.\1.attn2.to_v"),
    (r"^blocks\.(\d+)\.cross_attn\.o", r"blocks.\1.attn2.to_out.0"),
    (r"^blocks\.(\d+)\.cross_attn\.k_img", r"blocks.\1.attn2.add_k_proj"),
    (r"^blocks\.(\d+)\.cross_attn\.v_img", r"blocks.\1.attn2.add_v_proj"),
    (r"^blocks\.(\d+)\.cross_attn\.norm_k_img", r"blocks.\1.attn2.norm_added_k"),
    (r"^blocks\.(\d+)\.cross_attn\.norm_q", r"blocks.\1.attn2.norm_q"),
    (r"^blocks\.(\d+)\.cross_attn\.norm_k", r"blocks.\1.attn2.norm_k"),
    (r"^blocks\.(\d+)\.norm3", r"blocks.\1.norm2"),  # sic: Wan's norm3 is diffusers' norm2
    (r"^blocks\.(\d+)\.ffn\.0", r"blocks.\1.ffn.net.0.proj"),
    (r"^blocks\.(\d+)\.ffn\.2", r"blocks.\1.ffn.net.2"),
    (r"^blocks\.(\d+)\.modulation", r"blocks.\1.scale_shift_table"),
]


def _reverse(pattern: str, replacement: str) -> tuple[str, str]:
    """Turn (wan regex, diffusers replacement) into (diffusers regex, wan replacement)."""
    back_pat = "^" + re.escape(replacement).replace(r"\\1", r"(\d+)")
    wan = pattern.lstrip("^").replace(r"(\d+)", r"\1").replace("\\.", ".")
    return back_pat, wan


WAN_TO_DIFFUSERS = [(re.compile(p + _END), r) for p, r in _DIT_PAIRS]
DIFFUSERS_TO_WAN = [(re.compile(p + _END), r) for p, r in (_reverse(p, r) for p, r in _DIT_PAIRS)]


def _apply(rules, name: str) -> str:
    for pattern, replacement in rules:
        new = pattern.sub(replacement, name, count=1)
        if new != name:
            return new  # one rule per name: later rules must not rewrite an already-mapped name
    return name


def wan_to_diffusers(name: str) -> str:
    return _apply(WAN_TO_DIFFUSERS, name)


def diffusers_to_wan(name: str) -> str:
    return _apply(DIFFUSERS_TO_WAN, name)


def rename(name: str, direction: str | None) -> str:
    """LightX2V converter vocabulary: forward = LightX2V (Wan) -> diffusers, backward = the reverse."""
    if direction in (None, "none"):
        return name
    if direction == "forward":
        return wan_to_diffusers(name)
    if direction == "backward":
        return diffusers_to_wan(name)
    raise ValueError(f"direction must be forward, backward or None, got {direction!r}")


# ---- which naming does a DiT file use ------------------------------------------------------
_WAN_ONLY = re.compile(r"(^|\.)(self_attn|cross_attn|text_embedding|time_embedding|time_projection|img_emb)\.|"
                       r"^head\.|\.modulation$|\.ffn\.[02]\.")
_DIFFUSERS_ONLY = re.compile(r"(^|\.)(attn1|attn2|condition_embedder|proj_out)\.|scale_shift_table$|\.ffn\.net\.")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")


def strip_prefix(keys: list[str]) -> str:
    """The prefix every key shares (ComfyUI writes `model.diffusion_model.`), or ''."""
    for prefix in PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys if k != "scaled_fp8"):
            return prefix
    return ""


def detect_naming(keys) -> str:
    """'wan', 'diffusers', 'mixed' or 'unknown'."""
    wan = any(_WAN_ONLY.search(k) for k in keys)
    diff = any(_DIFFUSERS_ONLY.search(k) for k in keys)
    return {(True, False): "wan", (False, True): "diffusers", (True, True): "mixed"}.get((wan, diff), "unknown")


# ---- Wan's UMT5-XXL encoder <-> transformers UMT5EncoderModel ---------------------------------
_T5_PAIRS = [
    (r"^blocks\.(\d+)\.attn\.(q|k|v|o)", r"encoder.block.\1.layer.0.SelfAttention.\2"),
    (r"^blocks\.(\d+)\.norm1", r"encoder.block.\1.layer.0.layer_norm"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias"),
    # Wan: x = fc1(x) * gelu(gate(x)); transformers: wo(gelu(wi_0(x)) * wi_1(x)).
    (r"^blocks\.(\d+)\.ffn\.gate\.0", r"encoder.block.\1.layer.1.DenseReluDense.wi_0"),
    (r"^blocks\.(\d+)\.ffn\.fc1", r"encoder.block.\1.layer.1.DenseReluDense.wi_1"),
    (r"^blocks\.(\d+)\.ffn\.fc2", r"encoder.block.\1.layer.1.DenseReluDense.wo"),
    (r"^blocks\.(\d+)\.norm2", r"encoder.block.\1.layer.1.layer_norm"),
    (r"^norm", "encoder.final_layer_norm"),
    (r"^token_embedding", "shared"),
]
T5_TO_HF = [(re.compile(p + _END), r) for p, r in _T5_PAIRS]
T5_FROM_HF = [(re.compile(p + _END), r) for p, r in (
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.(q|k|v|o)", r"blocks.\1.attn.\2"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm", r"blocks.\1.norm1"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias", r"blocks.\1.pos_embedding.embedding"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0", r"blocks.\1.ffn.gate.0"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1", r"blocks.\1.ffn.fc1"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo", r"blocks.\1.ffn.fc2"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm", r"blocks.\1.norm2"),
    (r"^encoder\.final_layer_norm", "norm"),
    (r"^(shared|encoder\.embed_tokens)", "token_embedding"),
)]


def t5_to_hf(name: str) -> str | None:
    new = _apply(T5_TO_HF, name)
    return new if new != name else None


def t5_from_hf(name: str) -> str | None:
    new = _apply(T5_FROM_HF, name)
    return new if new != name else None


# ---- open-clip ViT-H/14 (Wan's CLIP) <-> transformers CLIPVisionModel ------------------------
_V = "vision_model"
_CLIP_PAIRS = [
    (r"^visual\.patch_embedding", f"{_V}.embeddings.patch_embedding"),
    (r"^visual\.cls_embedding", f"{_V}.embeddings.class_embedding"),  # [1,1,D] -> [D]
    (r"^visual\.pos_embedding", f"{_V}.embeddings.position_embedding.weight"),  # [1,L,D] -> [L,D]
    (r"^visual\.pre_norm", f"{_V}.pre_layrnorm"),
    (r"^visual\.post_norm", f"{_V}.post_layernorm"),
    (r"^visual\.transformer\.(\d+)\.norm1", rf"{_V}.encoder.layers.\1.layer_norm1"),
    (r"^visual\.transformer\.(\d+)\.norm2", rf"{_V}.encoder.layers.\1.layer_norm2"),
    (r"^visual\.transformer\.(\d+)\.attn\.to_qkv", rf"{_V}.encoder.layers.\1.self_attn.qkv"),  # split by the loader
    (r"^visual\.transformer\.(\d+)\.attn\.proj", rf"{_V}.encoder.layers.\1.self_attn.out_proj"),
    (r"^visual\.transformer\.(\d+)\.mlp\.0", rf"{_V}.encoder.layers.\1.mlp.fc1"),
    (r"^visual\.transformer\.(\d+)\.mlp\.2", rf"{_V}.encoder.layers.\1.mlp.fc2"),
]
CLIP_TO_HF = [(re.compile(p + _END), r) for p, r in _CLIP_PAIRS]
FUSED_QKV = re.compile(r"^(.*)\.self_attn\.qkv$")


def clip_to_hf(name: str) -> str | None:
    """None for what CLIPVisionModel has no place for (the text tower, `visual.head`, `log_scale`)."""
    new = _apply(CLIP_TO_HF, name)
    return new if new != name else None
