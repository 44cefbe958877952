"""A small Hugging Face Hub stand-in on 127.0.0.1: the real huggingface_hub client talks to it via
HF_ENDPOINT / `endpoint=`. It serves the endpoints downloads use (repo info, tree listing, resolve
with HEAD/GET/Range), answers gated and missing repos the way the Hub does, and can cut a
connection part-way through a file to test resume, hold a file part-way until the test says go
(`gate`), or stall: before the headers, in the listing, or dripping a body. Every stall ends when
the hub is closed (or after WAIT_S), so no test thread outlives it for long. Every request is logged.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"
WAIT_S = 10.0  # the longest any stall or gate holds a request
DRIP_S = 0.2  # a dripping body sends one byte this often


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.gated: set[str] = set()
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_after: dict[str, int] = {}  # file path -> bytes to send before dropping the connection
        self.fail_after_cut = False  # answer 503 to the request that follows a cut
        self._failing = False
        self.hold_headers: set[str] = set()  # file paths whose GET never gets its headers
        self.stall_listing = False  # the repo listing sends its headers and half its body, then stalls
        self.drip: dict[str, int] = {}  # file path -> bytes sent at once, then a byte every DRIP_S
        self.gate: dict[str, tuple[int, threading.Event]] = {}  # file path -> (bytes, wait for event)
        self.stalled = threading.Event()  # set when a stall (of any kind) has begun
        self.xet = False  # answer file HEADs the way the Hub does for Xet-stored files
        self.closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_repo(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = dict(files)

    def add_folder(self, repo: str, folder: Path) -> None:
        folder = Path(folder)
        self.add_repo(repo, {p.relative_to(folder).as_posix(): p.read_bytes()
                             for p in sorted(folder.rglob("*")) if p.is_file()})

    def gets(self, suffix: str) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[0] == "GET" and entry[1].endswith(suffix)]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head):
                path = self.path.split("?")[0]
                hub.log.append((self.command, path, self.headers.get("Range")))
                if hub._failing:
                    hub._failing = False
                    return self._error(503, None, "busy")
                m = re.fullmatch(r"/api/models/(.+?)/revision/([^/]+)", path)
                if m:  # with ?blobs=true the Hub adds each file's size
                    return self._repo_call(m[1], lambda files: {
                        "id": m[1], "sha": SHA, "siblings": [
                            {"rfilename": f, **({"size": len(d)} if "blobs=" in self.path else {})}
                            for f, d in files.items()]})
                m = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(/.*)?", path)
                if m:
                    return self._repo_call(m[1], lambda files: [
                        {"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": f}
                        for f, d in files.items()])
                m = re.fullmatch(r"/api/models/(.+?)/xet-read-token/([^/]+)", path)
                if m:  # the short-lived token for the Xet storage (never contacted: see FakeXetSession)
                    return self._xet_token()
                m = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._file(m[1], m[3], head)
                self._error(404, None, "no such endpoint")

            def _access(self, repo):
                if repo in hub.gated and not self.headers.get("Authorization"):
                    self._error(401, "GatedRepo", "gated")
                    return None
                if repo not in hub.repos:
                    # The Hub answers 401 RepoNotFound for unknown repos when not logged in.
                    self._error(401, "RepoNotFound", "Repository not found")
                    return None
                return hub.repos[repo]

            def _repo_call(self, repo, make):
                files = self._access(repo)
                if files is not None:
                    self._json(make(files))

            def _file(self, repo, name, head):
                files = self._access(repo)
                if files is None:
                    return
                if not head and name in hub.hold_headers:
                    return self._hold()
                if name not in files:
                    return self._error(404, "EntryNotFound", "Entry not found")
                data = files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(re.match(r"bytes=(\d+)-", rng)[1])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", SHA)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(body) if not head else len(data)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if hub.xet:
                    self.send_header("X-Xet-Hash", hashlib.sha256(data).hexdigest())
                    self.send_header("X-Xet-Refresh-Route", f"{hub.url}/api/models/{repo}/xet-read-token/{SHA}")
                self.end_headers()
                if head:
                    return
                if name in hub.drip:
                    return self._drip(body, hub.drip[name])
                if name in hub.gate:
                    at, go = hub.gate[name]
                    self.wfile.write(body[:at])
                    self.wfile.flush()
                    go.wait(WAIT_S)
                    body = body[at:]
                cut = hub.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    hub._failing = hub.fail_after_cut
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def _json(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.stall_listing:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    return self._hold()
                self.wfile.write(body)

            def _xet_token(self):
                self.send_response(200)
                self.send_header("X-Xet-Cas-Url", "http://127.0.0.1:9/cas")
                self.send_header("X-Xet-Access-Token", "xet-token")
                self.send_header("X-Xet-Token-Expiration", str(int(time.time()) + 3600))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _hold(self):
                hub.stalled.set()
                hub.closed.wait(WAIT_S)
                self.close_connection = True

            def _drip(self, body, first):
                self.wfile.write(body[:first])
                self.wfile.flush()
                hub.stalled.set()
                deadline = time.monotonic() + WAIT_S
                try:
                    for i in range(first, len(body)):
                        if hub.closed.wait(DRIP_S) or time.monotonic() > deadline:
                            break
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up: that is the point
                self.close_connection = True

            def _error(self, status, code, message):
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                    self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler


class FakeXetSession:
    """Stands in for hf_xet's XetSession, whose storage server cannot run here: huggingface_hub's own
    `xet_get` drives it. `start_download_file` writes the file the fake hub holds under that Xet hash
    in `steps` parts and, after each, calls the progress callback the way hf_xet does: cumulative
    group reports (the attributes of hf_xet.GroupProgressReport). `gate` = (data, part, event): for
    that file, after that part it waits for the event (bounded), so a test sees progress inside it."""

    REPORT_FIELDS = ("shard", "total_bytes", "total_bytes_completed", "total_bytes_completion_rate",
                     "total_transfer_bytes", "total_transfer_bytes_completed", "total_transfer_bytes_completion_rate")

    def __init__(self, hub: FakeHub, steps: int = 4, gate: tuple[bytes, int, threading.Event] | None = None):
        self.hub, self.steps, self.gate = hub, steps, gate
        self.downloads: list[str] = []

    def blob(self, file_hash: str) -> bytes:
        for files in self.hub.repos.values():
            for data in files.values():
                if hashlib.sha256(data).hexdigest() == file_hash:
                    return data
        raise FileNotFoundError(file_hash)

    def new_file_download_group(self, *, progress_callback, **_connection):
        return _FakeXetGroup(self, progress_callback)


class _FakeXetGroup:
    def __init__(self, session: FakeXetSession, callback):
        self.session, self.callback = session, callback

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start_download_file(self, info, path: str) -> None:
        from types import SimpleNamespace

        data = self.session.blob(info.hash)
        self.session.downloads.append(info.hash)
        cuts = [len(data) * k // self.session.steps for k in range(self.session.steps + 1)]
        with open(path, "wb") as f:
            for k in range(1, len(cuts)):
                f.write(data[cuts[k - 1]:cuts[k]])
                f.flush()
                # Transfer (network) bytes run ahead of the bytes written, as with real dedup/compression.
                report = dict(shard=None, total_bytes=len(data), total_bytes_completed=cuts[k],
                              total_bytes_completion_rate=None, total_transfer_bytes=len(data),
                              total_transfer_bytes_completed=min(len(data), cuts[k] + len(data) // 8),
                              total_transfer_bytes_completion_rate=None)
                assert set(report) == set(FakeXetSession.REPORT_FIELDS)
                self.callback(SimpleNamespace(**report), {})
                gate = self.session.gate
                if gate and gate[0] == data and gate[1] == k:
                    gate[2].wait(WAIT_S)
