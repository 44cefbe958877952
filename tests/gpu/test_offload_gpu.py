"""Streamed offload on a GPU (engine.builder.place_pipeline): diffusers' group offloading with CUDA
streams, the fused Wan block installed first, quantized buffers streamed, kernel caches dropped.

Run on a CUDA machine: python -m pytest -q tests/gpu/test_offload_gpu.py. Skipped elsewhere.
"""
import numpy as np
import pytest
import torch

from engine.builder import build_from_dir
from engine.config import load_config
from engine.infer import save_tiny
from engine.linear import QuantLinear

CALL = dict(height=64, width=64, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
            max_sequence_length=16, output_type="np")
BASE = {"dit_quantized": True, "dit_quant_scheme": "int8-vllm", "t5_quantized": True, "t5_quant_scheme": "int8"}
TIERS = {"text": {"t5_cpu_offload": True},
         "block": {"cpu_offload": True, "offload_granularity": "block", "t5_cpu_offload": True},
         "leaf": {"cpu_offload": True, "offload_granularity": "phase", "t5_cpu_offload": True}}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "t2v", "t2v")


def frames(pipe):
    with torch.inference_mode():
        return pipe("a red fox", generator=torch.Generator("cpu").manual_seed(0), **CALL).frames[0]


@pytest.fixture(scope="module")
def resident(tiny_dir):
    model = build_from_dir(tiny_dir, load_config(BASE), device="cuda")
    return frames(model.pipe)


@pytest.mark.parametrize("offload", list(TIERS))
def test_streamed_tiers_give_the_resident_frames_and_leave_nothing_on_the_gpu(tiny_dir, resident, offload):
    model = build_from_dir(tiny_dir, load_config(dict(BASE, **TIERS[offload])), device="cuda")
    assert model.offload == offload
    out = frames(model.pipe)
    if offload == "leaf":  # diffusers' block forward instead of the fused one: same math, other rounding
        assert np.abs(out - resident).mean() < 0.02
    else:
        np.testing.assert_allclose(out, resident, atol=1e-5)
    streamed = [model.pipe.text_encoder] + ([model.pipe.transformer] if offload != "text" else [])
    for component in streamed:
        for layer in component.modules():
            if isinstance(layer, QuantLinear):
                assert all(t.device.type == "cpu" for t in layer.buffers())
                assert "_kernel_cache" not in layer.__dict__ and not layer._kernels
    if offload == "block":
        assert all(b.__dict__.get("_fused_plan") for b in model.pipe.transformer.blocks)  # fused on the GPU
