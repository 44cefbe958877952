"""bench/bench_attention.py --tiny --check runs end to end on the CPU (Triton interpreter): its checks
against the reference, the rows and the paths that cannot run here say why."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_attention_tiny_check_run(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_attention.py"), "--tiny", "--check",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    result = json.loads((tmp_path / "bench_attention.json").read_text())
    assert 0 < result["check_worst"] < 1e-2  # the Triton kernel against its reference, small awkward shapes
    assert result["check_cudnn_fp8_worst"] is None  # no CUDA here: not run, and not a pass
    paths = {r["path"] for r in result["rows"]}
    assert {"sage8 triton", "cudnn fp8"} <= paths
    assert any("not run" in json.dumps(r) for r in result["rows"] if r["path"] == "cudnn fp8")
