"""The engine side of the app on the tiny model: requests, validation, stop, one job at a time, OOM advice."""
import threading

import pytest
import torch

from engine.errors import ConfigError, HardwareError
from engine.generate import Cancelled, GenerationError
from engine.gpu import GB, GpuInfo
from engine.request import Limits, RequestError, VideoRequest, validate
from engine.service import TINY, VideoService


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return VideoService(None, demo=True, out_dir=tmp_path_factory.mktemp("out"))


def tiny_request(**kw):
    base = dict(prompt="a boat", height=32, width=32, num_frames=5, steps=3)
    return VideoRequest(**{**base, **kw})


def test_t2v_and_i2v_on_the_built_in_model(service):
    from PIL import Image

    steps = []
    result = service.run(TINY, tiny_request(), on_step=steps.append)
    assert result.path.is_file() and result.path.parent == service.out_dir
    assert (result.frames, result.height, result.width) == (5, 32, 32)
    assert [s.step for s in steps] == [1, 2, 3] and len(result.stats.seconds_per_step) == 3
    stats = result.stats.as_dict()
    assert stats["kernels"]["transformer"]["attn1.to_q"].startswith("int8: ")
    assert stats["weights_MiB"]["transformer"] > 0
    i2v = service.run(TINY, tiny_request(task="i2v", image=Image.new("RGB", (64, 48), "blue")))
    assert i2v.frames == 5
    assert "image_encoder" in i2v.stats.kernels


def test_per_component_override_changes_the_loaded_model(service):
    result = service.run(TINY, tiny_request(), overrides=dict(dit="fp8", t5="bf16"))
    assert set(result.stats.kernels["transformer"].values()) == {"fp8: " + result.stats.kernels["transformer"]["attn1.to_q"].split(": ")[1]}
    assert "text_encoder" not in result.stats.kernels


@pytest.mark.parametrize("field, value, message", [
    ("num_frames", 6, r"not 4k\+1"), ("height", 40, "not a multiple of 16"), ("width", 4096, "between"),
    ("prompt", "   ", "prompt is empty"), ("steps", 0, "between 1"), ("guidance", float("nan"), "guidance"),
    ("seed", -1, "seed"), ("height", "abc", "whole number"),
    # non-finite and huge numbers (the API accepts them) must not escape as ValueError/OverflowError
    ("height", float("nan"), "whole number"), ("num_frames", float("inf"), "whole number"),
    ("seed", 10**400, "whole number"), ("steps", "1e999", "whole number"), ("shift", 10**400, "shift"),
])
def test_validation_names_the_field(field, value, message):
    with pytest.raises(RequestError, match=message):
        validate(tiny_request(**{field: value}), Limits(max_height=64, max_width=64))


def test_i2v_needs_an_image():
    with pytest.raises(RequestError, match="needs an input image"):
        validate(tiny_request(task="i2v"))


def test_stop_after_first_step_then_run_again(service):
    def stop_now(step):
        assert service.cancel()

    with pytest.raises(Cancelled, match="after step 1 of 3"):
        service.run(TINY, tiny_request(), on_step=stop_now)
    assert not service.cancel()  # nothing runs now, and the next run is not stopped by a stale request
    assert service.run(TINY, tiny_request()).frames == 5


def test_a_second_job_waits_for_the_first_instead_of_failing(service):
    started, release = threading.Event(), threading.Event()
    order = []

    def hold(step):
        order.append(("a", step.step))
        started.set()
        release.wait(30)

    first = threading.Thread(target=lambda: order.append(("a done", service.run(TINY, tiny_request(), on_step=hold,
                                                                                owner="A").frames)))
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=lambda: order.append(("b done", service.run(
        TINY, tiny_request(), owner="B", on_step=lambda s: order.append(("b", s.step))).frames)))
    second.start()
    assert not service.cancel("C")  # a third tab has nothing to stop
    release.set()
    first.join(60)
    second.join(60)
    # B started only after A ended (one GPU lock) and both ran to the end
    assert order == [("a", 1), ("a", 2), ("a", 3), ("a done", 5), ("b", 1), ("b", 2), ("b", 3), ("b done", 5)]


def test_stop_ends_only_the_owners_job(service):
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def hold(step):
        started.set()
        release.wait(30)

    waiting = threading.Event()

    def job(owner):
        try:
            outcome[owner] = service.run(TINY, tiny_request(), on_step=hold if owner == "A" else None,
                                         owner=owner, on_wait=waiting.set).frames
        except Cancelled as e:
            outcome[owner] = str(e)

    a = threading.Thread(target=job, args=("A",))
    a.start()
    assert started.wait(60)
    b = threading.Thread(target=job, args=("B",))  # waits for A
    b.start()
    assert waiting.wait(60)  # B is queued behind A
    assert not service.cancel("C")
    assert service.cancel("B")  # B's waiting job stops; A's keeps running
    b.join(60)
    release.set()
    a.join(60)
    assert outcome == {"A": 5, "B": "stopped while waiting for the job ahead"}


