"""Event handlers: Gradio values in, engine calls, Gradio values out.

No model code here: everything goes through engine.service.VideoService. A failed run raises gr.Error
(API clients get the error, the page a toast) and keeps its sentence per browser tab, which the page's
`.failure` listener writes into the status line, where it stays until the next run.
"""
from __future__ import annotations

import contextvars
import logging
import queue
import secrets
import threading
from collections import OrderedDict

import gradio as gr

from engine.errors import EngineError
from engine.generate import Cancelled
from engine.presets import list_presets
from engine.request import VideoRequest

from engine.service import TINY

from .jobs import event_alive, event_id, watch_client
from .preview import availability as preview_availability
from .preview import frames_for as preview_frames
from .preview import picture as preview_picture
from .stats_view import stats_table
from .stops import StopBoard
from .zerogpu import on_gpu

log = logging.getLogger("ui")
TASK_LABELS = {"t2v": "Text to video", "i2v": "Image to video"}
TASK_OF = {label: task for task, label in TASK_LABELS.items()}
MAX_SEED = 2**32 - 1
KEPT_ERRORS = 256
WATCH_S = 0.5  # how often the app looks whether a ZeroGPU job's client is still there  # per-tab error sentences kept for the status line (oldest dropped)


class Handlers:
    def __init__(self, service, stops: StopBoard | None = None):
        self.service = service
        self._errors: OrderedDict[str, str] = OrderedDict()
        # Made here, before ZeroGPU forks its worker (at the first GPU call), so both processes share it.
        self.stops = stops or StopBoard()
        job = self._job
        self._gpu_job = on_gpu(job)  # the job itself: ZeroGPU's `spaces.GPU` call, or plain
        self._forked = self._gpu_job is not job

    # ---- texts -------------------------------------------------------------------------------
    def hardware_text(self) -> str:
        gpu = self.service.gpu
        where = gpu.label if gpu else "no CUDA GPU"
        mode = " · demo mode: the built-in model only (no GPU or no network)" if self.service.demo else ""
        return f"**Hardware:** {where}{mode}"

    def preset_choices(self) -> list[tuple[str, str]]:
        return [("auto (best for this GPU)", "auto")] + [(f"{name}: {about}", name) for name, about in
                                                           list_presets().items()]

    def preset_text(self, model: str, preset: str, dit: str = "preset", t5: str = "preset",
                    clip: str = "preset", attention: str = "preset", decoder: str = "preset") -> str:
        """What will really run, including overrides and this GPU's notices; the memory plan when the
        service has one (`plan_text(model, request, preset=, overrides=)`): it counts the chosen decoder."""
        try:
            text = self.service.explain(model, preset, dict(dit=dit, t5=t5, clip=clip, attention=attention,
                                                              decoder=decoder))
            text += f"\n\n**Schedule:** {self.service.schedule(model)}"
            plan = getattr(self.service, "plan_text", None)
            if callable(plan):
                extra = plan(model, self.service.defaults(model), preset=preset,
                             overrides=dict(dit=dit, t5=t5, clip=clip, attention=attention, decoder=decoder))
                if extra:
                    text += f"\n\n**Memory:** {extra}"
        except EngineError as e:
            return f"**Cannot use this model here:** {e}"
        return text

    # ---- field updates -------------------------------------------------------------------------
    def on_model(self, model: str, preset: str, dit: str, t5: str, clip: str, attention: str = "preset",
                 decoder: str = "preset"):
        """New model: task choices, image box, defaults, ranges, size presets, preset explanation."""
        try:
            tasks = self.service.tasks(model)
            req = self.service.defaults(model)
            limits = self.service.limits(model)
            sizes = self.service.size_presets(model)
        except EngineError as e:
            raise gr.Error(str(e)) from None
        labels = [TASK_LABELS[t] for t in tasks]
        return (gr.update(choices=labels, value=labels[0]), gr.update(visible=tasks[0] == "i2v"),
                *number_updates(req, limits), gr.update(choices=size_labels(sizes), value=None),
                self.preset_text(model, preset, dit, t5, clip, attention, decoder))

    def on_task(self, task_label: str):
        return gr.update(visible=TASK_OF.get(task_label) == "i2v")

    def on_size(self, size: str | None):
        if not size:
            return gr.update(), gr.update()
        width, height = (int(v) for v in size.split(" ")[0].split("x"))
        return width, height

    # ---- a run -----------------------------------------------------------------------------------
    def generate(self, model, preset, dit, t5, clip, task_label, image, prompt, negative, width, height, frames,
                 steps, guidance, shift, seed, random_seed=False, attention="preset", decoder="preset",
                 preview=False, request: gr.Request = None, progress=gr.Progress()):
        """Yields (video path, stats table, stats dict, status markdown, seed used, preview picture): a
        preview after each step when asked for, then the result. Runs in the app's process; the job itself
        runs in `_job`, which on ZeroGPU is the `spaces.GPU` call in a forked worker."""
        owner = getattr(request, "session_hash", None)
        self._errors.pop(owner, None)
        job_id = event_id()
        watch = watch_client(self.stops, owner, job_id, WATCH_S) if self._forked else None
        finished = False
        try:
            yield from self._gpu_job(model, preset, dit, t5, clip, task_label, image, prompt, negative, width,
                                     height, frames, steps, guidance, shift, seed, random_seed, attention, decoder,
                                     preview, owner, job_id, progress)
            finished = True
        except gr.Error as e:
            finished = True
            self._keep_error(owner, getattr(e, "message", str(e)))  # the status line reads it here
            raise
        finally:
            if watch is not None:
                watch.set()
            if not finished and self._forked:  # the client went away mid-run (Gradio closed this generator);
                self.stops.stop_job(owner, job_id)  # in this process `_job` itself stops the run when closed

    def _job(self, model, preset, dit, t5, clip, task_label, image, prompt, negative, width, height, frames, steps,
             guidance, shift, seed, random_seed, attention, decoder, preview, owner, job_id, progress):
        """The run, as a generator of output tuples. Under ZeroGPU it runs in the forked worker: Stop
        reaches it through `self.stops` (a flag on disk), never through this process's memory."""
        # Gradio's queue lives in the app's process; a forked worker has only a stale copy of it.
        client_alive = event_alive() if self.stops.in_app_process() else None
        updates: queue.Queue = queue.Queue()
        with self.stops.job(owner, job_id) as job:
            def alive() -> bool:
                return not job.stopped() and (client_alive is None or client_alive())

            def work():
                try:
                    updates.put(("done", self._run(model, preset, dit, t5, clip, task_label, image, prompt,
                                                   negative, width, height, frames, steps, guidance, shift, seed,
                                                   random_seed, attention, decoder, preview, owner, alive,
                                                   progress, updates)))
                except BaseException as e:  # noqa: BLE001 - handed to the generator, which raises it
                    updates.put(("error", e))

            # The run goes on in a thread so that this generator can yield previews while it works;
            # the copied context carries Gradio's progress and event to it.
            worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                      name="video-job")
            worker.start()
            try:
                while True:
                    kind, value = updates.get()
                    if kind == "preview":
                        yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), value
                    elif kind == "done":
                        yield value
                        return
                    else:
                        raise value
            finally:
                if worker.is_alive():  # closed early: stop at the next step, then let the marks go
                    job.stop()
                    worker.join()

    def _run(self, model, preset, dit, t5, clip, task_label, image, prompt, negative, width, height, frames, steps,
             guidance, shift, seed, random_seed, attention, decoder, preview, owner, alive, progress, updates):
        """One run in the job's thread: the final output tuple, or gr.Error with a sentence."""
        try:
            req = self._request(model, task_label, image, prompt, negative, width, height, frames, steps,
                                guidance, shift, seed, random_seed)
            show, why = preview_availability(self.service, model, preset, decoder) if preview else (False, "")
            notes = [f"**No live preview:** {why}"] if preview and not show else []
            shown = [show]  # turned off for the rest of the run if a preview decode fails

            def downloading(p):
                progress(p.fraction, desc=f"downloading {p.filename or 'done'} "
                                          f"({p.done_bytes / 2**30:.2f} / {p.total_bytes / 2**30:.2f} GB)")

            def stepped(s):
                progress((s.step, s.total), desc=f"denoising step {s.step}/{s.total} ({s.seconds:.2f} s)",
                         unit="steps")
                if shown[0] and s.latents is not None:
                    try:
                        frames_ = preview_frames(s.pipe, s.latents, own_vae=model == TINY)
                    except Exception as e:  # noqa: BLE001 - a preview must not end the video; said below
                        log.exception("live preview failed")
                        shown[0] = False
                        notes.append(f"**Live preview stopped** at step {s.step}: {type(e).__name__}: {e}")
                        return
                    if frames_ is not None:
                        updates.put(("preview", preview_picture(frames_)))

            progress(0, desc="loading the model")
            result = self.service.run(model, req, preset=preset, overrides=dict(dit=dit, t5=t5, clip=clip,
                                                                                attention=attention, decoder=decoder),
                                      on_download=downloading, on_step=stepped, owner=owner, alive=alive,
                                      on_wait=lambda: progress(0, desc="waiting for the job ahead to finish"))
        except Cancelled as e:
            return None, "", None, f"**Stopped:** {e}", gr.update(), gr.update()
        except EngineError as e:
            raise self._fail(owner, str(e)) from None
        except Exception as e:  # an unforeseen failure (driver, CUDA, library): a sentence, not a traceback
            log.exception("generation failed")
            raise self._fail(owner, f"Generation failed: {type(e).__name__}: {e}. The server log has the details; "
                                    "a lighter preset, fewer frames or a smaller size may help.") from None
        stats = result.stats.as_dict()
        extra = "".join(f"\n\n{n}" for n in notes)
        status = (f"**Done:** {result.frames} frames at {result.width}x{result.height}, seed {req.seed}, in "
                  f"{stats['total_s']} s ({stats['mean_step_s']} s per step"
                  f"{', each with its preview decode' if show else ''}).{extra}\n\n"
                  f"{self.service.loaded_summary()}")
        return str(result.path), stats_table(stats), stats, status, req.seed, gr.update()

    def preview_box(self, model: str, preset: str = "auto", decoder: str = "preset"):
        """The preview checkbox for this model and decoder: usable, or greyed out with the reason."""
        ok, why = preview_availability(self.service, model, preset, decoder)
        return gr.update(interactive=ok, info=why, **({} if ok else {"value": False}))

    def _request(self, model, task_label, image, prompt, negative, width, height, frames, steps, guidance, shift,
                 seed, random_seed) -> VideoRequest:
        task = TASK_OF.get(task_label)
        if task is None:
            raise EngineError(f"unknown task {task_label!r}; choose {' or '.join(TASK_OF)}")
        default = self.service.defaults(model)
        guidance = _num(guidance)
        # Wan2.2 A14B's low-noise expert has its own default guidance; a guidance the user changed
        # applies to both experts.
        guidance_2 = default.guidance_2 if guidance == default.guidance else None
        return VideoRequest(prompt=prompt or "", task=task, negative_prompt=negative or "", image=image,
                            height=_num(height), width=_num(width), num_frames=_num(frames), steps=_num(steps),
                            guidance=guidance, shift=_shift(shift),
                            seed=secrets.randbelow(MAX_SEED + 1) if random_seed else _num(seed),
                            fps=default.fps, guidance_2=guidance_2)

    def _fail(self, owner, message: str) -> gr.Error:
        self._keep_error(owner, message)
        return gr.Error(message)

    def _keep_error(self, owner, message: str) -> None:
        if owner:
            self._errors[owner] = message
            while len(self._errors) > KEPT_ERRORS:
                self._errors.popitem(last=False)

    def last_error(self, request: gr.Request = None):
        """(status line, video) after a failed run: this tab's sentence, kept until its next run; the
        video box is emptied, which also clears Gradio's bare "Error" badge on it."""
        message = self._errors.get(getattr(request, "session_hash", None))
        if message is None:  # failed before our handler ran (e.g. an upload Gradio refused)
            return "**Error:** the run did not start; the message at the top right says why.", None
        return "**Error:** " + _plain(message), None

    def stop(self, request: gr.Request = None):
        """Stops this tab's job only (its session), running or waiting, in this process or in a ZeroGPU
        worker (through the stop board, which both see)."""
        owner = getattr(request, "session_hash", None) or "-"
        marked = self.stops.stop(owner)
        cancelled = self.service.cancel(owner)
        if marked or cancelled:
            return "**Stopping** after the current step…"
        return "Nothing of yours is running."


