"""ZeroGPU on Hugging Face Spaces: a GPU is attached only while a `spaces.GPU` function runs, in a
forked process; the model is loaded at start-up, outside it (app.py).

What `spaces` 0.51.3 (PyPI) does with a decorated function, read from its source (spaces/zero/):
- `spaces.GPU` returns the function unchanged unless the ZeroGPU config is on (`SPACES_ZERO_GPU`).
- The first call forks a worker with multiprocessing's 'fork' context (wrappers.py `Worker`); the
  worker is kept per GPU index and reused by later calls while it is idle and healthy, so memory made
  in the app before that first fork (the preloaded model, ui/stops.py's folder) is there, but anything
  changed in the app afterwards is not.
- Each call's (args, kwargs) and a partial Gradio context (event id, progress; not the Blocks or its
  queue) are pickled through a multiprocessing queue; `gr.Progress` updates travel back as queue RPCs.
- A generator function streams: each yield is pickled back and re-yielded in the app; when the app's
  generator is closed the worker's `stop_event` is set and the task's generator is closed at its next
  yield. A plain function returns once. `gr.Error` raised in the worker is re-raised in the app.

Outside a Space the `spaces` package is not used. On a Space without it (or with one that cannot
start), a log line says so and the app runs without ZeroGPU: never a traceback.
"""
from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("ui.zerogpu")
GPU_SECONDS = int(os.environ.get("ZEROGPU_DURATION", "120"))
_state: dict = {}


def spaces_module():
    """The `spaces` package on a Space (SPACE_ID set), imported once; None elsewhere or when it
    cannot be imported. On ZeroGPU it must be imported before CUDA is touched: app.py calls this first."""
    if "spaces" in _state:
        return _state["spaces"]
    module = None
    if os.environ.get("SPACE_ID"):
        try:
            import spaces as module
        except ImportError:
            log.warning("SPACE_ID is set but the `spaces` package is not installed: running without ZeroGPU "
                        "(add `spaces` to the Space's requirements to use it)")
        except Exception as e:  # noqa: BLE001 - e.g. a ZeroGPU variable missing: say it, run without
            log.warning("the `spaces` package could not start (%s: %s): running without ZeroGPU", type(e).__name__, e)
    _state["spaces"] = module
    return module


def active() -> bool:
    """True on a ZeroGPU Space whose `spaces` package works."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")
    return flag and spaces_module() is not None


def on_gpu(fn):
    spaces = spaces_module()
    if spaces is None:
        return fn
    return functools.wraps(fn)(spaces.GPU(duration=GPU_SECONDS)(fn))
