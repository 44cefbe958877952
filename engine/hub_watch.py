"""Progress and deadlines for Hub downloads.

`FileBytes.bar_class()` is the `tqdm_class` handed to huggingface_hub: a real (silenced) subclass of
its tqdm, so the plain-HTTP branch (`http_get`) and the Xet branch (`XetDownloadProgressReporter`)
can call whatever tqdm API they use. It only counts bytes; nothing is drawn.

`watched()` runs one blocking library call on a worker thread and watches it from the caller's
thread: it forwards progress there (so the user's Stop, raised by the progress callback, is seen
even while no byte arrives) and fails with a HubError when the transfer stalls. The library's own
timeouts end the worker thread later; the caller is not kept waiting for them.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import HubError

T = TypeVar("T")


@dataclass(frozen=True)
class Deadlines:
    request_s: float = 20.0  # the library's per-request timeout (listing, HEAD): connect and each read
    stall_s: float = 60.0  # a download fails when less than `stall_bytes` arrive in this many seconds
    stall_bytes: int = 2**20  # (less than ~17 KB/s for a whole minute: a drip, not a download)
    tick_s: float = 0.25  # how often progress, and with it the user's Stop, is looked at


class Abandoned(Exception):
    """Raised inside a worker thread the caller has given up on (Stop or a stall), to end it."""


class FileBytes:
    """Bytes of the one file being downloaded, written by the library's progress bars (from its own
    threads on the Xet branch) and read by the watching thread."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._written = 0  # this file's bytes on disk, as the bar counts them (resume included)
        # Liveness only: bytes written and bytes received, each summed (the HTTP branch reports every
        # chunk as both, the Xet branch reports network bytes ahead of written ones).
        self._wrote = self._received = 0
        self.cancelled = False

    @property
    def written(self) -> int:
        with self._lock:
            return min(max(self._written, 0), self.size)  # the bar may roll back (a server ignoring Range)

    @property
    def arrived(self) -> int:
        with self._lock:
            return max(self._wrote, self._received)

    def _check(self) -> None:
        if self.cancelled:
            raise Abandoned("download abandoned (stopped or stalled)")

    def opened(self, initial: int) -> None:
        with self._lock:
            self._written = initial
        self._check()

    def add_written(self, n: int) -> None:
        with self._lock:
            self._written += n
            self._wrote += max(n, 0)
        self._check()

    def add_received(self, n: int) -> None:
        with self._lock:
            self._received += max(n, 0)
        self._check()

    def bar_class(self) -> type:
        return type("FileBar", (hub_bar(),), {"sink": self})


@functools.cache
def hub_bar() -> type:
    """The bar class, built on first use so that importing the engine does not import huggingface_hub."""
    from huggingface_hub.utils import tqdm

    class HubBar(tqdm):
        """huggingface_hub's tqdm, never drawn, counting bytes into `sink`.

        `update` carries bytes written to the file (both branches). `update_transfer` carries bytes
        received from the network: having it makes the Xet reporter route both counts into this one
        bar (as it does for snapshot_download's aggregate bar) instead of building a second one.
        """

        sink: FileBytes | None = None

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # no terminal output, whatever the log level or TQDM_POSITION say
            super().__init__(*args, **kwargs)
            if self.sink is not None:
                self.sink.opened(int(self.n or 0))

        def update(self, n=1):
            n = int(n or 0)
            self.n += n  # a disabled tqdm does not count; the library reads `n` back
            if self.sink is not None:
                self.sink.add_written(n)

        def update_transfer(self, n=1):
            if self.sink is not None:
                self.sink.add_received(int(n or 0))

        def set_transfer_postfix_str(self, s="", refresh=True):
            pass  # nothing is drawn

    return HubBar


# Workers given up on, by what they fetch: a new download of the same file first waits for the old
# one to end (the library holds a lock on the file meanwhile), under the same watchdog.
_abandoned: dict[str, threading.Thread] = {}


def watched(call: Callable[[], T], what: str, sink: FileBytes | None, tick: Callable[[], None],
            deadlines: Deadlines, key: str | None = None) -> T:
    """Run `call` on a worker thread; call `tick` every `deadlines.tick_s` (it reports progress and
    raises on Stop); fail when fewer than `stall_bytes` arrive in `stall_s` (for a call without a
    sink, e.g. a listing: when it takes longer than `stall_s`). `key` names what the call writes
    (a file in a cache), for waiting on an abandoned earlier call that writes the same."""
    outcome: dict = {}
    done = threading.Event()
    earlier = _abandoned.pop(key, None) if key else None

    def work():
        try:
            if earlier is not None:
                earlier.join()
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            outcome["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=work, name=f"hub: {what}", daemon=True)
    worker.start()
    window_start, window_bytes = time.monotonic(), 0
    try:
        while not done.wait(deadlines.tick_s):
            tick()
            now = time.monotonic()
            if now - window_start < deadlines.stall_s:
                continue
            arrived = sink.arrived if sink else 0
            if arrived - window_bytes < (deadlines.stall_bytes if sink else 1):
                waiting = earlier is not None and earlier.is_alive()
                raise HubError(_stall_message(what, arrived, arrived - window_bytes, deadlines, waiting))
            window_start, window_bytes = now, arrived
    except BaseException:
        if sink is not None:
            sink.cancelled = True  # the worker ends at its next byte (or at the library's own timeout)
        worker.join(deadlines.tick_s)
        if key and worker.is_alive():
            _abandoned[key] = worker
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _stall_message(what: str, arrived: int, got: int, d: Deadlines, waiting: bool) -> str:
    if waiting:
        return (f"{what}: an earlier, abandoned download of the same file has not ended after {d.stall_s:.0f} s "
                "(it stops at its own network timeout). Retry in a minute.")
    if arrived <= 0:
        head = f"no answer while {what} for {d.stall_s:.0f} s"
    else:
        head = f"{what} stalled: only {max(got, 0)} bytes arrived in the last {d.stall_s:.0f} s"
    return (f"{head}. The network or the Hub is too slow or not answering: retry later (the files already finished "
            "are kept in the cache), or set HF_HUB_OFFLINE=1 to use only the local cache.")
