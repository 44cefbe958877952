"""engine/fused.py's Wan block forward against diffusers' own WanTransformerBlock, on the CPU: the fused
kernels run in Triton's interpreter (TRITON_INTERPRET=1 must be set before triton is imported, hence the
subprocess), so a change of diffusers' block (norms, modulation, rotary, the i2v text/image split)
fails CI instead of only the GPU tests."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_fused_block_matches_diffusers_block(rng):
    pytest.importorskip("triton")
    seed = int(__import__("torch").randint(0, 2**31 - 1, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fused_interpret_check.py"), str(seed)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"seed {seed}\n" + proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 3, proc.stdout
