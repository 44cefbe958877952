"""Stop across ZeroGPU's fork: the job runs in a process forked with multiprocessing's 'fork' start method
(as `spaces` 0.51 does for every `spaces.GPU` call), the Stop button's handler runs in the parent.

Two tabs' jobs run in two forked workers on the tiny model; each holds at its first step until the
test releases it (no timing in the assertions). Stop pressed for tab A in the parent, through the
handler the page calls, ends A at that step and leaves B to finish."""
import multiprocessing

import gradio as gr
import pytest

from engine.service import TINY, VideoService
from ui.handlers import Handlers

FORK = multiprocessing.get_context("fork")


def inputs(prompt):
    return [TINY, "auto", "preset", "preset", "preset", "Text to video", None, prompt, "", 32, 32, 5, 3, 1.0, "5", 1,
            False, "preset", "preset", False]


@pytest.fixture
def forked_jobs(tmp_path):
    """Handlers made before the fork (as app.py makes them at start-up), a service whose run holds each
    job at step 1 until released, and a helper that starts a job for a tab in a forked worker."""
    service = VideoService(None, demo=True, out_dir=tmp_path / "out")
    handlers = Handlers(service)
    held = {tab: FORK.Event() for tab in ("A", "B")}
    release = FORK.Event()
    real_run = service.run

    def run(model, req, *, on_step=None, **kw):
        def step(info):
            if on_step:
                on_step(info)
            if info.step == 1:
                held[req.prompt].set()
                assert release.wait(120)
        return real_run(model, req, on_step=step, **kw)
    service.run = run
    results = FORK.Queue()

    def worker(tab):  # what ZeroGPU's worker does with the call: run the handler's job, send back the outputs
        outputs = list(handlers._gpu_job(*inputs(tab), tab, f"event-{tab}", gr.Progress()))
        final = outputs[-1]
        results.put((tab, final[3], final[0] is not None))

    def start(tab):
        proc = FORK.Process(target=worker, args=(tab,), daemon=True)
        proc.start()
        return proc
    yield handlers, held, release, results, start
    release.set()


def test_stop_in_the_parent_ends_the_forked_job_of_that_tab_only(forked_jobs):
    handlers, held, release, results, start = forked_jobs
    workers = [start("A"), start("B")]
    assert held["A"].wait(120) and held["B"].wait(120)
    assert not handlers.service.busy()  # the jobs live in the workers: this process's service has none
    assert handlers.stop(gr.Request(session_hash="C")) == "Nothing of yours is running."
    assert handlers.stop(gr.Request(session_hash="A")).startswith("**Stopping**")
    release.set()
    outcome = dict((tab, (status, has_video)) for tab, status, has_video in (results.get(timeout=120)
                                                                          for _ in workers))
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    assert outcome["A"] == ("**Stopped:** stopped after step 1 of 3", False)
    assert outcome["B"][0].startswith("**Done:** 5 frames") and outcome["B"][1]
    assert list(handlers.stops.folder.iterdir()) == []  # every job removed its marks
    assert handlers.stop(gr.Request(session_hash="A")) == "Nothing of yours is running."


def test_a_job_whose_worker_died_is_not_reported_as_running(tmp_path):
    from ui.stops import StopBoard

    board = StopBoard(tmp_path / "stops")
    proc = FORK.Process(target=lambda: board.job("A", "e1").__enter__())  # registers, then exits uncleanly
    proc.start()
    proc.join(60)
    assert len(list(board.folder.glob("*.run"))) == 1
    assert board.stop("A") is False
    assert list(board.folder.iterdir()) == []
