"""ZeroGPU wiring without ZeroGPU: a Space without the `spaces` package logs a sentence and runs
without it; the start-up preload loads the model the first job then reuses."""
import builtins
import logging

import pytest

from engine.request import VideoRequest
from engine.service import TINY, VideoService
from ui import zerogpu


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(zerogpu, "_state", {})


@pytest.fixture
def no_spaces(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "spaces":
            raise ImportError("No module named 'spaces'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", refuse)


def test_space_without_spaces_package_logs_and_runs_without_zerogpu(fresh, no_spaces, monkeypatch, caplog):
    monkeypatch.setenv("SPACE_ID", "someone/wan-quantized")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")

    def handler(x):
        return x + 1
    with caplog.at_level(logging.WARNING, logger="ui.zerogpu"):
        assert zerogpu.on_gpu(handler) is handler
        assert not zerogpu.active()
    assert "`spaces` package is not installed: running without ZeroGPU" in caplog.text


def test_a_spaces_package_that_cannot_start_is_a_log_line(fresh, monkeypatch, caplog):
    import sys

    real_import = builtins.__import__

    def load(name, *args, **kwargs):
        if name == "spaces":  # what `spaces` does on a ZeroGPU Space missing its device API variable
            raise AssertionError("SPACES_ZERO_DEVICE_API_URL env must be set on ZeroGPU Spaces")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", load)
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/wan-quantized")
    with caplog.at_level(logging.WARNING, logger="ui.zerogpu"):
        assert zerogpu.spaces_module() is None
    assert "could not start (AssertionError" in caplog.text


def test_outside_a_space_nothing_is_imported_or_logged(fresh, no_spaces, monkeypatch, caplog):
    monkeypatch.delenv("SPACE_ID", raising=False)
    with caplog.at_level(logging.WARNING, logger="ui.zerogpu"):
        assert zerogpu.spaces_module() is None
    assert caplog.text == ""


def test_preload_loads_without_generating_and_the_first_job_reuses_it(tmp_path):
    svc = VideoService(None, demo=True, out_dir=tmp_path)
    svc.preload(TINY)
    loaded = svc._loaded[1]
    assert list(tmp_path.iterdir()) == []  # nothing generated
    svc.run(TINY, VideoRequest(prompt="a boat", height=32, width=32, num_frames=5, steps=2))
    assert svc._loaded[1] is loaded
