"""End to end on CPU: the real diffusers Wan pipelines, tiny, with quantized linears."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import load_config
from engine.linear import QuantLinear
from engine.pipeline import quantize_pipeline
from engine.tiny import build_tiny_pipeline

CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
            max_sequence_length=16, output_type="np")


def run(pipe, **kw):
    with torch.no_grad():
        return pipe(prompt="a red fox in snow", generator=torch.Generator().manual_seed(0), **CALL, **kw).frames[0]


@pytest.fixture(scope="module")
def unquantized_frames():
    return run(build_tiny_pipeline("t2v"))


# The latent-level check. Decoded frames of random weights barely depend on the transformer (a zero,
# negated or re-randomised one stayed under the old frame bound), so compare what the transformer
# contributes: the final latents minus the starting noise, same noise for every run.
NOISE = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(5))  # 5 frames of 32x32 -> latents
# About 1.5x the relative error measured on CPU (DiT scheme + T5 int8, this file's CALL and NOISE):
# int8 0.0023, fp8 0.0097, fp8 block-128 0.0095, mxfp8 0.0086, nvfp4 0.0343. A zero transformer
# measures 1.0, a negated one 2.0, re-randomised weights 1.42.
LATENT_BOUNDS = {"int8-vllm": 0.0035, "fp8-sgl": 0.015, "fp8-b128-deepgemm": 0.015, "mxfp8": 0.013, "nvfp4": 0.052}


def transformer_delta(pipe):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt="a red fox in snow", latents=NOISE.clone(), **dict(CALL, output_type="latent")).frames
    return out.float() - NOISE


@pytest.fixture(scope="module")
def unquantized_delta():
    return transformer_delta(build_tiny_pipeline("t2v"))


def assert_close_latents(pipe, ref_delta, bound):
    err = float((transformer_delta(pipe) - ref_delta).norm() / ref_delta.norm())
    assert err < bound, f"latents moved {err:.4f} (relative) from the unquantized pipeline's, bound {bound}"


@pytest.mark.parametrize("scheme", ["int8-vllm", "fp8-sgl", "fp8-b128-deepgemm", "mxfp8", "nvfp4"])
def test_t2v_generates_frames_with_each_format(scheme, unquantized_frames, unquantized_delta):
    pipe = build_tiny_pipeline("t2v")
    reports = quantize_pipeline(pipe, load_config({"dit_quantized": True, "dit_quant_scheme": scheme,
                                                   "t5_quantized": True, "t5_quant_scheme": "int8"}))
    assert set(reports) == {"transformer", "text_encoder"}
    frames = run(pipe)
    assert frames.shape == (5, 32, 32, 3) and np.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1
    # random weights: frames are noise-like, but quantization must not change them much
    assert np.abs(frames - unquantized_frames).mean() < 0.05
    assert_close_latents(pipe, unquantized_delta, LATENT_BOUNDS[scheme])


def _zero(t):
    t.proj_out.weight.zero_()
    t.proj_out.bias.zero_()


def _negate(t):
    t.proj_out.weight.neg_()
    t.proj_out.bias.neg_()


def _rerandomise(t):
    torch.manual_seed(123)
    for p in t.parameters():
        p.copy_(torch.randn_like(p) * p.std().clamp(min=1e-3) + p.mean())


@pytest.mark.parametrize("breakage", [_zero, _negate, _rerandomise])
def test_latent_check_fails_a_broken_transformer(breakage, unquantized_delta):
    """Testing the test: the check above must reject a transformer that predicts zeros, the negated
    prediction, or one with other random weights, even at the loosest format's bound."""
    pipe = build_tiny_pipeline("t2v")
    with torch.no_grad():
        breakage(pipe.transformer)
    with pytest.raises(AssertionError, match="latents moved"):
        assert_close_latents(pipe, unquantized_delta, max(LATENT_BOUNDS.values()))


def test_i2v_with_mixed_schemes():
    pipe = build_tiny_pipeline("i2v")
    cfg = load_config({"mm_config": {"mm_type": "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Q8F"},
                       "t5_quantized": True, "t5_quant_scheme": "int8-q8f",
                       "clip_quantized": True, "clip_quant_scheme": "fp8"})
    reports = quantize_pipeline(pipe, cfg)
    assert set(reports) == {"transformer", "text_encoder", "image_encoder"}
    assert {r.format for r in reports.values()} == {"fp8", "int8"}
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    frames = run(pipe, image=image)
    assert frames.shape == (5, 32, 32, 3) and np.isfinite(frames).all()


def test_second_transformer_is_quantized_too():
    from engine.tiny import tiny_transformer
    pipe = build_tiny_pipeline("t2v")
    pipe.register_modules(transformer_2=tiny_transformer())
    reports = quantize_pipeline(pipe, load_config({"dit_quantized": True, "dit_quant_scheme": "int8"}))
    assert set(reports) == {"transformer", "transformer_2"}
    assert any(isinstance(m, QuantLinear) for m in pipe.transformer_2.modules())


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_uint8_frames_equal_the_float_frames_rounded(task):
    """generate() asks the pipeline for tensors and converts to uint8 where they are (engine.generate
    .to_uint8); the same frames through diffusers' own output_type="np", rounded by numpy, must agree."""
    from engine.generate import to_uint8

    pipe = build_tiny_pipeline(task)
    kw = {"image": Image.new("RGB", (32, 32), (200, 40, 40))} if task == "i2v" else {}
    floats = run(pipe, **kw)
    with torch.no_grad():
        tensors = pipe(prompt="a red fox in snow", generator=torch.Generator().manual_seed(0),
                       **dict(CALL, output_type="pt"), **kw).frames[0]
    got = to_uint8(tensors)
    want = (np.clip(floats, 0.0, 1.0) * 255).round().astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == want.shape == (5, 32, 32, 3)
    assert np.array_equal(got, want)
    assert len(np.unique(got)) > 20  # frames with content, not a constant
