"""bench/bench_e2e.py runs end to end on the CPU with tiny dims (--tiny): every row through generate()."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_e2e.py"


@pytest.mark.slow
def test_tiny_run_writes_every_row(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    ref = tmp_path / "bf16.npy"
    report = bench.main(["--tiny", "--rows", "bf16,int8,fp8-tiled,vram12-int8", "--out", str(out),
                         "--tmp", str(tmp_path / "videos"), "--reference", str(ref)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and [r["row"] for r in saved["rows"]] == ["bf16", "int8", "fp8-tiled",
                                                                                     "vram12-int8"]
    for row in saved["rows"]:
        assert row["status"] == "ok", row
        assert row["total_s"] >= row["decode_s"] > 0 and row["step_s"] > 0 and row["predicted_GiB"] > 0
    assert saved["rows"][0]["psnr_dB"] is None  # the reference itself
    assert all(isinstance(r["psnr_dB"], float) for r in saved["rows"][1:])
    assert [r["tiled"] for r in saved["rows"]] == [False, False, True, True]
    assert not list((tmp_path / "videos").glob("*.mp4"))  # the export is replaced: frames stay in memory
    again = bench.main(["--tiny", "--rows", "int8", "--tmp", str(tmp_path / "videos"), "--reference", str(ref)])
    assert again["rows"][0]["psnr_dB"] == saved["rows"][1]["psnr_dB"]  # same weights and seed in a new run
