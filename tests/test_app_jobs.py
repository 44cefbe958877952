"""Jobs belong to the browser tab (Gradio session) that started them: two gradio_client clients against the
real page, launched in this process on the tiny model. A job whose prompt is HOLD waits at its first step
until the test releases it, so that the others act while it runs (no timing in the assertions)."""
import socket
import threading

import pytest

from engine.service import TINY, VideoService

HOLD = "hold me at step 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from ui.bounds import launch_kwargs
    from ui.layout import build_ui

    service = VideoService(None, demo=True)  # default outputs: moved into Gradio's cache by build_ui
    held, release, waited = threading.Event(), threading.Event(), threading.Event()
    real_run = service.run
    outcomes = []

    def run(model, req, *, on_step=None, on_wait=None, **kw):
        def step(info):
            if on_step:
                on_step(info)
            if req.prompt == HOLD and info.step == 1:
                held.set()
                assert release.wait(120)

        def wait():
            waited.set()
            if on_wait:
                on_wait()
        try:
            result = real_run(model, req, on_step=step, on_wait=wait, **kw)
        except Exception as e:
            outcomes.append((req.prompt, f"{type(e).__name__}: {e}"))
            raise
        outcomes.append((req.prompt, "done"))
        return result

    service.run = run
    demo = build_ui(service).queue(default_concurrency_limit=1, max_size=16)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                **launch_kwargs(service.out_dir))
    gates = dict(held=held, release=release, waited=waited)
    service.outcomes, service.demo_blocks = outcomes, demo  # for the assertions
    try:
        yield f"http://127.0.0.1:{port}/", service, gates
    finally:
        release.set()
        demo.close()


def client(url):
    import tempfile

    from gradio_client import Client

    # the client's downloads go elsewhere than the server's cache (by default both are /tmp/gradio)
    return Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="client-"))


def submit(c, prompt):
    return c.submit(model=TINY, preset="auto", dit="preset", t5="preset", clip="preset", task_label="Text to video",
                    image=None, prompt=prompt, negative="", width=32, height=32, frames=5, steps=3, guidance=1.0,
                    shift="5", seed=1, random_seed=False, api_name="/generate")


def reset(gates):
    for gate in gates.values():
        gate.clear()


def test_another_tabs_stop_leaves_the_job_running_to_the_end(app):
    url, service, gates = app
    reset(gates)
    a, b = client(url), client(url)
    job = submit(a, HOLD)
    assert gates["held"].wait(120)
    assert b.predict(api_name="/stop") == "Nothing of yours is running."
    gates["release"].set()
    _video, table, stats, status, seed, _preview = job.result(timeout=120)
    assert status.startswith("**Done:** 5 frames") and len(stats["per_step_s"]) == 3 and seed == 1
    assert "| Time per step |" in table
    # one copy: the video is written into Gradio's cache, which serves it from there
    from pathlib import Path

    name = Path(_video).name
    assert len(list(service.out_dir.glob(name))) == 1
    cache = Path(service.out_dir).parent
    assert cache.name != "tmp" and [p for p in cache.rglob(name)] == [service.out_dir / name]


def test_the_owner_stops_its_own_job(app):
    url, service, gates = app
    reset(gates)
    a = client(url)
    job = submit(a, HOLD)
    assert gates["held"].wait(120)
    assert a.predict(api_name="/stop").startswith("**Stopping**")
    gates["release"].set()
    video, _table, _stats, status, _seed, _preview = job.result(timeout=120)
    assert video is None and status == "**Stopped:** stopped after step 1 of 3"


def test_a_cancelled_job_lets_the_queued_jobs_run(app):
    url, service, gates = app
    reset(gates)
    before = set(service.out_dir.glob("video-*.mp4"))
    service.outcomes.clear()
    a, c = client(url), client(url)
    held_job = submit(a, HOLD)
    assert gates["held"].wait(120)
    queued = submit(c, "a queued boat")
    held_job.cancel()  # Gradio's /cancel: the tab gives up; its worker thread still sits at step 1
    assert gates["waited"].wait(120)  # the queued job started and waits for the GPU, not refused
    gates["release"].set()  # the abandoned job reaches its next step check and ends itself
    _video, _table, stats, status, _seed, _preview = queued.result(timeout=180)
    assert status.startswith("**Done:**") and len(stats["per_step_s"]) == 3
    assert len(set(service.out_dir.glob("video-*.mp4")) - before) == 1  # only the queued job's video
    assert service.outcomes == [(HOLD, "Cancelled: stopped after step 1 of 3"), ("a queued boat", "done")]


