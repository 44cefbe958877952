"""The light decoders load files in their published layouts (written by tests/vae_writer.py, which does
not import the loader) and decode like an independent frame-by-frame reference."""
import pytest
import torch
import torch.nn.functional as F

from engine.errors import CheckpointError
from engine.vae.light import load_light_vae
from engine.vae.tae import load_tiny_decoder
from vae_writer import light_tensors, tiny_tensors, write


def reference_tiny_decode(t, latents, patch):
    """TAEHV's decoder one frame at a time, straight from the file's tensors: memory blocks see the
    previous frame's input to the same block, time-grow splits channels into frames, the first 3
    frames are dropped. latents (C, T, H, W) -> (3, 4T-3, H*8*patch, W*8*patch) in [0, 1]."""
    def conv(x, key, pad=1):
        return F.conv2d(x, t[f"{key}.weight"], t.get(f"{key}.bias"), padding=pad)

    memory = {}
    frames = [torch.tanh(latents[:, i][None] / 3) * 3 for i in range(latents.shape[1])]
    frames = [torch.relu(conv(x, "decoder.1")) for x in frames]
    for mems, grow, narrow in (((3, 4, 5), 7, 8), ((9, 10, 11), 13, 14), ((15, 16, 17), 19, 20)):
        for i in mems:
            out = []
            for x in frames:
                past = memory.get(i, torch.zeros_like(x))
                memory[i] = x
                h = torch.relu(conv(torch.cat([x, past], 1), f"decoder.{i}.conv.0"))
                h = torch.relu(conv(h, f"decoder.{i}.conv.2"))
                out.append(torch.relu(conv(h, f"decoder.{i}.conv.4") + x))
            frames = out
        frames = [F.interpolate(x, scale_factor=2) for x in frames]
        grown = []
        for x in frames:
            y = conv(x, f"decoder.{grow}.conv", pad=0)
            grown += list(y.chunk(y.shape[1] // x.shape[1], dim=1))
        frames = [conv(x, f"decoder.{narrow}") for x in grown]
    frames = [conv(torch.relu(x), "decoder.22").clamp(0, 1) for x in frames]
    if patch > 1:
        frames = [F.pixel_shuffle(x, patch) for x in frames]
    return torch.cat(frames[3:], 0).transpose(0, 1)


@pytest.mark.parametrize("channels,patch", [(16, 1), (48, 2)])  # Wan2.1 / Wan2.2 TI2V layouts
def test_tiny_decoder_matches_frame_by_frame_reference(tmp_path, rng, channels, patch):
    t = tiny_tensors(latent_channels=channels, patch=patch, widths=(12, 8, 8, 4), seed=int(rng.seed()) % 2**31)
    path = write(tmp_path / "lighttaew.safetensors", t)
    decoder = load_tiny_decoder(path)
    assert (decoder.latent_channels, decoder.patch) == (channels, patch)
    latents = torch.randn(1, channels, 3, 4, 6, generator=rng)
    want = reference_tiny_decode(t, latents[0], patch)
    for chunk in (None, 1, 2):
        got = decoder(latents, chunk=chunk)
        assert got.shape == (1, 3, 9, 32 * patch, 48 * patch)
        torch.testing.assert_close(got[0], want, atol=2e-5, rtol=1e-4)


def test_tiny_decoder_keeps_the_last_frames_of_a_wider_time_grow(tmp_path):
    # TAEHV files trained with time upscale in the first stage: LightX2V keeps the last channels
    wide = tiny_tensors(strides=(2, 2, 2))
    narrow = dict(wide, **{"decoder.7.conv.weight": wide["decoder.7.conv.weight"][-8:]})
    a = load_tiny_decoder(write(tmp_path / "wide.safetensors", wide))
    b = load_tiny_decoder(write(tmp_path / "narrow.safetensors", narrow))
    z = torch.randn(1, 16, 2, 3, 3)
    torch.testing.assert_close(a(z), b(z))


@pytest.mark.parametrize("change,words", [
    (lambda t: t.pop("decoder.9.conv.2.weight"), ["decoder.9.conv.2.weight", "missing"]),
    (lambda t: t.__setitem__("decoder.99.weight", torch.zeros(1)), ["decoder.99.weight", "unexpected"]),
    (lambda t: t.__setitem__("decoder.4.conv.0.bias", torch.zeros(5)), ["decoder.4.conv.0.bias", "(5,)", "(8,)"]),
    (lambda t: t.pop("decoder.1.weight"), ["decoder.1.weight", "missing"]),
])
def test_tiny_decoder_file_errors_name_file_and_key(tmp_path, change, words):
    t = tiny_tensors()
    change(t)
    path = write(tmp_path / "broken_tae.safetensors", t)
    with pytest.raises(CheckpointError) as e:
        load_tiny_decoder(path)
    for w in words + ["broken_tae.safetensors"]:
        assert w in str(e.value)


def test_light_vae_loads_every_tensor_of_the_wan_layout(tmp_path):
    t = light_tensors(base=4)
    vae = load_light_vae(write(tmp_path / "lightvaew2_1.safetensors", t))
    assert vae.config.base_dim == 4 and vae.config.z_dim == 16
    params = dict(vae.state_dict())
    # a few of the published names and where they live in diffusers' AutoencoderKLWan
    for file_key, model_key in [
            ("decoder.conv1.weight", "decoder.conv_in.weight"),
            ("decoder.head.2.weight", "decoder.conv_out.weight"),
            ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
            ("decoder.upsamples.3.time_conv.weight", "decoder.up_blocks.0.upsamplers.0.time_conv.weight"),
            ("decoder.upsamples.4.shortcut.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
            ("conv2.weight", "post_quant_conv.weight"), ("conv1.bias", "quant_conv.bias")]:
        assert torch.equal(params[model_key], t[file_key]), file_key
    # every weight of the model is exactly one of the file's (random values: no accidental matches)
    assert len(params) == len(t)
    values = {(tuple(v.shape), v.flatten()[:4].tolist().__repr__()) for v in t.values()}
    assert all((tuple(v.shape), v.flatten()[:4].tolist().__repr__()) in values for v in params.values())
    video = vae.decode(torch.randn(1, 16, 3, 4, 6)).sample
    assert video.shape == (1, 3, 9, 32, 48)


def test_light_vae_wrong_shape_and_foreign_file(tmp_path):
    t = light_tensors(base=4)
    t["decoder.upsamples.0.residual.2.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"lv\.safetensors.*decoder\.upsamples\.0\.residual\.2\.bias.*\(3,\)"):
        load_light_vae(write(tmp_path / "lv.safetensors", t))
    with pytest.raises(CheckpointError, match="decoder.conv1.weight.*missing"):
        load_light_vae(write(tmp_path / "tae.safetensors", tiny_tensors()))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_light_vae(tmp_path / "nowhere.safetensors")
