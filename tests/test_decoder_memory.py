"""engine.memory counts the decoder the config chooses: weights against the published layouts written by
tests/vae_writer.py, the tiny decoder's pass against the live tensors of a real pass, and the plans and
refusals of engine.presets with each decoder."""
import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engine import memory_decode
from engine.catalog import get_model
from engine.errors import HardwareError
from engine.presets import DEFAULT_SIZE, GB, GpuInfo, apply_overrides, check_fits, choose_preset, load_preset, plan_for
from engine.memory import ARCHS, Decoder, Formats, Placement, decoder_from_config, estimate
from engine.vae.tae import TinyDecoder
from vae_writer import light_tensors, tiny_tensors

A14, A13 = ARCHS[14], ARCHS[1.3]
FP8 = Formats("fp8", "int8", "int8")
E14, E13 = get_model("wan2.1-t2v-14b"), get_model("wan2.1-t2v-1.3b")


def gpu(free_gb, cap=(8, 9)):
    return GpuInfo("NVIDIA GeForce RTX", cap, int(free_gb * GB), int(free_gb * GB))


def test_light_vae_weights_match_the_published_layout_and_the_channel_ratio():
    published = sum(t.numel() for t in light_tensors(base=24).values())  # lightvaew2_1's keys and shapes
    assert memory_decode.light_vae_params() == published
    assert published == pytest.approx(memory_decode.VAE_PARAMS * (24 / 96) ** 2, rel=0.03)


@pytest.mark.parametrize("z_dim, patch", [(16, 1), (48, 2)])
def test_tiny_decoder_weights_match_the_published_layout(z_dim, patch):
    t = tiny_tensors(latent_channels=z_dim, patch=patch, widths=(256, 128, 64, 64))
    published = sum(v.numel() for k, v in t.items() if k.startswith("decoder."))
    assert memory_decode.tiny_layout(z_dim, patch)[0] == published


class LiveBytes(TorchDispatchMode):
    """The most bytes held at once by tensors that ops create (freed when their storage is collected)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                key, n = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if key not in self.seen:
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t.untyped_storage(), self._free, key, n)
        return out

    def _free(self, key, n):
        self.live -= n
        self.seen.discard(key)


@pytest.mark.parametrize("frames, h, w", [(1, 4, 4), (2, 4, 6), (4, 6, 6)])
def test_tiny_pass_count_matches_the_live_tensors_of_a_real_pass(frames, h, w):
    """One pass of engine/vae/tae.py's decoder at the published widths (fp32 on the CPU: 4 bytes a value)."""
    torch.manual_seed(0)
    dec = TinyDecoder().eval()
    x = torch.randn(1, frames, 16, h, w)
    with torch.no_grad(), LiveBytes() as probe:
        dec._run(x, [None] * len(dec.decoder))
    gc.collect()
    _, per_latent_frame, once = memory_decode.tiny_layout()
    counted = (per_latent_frame * frames + once) * (8 * h) * (8 * w) * 4
    assert probe.peak == pytest.approx(counted, rel=0.05)


def test_each_decoder_changes_the_decode_phase_and_the_vae_weights():
    full = estimate(A14, FP8, Placement("gpu"), 480, 832, 81)
    light = estimate(A14, FP8, Placement("gpu"), 480, 832, 81, decoder=Decoder("light"))
    tiny = estimate(A14, FP8, Placement("gpu"), 480, 832, 81, decoder=Decoder("tiny"))
    fast = estimate(A14, FP8, Placement("gpu"), 480, 832, 81, decoder=Decoder("full", "fp16-mixed"))
    # light: the full decode's per-pixel activations times 24/96, and its own (much smaller) weights
    full_act = memory_decode.vae_transient(21_990, 480, 832, 81, False, 4) - 2 * 81 * 3 * 480 * 832 * 4
    light_act = memory_decode.vae_transient(21_990 * 0.25, 480, 832, 81, False, 4) - 2 * 81 * 3 * 480 * 832 * 4
    assert light_act == pytest.approx(full_act / 4, rel=1e-6)
    assert light.weights["vae"] == 4 * memory_decode.light_vae_params()
    assert tiny.weights["vae"] == 4 * memory_decode.VAE_PARAMS + 2 * memory_decode.tiny_layout()[0]  # full VAE kept
    assert full.phases["decode"] > fast.phases["decode"] > light.phases["decode"] > tiny.phases["decode"]
    assert light.decoder.kind == "light" and tiny.decoder.kind == "tiny"
    # a tiny decoder's chunk: one latent frame per pass holds less than four, all frames at once the most
    one, four, every = (memory_decode.tiny_transient(480, 832, 81, c) for c in (1, 4, 0))
    assert one < four < every


