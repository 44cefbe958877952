"""Everything checkable without weights is checked before a byte is downloaded or loaded: on a pretend GPU
with an empty offline cache, the page's own defaults plus a prompt fail only for the missing files, and a
bad field is named before the Hub is asked; the same through `python -m engine.infer`."""
import json
import subprocess
import sys

import gradio as gr
import pytest

from engine import hub, infer
from engine.catalog import CATALOG
from engine.errors import ConfigError
from engine.gpu import GB, GpuInfo
from engine.request import RequestError
from engine.service import VideoService
from tests.conftest import ROOT

RTX_4090 = GpuInfo("NVIDIA GeForce RTX 4090", (8, 9), 24 * GB, 23 * GB)
NOT_CACHED = r"not (complete )?in the (local )?cache|not downloaded"  # engine.hub's sentence
FIELDS = ("model", "preset", "task", "width", "height", "frames", "steps", "guidance", "shift", "seed", "random-seed")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache, offline, and a record of every call into the Hub client (which still runs)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    calls = []
    real = hub.fetch

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "fetch", recorded)
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    return service, calls


def page_values(service, model):
    """The values the page holds for `model` after choosing it: the initial page for the default model,
    the model-change handler's updates for the others (what the browser then shows and sends)."""
    from ui.handlers import Handlers
    from ui.layout import build_ui

    demo = build_ui(service)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in FIELDS}
    values = {k: b.value for k, b in by_id.items()}
    if model != values["model"]:
        h = Handlers(service)
        task, _image, *numbers, _size, _text = h.on_model(model, "auto", "preset", "preset", "preset")
        values["task"] = task["value"]
        for key, update in zip(("width", "height", "frames", "steps", "guidance", "shift"), numbers):
            values[key] = update["value"]
    return values


def click_generate(service, model, prompt, **changed):
    from ui.handlers import Handlers

    v = {**page_values(service, model), **changed}
    image = None
    if v["task"] == "Image to video":
        from PIL import Image

        image = Image.open(f"{ROOT}/assets/example-lake.png")
    outputs = Handlers(service).generate(model, v["preset"], "preset", "preset", "preset", v["task"], image, prompt,
                                         "", v["width"], v["height"], v["frames"], v["steps"], v["guidance"],
                                         v["shift"], v["seed"], v["random-seed"], progress=lambda *a, **k: None)
    return list(outputs)[-1]  # the handler streams (live previews); the last output is the result


@pytest.mark.parametrize("model", list(CATALOG))
def test_page_defaults_fail_only_for_the_missing_download(offline, model):
    service, calls = offline
    with pytest.raises(gr.Error, match=NOT_CACHED):
        click_generate(service, model, "a lighthouse in a storm")
    assert len(calls) == 1  # the request and config passed; the Hub client was asked


@pytest.mark.parametrize("changed, named", [
    (dict(width=833), "width 833 is not a multiple of 16"), (dict(frames=80), r"not 4k\+1"),
    (dict(steps=0), "steps must be between 1"), (dict(height=2000), "height must be between"),
    (dict(shift="abc"), "shift must be a number"), (dict(guidance=True), "guidance must be a number"),
])
def test_a_bad_field_is_named_before_any_download(offline, changed, named):
    service, calls = offline
    with pytest.raises(gr.Error, match=named):
        click_generate(service, "wan2.1-t2v-14b", "a lighthouse", **changed)
    with pytest.raises(gr.Error, match="prompt is empty"):
        click_generate(service, "wan2.1-t2v-14b", "\x00\x1b \u200b\t\x7f")
    assert calls == []


def test_a_config_this_gpu_cannot_run_is_named_before_any_download(offline):
    service, calls = offline
    a100 = VideoService(GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB), demo=False, out_dir=service.out_dir)
    with pytest.raises(gr.Error, match="FP8 needs compute capability 8.9 or newer"):
        click_generate(a100, "wan2.1-t2v-14b", "a lighthouse", preset="hopper-fp8")
    assert calls == []


# ---- the same through `python -m engine.infer` -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return infer.save_tiny(tmp_path_factory.mktemp("tiny") / "t2v")


def test_readme_example_on_the_tiny_model_is_a_sentence(tiny_dir):
    """README: --save_tiny then presets/ampere-int8.json (480x832, 81 frames): the tiny model's limits."""
    done = subprocess.run([sys.executable, "-m", "engine.infer", "--model_path", str(tiny_dir), "--config_json",
                           f"{ROOT}/presets/ampere-int8.json", "--prompt", "a cat", "--save_result_path",
                           str(tiny_dir.parent / "out.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert "the tiny model in" in done.stderr and "presets/cpu-demo.json" in done.stderr
    assert not (tiny_dir.parent / "out.mp4").exists()


@pytest.mark.parametrize("keys, prompt, named", [
    ({"target_width": 40}, "a cat", "width 40 is not a multiple of 16"),
    ({"target_width": 833}, "a cat", "width must be between 32 and 64, got 833 .the tiny model"),
    ({}, " \x00\x07 ", "prompt is empty"), ({"infer_steps": True}, "a cat", "`infer_steps` must be a whole number"),
    ({"target_video_length": 6}, "a cat", r"not 4k\+1"), ({"target_height": 480}, "a cat", "the tiny model"),
])
def test_infer_names_a_bad_request_before_loading(tiny_dir, tmp_path, monkeypatch, keys, prompt, named):
    import engine.builder as builder

    loads = []
    real = builder.build_from_dir
    monkeypatch.setattr(builder, "build_from_dir", lambda *a, **k: loads.append(a) or real(*a, **k))
    cfg = {"infer_steps": 2, "target_video_length": 5, "target_height": 32, "target_width": 32, **keys}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    args = infer.parse_args(["--model_path", str(tiny_dir), "--config_json", str(tmp_path / "cfg.json"),
                             "--prompt", prompt, "--device", "cpu", "--save_result_path", str(tmp_path / "o.mp4")])
    # the config's own types are checked when it is read (ConfigError), the request's bounds after
    with pytest.raises((RequestError, ConfigError), match=named):
        infer.run(args)
    assert loads == []


def test_infer_refuses_a_bad_device_and_a_wrong_task_with_sentences(tiny_dir, tmp_path):
    from engine.errors import EngineError

    (tmp_path / "cfg.json").write_text(json.dumps({"infer_steps": 1, "target_video_length": 5}))
    base = ["--model_path", str(tiny_dir), "--config_json", str(tmp_path / "cfg.json"), "--prompt", "x"]
    with pytest.raises(EngineError, match="is not a device"):
        infer.run(infer.parse_args(base + ["--device", "gpu0"]))
    with pytest.raises(EngineError, match="is a t2v model but --task i2v"):
        infer.run(infer.parse_args(base + ["--task", "i2v", "--device", "cpu"]))
