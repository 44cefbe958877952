"""What the UI talks to: the models on offer, the preset for this GPU, loading (with downloads) and
running one job at a time, and stopping it. Plain Python, no Gradio: the UI is a thin layer on top.

Everything that can be checked without the weights (the request against the model's limits, the config
against the GPU) is checked before the lock is taken and before a byte is downloaded. Jobs belong to an
owner (the UI passes the browser tab's session): Stop ends only the owner's jobs, and a job waits for the
one GPU lock (generate.GPU_LOCK) instead of being refused while a stopped job finishes its step.
"""
from __future__ import annotations

import gc
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .builder import TINY_LIMITS, LoadedModel, build_from_hub, build_tiny
from .catalog import CATALOG, get_model
from .config import QuantConfig, load_config
from .errors import ConfigError, EngineError
from .formats import FORMATS
from .generate import GPU_LOCK, Cancelled, StepInfo, VideoResult, generate
from .gpu import GpuInfo
from .presets import (PresetChoice, apply_overrides, check_config_for_gpu, check_fits, choose_preset,
                      format_notices, load_preset)
from .outputs import outputs_folder, prune_outputs
from .request import Limits, VideoRequest, validate

log = logging.getLogger("engine.service")
TINY = "tiny"
TINY_LABEL = "Tiny built-in Wan (CPU demo, random weights)"
# What the override menus offer per component; "preset" keeps the preset's choice.
SCHEME_CHOICES = ("preset", "bf16", *(f.label for f in FORMATS.values() if f.in_menu))  # from engine/formats
COMPONENT_NAMES = {"dit": "DiT", "t5": "T5", "clip": "CLIP", "attention": "self-attention",
                   "decoder": "decoder"}
WAIT_POLL_S = 0.25  # how often a waiting job looks at its Stop / liveness while another job runs


@dataclass(frozen=True)
class LoadKey:
    model: str
    task: str
    config_json: str


