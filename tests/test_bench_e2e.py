"""bench/bench_e2e.py runs end to end on the CPU with tiny dims (--tiny): every row through generate();
its row grammar combines the memory tier, the attention and the decoder as independent options."""
import importlib.util
import json
from pathlib import Path

import pytest

from engine.errors import ConfigError

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_e2e.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, base, options, cap, decoder", [
    ("bf16", "bf16", (), None, "full"),
    ("fp8+sage8", "fp8", ("sage8",), None, "full"),
    ("fp8-sage8", "fp8", ("sage8",), None, "full"),  # the older spelling
    ("fp8+sage8+tiny", "fp8", ("sage8", "tiny"), None, "tiny"),
    ("fp8+sage8+light", "fp8", ("sage8", "light"), None, "light"),
    ("fp8+fp32vae", "fp8", ("fp32vae",), None, "full"),
    ("vram12-fp8+tiny@8", "vram12-fp8", ("tiny",), 8.0, "tiny"),
    ("vram12-fp8@8", "vram12-fp8", (), 8.0, "full"),
    ("fp8-tiled", "fp8-tiled", (), None, "full"),
])
def test_row_grammar(bench, text, base, options, cap, decoder):
    row = bench.parse_row(text)
    assert (row.base, row.options, row.cap, row.decoder) == (base, options, cap, decoder)


@pytest.mark.parametrize("text, linears", [
    ("fp8+hybrid", "fp8"), ("fp8-sage8+tiny@8", "fp8+tiny@8"), ("int8+sage8+hybrid+light", "int8+light"),
    ("int8+light+fp32vae+sage8", "int8+fp32vae+light"), ("vram12-fp8@8", "vram12-fp8@8"),
    ("fp8+cudnnfp8", "fp8")])
def test_attention_rows_compare_with_the_row_without_it(bench, text, linears):
    assert bench.linears_key(bench.parse_row(text)) == bench.linears_key(bench.parse_row(linears))
    assert bench.linears_key(bench.parse_row("fp8+sage8@8")) != bench.linears_key(bench.parse_row("fp8"))
    assert bench.eightbit_base("hopper-fp8-speed") and not bench.eightbit_base("fp8")
    row = bench.parse_row("hopper-fp8-speed+hybrid")  # its base already runs 8-bit attention
    assert bench.psnr_vs_linears(row, None, {}).startswith("n/a")


def test_row_options_become_the_engines_config_keys(bench, tmp_path):
    from engine.memory import decoder_from_config
    from engine.vae.speed import VaeSpeed, speed_settings

    files = {"tiny": tmp_path / "lighttaew2_1.safetensors", "light": tmp_path / "lightvaew2_1.safetensors"}
    tiny = bench.row_config("vram12-fp8+sage8+tiny@8", files)
    assert tiny.get("cpu_offload") and tiny.get("self_attn_1_type") == "sage_attn2"
    assert decoder_from_config(tiny.raw).kind == "tiny" and tiny.get("tae_path") == str(files["tiny"])
    light = bench.row_config("fp8+light", files)
    assert decoder_from_config(light.raw).kind == "light" and light.get("vae_path") == str(files["light"])
    assert speed_settings(bench.row_config("fp8+fp32vae").raw, "cuda") == VaeSpeed()  # the old fp32 decode
    assert bench.row_config("fp8+tiled").get("use_tiling_vae") is True
    hybrid = bench.row_config("fp8+hybrid")
    assert hybrid.get("self_attn_1_type") == "sage_attn2"
    assert (hybrid.get("attn_bf16_first_steps"), hybrid.get("attn_bf16_last_steps")) == (1, 1)
    assert bench.row_config("fp8+cudnnfp8").get("self_attn_1_type") == "cudnn_fp8"


@pytest.mark.parametrize("text, words", [
    ("fp8+turbo", "unknown option 'turbo'"), ("fp8+tiny+light", "choose one"), ("fp8+tiny+fp32vae", "tiny decoder has its own"),
    ("fp8@eight", "number of GiB"),
    ("fp8+sage8+cudnnfp8", "another self-attention"), ("fp8+hybrid+cudnnfp8", "another self-attention"),
])
def test_bad_rows_are_named(bench, text, words):
    with pytest.raises(ValueError, match=words):
        bench.parse_row(text)


def test_unknown_base_names_the_presets(bench):
    with pytest.raises(ConfigError, match="unknown preset 'fp9'"):
        bench.parse_row("fp9+tiny")


def test_default_rows_cover_the_tiers_and_decoders(bench):
    rows = {m: [bench.parse_row(r) for r in text.split(",")] for m, text in bench.DEFAULT_ROWS.items()}
    assert "vram12-fp8@8" in bench.DEFAULT_ROWS["14b"].split(",")
    assert {r.cap for r in rows["1.3b"] if r.base.startswith("vram")} >= {6.0, 8.0}
    for model in ("14b", "1.3b"):
        assert {r.decoder for r in rows[model]} == {"full", "light", "tiny"}


@pytest.mark.slow
def test_tiny_run_writes_every_row(bench, tmp_path):
    out = tmp_path / "bench.json"
    ref = tmp_path / "bf16.npy"
    rows = ["bf16", "int8", "fp8-tiled", "vram12-int8", "int8+hybrid+tiny", "int8+hybrid"]
    report = bench.main(["--tiny", "--rows", ",".join(rows), "--out", str(out),
                         "--tmp", str(tmp_path / "videos"), "--reference", str(ref)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and [r["row"] for r in saved["rows"]] == rows
    for row in saved["rows"]:
        assert row["status"] == "ok", row
        assert row["total_s"] >= row["decode_s"] > 0 and row["step_s"] > 0 and row["predicted_GiB"] > 0
    assert saved["rows"][0]["psnr_dB"] is None  # the reference itself
    assert all(isinstance(r["psnr_dB"], float) for r in saved["rows"][1:4])
    assert [r["tiled"] for r in saved["rows"]] == [False, False, True, True, False, False]
    # the attention's own effect is measured against the row without it, when that row ran
    # (on the CPU the tiny model's uint8 frames come out the same with or without 8-bit attention)
    effect = saved["rows"][5]["psnr_vs_linears_dB"]
    assert effect == "identical" or isinstance(effect, float)
    assert [r["psnr_vs_linears_dB"] for r in saved["rows"][:5]] == [None] * 5  # int8+tiny did not run
    # the +tiny row decodes with the tiny decoder, and engine.memory's prediction counted that decoder
    tiny = saved["rows"][4]
    assert tiny["psnr_dB"] == "n/a (different decoder)" and tiny["decoder"] == "tiny"
    assert [r["decoder"] for r in saved["rows"][:4]] == ["full"] * 4 and saved["rows"][5]["decoder"] == "full"
    assert not list((tmp_path / "videos").glob("*.mp4"))  # the export is replaced: frames stay in memory
    again = bench.main(["--tiny", "--rows", "int8", "--tmp", str(tmp_path / "videos"), "--reference", str(ref)])
    assert again["rows"][0]["psnr_dB"] == saved["rows"][1]["psnr_dB"]  # same weights and seed in a new run
