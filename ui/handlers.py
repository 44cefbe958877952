"""Event handlers: Gradio values in, engine calls, Gradio values out. Engine errors become gr.Error.

No model code here: everything goes through engine.service.VideoService.
"""
from __future__ import annotations

import logging

import gradio as gr

from engine.errors import EngineError
from engine.generate import Cancelled
from engine.hardware import list_presets
from engine.request import VideoRequest
from engine.service import VideoService

log = logging.getLogger("ui")
TASK_LABELS = {"t2v": "Text to video", "i2v": "Image to video"}
TASK_OF = {label: task for task, label in TASK_LABELS.items()}


class Handlers:
    def __init__(self, service: VideoService):
        self.service = service

    def hardware_text(self) -> str:
        gpu = self.service.gpu
        where = gpu.label if gpu else "no CUDA GPU"
        mode = " · demo mode: the built-in model only (no GPU or no network)" if self.service.demo else ""
        return f"**Hardware:** {where}{mode}"

    def preset_choices(self) -> list[tuple[str, str]]:
        return [("auto (best for this GPU)", "auto")] + [(f"{name}: {about}", name) for name, about in
                                                           list_presets().items()]

    def preset_text(self, model: str, preset: str) -> str:
        try:
            choice = self.service.preset_for(model)
        except EngineError as e:
            raise gr.Error(str(e)) from None
        schedule = f"\n\n**Schedule:** {self.service.schedule(model)}"
        if preset and preset != "auto":
            return (f"**Preset:** {preset} (chosen by you; auto would pick {choice.name}: {choice.reason})"
                    + schedule)
        return f"**Preset:** {choice.name}. {choice.reason}" + schedule

    def on_model(self, model: str, preset: str):
        """New model: task choices, image box, size defaults and limits, preset explanation."""
        try:
            tasks = self.service.tasks(model)
            req = self.service.defaults(model)
        except EngineError as e:
            raise gr.Error(str(e)) from None
        labels = [TASK_LABELS[t] for t in tasks]
        return (gr.update(choices=labels, value=labels[0]), gr.update(visible=tasks[0] == "i2v"),
                req.width, req.height, req.num_frames, req.steps, req.guidance, req.shift,
                self.preset_text(model, preset))

    def on_task(self, task_label: str):
        return gr.update(visible=TASK_OF.get(task_label) == "i2v")

    def generate(self, model, preset, dit, t5, clip, task_label, image, prompt, negative, width, height, frames,
                 steps, guidance, shift, seed, progress=gr.Progress()):
        """Returns (video path, stats dict, status markdown)."""
        task = TASK_OF.get(task_label)
        if task is None:
            raise gr.Error(f"unknown task {task_label!r}")
        try:
            default = self.service.defaults(model)
        except EngineError as e:
            raise gr.Error(str(e)) from None
        guidance = _num(guidance)
        # Wan2.2 A14B's low-noise expert has its own default guidance; a guidance the user changed
        # applies to both experts. An empty shift keeps the model's own (base models).
        guidance_2 = default.guidance_2 if guidance == default.guidance else None
        req = VideoRequest(prompt=prompt or "", task=task, negative_prompt=negative or "", image=image,
                           height=_num(height), width=_num(width), num_frames=_num(frames), steps=_num(steps),
                           guidance=guidance, shift=_num(shift), seed=_num(seed), fps=default.fps,
                           guidance_2=guidance_2)

        def downloading(p):
            progress(p.fraction, desc=f"downloading {p.filename or 'done'} "
                                      f"({p.done_bytes / 2**30:.2f} / {p.total_bytes / 2**30:.2f} GB)")

        def stepped(s):
            progress((s.step, s.total), desc=f"denoising step {s.step}/{s.total} ({s.seconds:.2f} s)", unit="steps")

        progress(0, desc="loading the model")
        try:
            result = self.service.run(model, req, preset=preset, overrides=dict(dit=dit, t5=t5, clip=clip),
                                      on_download=downloading, on_step=stepped)
        except Cancelled as e:
            gr.Warning(f"Stopped: {e}")
            return None, None, f"Stopped: {e}"
        except EngineError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # an unforeseen failure (driver, CUDA, library): a sentence, not a traceback
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {type(e).__name__}: {e}. The server log has the details; "
                           "a lighter preset, fewer frames or a smaller size may help.") from None
        stats = result.stats.as_dict()
        status = (f"Done: {result.frames} frames at {result.width}x{result.height} in {stats['total_s']} s "
                  f"({stats['mean_step_s']} s per step).\n\n{self.service.loaded_summary()}")
        return str(result.path), stats, status

    def stop(self):
        if self.service.cancel():
            gr.Info("Stopping after the current step…")
            return "Stopping after the current step…"
        return "Nothing is running."


def _num(value):
    """Gradio Number fields give floats or None; validation in the engine explains bad values."""
    if value is None or value == "":
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value
