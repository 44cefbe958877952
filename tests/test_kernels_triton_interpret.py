"""Our Triton kernels' numerics on the CPU, through Triton's interpreter (TRITON_INTERPRET=1).

The variable must be set before triton is first imported, so the checks run in a subprocess.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("branch", ["cpu-branch", "gpu-branch"])
def test_triton_kernels_match_formats_in_interpreter(rng, branch):
    """cpu-branch: the kernels as the interpreter runs them (hand-written rounding). gpu-branch: the
    code a GPU runs (HW_FP8_CAST), its hardware primitives given their specified rounding; see
    kernels_interpret_check.gpu_branch for what that does and does not prove."""
    pytest.importorskip("triton")
    seed = int(__import__("torch").randint(0, 2**31 - 1, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kernels_interpret_check.py"), str(seed), branch],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 8
    assert ("gpu branch primitives" in proc.stdout) == (branch == "gpu-branch")
