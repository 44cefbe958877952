"""The live preview's pictures: what diffusers' own pipeline decodes, and a checkbox that says when no
preview decoder is at hand."""
import numpy as np
import torch

from engine.gpu import GpuInfo
from engine.service import TINY, VideoService
from engine.tiny import build_tiny_pipeline
from ui.preview import availability, frames_for

GB = 2**30


def test_the_demo_preview_of_the_last_step_is_the_pipelines_own_video():
    """After the last step the latents are final: the preview must equal diffusers' decode of them (the
    pipeline's output_type='np' frames), computed by the pipeline, not by us."""
    pipe = build_tiny_pipeline("t2v")
    seen = {}

    def keep(_pipe, index, _t, kwargs):
        seen[index] = kwargs["latents"].clone()
        return kwargs
    frames = pipe(prompt="a boat", height=32, width=48, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
                  generator=torch.Generator("cpu").manual_seed(3), output_type="np", max_sequence_length=16,
                  callback_on_step_end=keep).frames[0]
    preview = frames_for(pipe, seen[1], own_vae=True)
    expected = (np.clip(frames, 0, 1) * 255).round()
    assert preview.shape == expected.shape == (5, 32, 48, 3)
    assert np.abs(preview.astype(float) - expected).max() <= 1  # rounding of the same floats
    assert not np.array_equal(frames_for(pipe, seen[0], own_vae=True), preview)  # an earlier step differs


def test_without_the_tiny_decoder_file_the_checkbox_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    svc = VideoService(GpuInfo("NVIDIA H100", (9, 0), 80 * GB, 80 * GB), demo=False, out_dir=tmp_path / "out")
    ok, why = availability(svc, "wan2.1-t2v-14b", "auto", "preset")
    assert not ok and "lighttaew2_1.safetensors" in why and "not downloaded" in why
    ok, why = availability(svc, "wan2.1-t2v-14b", "auto", "tiny")
    assert ok and "tiny decoder this run uses" in why
    assert availability(svc, TINY)[0]
