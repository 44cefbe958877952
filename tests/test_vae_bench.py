"""bench/bench_vae.py --tiny runs end to end on CPU and prints every row and the final table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_vae_tiny_smoke_run(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_vae.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r], rows
    assert {r["decoder"] for r in rows} == {"full", "light", "tiny"}
    full = [r for r in rows if r["decoder"] == "full"]
    assert full[0]["variant"] == "fp32 (today)" and full[0]["psnr_db"] == float("inf")
    assert all(r["psnr_db"] > 20 for r in full)  # each speed setting decodes the same latents sensibly
    assert all(r["frames"] == 5 for r in rows if r["decoder"] == "tiny")  # 2 latent frames -> 4*2-3
    assert "=== VAE decode" in proc.stdout


@pytest.mark.slow
def test_bench_vae_tiles_tiny_smoke_run(tmp_path):
    """bench/bench_vae_tiles.py --tiny: every exact grid gives the untiled frames, diffusers' tiles do not."""
    out = tmp_path / "tiles.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_vae_tiles.py"), "--tiny", "--reps", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r], rows
    exact = [r for r in rows if r["variant"].startswith("exact")]
    blended = [r for r in rows if r["variant"].startswith("diffusers")]
    assert len(exact) == 3 and len(blended) == 1
    assert all(r["psnr_db"] > 100 for r in exact) and blended[0]["psnr_db"] < 60
    assert all(r["work"] > 1 for r in exact)
