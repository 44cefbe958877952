"""engine/vae/tiling.py: the tiled decode gives diffusers' untiled frames (the reference is diffusers'
own AutoencoderKLWan.decode), on the Wan2.1 and Wan2.2 decoder layouts, through the pipeline too."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from engine import memory, memory_decode
from engine.config import load_config
from engine.request import VideoRequest
from engine.builder import build_tiny
from engine.vae import tiling

LAYOUTS = {
    "wan2.1": dict(base_dim=4, z_dim=16),
    "wan2.2": dict(base_dim=4, decoder_base_dim=4, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, temperal_downsample=[False, True, True]),
}


def _vae(layout):
    torch.manual_seed(0)
    return AutoencoderKLWan(**LAYOUTS[layout]).eval()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_tiles_give_the_untiled_frames_and_a_short_halo_does_not(layout):
    vae = _vae(layout)
    lat = (34, 36) if layout == "wan2.1" else (20, 22)  # frames over diffusers' 256 px tile, or it decodes whole
    z = torch.randn(1, vae.config.z_dim, 2, *lat, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vae.decode(z).sample
        vae.enable_tiling()
        assert tiling.install(vae, tiling.Grid(2, 3)) is None
        tiled = vae.decode(z).sample  # diffusers' _decode calls our tiled_decode
        short = tiling.decode_tiles(vae, z, tiling.Grid(2, 3), halo=tiling.reach(vae.decoder) // 2)
        tiling.uninstall(vae)
        blended = vae.decode(z).sample  # diffusers' own tiling
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() <= 1e-5
    if vae.config.patch_size:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
        short = unpatchify(short, vae.config.patch_size)
    assert (short.clamp(-1, 1) - whole).abs().max() > 1e-4  # the check can fail: the halo matters
    assert (blended - whole).abs().max() > 1e-2  # and diffusers' blended seams are what this replaces


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_encoder_tiles_give_the_untiled_latents(layout):
    """i2v's conditioning video: with tiling on, the encode is ours too (down blocks per tile, the mid
    block once); the latents equal the untiled encode's, diffusers' blended ones do not."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    vae = _vae(layout)
    size = (272, 288) if layout == "wan2.1" else (544, 576)  # the encoder's input over 256 px, or it is whole
    x = torch.randn(1, 3, 5, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        vae.enable_tiling()
        tiling.install(vae, tiling.Grid(2, 2))
        tiled = vae.encode(x).latent_dist.mean
        patched = patchify(x, vae.config.patch_size) if vae.config.patch_size else x
        short = tiling.encode_tiles(vae, patched, tiling.Grid(2, 2), halo=tiling.encoder_reach(vae.encoder) // 2)
        tiling.uninstall(vae)
        blended = vae.encode(x).latent_dist.mean
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() <= 1e-5
    assert (short.chunk(2, dim=1)[0] - whole).abs().max() > 1e-4
    assert (blended - whole).abs().max() > 1e-2


def test_reach_of_the_real_decoders_is_the_memory_model_constant():
    from engine.vae.light import WAN_DIM_MULT

    with torch.device("meta"):
        vaes = [AutoencoderKLWan(), AutoencoderKLWan(base_dim=24, dim_mult=list(WAN_DIM_MULT)),
                AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                                 out_channels=12, patch_size=2, scale_factor_spatial=16,
                                 temperal_downsample=[False, True, True])]
    for vae in vaes:
        assert tiling.supports(vae) is None and tiling.encoder_supports(vae) is None
        assert tiling.reach(vae.decoder) == memory_decode.TILE_REACH
        assert tiling.encoder_reach(vae.encoder) <= memory_decode.TILE_REACH  # the decode's grid serves both
        assert tiling.upscale(vae.decoder) == 8
    full = vaes[0].decoder.mid_block.resnets[0].conv1.in_channels
    assert full == memory_decode.TRUNK_CHANNELS[16]


def test_plan_takes_the_least_work_that_fits():
    lat_h, lat_w, halo = 60, 104, 13  # 480x832
    assert tiling.plan(lat_h, lat_w, halo, lat_h * lat_w) == tiling.Grid(1, 1)
    grid = tiling.plan(lat_h, lat_w, halo, 0.5 * lat_h * lat_w)
    assert tiling.tile_area(lat_h, lat_w, grid, halo) <= 0.5 * lat_h * lat_w
    for r in range(1, 9):  # no fitting grid computes less
        for c in range(1, 9):
            g = tiling.Grid(r, c)
            if tiling.tile_area(lat_h, lat_w, g, halo) <= 0.5 * lat_h * lat_w:
                assert tiling.computed_area(lat_h, lat_w, g, halo) >= tiling.computed_area(lat_h, lat_w, grid, halo)
    finest = tiling.plan(lat_h, lat_w, halo, 1)  # nothing fits: the smallest tiles
    assert tiling.tile_area(lat_h, lat_w, finest, halo) == min(
        tiling.tile_area(lat_h, lat_w, tiling.Grid(r, c), halo) for r in range(1, 9) for c in range(1, 9))


def test_budget_picks_larger_tiles_and_the_estimate_counts_them():
    place = memory.Placement("block", "stream", True)
    a = memory.ARCHS[1.3]
    fm = memory.Formats("fp8", "int8", None)
    tight, medium, roomy = (memory.estimate(a, fm, place, 480, 832, 81, budget=int(gib * memory.GIB))
                            for gib in (4, 6, 24))
    assert tight.grid.tiles > medium.grid.tiles > 1
    assert tight.phases["decode"] < medium.phases["decode"] < roomy.phases["decode"]
    assert tight.need <= 4 * memory.GIB and medium.need <= 6 * memory.GIB
    assert "decodes in tiles (" in memory.describe(tight, 4 * memory.GIB)
    # use_tiling_vae: true, and whole frames fit: one tile is the untiled decode, said so
    assert roomy.grid is None and not roomy.tiled and "whole frames" in memory.describe(roomy, 24 * memory.GIB)


def test_tiles_with_the_gpu_default_decode_round_as_the_untiled_one():
    """fp16 with the fused RMS norm + SiLU, its Triton kernel under the interpreter (set before Triton is
    imported, hence the subprocess): tiles equal the untiled decode bit for bit, with and without
    channels-last (tests/vae_tiling_interpret_check.py)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = os.path.join(os.path.dirname(__file__), "vae_tiling_interpret_check.py")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok tiled") == 2, proc.stdout


def test_tiles_have_one_shape_and_cover_their_core_with_the_halo():
    for n, parts, halo in ((60, 3, 13), (104, 5, 13), (34, 8, 13), (21, 2, 4)):
        spans = tiling._spans(n, parts, halo)
        assert len({t1 - t0 for _, _, t0, t1 in spans}) == 1
        assert spans[0][0] == 0 and spans[-1][1] == n
        for a, b, t0, t1 in spans:
            assert 0 <= t0 and t1 <= n and t0 <= max(0, a - halo) and t1 >= min(n, b + halo)


def test_without_a_budget_tiles_only_when_they_are_small():
    cpu = memory_decode.Decoder()
    grid = memory_decode.tile_grid(memory.DECODE_BYTES_PER_PIXEL, cpu, 480, 832, 81, None)
    assert grid.tiles > 1  # 60x104 latent: 2x2 tiles are under half the frame
    assert memory_decode.tile_grid(memory.DECODE_BYTES_PER_PIXEL, cpu, 320, 320, 81, None) == tiling.Grid()


def test_a_failing_tile_leaves_no_cache_and_restores_the_decoder():
    vae = _vae("wan2.1")
    z = torch.randn(1, 16, 2, 34, 36, generator=torch.Generator().manual_seed(1))
    block = vae.decoder.up_blocks[1]
    calls = []

    def boom(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("tile")
    handle = block.register_forward_pre_hook(boom)
    vae.enable_tiling()
    tiling.install(vae, tiling.Grid(2, 2))
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError):
        vae.decode(z)
    handle.remove()
    assert all(c is None for c in vae._feat_map)
    assert isinstance(vae.decoder.mid_block, type(_vae("wan2.1").decoder.mid_block)) and len(vae.decoder.up_blocks) == 4
    with torch.no_grad():
        tiled = vae.decode(z).sample
        vae.disable_tiling()
        assert (tiled - vae.decode(z).sample).abs().max() <= 1e-5


def _pipe_frames(task: str, tiled: bool):
    # unquantized: the int8 preset's activation rounding turns a last-bit difference in the conditioning
    # latents into a whole quantization step at a tie (measured: 0.076 at one pixel, mean 2e-5)
    loaded = build_tiny(task, load_config({"use_tiling_vae": tiled}))
    extra = {}
    if task == "i2v":  # the conditioning video (the image, then zeros) is VAE-encoded: tiled too
        from PIL import Image

        pixels = (np.random.default_rng(0).random((272, 272, 3)) * 255).astype("uint8")
        extra["image"] = Image.fromarray(pixels)
    req = VideoRequest("a fox", height=272, width=272, num_frames=9, **extra)
    memory.prepare_decode(loaded, req)  # what generate() does before the pipeline runs
    out = loaded.pipe(prompt="a fox", height=272, width=272, num_frames=9, num_inference_steps=2,
                      guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                      max_sequence_length=64, **extra)
    return out.frames[0], loaded.pipe.vae


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_use_tiling_vae_through_the_pipeline_gives_the_untiled_frames(monkeypatch, task):
    monkeypatch.setattr(memory_decode, "DEFAULT_TILE_SHARE", 0.9)  # 272 px frames: 1x2 tiles, not one
    assert memory_decode.tile_grid(1.0, memory_decode.Decoder(), 272, 272, 9, None).tiles > 1
    whole, _ = _pipe_frames(task, False)
    tiled, vae = _pipe_frames(task, True)
    assert vae.use_tiling and "tiled_decode" in vae.__dict__ and "tiled_encode" in vae.__dict__
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_with_the_tiny_decoder_the_full_vae_still_encodes_in_exact_tiles(tmp_path):
    """The tiny decoder decodes by itself; its wrapper's full VAE encodes i2v's conditioning video, and
    with tiling on it takes the exact tiles too."""
    from engine.builder import configure_decoder
    from engine.vae.wrapper import TinyDecodeVAE

    sys.path.insert(0, os.path.dirname(__file__))
    from vae_writer import tiny_tensors, write

    cfg = load_config({"use_tae": True, "tae_path": str(write(tmp_path / "lighttaew2_1.safetensors",
                                                                  tiny_tensors(widths=(16, 8, 8, 8)))),
                       "use_tiling_vae": True})
    loaded = build_tiny("i2v", cfg)
    configure_decoder(loaded.pipe, cfg, None, {})
    assert isinstance(loaded.pipe.vae, TinyDecodeVAE)
    memory.prepare_decode(loaded, VideoRequest("a fox", height=272, width=272, num_frames=9))
    assert "tiled_encode" in loaded.pipe.vae.full.__dict__ and loaded.pipe.vae.full.use_tiling


def test_i2v_with_the_tiny_decoder_sizes_the_encode_tiles_to_the_budget():
    """The tiny decoder does not tile, but i2v's conditioning encode does (by the full VAE): its grid
    comes from the encode phase's room and the encode is counted with it (review finding)."""
    from dataclasses import replace

    a = replace(memory.ARCHS[14], in_channels=36, i2v=True)
    fm = memory.Formats("fp8", "int8", "int8")
    tiny = memory_decode.Decoder("tiny")
    place = memory.Placement("leaf", "stream", True)
    est = memory.estimate(a, fm, place, 720, 1280, 81, budget=12 * memory.GIB, decoder=tiny)
    assert est.tiled and est.grid is not None and est.grid.tiles > 1
    encoder = memory_decode.encoder_decoder(tiny)
    counted = memory.decode_transient(720, 1280, 81, True, encoder, 16, est.grid)
    resident = est.phases["encode"] - counted
    assert resident + counted * memory.HEADROOM <= 12 * memory.GIB or est.dominant != "encode"
    assert est.phases["encode"] >= counted


def test_mixed_precision_encodes_in_fp32():
    """engine.vae.speed's -mixed autocast wraps the decode only: the encode is counted in fp32."""
    mixed = memory_decode.Decoder("full", "bf16-mixed")
    assert memory_decode.encoder_decoder(mixed).dtype == "fp32"
    assert memory_decode.encoder_decoder(memory_decode.Decoder("full", "fp16")).dtype == "fp16"


def test_an_encode_off_the_stride_grid_runs_whole():
    vae = _vae("wan2.1")
    x = torch.randn(1, 3, 5, 264, 260, generator=torch.Generator().manual_seed(3))  # 260 = 8 x 32 + 4
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        vae.enable_tiling()
        tiling.install(vae, tiling.Grid(2, 2))
        tiled = vae.encode(x).latent_dist.mean
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() <= 1e-5
