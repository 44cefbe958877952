"""Our Triton kernels' numerics on the CPU, through Triton's interpreter (TRITON_INTERPRET=1).

The variable must be set before triton is first imported, so the checks run in a subprocess.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_kernels_match_formats_in_interpreter(rng):
    pytest.importorskip("triton")
    seed = int(__import__("torch").randint(0, 2**31 - 1, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kernels_interpret_check.py"), str(seed)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 8