class VideoService:
    def __init__(self, gpu: GpuInfo | None, demo: bool, out_dir: str | Path | None = None,
                 endpoint: str | None = None, cache_dir: str | Path | None = None):
        self.gpu, self.demo = gpu, demo
        self.out_dir = outputs_folder(out_dir)
        self.outputs_given = out_dir is not None
        self.endpoint, self.cache_dir = endpoint, cache_dir
        self._loaded: tuple[LoadKey, LoadedModel] | None = None
        self._jobs: dict[int, tuple[str | None, threading.Event]] = {}  # id -> (owner, stop), waiting or running
        self._jobs_lock = threading.Lock()  # guards _jobs only; GPU_LOCK is the one job lock
        self._last_load: tuple[bool, float] = (False, 0.0)  # set by _load: (built now, download seconds)
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

    def preset_for(self, model: str, size: tuple[int, int, int] | None = None,
                   decoder: str | None = None) -> PresetChoice:
        """The preset auto picks for `model` at `size` (height, width, frames; default: the model's own)
        with `decoder` (the UI's choice; None or "preset": the preset's own)."""
        if model == TINY:
            return PresetChoice("cpu-demo", load_preset("cpu-demo"),
                                "The built-in model runs on the CPU; auto picks the CPU demo preset (every format "
                                "runs there on the reference kernels).")
        return choose_preset(self.gpu, self._entry(model), size, decoder)

    def config(self, model: str, preset: str | None = None, dit: str | None = None, t5: str | None = None,
               clip: str | None = None, attention: str | None = None,
               decoder: str | None = None, size: tuple[int, int, int] | None = None) -> tuple[str, QuantConfig]:
        """(preset name, config) after per-component overrides and run options, checked against this GPU;
        auto picks its preset for `size` (height, width, frames)."""
        name = preset if preset and preset != "auto" else self.preset_for(model, size, decoder).name
        cfg = load_config(apply_overrides(load_preset(name), dit=dit, t5=t5, clip=clip, attention=attention,
                                          decoder=decoder))
        _tiny_takes_no_decoder(model, cfg)
        if model != TINY:
            check_config_for_gpu(cfg, self.gpu)
            self.notices = format_notices(cfg, self.gpu)
            for note in self.notices:
                log.warning("%s", note)
        return name, cfg

    def explain(self, model: str, preset: str | None = None, overrides: dict | None = None) -> str:
        """Markdown saying what will really run: the preset (chosen or auto, and why), the overrides, the
        resulting schemes and where they run, and the notices for this GPU (emulated formats), or why this
        combination cannot run here."""
        auto = self.preset_for(model, decoder=(overrides or {}).get("decoder"))
        chosen = bool(preset) and preset != "auto"
        lines = [f"**Preset:** {preset}, chosen by you (auto would pick {auto.name}: {auto.reason})" if chosen
                 else f"**Preset:** {auto.name} (auto). {auto.reason}"]
        changed = {k: v for k, v in (overrides or {}).items() if v and v != "preset"}
        if changed:
            lines.append("**Overrides:** " + ", ".join(f"{COMPONENT_NAMES.get(k, k)} {v}" for k, v in changed.items()))
        try:
            cfg = load_config(apply_overrides(load_preset(preset if chosen else auto.name), **changed))
            _tiny_takes_no_decoder(model, cfg)
            if model == TINY:
                where = "the CPU (reference kernels; the tiny model always runs there)"
            else:
                check_config_for_gpu(cfg, self.gpu)
                where = self.gpu.name if self.gpu else "the CPU"
            offload = (f", with CPU offload by {cfg.get('offload_granularity') or 'model'} (parts move to the GPU "
                       "only while they run)") if cfg.get("cpu_offload") and model != TINY else ""
            lines.append(f"**Runs:** {cfg.summary()} on {where}{offload}.")
            if model != TINY:
                lines += [f"**Note:** {note}" for note in format_notices(cfg, self.gpu)]
        except EngineError as e:
            lines.append(f"**Cannot run here:** {e}")
        return "\n\n".join(lines)

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

    def limits(self, model: str) -> Limits:
        """The model's request limits, known without loading it (catalog entry or the tiny model's)."""
        if model == TINY:
            return TINY_LIMITS
        entry = self._entry(model)
        side = max(entry.max_size)
        return Limits(max_height=side, max_width=side, name=entry.label)

    def size_presets(self, model: str) -> list[tuple[int, int]]:
        """(height, width) choices offered for the model, all within its limits."""
        if model == TINY:
            return [(32, 32), (32, 48), (48, 32), (64, 64)]
        entry = self._entry(model)
        h, w = entry.default_size
        sizes = [(h, w), (w, h), (min(h, w), min(h, w))]
        if max(entry.max_size) >= 1280:
            sizes += [(720, 1280), (1280, 720)] if (h, w) != (720, 1280) else [(480, 832), (832, 480)]
        return list(dict.fromkeys(sizes))

    def check(self, model: str, req: VideoRequest, *, preset: str | None = None,
              overrides: dict | None = None) -> tuple[str, QuantConfig, VideoRequest]:
        """Everything checkable without weights: the request against the model's limits and task, the
        config against this GPU. Raises the typed error; nothing is downloaded or loaded."""
        task = self.tasks(model)
        if req.task not in task:
            from .request import RequestError

            raise RequestError(f"{self._label(model)} does {' and '.join(task)}, not {req.task}")
        req = validate(req, self.limits(model))
        size = (req.height, req.width, req.num_frames)
        name, cfg = self.config(model, preset, **(overrides or {}), size=size)
        if model != TINY:
            # the decoder keys (decoder, tae_path / vae_path, vae_dtype, ...): before any download
            from .vae.check import check_decoder_setting

            check_decoder_setting(cfg, from_hub=True, z_dim=_z_dim(self._entry(model)))
            # engine.memory's estimate with the chosen decoder: refuse what cannot fit, before any download
            check_fits(self.gpu, self._entry(model), cfg.raw, size, strict=True)
        return name, cfg, req

    def plan_text(self, model: str, req: VideoRequest, *, preset: str | None = None,
                  overrides: dict | None = None) -> str:
        """One sentence on what the preset (auto: the one picked for this size and decoder) offloads or
        tiles for `req` on this GPU with the chosen decoder, and why; or what would fit instead."""
        if model == TINY:
            return ""
        try:
            size, changed = (req.height, req.width, req.num_frames), dict(overrides or {})
            name = preset if preset and preset != "auto" else self.preset_for(model, size, changed.get("decoder")).name
            raw = apply_overrides(load_preset(name), **changed)
            load_config(raw)  # a bad key is said here as it would be at run time
            return check_fits(self.gpu, self._entry(model), raw, size)
        except EngineError as e:
            return str(e)

    def schedule(self, model: str) -> str:
        """Which sampling schedule the model runs with by default, in one sentence."""
        if model == TINY:
            return "Tiny built-in model: the preset's 4-step schedule (random weights, not real video)."
        return self._entry(model).schedule()

    # ---- work ----------------------------------------------------------------------------
    def run(self, model: str, req: VideoRequest, *, preset: str | None = None, overrides: dict | None = None,
            on_download: Callable | None = None, on_step: Callable[[StepInfo], None] | None = None,
            owner: str | None = None, alive: Callable[[], bool] | None = None,
            on_wait: Callable[[], None] | None = None) -> VideoResult:
        """Check, wait for the GPU, load (downloading if needed) and generate; raises Cancelled when
        stopped (cancel(owner)) or when `alive()` turns False (the client went away)."""
        name, cfg, req = self.check(model, req, preset=preset, overrides=overrides)
        stop = threading.Event()
        with self._jobs_lock:
            self._jobs[id(stop)] = (owner, stop)
        try:
            self._wait_for_gpu(stop, alive, on_wait)
            try:
                def stopped() -> bool:
                    if alive is not None and not alive():
                        stop.set()
                    return stop.is_set()

                started = time.perf_counter()
                loaded = self._load(model, req.task, name, cfg, on_download, stopped)
                built, download_s = self._last_load
                load_s = time.perf_counter() - started - download_s if built else None

                def step(info: StepInfo) -> None:
                    if on_step:
                        on_step(info)
                    stopped()  # generate() raises Cancelled after this step when `stop` is set

                result = generate(loaded, req, self.out_dir, on_step=step, cancel=stop)
            finally:
                GPU_LOCK.release()
            result.stats.seconds_load, result.stats.seconds_download = load_s, download_s
            prune_outputs(self.out_dir, keep=result.path)
            return result
        finally:
            with self._jobs_lock:
                self._jobs.pop(id(stop), None)

    def _wait_for_gpu(self, stop: threading.Event, alive, on_wait) -> None:
        """Take GPU_LOCK, waiting while another job (maybe a stopped one finishing its step) holds it."""
        told = False
        while not GPU_LOCK.acquire(timeout=WAIT_POLL_S):
            if not told and on_wait:
                on_wait()
                told = True
            if stop.is_set() or (alive is not None and not alive()):
                raise Cancelled("stopped while waiting for the job ahead")

    def cancel(self, owner: str | None = None) -> bool:
        """Ask `owner`'s jobs (running or waiting) to stop at their next step; None: every job (the command
        line and tests; the UI always names the session). False when the owner has none."""
        with self._jobs_lock:
            mine = [ev for who, ev in self._jobs.values() if owner is None or who == owner]
        for ev in mine:
            ev.set()
        return bool(mine)

    def busy(self) -> bool:
        with self._jobs_lock:
            return bool(self._jobs)

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

    def _load(self, model, task, preset, cfg: QuantConfig, on_download=None, stopped=None) -> LoadedModel:
        """The model for this key, built (downloading if needed) unless it is the one loaded. Call it holding
        GPU_LOCK; `_last_load` then says (whether it was built, seconds spent downloading)."""
        import json

        stopped = stopped or (lambda: False)
        # comments (`_about`) left out: two presets that configure the same thing share one loaded model
        key = LoadKey(model, task, json.dumps({k: v for k, v in cfg.raw.items() if not str(k).startswith("_")},
                                              sort_keys=True))
        if self._loaded and self._loaded[0] == key:
            self._last_load = (False, 0.0)
            # another preset may configure the same thing: the status line names the one chosen
            self._loaded[1].config, self._loaded[1].preset = cfg, preset
            return self._loaded[1]
        if self._loaded and _differs_only_in_attention(self._loaded[0], key):
            # install_for_pipeline replaces (or removes) attn1's processor; the fused block reads the
            # choice at every call, so the loaded weights stay as they are
            from .attention import install_for_pipeline

            loaded = self._loaded[1]
            install_for_pipeline(loaded.pipe, cfg)
            loaded.config, loaded.preset = cfg, preset
            self._loaded, self._last_load = (key, loaded), (False, 0.0)
            return loaded
        self._unload()  # one model in memory at a time
        if model == TINY:
            loaded, download_s = build_tiny(task, cfg, preset=preset), 0.0
        else:
            started, last = time.perf_counter(), [None]

            def progress(p):
                last[0] = time.perf_counter()  # the last byte's report ends the download phase
                if stopped():
                    raise Cancelled("download stopped; finished files are kept in the cache")
                if on_download:
                    on_download(p)
            loaded = build_from_hub(self._entry(model), cfg, progress, preset=preset, endpoint=self.endpoint,
                                    cache_dir=self.cache_dir)
            download_s = (last[0] - started) if last[0] else 0.0
        self._loaded = (key, loaded)
        self._last_load = (True, download_s)
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

    def keep_outputs_in(self, parent: str | Path) -> Path:
        """Write videos into a new private folder under `parent` (the UI passes Gradio's cache, which then
        serves them without a second copy); only when the user gave no outputs folder."""
        if self.outputs_given:
            return self.out_dir
        Path(parent).mkdir(parents=True, exist_ok=True)
        old, self.out_dir = self.out_dir, Path(tempfile.mkdtemp(prefix="quantwan-outputs-", dir=parent))
        try:
            old.rmdir()  # the default folder made at start-up, still empty
        except OSError:
            pass
        return self.out_dir

    def _label(self, model: str) -> str:
        return "the tiny built-in model" if model == TINY else self._entry(model).label

    def _entry(self, model: str):
        if self.demo and model != TINY:
            raise ConfigError("demo mode offers only the built-in model")
        return get_model(model)

    def preload(self, model: str, on_download: Callable | None = None) -> None:
        """Download and load `model` with its preset now, without generating. On a ZeroGPU Space the
        app calls it at start-up: the `spaces.GPU` call runs in a forked process, so loading there
        would repeat on every job."""
        with GPU_LOCK:
            name, cfg = self.config(model)
            self._load(model, self.tasks(model)[0], name, cfg, on_download)


