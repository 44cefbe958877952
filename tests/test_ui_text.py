"""What the page says: the preset text matches what runs (chosen preset, overrides, emulation notices,
refusals), and the statistics table carries the run's numbers."""
import pytest

from engine.gpu import GB, GpuInfo
from engine.service import TINY, VideoService
from ui.handlers import Handlers, size_labels
from ui.stats_view import stats_table

RTX_4090 = GpuInfo("NVIDIA GeForce RTX 4090", (8, 9), 24 * GB, 23 * GB)
A100 = GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return VideoService(None, demo=True, out_dir=tmp_path_factory.mktemp("out"))


def test_the_preset_text_names_the_preset_that_really_runs_on_the_tiny_model(demo):
    h = Handlers(demo)
    assert "**Preset:** cpu-demo (auto)" in h.preset_text(TINY, "auto")
    text = h.preset_text(TINY, "hopper-fp8", dit="nvfp4")
    assert "**Preset:** hopper-fp8, chosen by you" in text and "**Overrides:** DiT nvfp4" in text
    result = demo.run(TINY, __import__("engine.request", fromlist=["VideoRequest"]).VideoRequest(
        prompt="a boat", height=32, width=32, num_frames=5, steps=1), preset="hopper-fp8", overrides={"dit": "nvfp4"})
    ran = {k.split(": ")[0] for k in result.stats.kernels["transformer"].values()}
    assert ran == {"nvfp4"} and "dit: nvfp4" in text and "t5: fp8" in text  # the text says what ran


def test_emulated_formats_and_impossible_combinations_are_said(tmp_path):
    h = Handlers(VideoService(RTX_4090, demo=False, out_dir=tmp_path))
    text = h.preset_text("wan2.1-t2v-14b", "blackwell-nvfp4")
    assert "DiT NVFP4 runs emulated on NVIDIA GeForce RTX 4090" in text
    assert "emulated" not in h.preset_text("wan2.1-t2v-14b", "auto")
    text = Handlers(VideoService(A100, demo=False, out_dir=tmp_path)).preset_text("wan2.1-t2v-14b", "auto", dit="fp8")
    assert "**Cannot run here:** DiT scheme fp8" in text


def test_a_memory_plan_is_shown_when_the_service_has_one(tmp_path):
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path)
    service.plan_text = lambda model, req, **_: f"{model} at {req.width}x{req.height}: fits"
    assert "**Memory:** wan2.1-t2v-14b at 832x480: fits" in Handlers(service).preset_text("wan2.1-t2v-14b", "auto")


def test_model_fields_carry_the_models_ranges_and_sizes(tmp_path):
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path)
    h = Handlers(service)
    _task, _image, width, height, frames, steps, _g, shift, sizes, _text = h.on_model(
        "wan2.1-t2v-1.3b", "auto", "preset", "preset", "preset")
    limits = service.limits("wan2.1-t2v-1.3b")
    assert f"–{limits.max_width}," in width["label"] and f"1–{limits.max_frames}" in frames["label"]
    assert shift["value"] == ""  # a base model: the scheduler's own shift, sent as an empty text
    for label in sizes["choices"]:
        w, h_ = h.on_size(label)
        assert 32 <= w <= limits.max_width and 32 <= h_ <= limits.max_height and w % 16 == h_ % 16 == 0
    assert size_labels([(480, 832)]) == ["832x480"]


def test_the_stats_table_carries_the_runs_numbers():
    stats = {"device": "cuda:0", "total_s": 12.5, "encode_s": 0.5, "per_step_s": [2.0, 3.0], "mean_step_s": 2.5,
             "decode_s": 4.25, "load_s": 30.0, "download_s": 120.0, "peak_gpu_mem_GiB": 17.125,
             "weights_MiB": {"transformer": 14000.0, "text_encoder": 6000.5},
             "kernels": {"transformer": {"attn1.to_q": "fp8: triton", "ffn.net.0.proj": "fp8: triton",
                                         "proj_out": "bf16: torch"}}, "offload": "none"}
    table = stats_table(stats)
    for row in ("| Time per step | 2.50 s (mean of 2: 2.00, 3.00) |", "| VAE decode | 4.25 s |",
                "| Model load | 30.00 s |", "| Download | 120.00 s |", "| Peak GPU memory | 17.12 GiB |",
                "| DiT | 14,000.00 |", "| T5 | 6,000.50 |"):
        assert row in table, row
    assert "fp8:&nbsp;triton | `attn1.to_q`, `ffn.net.0.proj` |" in table and "bf16:&nbsp;torch | `proj_out` |" in table
    cached = stats_table({**stats, "load_s": None, "download_s": 0.0})
    assert "| Model load | — (already loaded) |" in cached and "| Download | none (all files in the cache) |" in cached