def number_updates(req: VideoRequest, limits) -> list:
    """Width, height, frames, steps, guidance, shift, with the model's ranges in their labels."""
    return [
        gr.update(value=req.width, label=f"Width ({limits.min_side}–{limits.max_width}, multiple of 16)"),
        gr.update(value=req.height, label=f"Height ({limits.min_side}–{limits.max_height}, multiple of 16)"),
        gr.update(value=req.num_frames, label=f"Frames (1–{limits.max_frames}, 4k+1)"),
        gr.update(value=req.steps, label=f"Steps (1–{limits.max_steps})"),
        gr.update(value=req.guidance),
        gr.update(value=shift_text(req.shift)),
    ]


def size_labels(sizes) -> list[str]:
    return [f"{w}x{h}" + (" (portrait)" if h > w else " (square)" if h == w else "") for h, w in sizes]


def shift_text(shift) -> str:
    return "" if shift is None else f"{shift:g}"


def _shift(value):
    """The Shift box is text so that it can be empty (the scheduler's own shift); validation names a bad one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else value


def _num(value):
    """Gradio Number fields give floats or None; validation in the engine explains bad values."""
    if value is None or value == "":
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _plain(text: str) -> str:
    """Markdown-neutral: an error quoting a file name with underscores must not turn italic."""
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text
