"""`python app.py` on a port that is already taken: one sentence and exit, no traceback."""
from __future__ import annotations

import socket
import subprocess
import sys

from tests.conftest import ROOT


def test_a_taken_port_is_one_sentence():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--demo", "--port", str(port)], cwd=ROOT, capture_output=True,
                              text=True, timeout=180)
    assert done.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "Traceback" not in done.stderr
