"""Tiny T5 and CLIP in Wan's own naming, made here, load into transformers' classes and match a
forward pass written from Wan's model code (so the key maps are checked, not just round-tripped)."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.checkpoint.io import write_safetensors
from engine.checkpoint.encoders import load_clip, load_t5
from engine.errors import CheckpointError
from tests.lightx2v_writer import quantize_state_dict

D, HEADS, FF, VOCAB, BUCKETS, LAYERS = 32, 4, 64, 50, 8, 2


def wan_t5_weights(g):
    sd = {"token_embedding.weight": torch.randn(VOCAB, D, generator=g), "norm.weight": 1 + 0.1 * torch.randn(D, generator=g)}
    for i in range(LAYERS):
        p = f"blocks.{i}."
        for n in ("q", "k", "v", "o"):
            sd[p + f"attn.{n}.weight"] = torch.randn(D, D, generator=g) * D ** -0.5
        sd[p + "ffn.gate.0.weight"] = torch.randn(FF, D, generator=g) * D ** -0.5
        sd[p + "ffn.fc1.weight"] = torch.randn(FF, D, generator=g) * D ** -0.5
        sd[p + "ffn.fc2.weight"] = torch.randn(D, FF, generator=g) * FF ** -0.5
        sd[p + "norm1.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
        sd[p + "norm2.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
        sd[p + "pos_embedding.embedding.weight"] = torch.randn(BUCKETS, HEADS, generator=g)
    return sd


def _bucket(rel, num_buckets, max_dist=128):
    # Wan's bidirectional relative position bucket.
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_forward(sd, ids):
    rms = lambda x, w: w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731
    x = sd["token_embedding.weight"][ids]
    b, n = ids.shape
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    for i in range(LAYERS):
        p = f"blocks.{i}."
        bias = sd[p + "pos_embedding.embedding.weight"][_bucket(rel, BUCKETS)].permute(2, 0, 1)[None]
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{m}.weight"]).view(b, n, HEADS, -1) for m in "qkv")
        attn = (torch.einsum("binc,bjnc->bnij", q, k) + bias).softmax(-1)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, n, -1), sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        ff = F.linear(h, sd[p + "ffn.fc1.weight"]) * gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]))
        x = x + F.linear(ff, sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def test_t5_bf16_naming_matches_wan_forward(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = wan_t5_weights(g)
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(sd, path)
    model, report = load_t5(path, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (2, 9), generator=g)
    got = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, wan_t5_forward(sd, ids), rtol=1e-4, atol=1e-4)
    assert report.format == "none"


@pytest.mark.parametrize("fmt,bound", [("int8", 0.03), ("fp8", 0.08)])
def test_t5_quantized_pth_loads_quantized(tmp_path, fmt, bound):
    g = torch.Generator().manual_seed(1)
    sd = wan_t5_weights(g)
    q = quantize_state_dict(sd, fmt, lambda k: k.split(".")[2:3] in (["attn"], ["ffn"]))
    path = tmp_path / f"models_t5_umt5-xxl-enc-{fmt}.pth"
    torch.save(q, path)
    model, report = load_t5(path, dtype=torch.float32)
    assert report.formats[fmt] == 7 * LAYERS
    assert type(model.encoder.block[0].layer[0].SelfAttention.q).__name__ == "QuantLinear"
    ids = torch.randint(0, VOCAB, (1, 12), generator=g)
    ref = wan_t5_forward(sd, ids)
    err = (model(input_ids=ids).last_hidden_state - ref).norm() / ref.norm()
    assert err < bound


def test_pth_needing_full_pickle_is_refused(tmp_path):
    import argparse  # any class outside torch's allow-list: weights_only=True must refuse to build it
    path = tmp_path / "evil.pth"
    torch.save({"blocks.0.attn.q.weight": torch.zeros(2, 2), "obj": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match=r"argparse.Namespace.*plain tensors only") as e:
        load_t5(path)
    assert "weights_only=False" not in str(e.value)


# ---- CLIP ------------------------------------------------------------------------------------
IMG, PATCH, CLAYERS = 16, 8, 3


def wan_clip_weights(g):
    positions = (IMG // PATCH) ** 2 + 1
    sd = {"visual.patch_embedding.weight": torch.randn(D, 3, PATCH, PATCH, generator=g) * 0.05,
          "visual.cls_embedding": torch.randn(1, 1, D, generator=g), "visual.pos_embedding": torch.randn(1, positions, D, generator=g),
          "visual.pre_norm.weight": 1 + 0.1 * torch.randn(D, generator=g), "visual.pre_norm.bias": 0.1 * torch.randn(D, generator=g),
          "visual.post_norm.weight": torch.ones(D), "visual.post_norm.bias": torch.zeros(D),
          "visual.head": torch.randn(D, 16, generator=g), "log_scale": torch.tensor(4.6),
          "textual.blocks.0.attn.q.weight": torch.randn(D, D, generator=g)}  # the text tower is skipped
    for i in range(CLAYERS):
        p = f"visual.transformer.{i}."
        shapes = {"attn.to_qkv": (3 * D, D), "attn.proj": (D, D), "mlp.0": (FF, D), "mlp.2": (D, FF)}
        for name, (o, k) in shapes.items():
            sd[p + name + ".weight"] = torch.randn(o, k, generator=g) * k ** -0.5
            sd[p + name + ".bias"] = 0.1 * torch.randn(o, generator=g)
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"] = 1 + 0.1 * torch.randn(D, generator=g)
            sd[p + n + ".bias"] = 0.1 * torch.randn(D, generator=g)
    return sd


def wan_clip_penultimate(sd, img):
    ln = lambda x, n: F.layer_norm(x, (D,), sd[n + ".weight"], sd[n + ".bias"], 1e-5)  # noqa: E731
    x = F.conv2d(img, sd["visual.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    b, s = x.shape[0], x.shape[1] + 1
    x = torch.cat([sd["visual.cls_embedding"].expand(b, -1, -1), x], 1) + sd["visual.pos_embedding"]
    x = ln(x, "visual.pre_norm")
    for i in range(CLAYERS - 1):  # Wan's use_31_block: every block but the last
        p = f"visual.transformer.{i}."
        qkv = F.linear(ln(x, p + "norm1"), sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"])
        q, k, v = (t.transpose(1, 2) for t in qkv.view(b, s, 3, HEADS, -1).unbind(2))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, D)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


def clip_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=D, intermediate_size=FF, num_hidden_layers=CLAYERS, num_attention_heads=HEADS,
                            image_size=IMG, patch_size=PATCH, hidden_act="gelu", layer_norm_eps=1e-5)


@pytest.mark.parametrize("fmt,bound", [(None, 1e-4), ("int8", 0.03), ("fp8", 0.08), ("nvfp4", 0.3)])
def test_clip_splits_fused_qkv_and_matches_wan_forward(tmp_path, fmt, bound):
    g = torch.Generator().manual_seed(2)
    sd = wan_clip_weights(g)
    data = sd if fmt is None else quantize_state_dict(
        sd, fmt, lambda k: k.startswith("visual.") and len(k.split(".")) > 3 and k.split(".")[3] in ("attn", "mlp"))
    path = tmp_path / "clip.safetensors"
    write_safetensors(path, {k: v.contiguous() for k, v in data.items()})
    model, report = load_clip(path, clip_config(), dtype=torch.float32)
    if fmt:
        assert report.formats[fmt] == 6 * CLAYERS  # q, k, v (split from to_qkv), out_proj, fc1, fc2
    img = torch.randn(2, 3, IMG, IMG, generator=g)
    got = model(pixel_values=img, output_hidden_states=True).hidden_states[-2]
    ref = wan_clip_penultimate(sd, img)
    assert ((got - ref).norm() / ref.norm()) < bound
