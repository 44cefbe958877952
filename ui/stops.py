"""Stop requests that reach a job in another process (ZeroGPU's fork).

On a ZeroGPU Space each `spaces.GPU` call runs in a worker process forked from the app (spaces 0.51:
`spaces/zero/wrappers.py` forks with multiprocessing's 'fork' context at the first call and keeps the
worker for later calls while it stays healthy; the call's arguments, gr.Request included, are pickled to
it; a generator's yields are pickled back one by one and streamed; the worker sees only the event id and
progress of Gradio's context, not the app's queue). The Stop button's handler runs in the app's own
process, so a threading.Event it sets, or the service's job table, is never seen by the worker.

A flag on disk is seen by both, whenever the worker was forked: every job registers a file named by
its owner (the browser tab's session hash, hashed) and its own id, holding its process id; Stop marks
the owner's registered jobs; the job looks for its mark at every step (engine.service asks `alive()`).
Names are hashes, so a client-chosen session string never becomes a path.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class StopJob:
    """One registered job: `stopped()` is True once its owner pressed Stop (from any process)."""

    def __init__(self, board: "StopBoard", owner: str | None, job_id: str | None):
        self.board = board
        self.name = f"{_digest(owner or '-')}.{_digest(job_id or uuid.uuid4().hex)}"
        self.run_file = board.folder / f"{self.name}.run"
        self.stop_file = board.folder / f"{self.name}.stop"

    def __enter__(self) -> "StopJob":
        self.run_file.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.run_file.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)

    def stopped(self) -> bool:
        return self.stop_file.exists()

    def stop(self) -> None:
        self.stop_file.touch()


class StopBoard:
    """A private folder of job and stop marks; made by the app before any worker is forked."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="quantwan-stops-"))
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pid = os.getpid()  # the process that serves the page (and Gradio's queue)
        if folder is None:
            atexit.register(self._remove)

    def job(self, owner: str | None, job_id: str | None = None) -> StopJob:
        """Register a job of `owner` (use it as a context manager around the run)."""
        return StopJob(self, owner, job_id)

    def stop(self, owner: str | None) -> bool:
        """Mark every live job of `owner` to stop at its next step; False when it has none."""
        marked = False
        for run in self.folder.glob(f"{_digest(owner or '-')}.*.run"):
            if not _alive(run):  # a worker killed mid-job (e.g. past its ZeroGPU time) left its mark
                run.unlink(missing_ok=True)
                continue
            run.with_suffix(".stop").touch()
            marked = True
        return marked

    def stop_job(self, owner: str | None, job_id: str | None) -> None:
        """Mark one job (a client that went away); harmless when it has already ended."""
        if job_id is not None:
            self.job(owner, job_id).stop()

    def in_app_process(self) -> bool:
        """True where Gradio's queue lives (a forked worker only has a stale copy of it)."""
        return os.getpid() == self.pid

    def _remove(self) -> None:
        if os.getpid() == self.pid:
            shutil.rmtree(self.folder, ignore_errors=True)


def _alive(run_file: Path) -> bool:
    try:
        pid = int(run_file.read_text() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
