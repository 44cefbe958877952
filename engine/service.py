"""What the UI talks to: the models on offer, the preset for this GPU, loading (with downloads) and
running one job at a time, and stopping it. Plain Python, no Gradio: the UI is a thin layer on top.
"""
from __future__ import annotations

import gc
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .builder import LoadedModel, build_from_hub, build_tiny
from .catalog import CATALOG, get_model
from .config import QuantConfig, load_config
from .errors import ConfigError
from .generate import Cancelled, StepInfo, VideoResult, generate
from .hardware import (GpuInfo, PresetChoice, apply_overrides, check_config_for_gpu, choose_preset,
                       format_notices, load_preset)
from .request import VideoRequest

log = logging.getLogger("engine.service")
TINY = "tiny"
TINY_LABEL = "Tiny built-in Wan (CPU demo, random weights)"
# What the override menus offer per component; "preset" keeps the preset's choice.
SCHEME_CHOICES = ("preset", "bf16", "fp8", "int8", "fp8-block128", "mxfp8", "nvfp4")


@dataclass(frozen=True)
class LoadKey:
    model: str
    task: str
    config_json: str


class VideoService:
    def __init__(self, gpu: GpuInfo | None, demo: bool, out_dir: str | Path | None = None,
                 endpoint: str | None = None, cache_dir: str | Path | None = None):
        self.gpu, self.demo = gpu, demo
        self.out_dir = Path(out_dir or Path(tempfile.gettempdir()) / "quantwan-outputs")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.endpoint, self.cache_dir = endpoint, cache_dir
        self._loaded: tuple[LoadKey, LoadedModel] | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # one job (load + generate) at a time
        self.notices: list[str] = []  # sentences about the last config on this GPU (e.g. emulated formats)

    # ---- what the UI shows -----------------------------------------------------------------
    def models(self) -> list[tuple[str, str]]:
        """(label, key) pairs; the demo offers only the built-in model (no GPU, no network)."""
        tiny = [(TINY_LABEL, TINY)]
        return tiny if self.demo else [(e.label, k) for k, e in CATALOG.items()] + tiny

    def default_model(self) -> str:
        return self.models()[0][1]

    def tasks(self, model: str) -> tuple[str, ...]:
        return ("t2v", "i2v") if model == TINY else (self._entry(model).task,)

    def preset_for(self, model: str) -> PresetChoice:
        if model == TINY:
            return PresetChoice("cpu-demo", load_preset("cpu-demo"), "The built-in model always uses the CPU demo preset.")
        return choose_preset(self.gpu, self._entry(model))

    def config(self, model: str, preset: str | None = None, dit: str | None = None, t5: str | None = None,
               clip: str | None = None) -> tuple[str, QuantConfig]:
        """(preset name, config) after per-component overrides, checked against this GPU."""
        name = preset if preset and preset != "auto" else self.preset_for(model).name
        cfg = load_config(apply_overrides(load_preset(name), dit=dit, t5=t5, clip=clip))
        if model != TINY:
            check_config_for_gpu(cfg, self.gpu)
            self.notices = format_notices(cfg, self.gpu)
            for note in self.notices:
                log.warning("%s", note)
        return name, cfg

    def defaults(self, model: str) -> VideoRequest:
        """Request defaults, sized for the model. Distilled models (and the tiny one) take the preset's
        LightX2V 4-step values; a model without a distilled file runs its base transformer, so it takes
        the base model's own steps and classifier-free guidance, and keeps its scheduler's shift."""
        choice = self.preset_for(model)
        req = VideoRequest.from_lightx2v(choice.config, prompt="")
        if model != TINY:
            entry = self._entry(model)
            req.height, req.width = entry.default_size
            req.task = entry.task
            if not entry.distilled:
                base = VideoRequest.from_lightx2v(entry.base_defaults, prompt="")
                req.steps, req.guidance, req.guidance_2 = base.steps, base.guidance, base.guidance_2
                req.shift = None  # the base repo's scheduler shift, unchanged
        return req

    def schedule(self, model: str) -> str:
        """Which sampling schedule the model runs with by default, in one sentence."""
        if model == TINY:
            return "Tiny built-in model: the preset's 4-step schedule (random weights, not real video)."
        return self._entry(model).schedule()

    # ---- work ----------------------------------------------------------------------------
    def run(self, model: str, req: VideoRequest, *, preset: str | None = None, overrides: dict | None = None,
            on_download: Callable | None = None, on_step: Callable[[StepInfo], None] | None = None) -> VideoResult:
        """Load (downloading if needed) and generate; raises Cancelled when stopped."""
        if not self._lock.acquire(blocking=False):
            from .generate import GenerationError
            raise GenerationError("another generation is running; wait for it or press Stop")
        try:
            self._cancel.clear()
            name, cfg = self.config(model, preset, **(overrides or {}))
            loaded = self._load(model, req.task, name, cfg, on_download)
            return generate(loaded, req, self.out_dir, on_step=on_step, cancel=self._cancel)
        finally:
            self._cancel.clear()
            self._lock.release()

    def cancel(self) -> bool:
        """Ask the running job to stop at its next step; False when nothing runs."""
        if not self._lock.locked():
            return False
        self._cancel.set()
        return True

    def loaded_summary(self) -> str:
        if not self._loaded:
            return "No model loaded yet."
        m = self._loaded[1]
        lines = [f"**{m.label}** on {m.device} (preset {m.preset}; {m.config.summary()})"]
        if m.schedule:
            lines.append(f"- schedule: {m.schedule}")
        lines += [f"- {comp}: {text}" for comp, text in m.reports.items()]
        lines += [f"- note: {note}" for note in self.notices]
        return "\n".join(lines)

    def _load(self, model, task, preset, cfg: QuantConfig, on_download) -> LoadedModel:
        import json

        key = LoadKey(model, task, json.dumps(cfg.raw, sort_keys=True))
        if self._loaded and self._loaded[0] == key:
            return self._loaded[1]
        self._unload()  # one model in memory at a time
        if model == TINY:
            loaded = build_tiny(task, cfg, preset=preset)
        else:
            def progress(p):
                if self._cancel.is_set():
                    raise Cancelled("download stopped; finished files are kept in the cache")
                if on_download:
                    on_download(p)
            loaded = build_from_hub(self._entry(model), cfg, progress, preset=preset, endpoint=self.endpoint,
                                    cache_dir=self.cache_dir)
        self._loaded = (key, loaded)
        return loaded

    def _unload(self) -> None:
        if self._loaded is None:
            return
        self._loaded = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _entry(self, model: str):
        if self.demo and model != TINY:
            raise ConfigError("demo mode offers only the built-in model")
        return get_model(model)

    def preload(self, model: str, on_download: Callable | None = None) -> None:
        """Download and load `model` with its preset now, without generating. On a ZeroGPU Space the
        app calls it at start-up: the `spaces.GPU` call runs in a forked process, so loading there
        would repeat on every job."""
        with self._lock:
            name, cfg = self.config(model)
            self._load(model, self.tasks(model)[0], name, cfg, on_download)


__all__ = ["VideoService", "SCHEME_CHOICES", "TINY", "Cancelled"]
