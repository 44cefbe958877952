"""The app's build path on a GPU: a diffusers-format folder, quantized on load, fused Wan blocks.

Run on a CUDA machine: python -m pytest -q tests/gpu. Skipped elsewhere.
"""
import numpy as np
import pytest
import torch

from engine.builder import build_from_dir
from engine.config import load_config
from engine.fused import uninstall_fused_wan
from engine.infer import save_tiny

CALL = dict(height=64, width=64, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
            max_sequence_length=16, output_type="np")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "t2v", "t2v")


def frames(pipe):
    with torch.no_grad():
        return pipe("a red fox", generator=torch.Generator("cuda").manual_seed(0), **CALL).frames[0]


@pytest.mark.parametrize("scheme", ["fp8-sgl", "int8-vllm", "fp8-b128-deepgemm"])
def test_build_installs_fused_blocks_that_match_diffusers_forward(tiny_dir, scheme):
    cfg = load_config({"dit_quantized": True, "dit_quant_scheme": scheme})
    model = build_from_dir(tiny_dir, cfg, device="cuda")
    assert "fused Wan block forward on 2 of 2 blocks" in model.reports["transformer"]
    fused = frames(model.pipe)
    uninstall_fused_wan(model.pipe.transformer)
    plain = frames(model.pipe)
    assert fused.shape == (5, 64, 64, 3) and np.isfinite(fused).all()
    assert np.abs(fused - plain).mean() < 0.02