def test_a_closed_tab_stops_its_job_at_the_next_step(app):
    """The tab's event stream closes (a browser tab closed): Gradio marks its events not alive; the job,
    held at step 1, ends there instead of running on, and the next job runs."""
    import http.client
    import json
    import time
    import urllib.request

    url, service, gates = app
    reset(gates)
    service.outcomes.clear()
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    data = [TINY, "auto", "preset", "preset", "preset", "Text to video", None, HOLD, "", 32, 32, 5, 3, 1.0, "5", 1,
            False, "preset", "preset", False]  # ..., random seed, self-attention, decoder, live preview
    join = urllib.request.Request(url + "gradio_api/queue/join", json.dumps(
        {"data": data, "fn_index": fn_index, "session_hash": "closing-tab", "trigger_id": None}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(join, timeout=30).read()
    host, port = url.split("//")[1].strip("/").split(":")
    stream = http.client.HTTPConnection(host, int(port), timeout=60)
    stream.request("GET", "/gradio_api/queue/data?session_hash=closing-tab")
    answer = stream.getresponse()
    assert gates["held"].wait(120)
    answer.close()
    stream.close()  # the tab is gone
    queue = service.demo_blocks._queue
    deadline = time.monotonic() + 60
    while all(e.alive for job in queue.active_jobs if job for e in job):  # Gradio notices within its 10 s poll
        assert time.monotonic() < deadline, "Gradio did not notice the closed stream"
        time.sleep(0.2)
    gates["release"].set()
    _video, _table, _stats, status, _seed, _preview = submit(client(url), "the next boat").result(timeout=180)
    assert status.startswith("**Done:**")
    assert service.outcomes == [(HOLD, "Cancelled: stopped after step 1 of 3"), ("the next boat", "done")]


def test_request_bodies_are_bounded(app):
    import http.client
    import json
    import urllib.request

    url, _service, _gates = app
    host, port = url.split("//")[1].strip("/").split(":")
    # A declared 2 MiB body is answered 413 before the server reads it.
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/gradio_api/call/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    conn.send(b'{"data": ["' + b"x" * 1000)
    answer = conn.getresponse()
    assert answer.status == 413 and b"larger than 1 MiB" in answer.read()
    conn.close()
    small = urllib.request.Request(url + "gradio_api/call/generate", json.dumps({"data": []}).encode(),
                                   headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(small, timeout=30).status == 200  # a small body still reaches Gradio
    # Without a Content-Length (chunked), the body is cut once it passes the bound.
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/gradio_api/call/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"x" * 65536
    try:
        for _ in range(64):  # 4 MiB offered
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        status = conn.getresponse().status
        print("chunked oversize body:", status)
    except OSError:  # the server closed the connection: also refused
        status = None
    finally:
        conn.close()
    assert status != 200


def test_live_previews_arrive_before_the_video(app):
    """The handler streams: with "Live preview" on, a decoded picture of the latents comes after each of
    the 3 steps, before the output that carries the video."""
    from PIL import Image

    url, _service, gates = app
    reset(gates)
    c = client(url)
    job = c.submit(model=TINY, preset="auto", dit="preset", t5="preset", clip="preset", task_label="Text to video",
                   image=None, prompt="a previewed boat", negative="", width=48, height=32, frames=5, steps=3,
                   guidance=1.0, shift="5", seed=1, random_seed=False, attention="preset", decoder="preset",
                   preview=True, api_name="/generate")
    video, _table, _stats, status, _seed, _preview = job.result(timeout=180)
    outputs = job.outputs()
    assert status.startswith("**Done:**") and video and outputs[-1][0] == video
    early = [o for o in outputs[:-1] if isinstance(o[5], str)]
    assert len(early) == 3 and all(not isinstance(o[0], str) for o in early)  # a picture per step, no video yet
    sizes = {Image.open(o[5]).size for o in early}
    assert len(sizes) == 1 and all(w * 32 == h * 48 and w >= 48 for w, h in sizes)  # the video's shape