def test_the_config_keys_choose_the_counted_decoder():
    assert decoder_from_config({}, "cpu") == Decoder() and decoder_from_config({}) == Decoder("full", "fp16")
    assert decoder_from_config({"use_tae": True, "tae_chunk": 1}) == Decoder("tiny", "fp32", 1)
    assert decoder_from_config({"decoder": "light", "vae_dtype": "bf16"}) == Decoder("light", "bf16")
    est = plan_for(E14, apply_overrides(load_preset("vram12-fp8"), decoder="tiny"), DEFAULT_SIZE, 12 * GB)
    assert est.decoder.kind == "tiny"


def test_the_ui_decoder_reaches_the_preset_choice():
    """1.3B on a 4 GB card: the full VAE needs the streamed tier and a tiled decode; with the light decoder a
    faster tier (the transformer on the GPU) fits and decodes whole frames."""
    full = choose_preset(gpu(4), E13, DEFAULT_SIZE)
    light = choose_preset(gpu(4), E13, DEFAULT_SIZE, decoder="light")
    assert full.name == "vram12-fp8" and "decodes in tiles" in full.reason
    assert light.name == "vram24-fp8" and "light decoder (LightVAE) decodes whole frames" in light.reason
    tiny = choose_preset(gpu(12), E14, None, "tiny")
    assert "tiny decoder (LightTAE) decodes 1 latent frame per pass" in tiny.reason


def test_a_tight_gpu_keeps_the_full_vae_tiled_and_names_the_faster_decoders():
    choice = choose_preset(gpu(5), E13, DEFAULT_SIZE)
    assert "the VAE decodes in tiles" in choice.reason and "decoder: light / tiny" in choice.reason
    assert "extra download" in choice.reason and "lower quality" in choice.reason
    assert "decoder" not in load_config_decoder(choice.config)  # the default stays the full VAE


def load_config_decoder(raw):
    return {k: v for k, v in raw.items() if k in ("decoder", "use_tae", "use_lightvae")}


def test_strict_refusal_names_what_fits_and_the_lightest_setup():
    with pytest.raises(HardwareError) as e:
        check_fits(gpu(12), E14, load_preset("ada-fp8"), DEFAULT_SIZE, strict=True)
    text = str(e.value)
    assert "What fits: preset vram16-fp8 with the full VAE" in text and "Choose it" in text
    # a light decoder chosen in the UI stays the light decoder in the advice, on the fastest tier that fits
    with pytest.raises(HardwareError, match="What fits: preset vram16-fp8 with the light decoder"):
        check_fits(gpu(12), E14, apply_overrides(load_preset("ada-fp8"), decoder="light"), DEFAULT_SIZE, strict=True)


def test_when_nothing_fits_the_refusal_states_the_limit_and_the_limit_holds():
    with pytest.raises(HardwareError) as e:
        check_fits(gpu(6), E14, load_preset("vram12-fp8"), DEFAULT_SIZE)
    text = str(e.value)
    # the setup with the smallest need: the light decoder, whose weights are ~1/16 of the full VAE's
    assert "does not fit: even the lightest setup (preset vram12-fp8 with the light decoder" in text
    import re

    frames = int(re.search(r"at most (\d+) frames fit", text).group(1))
    width, height = map(int, re.search(r"81 frames fit up to (\d+)x(\d+)", text).groups())
    lightest = apply_overrides(load_preset("vram12-fp8"), decoder="light")
    assert plan_for(E14, lightest, (480, 832, frames), 6 * GB).need <= 6 * GB
    assert plan_for(E14, lightest, (480, 832, frames + 4), 6 * GB).need > 6 * GB
    assert plan_for(E14, lightest, (height, width, 81), 6 * GB).need <= 6 * GB
    assert width % 16 == height % 16 == 0 and width < 832 and height < 480


def test_i2v_encode_is_counted_with_the_vae_that_encodes():
    """With the tiny decoder the full VAE still encodes the conditioning video; LightVAE encodes itself."""
    from dataclasses import replace

    i2v = replace(ARCHS[14], i2v=True, in_channels=36)
    full = estimate(i2v, FP8, Placement("gpu"), 480, 832, 81)
    tiny = estimate(i2v, FP8, Placement("gpu"), 480, 832, 81, decoder=Decoder("tiny"))
    light = estimate(i2v, FP8, Placement("gpu"), 480, 832, 81, decoder=Decoder("light"))
    enc = lambda est: est.phases["encode"] - est.weights["vae"]  # noqa: E731
    assert enc(tiny) == pytest.approx(enc(full), rel=1e-6) and enc(light) < enc(full)
