"""The UI's run options (self-attention, VAE decoder) as LightX2V config keys, and the memory check
that refuses, before any download, what a GPU cannot hold."""
from __future__ import annotations

import pytest

from engine.attention import plan_from_config
from engine.config import load_config
from engine.errors import ConfigError, HardwareError
from engine.gpu import GB, GpuInfo
from engine.presets import apply_overrides, load_preset
from engine.request import VideoRequest
from engine.service import VideoService

RTX_4090 = GpuInfo("NVIDIA GeForce RTX 4090", (8, 9), 24 * GB, 23 * GB)
SMALL = GpuInfo("NVIDIA GeForce RTX 3050", (8, 6), 6 * GB, 5 * GB)


def test_attention_and_decoder_become_lightx2v_keys_that_their_readers_accept():
    raw = apply_overrides(load_preset("ada-fp8"), attention="8-bit", decoder="tiny")
    assert raw["self_attn_1_type"] == "sage_attn2" and raw["decoder"] == "tiny"
    assert plan_from_config(load_config(raw)).self_attn != plan_from_config(load_config(
        apply_overrides(load_preset("ada-fp8"), attention="bf16"))).self_attn
    kept = apply_overrides(load_preset("ada-fp8"), attention="preset", decoder=None)
    assert "self_attn_1_type" not in kept and "decoder" not in kept


def test_an_unknown_run_option_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"attention 'fp4' is not one of preset, bf16, 8-bit"):
        apply_overrides({}, attention="fp4")


def test_a_preset_that_cannot_fit_is_refused_before_download_naming_the_lighter_one(tmp_path):
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path / "out")
    req = VideoRequest("a cat", height=480, width=832, num_frames=81, steps=4)
    model = "wan2.1-t2v-14b"
    service.check(model, req)  # auto picks a tier that fits
    with pytest.raises(HardwareError, match=r"vram12-fp8"):
        service.check(model, req, preset="hopper-fp8")  # 14B fp8 without offload needs ~29 GiB


def test_plan_text_says_what_is_streamed_and_a_size_no_tier_holds_is_refused(tmp_path):
    service = VideoService(SMALL, demo=False, out_dir=tmp_path / "out")
    req = VideoRequest("a cat", height=720, width=1280, num_frames=81, steps=4)
    assert service.plan_text("wan2.1-t2v-14b", VideoRequest("a cat", height=480, width=832, num_frames=81))
    with pytest.raises(HardwareError, match=r"GiB"):
        service.check("wan2.1-t2v-14b", req)


def test_auto_picks_its_tier_for_the_requested_size_not_the_default_one(tmp_path):
    from engine.catalog import get_model
    from engine.presets import choose_preset

    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path / "out")
    name, _, _ = service.check("wan2.1-t2v-14b", VideoRequest("a cat", height=720, width=1280, num_frames=81))
    assert name == choose_preset(RTX_4090, get_model("wan2.1-t2v-14b"), (720, 1280, 81)).name


def test_8bit_attention_on_a_gpu_without_fp8_is_refused_before_download(tmp_path):
    a100 = VideoService(GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB), demo=False, out_dir=tmp_path / "out")
    req = VideoRequest("a cat", height=480, width=832, num_frames=81)
    a100.check("wan2.1-t2v-14b", req)
    with pytest.raises(HardwareError, match=r"self-attention: .*8\.0.*8\.9\+.*torch_sdpa"):
        a100.check("wan2.1-t2v-14b", req, overrides={"attention": "8-bit"})


@pytest.mark.parametrize("key", ["use_tae", "need_scaled", "use_lightvae"])
def test_a_string_false_is_not_taken_for_true(key):
    from engine.vae.choice import decoder_choice

    with pytest.raises(ConfigError, match=key):
        load_config({key: "false"})
    with pytest.raises(ConfigError, match=key):
        decoder_choice({key: "false"})


def test_every_key_the_run_options_write_is_known(caplog):
    raw = apply_overrides(load_preset("ada-fp8"), attention="8-bit", decoder="light")
    with caplog.at_level("WARNING", logger="engine.config"):
        load_config(dict(raw, tae_chunk=2, vae_dtype="bf16", vae_channels_last=True, vae_compile=False))
    assert not [r for r in caplog.records if "unknown" in r.getMessage().lower()]


def test_the_tiny_model_runs_the_8bit_choice_on_its_cpu_reference_and_refuses_other_decoders(tmp_path):
    from engine.attention.install import self_attention_choice
    from engine.builder import build_tiny
    from engine.service import TINY

    service = VideoService(None, demo=True, out_dir=tmp_path / "out")
    name, cfg = service.config(TINY, attention="8-bit")
    loaded = build_tiny("t2v", cfg)
    choice = self_attention_choice(loaded.pipe.transformer.blocks[0].attn1)
    assert choice is not None and choice.wants_8bit()
    with pytest.raises(ConfigError, match="tiny model"):
        service.config(TINY, decoder="tiny")

