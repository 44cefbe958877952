"""The decoders on a GPU through build_from_dir: the tiny decoder in bf16, LightVAE, and the full VAE's
speed settings (the autocast path on CUDA, channels-last, cuDNN benchmark).

Run on a CUDA machine: python -m pytest -q tests/gpu/test_vae_gpu.py. Skipped elsewhere.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.builder import build_from_dir
from engine.config import load_config
from engine.infer import save_tiny

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vae_writer import light_tensors, tiny_tensors, write  # noqa: E402

CALL = dict(height=64, width=64, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
            max_sequence_length=16, output_type="np")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    return dict(folder=save_tiny(d / "t2v", "t2v"),
                tiny=write(d / "lighttaew2_1.safetensors", tiny_tensors(widths=(64, 32, 16, 16))),
                light=write(d / "lightvaew2_1.safetensors", light_tensors(base=4)))


def frames(pipe):
    with torch.no_grad():
        return pipe("a red fox", generator=torch.Generator("cuda").manual_seed(0), **CALL).frames[0]


@pytest.mark.parametrize("extra", [{"use_tae": True, "tae_path": "tiny"}, {"use_lightvae": True, "vae_path": "light"}])
def test_light_decoders_on_the_gpu(setup, extra):
    cfg = {k: setup.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    model = build_from_dir(setup["folder"], load_config(cfg), device="cuda")
    out = frames(model.pipe)
    assert out.shape == (9, 64, 64, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "bf16-mixed", "fp16-mixed"])
def test_full_vae_speed_settings_on_the_gpu(setup, dtype):
    ref = frames(build_from_dir(setup["folder"], load_config({"vae_dtype": "fp32"}), device="cuda").pipe)
    cfg = {"vae_dtype": dtype, "vae_channels_last": True, "vae_cudnn_benchmark": True}
    model = build_from_dir(setup["folder"], load_config(cfg), device="cuda")
    assert dtype in model.reports["vae"]
    out = frames(model.pipe)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.02  # random tiny weights: close on average
