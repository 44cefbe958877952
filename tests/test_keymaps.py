"""Key maps are pure, ordered and invertible; the swizzle matches the tile layout element by element."""
import pytest
import torch

from engine.formats.swizzle import swizzle, unswizzle
from engine.checkpoint.keymaps import clip_to_hf, detect_naming, diffusers_to_wan, t5_from_hf, t5_to_hf, wan_to_diffusers
from engine.tiny import tiny_text_encoder, tiny_transformer
from tests.lightx2v_writer import swizzle_128x4

EXAMPLES = {
    "head.head.weight": "proj_out.weight",
    "head.modulation": "scale_shift_table",
    "blocks.3.modulation": "blocks.3.scale_shift_table",
    "blocks.3.self_attn.o.weight_scale": "blocks.3.attn1.to_out.0.weight_scale",
    "blocks.3.cross_attn.k_img.weight": "blocks.3.attn2.add_k_proj.weight",
    "blocks.3.cross_attn.norm_k_img.weight": "blocks.3.attn2.norm_added_k.weight",
    "blocks.3.cross_attn.norm_k.weight": "blocks.3.attn2.norm_k.weight",
    "blocks.3.norm3.bias": "blocks.3.norm2.bias",
    "blocks.3.ffn.0.weight": "blocks.3.ffn.net.0.proj.weight",
    "time_projection.1.bias": "condition_embedder.time_proj.bias",
    "img_emb.proj.4.weight": "condition_embedder.image_embedder.norm2.weight",
    "patch_embedding.weight": "patch_embedding.weight",
}


@pytest.mark.parametrize("wan,diff", EXAMPLES.items())
def test_examples_both_ways(wan, diff):
    assert wan_to_diffusers(wan) == diff and diffusers_to_wan(diff) == wan


@pytest.mark.parametrize("i2v", [False, True])
def test_every_diffusers_key_round_trips(i2v):
    keys = list(tiny_transformer(i2v=i2v).state_dict())
    wan = [diffusers_to_wan(k) for k in keys]
    assert len(set(wan)) == len(keys) and [wan_to_diffusers(k) for k in wan] == keys
    assert detect_naming(wan) == "wan" and detect_naming(keys) == "diffusers"
    assert detect_naming(wan[:5] + keys) == "mixed"


def test_t5_map_covers_umt5_and_inverts():
    keys = [k for k in tiny_text_encoder(40).state_dict() if k != "encoder.embed_tokens.weight"]
    wan = [t5_from_hf(k) for k in keys]
    assert None not in wan and [t5_to_hf(k) for k in wan] == keys
    assert t5_from_hf("encoder.block.2.layer.1.DenseReluDense.wi_0.weight") == "blocks.2.ffn.gate.0.weight"


def test_clip_map():
    assert clip_to_hf("visual.transformer.7.attn.to_qkv.weight_scale") == "vision_model.encoder.layers.7.self_attn.qkv.weight_scale"
    assert clip_to_hf("visual.transformer.7.mlp.2.bias") == "vision_model.encoder.layers.7.mlp.fc2.bias"
    assert clip_to_hf("textual.blocks.0.attn.q.weight") is None and clip_to_hf("visual.head") is None


@pytest.mark.parametrize("rows,cols", [(1, 1), (64, 2), (130, 9), (256, 160)])
def test_swizzle_round_trip_and_matches_reference_layout(rows, cols):
    s = torch.randint(0, 255, (rows, cols), dtype=torch.uint8)
    z = swizzle(s)
    assert z.shape == (-(-rows // 128) * 128, -(-cols // 4) * 4)
    assert torch.equal(unswizzle(z, rows, cols), s)
    if rows * cols <= 2000:
        assert torch.equal(z, swizzle_128x4(s))
    e4m3 = torch.randn(rows, cols).to(torch.float8_e4m3fn)
    assert torch.equal(unswizzle(swizzle(e4m3), rows, cols).view(torch.uint8), e4m3.view(torch.uint8))


@pytest.mark.parametrize("i2v", [False, True])
def test_dit_map_matches_the_hand_written_table(i2v):
    """Every key of the tiny models against tests/wan_names.py, written from LightX2V's naming."""
    from tests.wan_names import diffusers_to_wan_table
    keys = list(tiny_transformer(i2v=i2v).state_dict())
    table = diffusers_to_wan_table(i2v=i2v)
    assert sorted(keys) == sorted(table)  # the table covers the model exactly
    wrong = {k: (diffusers_to_wan(k), table[k]) for k in keys if diffusers_to_wan(k) != table[k]}
    assert not wrong, f"diffusers -> Wan (got, want): {wrong}"
    wrong = {w: (wan_to_diffusers(w), d) for d, w in table.items() if wan_to_diffusers(w) != d}
    assert not wrong, f"Wan -> diffusers (got, want): {wrong}"
    for d, w in table.items():  # module names (no .weight) map the same way: the loader renames prefixes
        prefix_d, prefix_w = d.rpartition(".")[0], w.rpartition(".")[0]
        if prefix_d and d.rpartition(".")[2] == w.rpartition(".")[2]:
            assert diffusers_to_wan(prefix_d) == prefix_w and wan_to_diffusers(prefix_w) == prefix_d
