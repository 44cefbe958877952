"""Wan (LightX2V / original) <-> diffusers key names of the tiny test transformers, written out by hand.

Written from LightX2V's naming (REFERENCE.md §1), one line per tensor, deliberately NOT derived from
engine/checkpoint/keymaps.py: a test checkpoint named with the engine's own map would carry a key-map bug on
both sides (a k/v swap there passed every test). The i2v model has every key of the t2v one plus
the image embedder and the image key/value projections.
"""

TOP = {  # diffusers name: Wan name
    "scale_shift_table": "head.modulation",
    "patch_embedding.weight": "patch_embedding.weight",
    "patch_embedding.bias": "patch_embedding.bias",
    "condition_embedder.time_embedder.linear_1.weight": "time_embedding.0.weight",
    "condition_embedder.time_embedder.linear_1.bias": "time_embedding.0.bias",
    "condition_embedder.time_embedder.linear_2.weight": "time_embedding.2.weight",
    "condition_embedder.time_embedder.linear_2.bias": "time_embedding.2.bias",
    "condition_embedder.time_proj.weight": "time_projection.1.weight",
    "condition_embedder.time_proj.bias": "time_projection.1.bias",
    "condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight",
    "condition_embedder.text_embedder.linear_1.bias": "text_embedding.0.bias",
    "condition_embedder.text_embedder.linear_2.weight": "text_embedding.2.weight",
    "condition_embedder.text_embedder.linear_2.bias": "text_embedding.2.bias",
    "proj_out.weight": "head.head.weight",
    "proj_out.bias": "head.head.bias",
}

TOP_I2V = {
    "condition_embedder.image_embedder.norm1.weight": "img_emb.proj.0.weight",
    "condition_embedder.image_embedder.norm1.bias": "img_emb.proj.0.bias",
    "condition_embedder.image_embedder.ff.net.0.proj.weight": "img_emb.proj.1.weight",
    "condition_embedder.image_embedder.ff.net.0.proj.bias": "img_emb.proj.1.bias",
    "condition_embedder.image_embedder.ff.net.2.weight": "img_emb.proj.3.weight",
    "condition_embedder.image_embedder.ff.net.2.bias": "img_emb.proj.3.bias",
    "condition_embedder.image_embedder.norm2.weight": "img_emb.proj.4.weight",
    "condition_embedder.image_embedder.norm2.bias": "img_emb.proj.4.bias",
}

BLOCK = {  # inside blocks.<i>.
    "scale_shift_table": "modulation",
    "attn1.to_q.weight": "self_attn.q.weight",
    "attn1.to_q.bias": "self_attn.q.bias",
    "attn1.to_k.weight": "self_attn.k.weight",
    "attn1.to_k.bias": "self_attn.k.bias",
    "attn1.to_v.weight": "self_attn.v.weight",
    "attn1.to_v.bias": "self_attn.v.bias",
    "attn1.to_out.0.weight": "self_attn.o.weight",
    "attn1.to_out.0.bias": "self_attn.o.bias",
    "attn1.norm_q.weight": "self_attn.norm_q.weight",
    "attn1.norm_k.weight": "self_attn.norm_k.weight",
    "attn2.to_q.weight": "cross_attn.q.weight",
    "attn2.to_q.bias": "cross_attn.q.bias",
    "attn2.to_k.weight": "cross_attn.k.weight",
    "attn2.to_k.bias": "cross_attn.k.bias",
    "attn2.to_v.weight": "cross_attn.v.weight",
    "attn2.to_v.bias": "cross_attn.v.bias",
    "attn2.to_out.0.weight": "cross_attn.o.weight",
    "attn2.to_out.0.bias": "cross_attn.o.bias",
    "attn2.norm_q.weight": "cross_attn.norm_q.weight",
    "attn2.norm_k.weight": "cross_attn.norm_k.weight",
    "norm2.weight": "norm3.weight",  # sic: Wan's norm3 is diffusers' norm2
    "norm2.bias": "norm3.bias",
    "ffn.net.0.proj.weight": "ffn.0.weight",
    "ffn.net.0.proj.bias": "ffn.0.bias",
    "ffn.net.2.weight": "ffn.2.weight",
    "ffn.net.2.bias": "ffn.2.bias",
}

BLOCK_I2V = {
    "attn2.add_k_proj.weight": "cross_attn.k_img.weight",
    "attn2.add_k_proj.bias": "cross_attn.k_img.bias",
    "attn2.add_v_proj.weight": "cross_attn.v_img.weight",
    "attn2.add_v_proj.bias": "cross_attn.v_img.bias",
    "attn2.norm_added_k.weight": "cross_attn.norm_k_img.weight",
}


def diffusers_to_wan_table(num_layers: int = 2, i2v: bool = True) -> dict[str, str]:
    """Every tensor of a tiny WanTransformer3DModel: diffusers name -> Wan (LightX2V) name."""
    table = dict(TOP, **(TOP_I2V if i2v else {}))
    for i in range(num_layers):
        for diff, wan in dict(BLOCK, **(BLOCK_I2V if i2v else {})).items():
            table[f"blocks.{i}.{diff}"] = f"blocks.{i}.{wan}"
    return table


def to_wan(key: str, i2v: bool = True) -> str:
    """One diffusers key -> its Wan name; a key the table lacks is an error, not passed through."""
    table = diffusers_to_wan_table(i2v=i2v)
    if key not in table:
        raise KeyError(f"{key!r} is not in tests/wan_names.py; add it by hand from LightX2V's naming")
    return table[key]
