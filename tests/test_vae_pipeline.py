"""The decoder choice end to end on CPU: config keys -> the Hub plan -> the tiny diffusers Wan
pipeline decoding with LightTAE / LightVAE files in their published layouts."""
import numpy as np
import pytest
import torch

from engine import hub
from engine.builder import configure_decoder
from engine.catalog import get_model
from engine.config import load_config
from engine.errors import ConfigError
from engine.tiny import build_tiny_pipeline
from engine.vae.choice import decoder_choice
from engine.vae.wrapper import TinyDecodeVAE
from engine.vae.speed import DEFAULT_SPEED, VaeSpeed, apply_speed, speed_settings
from vae_writer import light_tensors, tiny_tensors, write

CALL = dict(height=32, width=48, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
            max_sequence_length=16, output_type="np")


def run(pipe, **kw):
    with torch.no_grad():
        return pipe(prompt="a red fox", generator=torch.Generator().manual_seed(0), **CALL, **kw).frames[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("autoencoders")
    return {"tiny": write(d / "lighttaew2_1.safetensors", tiny_tensors(widths=(16, 8, 8, 8))),
            "light": write(d / "lightvaew2_1.safetensors", light_tensors(base=4))}


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_tiny_decoder_in_the_pipeline_gives_frames_of_the_right_count_and_size(files, task):
    pipe = build_tiny_pipeline(task)
    reports = {}
    configure_decoder(pipe, load_config({"use_tae": True, "tae_path": files["tiny"]}), None, reports)
    assert isinstance(pipe.vae, TinyDecodeVAE) and "lighttaew2_1" in reports["vae"]
    pipe.vae.enable_tiling()  # engine.memory switches tiling on the pipeline's vae: it reaches the encoder
    assert pipe.vae.full.use_tiling
    pipe.vae.disable_tiling()
    kw = {}
    if task == "i2v":  # the full VAE still encodes the image
        from PIL import Image
        kw["image"] = Image.new("RGB", (48, 32), (200, 30, 30))
    frames = run(pipe, **kw)
    assert frames.shape == (9, 32, 48, 3) and np.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1


def test_tiny_decoder_output_is_the_decoder_on_the_latents_the_pipeline_hands_it(files):
    pipe = build_tiny_pipeline("t2v")
    configure_decoder(pipe, load_config({"decoder": "tiny", "tae_path": files["tiny"]}), None, {})
    seen = {}
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, return_dict=True: seen.setdefault("z", z.clone()) is not None and decode(z, return_dict)
    frames = run(pipe)
    # lighttae files take the un-normalised latent, which is what diffusers passes to vae.decode
    want = (pipe.vae.tiny(seen["z"])[0].permute(1, 2, 3, 0)).numpy()
    np.testing.assert_allclose(frames, want, atol=1e-5)


def test_madebyollin_files_get_the_normalised_latent(files, tmp_path):
    pipe = build_tiny_pipeline("t2v")
    import shutil
    path = shutil.copy(files["tiny"], tmp_path / "taew2_1.safetensors")
    configure_decoder(pipe, load_config({"use_tae": True, "tae_path": str(path)}), None, {})
    assert pipe.vae.need_scaled is False
    z = torch.randn(1, 16, 2, 4, 6)
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(pipe.vae.decode(z).sample, pipe.vae.tiny((z - mean) / std) * 2 - 1)
    # need_scaled from the config wins over the file name, as in LightX2V
    assert decoder_choice(load_config({"use_tae": True, "tae_path": "x/taew2_1.pth", "need_scaled": True})).need_scaled


def test_light_vae_in_the_pipeline(files):
    pipe = build_tiny_pipeline("t2v")
    mean = list(pipe.vae.config.latents_mean)
    reports = {}
    configure_decoder(pipe, load_config({"use_lightvae": True, "vae_path": files["light"]}), None, reports)
    assert pipe.vae.config.base_dim == 4 and list(pipe.vae.config.latents_mean) == mean
    assert "LightVAE" in reports["vae"]
    assert run(pipe).shape == (9, 32, 48, 3)


def test_hub_file_passed_by_the_builder_is_used(files):
    pipe = build_tiny_pipeline("t2v")
    configure_decoder(pipe, load_config({"decoder": "light"}), files["light"], {})
    assert pipe.vae.config.base_dim == 4


@pytest.mark.parametrize("cfg,repo_file", [
    ({}, None),
    ({"decoder": "tiny"}, "lighttaew2_1.safetensors"),
    ({"use_tae": True}, "lighttaew2_1.safetensors"),
    ({"use_lightvae": True}, "lightvaew2_1.safetensors"),
    ({"decoder": "light"}, "lightvaew2_1.safetensors"),
    ({"use_tae": True, "tae_path": "/local/lighttaew2_1.safetensors"}, None),  # a local file: nothing to fetch
])
def test_hub_plan_fetches_the_chosen_decoder(cfg, repo_file):
    plan = hub.plan_downloads(get_model("wan2.1-t2v-14b"), load_config(cfg), frozenset({"dit"}))
    parts = [p for p in plan.parts if p.role == "decoder"]
    if repo_file is None:
        assert parts == []
    else:
        assert [(p.repo, p.patterns) for p in parts] == [("lightx2v/Autoencoders", [repo_file])]


@pytest.mark.parametrize("cfg,words", [
    ({"decoder": "medium"}, "full, light, tiny"),
    ({"use_tae": True, "use_lightvae": True}, "choose one"),
    ({"decoder": "full", "use_tae": True}, "use_tae"),
    ({"tae_chunk": -1}, "tae_chunk"),
])
def test_decoder_config_errors(cfg, words):
    with pytest.raises(ConfigError, match=words):
        decoder_choice(load_config(cfg))


def test_wrong_latent_width_is_a_clear_error(tmp_path):
    pipe = build_tiny_pipeline("t2v")
    path = write(tmp_path / "lighttaew2_2.safetensors", tiny_tensors(latent_channels=48, patch=2))
    with pytest.raises(ConfigError, match="48-channel.*16-channel.*lighttaew2_1"):
        configure_decoder(pipe, load_config({"use_tae": True, "tae_path": path}), None, {})


def test_speed_settings_keys():
    assert speed_settings(load_config({})) == DEFAULT_SPEED
    assert speed_settings(load_config({}), "cpu") == VaeSpeed()  # fp32 on the CPU
    s = speed_settings(load_config({"vae_dtype": "BF16", "vae_channels_last": True}))
    assert s.dtype == "bf16" and s.channels_last
    assert speed_settings(load_config({"vae_dtype": "torch.float32"})).dtype == "fp32"
    assert speed_settings(load_config({"vae_dtype": "FP16"})).dtype == "fp16"
    with pytest.raises(ConfigError, match="vae_dtype"):
        speed_settings(load_config({"vae_dtype": "int4"}))
    with pytest.raises(ConfigError, match="vae_compile"):
        speed_settings(load_config({"vae_compile": "yes"}))


@pytest.mark.parametrize("mode", ["bf16", "bf16-mixed", "fp16-mixed"])
def test_speed_modes_decode_close_to_fp32(mode):
    pipe = build_tiny_pipeline("t2v")
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    want = pipe.vae.decode(z).sample
    note = apply_speed(pipe.vae, VaeSpeed(mode, channels_last=True))
    assert mode in note and "channels-last" in note
    got = pipe.vae.decode(z.to(pipe.vae.dtype)).sample.float()
    assert got.shape == want.shape
    # ~3 significant digits: close on average, not everywhere (random weights)
    assert (got - want).abs().mean() < 0.02 and not torch.equal(got, want)


def test_live_preview_after_each_step_matches_the_final_frames(files):
    from engine.vae.preview import preview_callback
    from engine.vae.tae import load_tiny_decoder

    pipe = build_tiny_pipeline("t2v")
    with pytest.raises(ConfigError, match="tiny decoder"):
        preview_callback(pipe, lambda step, frames: None)
    shown = []
    tiny = load_tiny_decoder(files["tiny"])
    cb = preview_callback(pipe, lambda step, frames: shown.append((step, frames)), tiny=tiny)
    configure_decoder(pipe, load_config({"use_tae": True, "tae_path": files["tiny"]}), None, {})
    final = run(pipe, callback_on_step_end=cb)
    assert [s for s, _ in shown] == [0, 1]
    assert all(f.shape == (9, 32, 48, 3) and f.dtype == np.uint8 for _, f in shown)
    # the last preview is the video itself (same tiny decoder, same latents), up to 8-bit rounding
    assert np.abs(shown[-1][1] / 255.0 - final).max() <= 1 / 255 + 1e-6


def test_build_from_dir_installs_the_configured_decoder(files, tmp_path):
    from engine.builder import build_from_dir
    from engine.infer import save_tiny

    folder = save_tiny(tmp_path / "tiny")
    cfg = load_config({"use_tae": True, "tae_path": files["tiny"]})
    model = build_from_dir(folder, cfg, device="cpu")
    assert isinstance(model.pipe.vae, TinyDecodeVAE) and "tiny decoder" in model.reports["vae"]
    assert run(model.pipe).shape == (9, 32, 48, 3)
    # the Hub path hands the downloaded file in; the speed settings reach the full VAE
    model = build_from_dir(folder, load_config({"decoder": "light", "vae_dtype": "bf16"}), device="cpu",
                           decoder_ckpt=files["light"])
    assert model.pipe.vae.config.base_dim == 4 and model.pipe.vae.dtype == torch.bfloat16
    assert "LightVAE" in model.reports["vae"] and "bf16" in model.reports["vae"]


def test_bf16_mixed_keeps_the_first_and_last_convolutions_in_fp32():
    pipe = build_tiny_pipeline("t2v")
    apply_speed(pipe.vae, VaeSpeed("bf16-mixed"))
    seen = {}
    for name in ("post_quant_conv", "decoder.conv_in", "decoder.conv_out", "decoder.mid_block.resnets.0.conv1"):
        pipe.vae.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.setdefault(name, o.dtype) and None)  # None: output unchanged
    video = pipe.vae.decode(torch.randn(1, 16, 2, 4, 4)).sample
    assert seen == {"post_quant_conv": torch.float32, "decoder.conv_in": torch.float32,
                    "decoder.conv_out": torch.float32, "decoder.mid_block.resnets.0.conv1": torch.bfloat16}
    assert video.dtype == torch.float32 and pipe.vae.dtype == torch.float32  # latents are handed over in fp32


