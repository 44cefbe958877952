"""Swapping the linears of the real diffusers / transformers models, and the report."""
import re

import pytest
import torch
from torch import nn

from engine.apply import quantize_model
from engine.errors import EngineError, FormatError
from engine.linear import QuantLinear
from engine.tiny import tiny_image_encoder, tiny_text_encoder, tiny_transformer

FORMATS = ["int8", "fp8", "fp8_block128", "mxfp8", "nvfp4"]
# Relative error of the whole tiny transformer's output, bf16 reference kept in float32.
TRANSFORMER_BOUND = {"int8": 0.05, "fp8": 0.06, "fp8_block128": 0.06, "mxfp8": 0.06, "nvfp4": 0.25}


def transformer_inputs(model, frames=2, size=8, text=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return dict(hidden_states=torch.randn(1, cfg.in_channels, frames, size, size, generator=g),
                timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, text, cfg.text_dim, generator=g),
                return_dict=False)


def test_wan_report_counts_what_lightx2v_quantizes():
    model = tiny_transformer()
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = quantize_model(model, "int8-vllm")
    per_block = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"}
    assert set(report.swapped) == {f"blocks.{i}.{p}" for i in range(2) for p in per_block}
    assert set(report.kept) == linears - set(report.swapped)
    assert any(k.startswith("condition_embedder") for k in report.kept) and "proj_out" in report.kept
    assert report.bytes_after < report.bytes_before
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in report.swapped)


def test_i2v_also_quantizes_image_kv_projections():
    report = quantize_model(tiny_transformer(i2v=True), "fp8")
    assert {"blocks.0.attn2.add_k_proj", "blocks.0.attn2.add_v_proj"} <= set(report.swapped)
    assert len(report.swapped) == 24


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_transformer_stays_close(fmt):
    torch.manual_seed(1)
    model = tiny_transformer()
    inputs = transformer_inputs(model)
    with torch.no_grad():
        want = model(**inputs)[0]
        quantize_model(model, fmt)
        got = model(**inputs)[0]
    err = ((got - want).norm() / want.norm()).item()
    assert err <= TRANSFORMER_BOUND[fmt], f"{fmt}: {err:.4f}"


def test_encoders_use_their_rules():
    t5 = tiny_text_encoder(100)
    rep = quantize_model(t5, "int8")
    assert len(rep.swapped) == 2 * (4 + 3)  # q k v o, wi_0 wi_1 wo per block
    assert all(re.search(r"SelfAttention|DenseReluDense", n) for n in rep.swapped)
    clip = tiny_image_encoder()
    rep = quantize_model(clip, "fp8")
    assert len(rep.swapped) == 2 * 6


def test_custom_rules_and_unknown_model():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    with pytest.raises(EngineError, match="no default quantization rules for Sequential"):
        quantize_model(model, "int8")
    rep = quantize_model(model, "int8", rules=[r"2"])
    assert rep.swapped == ["2"] and rep.kept == ["0"]


def test_layer_the_format_cannot_take_is_named():
    model = nn.Sequential(nn.Linear(24, 32))
    with pytest.raises(FormatError, match="layer 0: mxfp8: .*24 input features"):
        quantize_model(model, "mxfp8", rules=[r"0"])


def test_default_scheme_changes_nothing():
    model = tiny_transformer()
    rep = quantize_model(model, "Default")
    assert rep.swapped == [] and not any(isinstance(m, QuantLinear) for m in model.modules())