def test_an_abandoned_job_stops_at_its_next_step_and_frees_the_gpu(service):
    gone = threading.Event()
    steps = []
    with pytest.raises(Cancelled, match="after step 1 of 3"):
        service.run(TINY, tiny_request(), owner="A", alive=lambda: not gone.is_set(),
                    on_step=lambda s: (steps.append(s.step), gone.set()))
    assert steps == [1] and service.run(TINY, tiny_request(), owner="B").frames == 5


def test_out_of_memory_frees_and_suggests_a_lighter_preset(service, monkeypatch):
    over = dict(dit="int8", t5="bf16", clip="bf16")  # hopper-fp8's layout, with schemes the CPU runs
    service.run(TINY, tiny_request(), preset="hopper-fp8", overrides=over)  # the model the next run reuses
    loaded = service._loaded[1]

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(type(loaded.pipe), "__call__", boom)
    with pytest.raises(GenerationError, match="lighter preset 'vram24-fp8'"):
        service.run(TINY, tiny_request(), preset="hopper-fp8", overrides=over)


def test_fp8_preset_on_ampere_is_refused_with_a_sentence(tmp_path):
    a100 = GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB)
    svc = VideoService(a100, demo=False, out_dir=tmp_path)
    assert svc.preset_for("wan2.1-t2v-14b").name == "ampere-int8"
    with pytest.raises(HardwareError, match="FP8 needs compute capability 8.9 or newer.*Choose int8"):
        svc.config("wan2.1-t2v-14b", "hopper-fp8")
    with pytest.raises(HardwareError, match="DiT scheme fp8"):
        svc.config("wan2.1-t2v-14b", "auto", dit="fp8")


def test_demo_offers_only_the_built_in_model(service):
    assert [key for _, key in service.models()] == [TINY]
    with pytest.raises(ConfigError, match="demo mode"):
        service.preset_for("wan2.1-t2v-14b")


def test_app_chooses_demo_without_gpu_or_network(monkeypatch, tmp_path):
    import app

    h100 = GpuInfo("NVIDIA H100", (9, 0), 80 * GB, 80 * GB)
    args = app.parse_args(["--outputs", str(tmp_path)])
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setattr(app, "detect_gpu", lambda: None)
    assert app.make_service(args).demo
    monkeypatch.setattr(app, "detect_gpu", lambda: h100)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(app, "hub_reachable", lambda: False)
    assert app.make_service(args).demo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline by choice: the catalog from the local cache
    assert not app.make_service(args).demo
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(app, "hub_reachable", lambda: True)
    svc = app.make_service(args)
    assert not svc.demo and "wan2.1-t2v-14b" in [key for _, key in svc.models()]
    assert svc.preset_for("wan2.1-t2v-14b").name == "hopper-fp8"
    monkeypatch.setattr(app, "detect_gpu", lambda: None)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # ZeroGPU: no CUDA until a spaces.GPU call
    assert app.make_service(args).demo  # but without a working `spaces` package it is not ZeroGPU
    monkeypatch.setattr(app.zerogpu, "active", lambda: True)
    assert app.make_service(args).gpu.family == "hopper"


def test_a_failed_mp4_export_leaves_no_file(tmp_path, monkeypatch):
    import imageio.v2 as imageio
    import numpy as np

    from engine.generate import export_mp4

    frames = np.random.default_rng(0).random((24, 64, 64, 3), dtype=np.float32)
    export_mp4(frames, tmp_path / "ok.mp4", 8)
    real = imageio.get_writer

    def failing_writer(*args, **kwargs):  # ffmpeg has started the file, then it fails (disk full, killed)
        writer = real(*args, **kwargs)
        calls = []

        def append(frame, _append=writer.append_data):
            calls.append(1)
            if len(calls) > 20:
                raise OSError("ffmpeg died")
            _append(frame)
        writer.append_data = append
        return writer
    monkeypatch.setattr(imageio, "get_writer", failing_writer)
    with pytest.raises(OSError, match="ffmpeg died"):
        export_mp4(frames, tmp_path / "bad.mp4", 8)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.mp4"]


