"""ZeroGPU on Hugging Face Spaces: a GPU is attached only while a `spaces.GPU` function runs.

Outside a Space the `spaces` package is absent (or inert) and the function is returned unchanged.
"""
from __future__ import annotations

import functools
import os

GPU_SECONDS = int(os.environ.get("ZEROGPU_DURATION", "120"))


def on_gpu(fn):
    try:
        import spaces
    except ImportError:
        return fn
    if not os.environ.get("SPACE_ID"):
        return fn  # installed locally but not in a Space: nothing to attach
    wrapped = spaces.GPU(duration=GPU_SECONDS)(fn)
    return functools.wraps(fn)(wrapped)
