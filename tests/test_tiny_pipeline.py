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


@pytest.mark.parametrize("scheme", ["int8-vllm", "fp8-sgl", "fp8-b128-deepgemm", "mxfp8", "nvfp4"])
def test_t2v_generates_frames_with_each_format(scheme, unquantized_frames):
    pipe = build_tiny_pipeline("t2v")
    reports = quantize_pipeline(pipe, load_config({"dit_quantized": True, "dit_quant_scheme": scheme,
                                                   "t5_quantized": True, "t5_quant_scheme": "int8"}))
    assert set(reports) == {"transformer", "text_encoder"}
    frames = run(pipe)
    assert frames.shape == (5, 32, 32, 3) and np.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1
    # random weights: frames are noise-like, but quantization must not change them much
    assert np.abs(frames - unquantized_frames).mean() < 0.05


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