def test_fp16_decode_that_overflows_is_decoded_again_in_bf16(caplog):
    """fp16 is the GPU default; its range is the risk with real weights. A decode whose frames come
    back with NaNs (made here by the last convolution when it runs in fp16) is redone in bf16, the VAE
    stays bf16, and a warning names the key that skips the retry."""
    pipe = build_tiny_pipeline("t2v")
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    want = pipe.vae.decode(z).sample

    def overflow(module, args, out):
        return torch.full_like(out, float("nan")) if out.dtype == torch.float16 else out

    pipe.vae.decoder.conv_out.register_forward_hook(overflow)
    apply_speed(pipe.vae, VaeSpeed("fp16"))
    assert pipe.vae.dtype == torch.float16
    with caplog.at_level("WARNING", logger="engine.vae"):
        got = pipe.vae.decode(z.to(torch.float16)).sample
    assert pipe.vae.dtype == torch.bfloat16 and got.dtype == torch.bfloat16
    assert not torch.isnan(got).any() and (got.float() - want).abs().mean() < 0.02
    assert "vae_dtype" in caplog.text and "bf16" in caplog.text
    caplog.clear()
    pipe.vae.decode(z.to(torch.bfloat16))  # no second retry, no second warning
    assert "overflowed" not in caplog.text
