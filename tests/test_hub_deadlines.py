"""Nothing hangs: a Hub that accepts and never answers, stalls in the listing, holds a file's
headers or drips its body ends in a HubError after the stall deadline, and the user's Stop (the
progress callback raising) is honoured while nothing arrives. All servers are on 127.0.0.1."""
import socket
import threading

import pytest

from engine import hub
from engine.errors import HubError
from engine.generate import Cancelled
from engine.hub_watch import Deadlines
from tests.test_hub import FP8_DIT, fake, fp8_plan, online  # noqa: F401 - fixtures

FAST = Deadlines(request_s=2, stall_s=1, stall_bytes=4096, tick_s=0.05)
PATIENT = Deadlines(request_s=2, stall_s=30, stall_bytes=1, tick_s=0.05)  # only Stop can end it early


@pytest.fixture(autouse=True, scope="module")
def abandoned_workers_end():
    """The threads given up on end by the library's own timeouts and retries (seconds); wait for
    them once, at the end, so none logs into a closed capture after the tests."""
    yield
    for thread in [t for t in threading.enumerate() if t.name.startswith("hub: ")]:
        thread.join(30)


@pytest.fixture(autouse=True)
def short_reads(monkeypatch):
    from huggingface_hub import constants

    # The library's own read timeout ends the abandoned worker threads soon after each test.
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 2**12)


@pytest.fixture
def silent():
    """Accepts connections and never sends a byte."""
    closed = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held = []

    def accept():
        for _ in range(600):  # at most 60 s
            if closed.is_set():
                break
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    closed.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_server_that_never_answers(silent, tmp_path):
    with pytest.raises(HubError, match="no answer while listing the files of .* for 1 s.*HF_HUB_OFFLINE"):
        hub.fetch(fp8_plan(), endpoint=silent, cache_dir=tmp_path, deadlines=FAST)


def test_listing_that_stalls(fake, tmp_path):
    fake.stall_listing = True
    with pytest.raises(HubError, match="no answer while listing the files of"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path, deadlines=FAST)


def test_file_whose_headers_never_come(fake, tmp_path):
    fake.hold_headers.add(FP8_DIT)
    with pytest.raises(HubError, match=f"no answer while downloading .*{FP8_DIT}"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path, deadlines=FAST)
    assert fake.stalled.is_set()


def test_body_that_drips(fake, tmp_path):
    fake.drip[FP8_DIT] = 50_000
    with pytest.raises(HubError, match=f"downloading .*{FP8_DIT} stalled: only [0-9]+ bytes arrived in the last 1 s"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path, deadlines=FAST)
    assert fake.stalled.is_set()
    assert not list(tmp_path.rglob(FP8_DIT))  # no final file from a half download


@pytest.mark.parametrize("stall", ["listing", "headers", "drip"])
def test_stop_is_honoured_during_a_stall(fake, tmp_path, stall):
    if stall == "listing":
        fake.stall_listing = True
    elif stall == "headers":
        fake.hold_headers.add(FP8_DIT)
    else:
        fake.drip[FP8_DIT] = 50_000
    calls = []

    def progress(p):
        calls.append(p)
        if fake.stalled.is_set():
            raise Cancelled("download stopped")  # what the service's callback raises on Stop
    with pytest.raises(Cancelled, match="download stopped"):
        hub.fetch(fp8_plan(), progress, endpoint=fake.url, cache_dir=tmp_path, deadlines=PATIENT)
    assert calls and all(b.done_bytes >= a.done_bytes for a, b in zip(calls, calls[1:]))


def test_a_retry_waits_for_the_abandoned_download_of_the_same_file(fake, tmp_path):
    from engine import hub_watch

    fake.hold_headers.add(FP8_DIT)
    with pytest.raises(HubError, match="no answer while downloading"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path, deadlines=FAST)
    assert any(key.endswith(FP8_DIT) for key in hub_watch._abandoned)  # still blocked in the library
    fake.hold_headers.clear()  # the server is healthy again; the old worker ends at its read timeout
    paths = hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path, deadlines=PATIENT)
    assert paths["dit"].read_bytes() == fake.repos[fp8_plan().parts[1].repo][FP8_DIT]