def test_unforeseen_failure_reaches_the_user_as_a_sentence(service, monkeypatch):
    import gradio as gr

    from ui.handlers import Handlers

    def broken(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(service, "run", broken)
    with pytest.raises(gr.Error, match="Generation failed: RuntimeError: CUDA error.*lighter preset"):
        list(Handlers(service).generate(TINY, "auto", "preset", "preset", "preset", "Text to video", None, "a boat",
                                        "", 32, 32, 5, 2, 1.0, 5.0, 0, progress=lambda *a, **k: None))


def test_models_without_a_distilled_file_default_to_their_base_schedule(tmp_path):
    h100 = GpuInfo("NVIDIA H100", (9, 0), 80 * GB, 80 * GB)
    svc = VideoService(h100, demo=False, out_dir=tmp_path)
    distilled = svc.defaults("wan2.1-t2v-14b")
    assert (distilled.steps, distilled.guidance, distilled.shift) == (4, 1.0, 5.0)
    assert "4-step distilled" in svc.schedule("wan2.1-t2v-14b")
    small = svc.defaults("wan2.1-t2v-1.3b")  # base transformer: Wan's own 50 steps with CFG 5.0
    assert (small.steps, small.guidance, small.guidance_2, small.shift) == (50, 5.0, None, None)
    moe = svc.defaults("wan2.2-t2v-a14b")  # diffusers' documented A14B call
    assert (moe.steps, moe.guidance, moe.guidance_2, moe.shift) == (40, 4.0, 3.0, None)
    assert "Base model schedule" in svc.schedule("wan2.2-t2v-a14b") and "3.0" in svc.schedule("wan2.2-t2v-a14b")
    checked = validate(VideoRequest(prompt="x", **{k: getattr(moe, k) for k in ("steps", "guidance", "guidance_2",
                                                                               "shift")}))
    assert checked.shift is None and checked.guidance_2 == 3.0
    from ui.handlers import Handlers

    text = Handlers(svc).preset_text("wan2.1-t2v-1.3b", "auto")
    assert "**Schedule:** Base model schedule" in text and "50 steps" in text


def test_a_none_shift_keeps_the_scheduler_and_a_guidance_pair_is_read():
    from types import SimpleNamespace

    from engine import generate as gen

    sched = SimpleNamespace(config={"flow_shift": 3.0})
    pipe = SimpleNamespace(scheduler=sched)
    gen._set_shift(pipe, None)
    assert pipe.scheduler is sched
    req = VideoRequest.from_lightx2v({"sample_guide_scale": [4.0, 3.0], "infer_steps": 40}, prompt="x")
    assert (req.guidance, req.guidance_2) == (4.0, 3.0)
    assert VideoRequest.from_lightx2v({"sample_guide_scale": [4.0, 3.0], "enable_cfg": False}, prompt="x").guidance_2 is None


def test_load_time_is_reported_apart_from_the_run(service):
    first = service.run(TINY, tiny_request(), overrides=dict(dit="int8", t5="bf16"))  # a new model: built
    again = service.run(TINY, tiny_request(), overrides=dict(dit="int8", t5="bf16"))  # the same: reused
    assert first.stats.seconds_load > 0 and first.stats.seconds_download == 0.0
    assert again.stats.seconds_load is None and again.stats.as_dict()["load_s"] is None
    assert first.stats.as_dict()["load_s"] == round(first.stats.seconds_load, 3)


def test_changing_only_the_attention_swaps_it_on_the_loaded_model(service):
    """8-bit self-attention and back: the same loaded pipeline (no rebuild), its processors swapped; a
    scheme change still rebuilds."""
    from engine.attention.install import EightBitSelfAttnProcessor

    first = service.run(TINY, tiny_request(), overrides=dict(attention="bf16"))
    pipe = service._loaded[1].pipe
    procs = lambda: {type(b.attn1.processor) for b in pipe.transformer.blocks}  # noqa: E731
    assert EightBitSelfAttnProcessor not in procs()
    eight = service.run(TINY, tiny_request(), overrides=dict(attention="8-bit"))
    assert service._loaded[1].pipe is pipe and eight.stats.seconds_load is None
    assert procs() == {EightBitSelfAttnProcessor}
    assert service._loaded[1].config.get("self_attn_1_type") == "sage_attn2"
    back = service.run(TINY, tiny_request(), overrides=dict(attention="bf16"))
    assert service._loaded[1].pipe is pipe and EightBitSelfAttnProcessor not in procs()
    assert first.stats.seconds_load is not None
    import imageio.v2 as imageio
    import numpy as np

    def frames(result):
        with imageio.get_reader(result.path, format="ffmpeg") as reader:
            return np.stack([reader.get_data(i) for i in range(reader.count_frames())])
    assert np.array_equal(frames(back), frames(first))  # swapped back: the same video as the first bf16 run
    service.run(TINY, tiny_request(), overrides=dict(attention="bf16", dit="int8", t5="bf16"))
    assert service._loaded[1].pipe is not pipe  # another scheme: built anew


def test_a_preset_that_configures_the_same_reuses_the_model_and_is_named(service):
    """hopper-fp8 and blackwell-fp8 differ only in their `_about` text: the second reuses the loaded
    model (no rebuild), and the status line names the preset chosen last, not the one that built it."""
    from engine.presets import load_preset

    differ = {k for k in load_preset("hopper-fp8").keys() | load_preset("blackwell-fp8").keys()
              if load_preset("hopper-fp8").get(k) != load_preset("blackwell-fp8").get(k)}
    assert differ == {"_about"}
    over = dict(dit="int8", t5="bf16", clip="bf16")  # runnable on the CPU
    service.run(TINY, tiny_request(), preset="hopper-fp8", overrides=over)
    pipe = service._loaded[1].pipe
    again = service.run(TINY, tiny_request(), preset="blackwell-fp8", overrides=over)
    assert service._loaded[1].pipe is pipe and again.stats.seconds_load is None
    assert "preset blackwell-fp8" in service.loaded_summary()
    service.run(TINY, tiny_request(), preset="cpu-demo", overrides=dict(over, attention="8-bit"))
    assert "preset cpu-demo" in service.loaded_summary()
