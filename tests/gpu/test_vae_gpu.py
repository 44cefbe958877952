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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["ncthw", "channels_last_3d", "permuted"])
def test_fused_norm_kernel_on_the_gpu(dtype, layout):
    """engine/vae/fused_norm.py at the full decoder's widths (384, 192, 96) on real CUDA: the only 16-bit
    rounding is the final store, |y - ref| <= u |ref| + fp32 noise (tests/vae_norm_interpret_check.py)."""
    import torch.nn.functional as F
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    from engine.vae.fused_norm import kernel_declines, rms_norm_silu

    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    gen = torch.Generator("cuda").manual_seed(0)
    for C in (384, 192, 96):
        norm = WanRMS_norm(C, images=False).cuda().requires_grad_(False)
        norm.gamma.copy_(1 + 0.5 * torch.randn(norm.gamma.shape, generator=gen, device="cuda"))
        norm.to(dtype)
        x = (torch.randn(1, C, 3, 60, 104, generator=gen, device="cuda") * 4).to(dtype)
        if layout == "channels_last_3d":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        elif layout == "permuted":
            x = x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
        assert kernel_declines(x) is None
        y = rms_norm_silu(x, norm.gamma, norm.bias, norm.scale)
        assert y.dtype == dtype and y.stride() == x.stride()
        ref = F.silu(F.normalize(x.float(), dim=1) * norm.scale * norm.gamma.float())
        assert ((y.float() - ref).abs() <= unit * ref.abs() + 4e-6 * ref.abs() + 2.0**-24).all()


def test_full_vae_fused_norm_on_the_gpu():
    """The default GPU speed (fp16, channels-last, cuDNN benchmark) with and without the fused norm on a
    small random full VAE: the kernel runs in every swapped norm and the frames stay as close to fp32."""
    import copy

    from diffusers import AutoencoderKLWan

    from engine.vae import fused_norm
    from engine.vae.speed import VaeSpeed, apply_speed

    torch.manual_seed(0)
    base = AutoencoderKLWan(base_dim=32).eval().requires_grad_(False).cuda()
    z = torch.randn(1, 16, 3, 16, 16, device="cuda")
    ref = base.decode(z).sample
    plain, fused = copy.deepcopy(base), copy.deepcopy(base)
    apply_speed(plain, VaeSpeed("fp16", True, True))
    note = apply_speed(fused, VaeSpeed("fp16", True, True, fused_norm=True))
    assert "fused RMS norm + SiLU" in note and "declined" not in note
    calls = []
    kernel = fused_norm.rms_norm_silu
    fused_norm.rms_norm_silu = lambda *a, **k: calls.append(1) or kernel(*a, **k)
    try:
        a, b = plain.decode(z.half()).sample.float(), fused.decode(z.half()).sample.float()
    finally:
        fused_norm.rms_norm_silu = kernel
    swapped = sum(isinstance(m, fused_norm.RMSNormSiLU) for m in fused.modules())
    assert len(calls) == swapped * z.shape[2]

    def psnr(u, v):
        return 10 * torch.log10(4 / (u - v).pow(2).mean()).item()

    assert psnr(b, ref) >= psnr(a, ref) - 1.0


def test_engine_build_fuses_the_norm_and_exact_tiles_match_on_the_gpu(setup):
    """build_from_dir configures the decoder on the CPU and places it on the GPU afterwards: the fused norm
    must still be installed (it declined on every engine-built pipeline until 2026-12-04), and the exact
    tiled decode (engine/vae/tiling.py) with the GPU's default decode must give the untiled frames."""
    from engine.vae import tiling

    model = build_from_dir(setup["folder"], load_config({}), device="cuda")
    assert "fused RMS norm + SiLU" in model.reports["vae"] and "declined" not in model.reports["vae"]
    call = dict(CALL, height=272, width=272)  # over diffusers' 256 px tile, or it decodes whole

    def run():
        with torch.no_grad():
            return model.pipe("a red fox", generator=torch.Generator("cuda").manual_seed(0), **call).frames[0]

    vae = model.pipe.vae
    vae.disable_tiling()
    whole = run()
    vae.enable_tiling()
    assert tiling.install(vae, tiling.Grid(2, 2)) is None
    tiled = run()
    tiling.uninstall(vae)
    blended = run()
    assert np.abs(tiled - whole).max() < 4e-3  # fp16: other cuDNN algorithms for other shapes
    assert np.abs(blended - whole).max() > np.abs(tiled - whole).max()
