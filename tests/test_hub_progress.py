"""Byte progress through huggingface_hub's own progress machinery, on both of its download branches:
plain HTTP (`http_get`) against the fake Hub, and Xet (`xet_get` with its XetDownloadProgressReporter)
with only hf_xet's storage session replaced. An interface change in the library fails here."""
import hashlib
import threading
from types import SimpleNamespace

import pytest

from engine import hub
from engine.hub_watch import Deadlines, FileBytes
from tests.fakehub import FakeXetSession
from tests.test_hub import DISTILL, FP8_DIT, fake, fp8_plan, online  # noqa: F401 - fixtures

QUICK = Deadlines(request_s=5, stall_s=30, stall_bytes=1, tick_s=0.02)


def fetched_files(fake_hub):
    """(path in repo, size) of every file the run fetched, in the order it asked for them."""
    names = []
    for method, path, _ in fake_hub.log:
        if method == "HEAD" and "/resolve/main/" in path:
            repo, name = path.lstrip("/").split("/resolve/main/")
            if name not in [n for n, _ in names]:
                names.append((name, len(fake_hub.repos[repo][name])))
    return names


def check_progress(seen, files, big):
    """Never back, exact at every file boundary, inside the big file at least once, exact at the end."""
    sizes = dict(files)
    total = sum(sizes.values())
    assert all(p.total_bytes == total for p in seen if p.stage != "listing")
    done = [p.done_bytes for p in seen]
    assert done == sorted(done), "progress went back"
    order = []
    for p in seen:
        if p.stage == "download" and (not order or order[-1] != p.filename):
            order.append(p.filename)
    assert order == [name for name, _ in files]  # each file once, in order
    for k, name in enumerate(order):
        before = sum(sizes[n] for n in order[:k])
        mine = [p for p in seen if p.stage == "download" and p.filename == name]
        assert mine[0].done_bytes == before and mine[0].files_done == k  # the boundary: finished files, exactly
        assert all(before <= p.done_bytes <= before + sizes[name] for p in mine)
    start = sum(sizes[n] for n in order[:order.index(big)])
    assert any(start < p.done_bytes < start + sizes[big] for p in seen if p.filename == big)
    assert (seen[-1].stage, seen[-1].done_bytes, seen[-1].total_bytes) == ("done", total, total)
    assert seen[-1].files_done == seen[-1].files_total == len(files)


def gate_on(big_start, big_size, go):
    seen = []

    def progress(p):
        seen.append(p)
        if p.filename == FP8_DIT and big_start() < p.done_bytes < big_start() + big_size:
            go.set()  # the server holds the rest of the file until progress inside it was reported
    return seen, progress


def test_http_branch_progress_moves_inside_files_and_is_exact_at_boundaries(fake, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 2**14)  # the client hands over bytes in chunks
    go = threading.Event()
    size = len(fake.repos[DISTILL][FP8_DIT])
    fake.gate[FP8_DIT] = (size // 3, go)
    seen, progress = gate_on(lambda: _start_of(seen, FP8_DIT), size, go)
    paths = hub.fetch(fp8_plan(), progress, endpoint=fake.url, cache_dir=tmp_path, deadlines=QUICK)
    assert paths["dit"].read_bytes() == fake.repos[DISTILL][FP8_DIT]
    assert any(path.endswith(FP8_DIT) for _, path, _ in fake.gets(FP8_DIT))  # plain HTTP GETs
    check_progress(seen, fetched_files(fake), FP8_DIT)
    assert capsys.readouterr().err == ""  # the bars are silent


def _start_of(seen, name):
    return next(p.done_bytes for p in seen if p.filename == name)


def test_xet_branch_through_fetch_uses_the_librarys_reporter(fake, tmp_path, monkeypatch, capsys):
    from huggingface_hub.utils import _xet

    fake.xet = True
    go = threading.Event()
    session = FakeXetSession(fake, steps=4, gate=(fake.repos[DISTILL][FP8_DIT], 2, go))
    monkeypatch.setattr(_xet, "get_xet_session", lambda: session)
    size = len(fake.repos[DISTILL][FP8_DIT])
    seen, progress = gate_on(lambda: _start_of(seen, FP8_DIT), size, go)
    paths = hub.fetch(fp8_plan(), progress, endpoint=fake.url, cache_dir=tmp_path, deadlines=QUICK)
    assert paths["dit"].read_bytes() == fake.repos[DISTILL][FP8_DIT]
    assert not [entry for entry in fake.log if entry[0] == "GET" and "/resolve/" in entry[1]]  # all via Xet
    files = fetched_files(fake)
    # One Xet download per distinct content: the cache keeps blobs by hash, so equal files share one.
    assert sorted(session.downloads) == sorted({hashlib.sha256(fake.repos[r][n]).hexdigest()
                                                for r in fake.repos for n, _ in files if n in fake.repos[r]})
    check_progress(seen, files, FP8_DIT)
    assert capsys.readouterr().err == ""


def test_report_shape_matches_hf_xet():
    """The fake session's reports carry exactly the attributes of hf_xet's own report class."""
    hf_xet = pytest.importorskip("hf_xet")
    public = {a for a in dir(hf_xet.GroupProgressReport) if not a.startswith("_")}
    assert public == set(FakeXetSession.REPORT_FIELDS)


def test_xet_reporter_drives_our_bar_class():
    """huggingface_hub's XetDownloadProgressReporter, built the way xet_get builds it, fed the way
    hf_xet feeds it: our byte count follows `total_bytes_completed` and never goes back."""
    import logging

    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

    size = 10_000
    sink = FileBytes(size)
    reports = [(0, 300), (2_500, 4_000), (2_500, 6_000), (7_000, 9_000), (size, size)]
    with XetDownloadProgressReporter(reconstruction_desc="f: reconstructing file", transfer_desc="f: downloading",
                                     total=size, log_level=logging.INFO, name="huggingface_hub.xet_get",
                                     tqdm_class=sink.bar_class()) as reporter:
        assert reporter.transfer_bar is reporter.reconstruction_bar  # one bar: ours
        written = []
        for done, transferred in reports:
            reporter.update_progress(SimpleNamespace(
                shard=None, total_bytes=size, total_bytes_completed=done, total_bytes_completion_rate=1e6,
                total_transfer_bytes=size, total_transfer_bytes_completed=transferred,
                total_transfer_bytes_completion_rate=2e6), {})
            written.append(sink.written)
            assert sink.arrived >= sink.written
        assert reporter.reconstruction_bar.n == size
    assert written == [done for done, _ in reports]
