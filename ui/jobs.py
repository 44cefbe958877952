"""Whether the Gradio event running this handler still has a client.

When a browser tab closes, Gradio's queue marks the tab's events not alive (`Queue.clean_events`); when a
client cancels (`/cancel`), the event's task is cancelled and the event leaves `event_ids_to_events`. The
handler's worker thread is not stopped by either, so the job asks here at every step and ends itself.
Gradio keeps the event in contextvars (`LocalContext`) for the handler's thread, as gr.Progress uses them.
"""
from __future__ import annotations

import threading
from typing import Callable


def event_alive() -> Callable[[], bool] | None:
    """A function telling whether this handler's event still has a client; None outside a queued event."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None or not hasattr(queue, "event_ids_to_events"):
        return None

    def alive() -> bool:
        event = queue.event_ids_to_events.get(event_id)
        return event is not None and bool(getattr(event, "alive", True))

    return alive


def event_id() -> str | None:
    """Gradio's id of the event running this handler (ZeroGPU hands the same id to its worker)."""
    from gradio.context import LocalContext

    return LocalContext.event_id.get(None)


def watch_client(stops, owner, job_id, every_s: float) -> threading.Event | None:
    """On ZeroGPU the worker cannot see Gradio's queue: this process watches whether the client is still
    there and, when it leaves, marks the job to stop. Returns the event that ends the watch."""
    alive = event_alive()
    if alive is None:
        return None
    done = threading.Event()

    def watch():
        while not done.wait(every_s):
            if not alive():
                stops.stop_job(owner, job_id)
                return
    threading.Thread(target=watch, daemon=True, name="client-watch").start()
    return done