def _z_dim(entry) -> int:
    """Latent channels of a catalog model: Wan2.2 TI2V-5B's VAE has 48, every other Wan VAE 16."""
    from .memory import arch_of_entry

    return 48 if arch_of_entry(entry).in_channels == 48 else 16


ATTENTION_KEYS = ("self_attn_1_type", "cross_attn_1_type", "cross_attn_2_type", "attn_bf16_first_steps",
                  "attn_bf16_last_steps", "attn_bf16_blocks")


def _differs_only_in_attention(old: LoadKey, new: LoadKey) -> bool:
    """The same model and weights with another attention choice: swapped on the loaded pipeline. (The
    decoder is not swapped: a LightVAE replaces the full VAE, which a later "full" would need back, and
    offload hooks are placed around the decoder when the model is built.)"""
    import json

    if (old.model, old.task) != (new.model, new.task):
        return False
    a, b = json.loads(old.config_json), json.loads(new.config_json)
    return a != b and all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in ATTENTION_KEYS)


def _tiny_takes_no_decoder(model: str, cfg: QuantConfig) -> None:
    if model == TINY and cfg.get("decoder", "full") != "full":
        raise ConfigError("the built-in tiny model decodes with its own tiny VAE; the light and tiny decoders "
                          "need a real Wan model (choose decoder: preset or full)")


__all__ = ["VideoService", "SCHEME_CHOICES", "TINY", "Cancelled"]
