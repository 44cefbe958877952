"""engine/vae/fused_norm.py: the Triton RMS norm + SiLU of the Wan VAE decoder (issue 15).

The kernel's numerics and the decode with and without the swap run in Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported, hence the subprocess; see
tests/vae_norm_interpret_check.py for the bounds). Here, in process: which modules the swap touches,
counted against diffusers' source, its decline on the CPU, and the config key."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from engine.config import load_config
from engine.vae.speed import DEFAULT_SPEED, VaeSpeed, apply_speed, speed_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_kernel_and_decode_match_diffusers_in_interpreter(rng):
    pytest.importorskip("triton")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "vae_norm_interpret_check.py"), str(seed)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"seed {seed}\n" + proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok kernel") == 20 and proc.stdout.count("ok decode") == 4, proc.stdout


def _expected_sites(num_res_blocks: int, up_blocks: int) -> int:
    """From autoencoder_kl_wan.py: WanMidBlock(num_layers=1) holds 2 WanResidualBlocks, each up block
    num_res_blocks + 1 of them, each block norm1 and norm2 followed by SiLU; plus the decoder's norm_out."""
    return 2 * (2 + up_blocks * (num_res_blocks + 1)) + 1


@pytest.mark.parametrize("kwargs", [dict(base_dim=4),  # Wan2.1's layout (num_res_blocks=2, 4 levels)
                                    dict(base_dim=4, num_res_blocks=1, dim_mult=[1, 2, 2]),
                                    dict(base_dim=8, z_dim=8, is_residual=True)])  # Wan2.2's residual up blocks
def test_swap_touches_exactly_the_norms_followed_by_silu(monkeypatch, kwargs):
    pytest.importorskip("triton")
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanRMS_norm, WanResidualBlock

    from engine.vae.fused_norm import RMSNormSiLU, install_fused_norm

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the swap's CUDA check; no kernel runs here
    vae = AutoencoderKLWan(**kwargs).eval()
    keys = {k: v.clone() for k, v in vae.state_dict().items()}
    encoder_before = [type(m) for m in vae.encoder.modules()]
    swapped, why = install_fused_norm(vae)
    assert why is None
    want = _expected_sites(vae.config.num_res_blocks, len(vae.config.dim_mult))
    assert swapped == want == sum(isinstance(m, RMSNormSiLU) for m in vae.decoder.modules())
    # left alone: the attention norms (no SiLU after them) and the whole encoder
    rest = [m for m in vae.decoder.modules() if isinstance(m, WanRMS_norm)]
    assert len(rest) == sum(isinstance(m, WanAttentionBlock) for m in vae.decoder.modules()) > 0
    assert [type(m) for m in vae.encoder.modules()] == encoder_before
    assert isinstance(vae.encoder.nonlinearity, torch.nn.SiLU)
    for m in vae.decoder.modules():
        if isinstance(m, WanResidualBlock):
            assert isinstance(m.norm1, RMSNormSiLU) and isinstance(m.norm2, RMSNormSiLU)
            assert isinstance(m.nonlinearity, torch.nn.Identity)
    assert isinstance(vae.decoder.norm_out, RMSNormSiLU) and isinstance(vae.decoder.nonlinearity, torch.nn.Identity)
    # the same parameters under the same names: state dicts load either way
    after = vae.state_dict()
    assert after.keys() == keys.keys() and all(torch.equal(after[k], keys[k]) for k in keys)
    assert install_fused_norm(vae) == (0, None)  # a second install changes nothing


def test_declines_on_the_cpu(monkeypatch, caplog):
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    vae = AutoencoderKLWan(base_dim=4, num_res_blocks=1).eval()
    with caplog.at_level(logging.INFO, logger="engine.vae"):
        note = apply_speed(vae, VaeSpeed("bf16", fused_norm=True))
    assert "fused RMS norm + SiLU declined: the VAE decodes on cpu" in note
    assert "not used for the VAE decode" in caplog.text
    assert isinstance(vae.decoder.norm_out, WanRMS_norm) and isinstance(vae.decoder.nonlinearity, torch.nn.SiLU)
    vae.decode(torch.randn(1, 16, 2, 4, 4).to(torch.bfloat16))  # and the decode runs as before
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # an fp32 decode declines before any device check
    vae = AutoencoderKLWan(base_dim=4, num_res_blocks=1).eval()
    assert "declined: fp32 activations" in apply_speed(vae, VaeSpeed("fp32", fused_norm=True))
    assert isinstance(vae.decoder.norm_out, WanRMS_norm)


def test_the_engine_configures_it_on_the_cpu_for_a_cuda_decode(monkeypatch):
    """engine.builder configures the decoder before placing the pipeline, while the VAE is still on
    the CPU; a GPU run measured every bench_e2e row declining ("the VAE is on cpu") until the target
    device was passed down (H200, 2026-12-04)."""
    from engine.builder import build_tiny, configure_decoder
    from engine.config import load_config
    from engine.presets import load_preset
    from engine.vae.fused_norm import RMSNormSiLU

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = load_config(load_preset("cpu-demo"))
    pipe = build_tiny("t2v", cfg).pipe
    reports = {}
    configure_decoder(pipe, cfg, None, reports, "cuda")
    assert "declined" not in reports["vae"] and "fused RMS norm + SiLU" in reports["vae"]
    assert any(isinstance(m, RMSNormSiLU) for m in pipe.vae.decoder.modules())
    pipe.vae.decode(torch.randn(1, 16, 2, 4, 4).to(pipe.vae.dtype))  # on the CPU the modules fall back


def test_config_key(caplog):
    assert DEFAULT_SPEED.fused_norm and "fused RMS norm + SiLU" in DEFAULT_SPEED.describe()
    assert speed_settings(load_config({}), "cuda").fused_norm
    assert not speed_settings(load_config({}), "cpu").fused_norm
    with caplog.at_level(logging.INFO, logger="engine.config"):
        cfg = load_config({"vae_fused_norm": False})
    assert "vae_fused_norm" not in caplog.text  # a known key: no unknown / not-used line
    assert speed_settings(cfg, "cuda") == VaeSpeed("fp16", True, True)
    with pytest.raises(Exception, match="vae_fused_norm"):
        speed_settings(load_config({"vae_fused_norm": "yes"}))
