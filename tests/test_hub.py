"""Downloads through the real huggingface_hub client against a fake Hub on 127.0.0.1."""
import json
import socket

import pytest

from engine import hub
from engine.catalog import get_model
from engine.config import load_config
from engine.errors import ConfigError, HubError
from engine.presets import load_preset
from tests.fakehub import FakeHub

BASE = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
DISTILL = "lightx2v/Wan2.1-Distill-Models"
ENC = "lightx2v/Encoders-Lightx2v"
FP8_DIT = "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"
BIG = 300_000


def base_files():
    return {
        "model_index.json": json.dumps({"_class_name": "WanPipeline"}).encode(),
        "scheduler/scheduler_config.json": b"{}", "tokenizer/tokenizer.json": b"{}",
        "vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": b"v" * 1000,
        "transformer/config.json": b"{}", "transformer/diffusion_pytorch_model.safetensors": b"B" * 5000,
        "text_encoder/config.json": b"{}", "text_encoder/model.safetensors": b"T" * 3000,
    }


@pytest.fixture
def fake():
    with FakeHub() as h:
        h.add_repo(BASE, base_files())
        h.add_repo(DISTILL, {FP8_DIT: bytes(range(256)) * (BIG // 256),
                             "wan2.1_t2v_14b_int8_lightx2v_4step.safetensors": b"i" * 100,
                             "wan2.1_t2v_14b_lightx2v_4step.safetensors": b"b" * 200})
        h.add_repo(ENC, {"models_t5_umt5-xxl-enc-fp8.pth": b"f" * 400, "models_t5_umt5-xxl-enc-int8.pth": b"8" * 400})
        yield h


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)


def fp8_plan(loadable=frozenset({"dit", "t5"})):
    return hub.plan_downloads(get_model("wan2.1-t2v-14b"), load_config(load_preset("hopper-fp8")), loadable)


def test_plan_skips_bf16_transformer_when_quantized_file_is_used():
    plan = fp8_plan()
    base = plan.parts[0]
    assert "transformer/config.json" in base.patterns and "transformer/*" not in base.patterns
    assert "text_encoder/config.json" in base.patterns
    assert plan.prequantized == {"dit": [FP8_DIT], "t5": ["models_t5_umt5-xxl-enc-fp8.pth"]}
    # Without a loader for LightX2V T5 files its bf16 weights come from the base repo (quantized on load).
    assert "text_encoder/*" in fp8_plan(frozenset({"dit"})).parts[0].patterns
    # A distilled model never falls back to the base repo's (non-distilled) transformer.
    with pytest.raises(ConfigError, match="no loader"):
        fp8_plan(frozenset())


@pytest.mark.parametrize("model, preset, dit, files", [
    ("wan2.1-t2v-14b", "blackwell-nvfp4", None, ["wan2.1_t2v_14b_lightx2v_4step.safetensors"]),
    ("wan2.1-t2v-14b", "hopper-fp8", "fp8-block128", ["wan2.1_t2v_14b_lightx2v_4step.safetensors"]),
    ("wan2.1-t2v-14b", "hopper-fp8", "bf16", ["wan2.1_t2v_14b_lightx2v_4step.safetensors"]),
    ("wan2.2-i2v-a14b", "blackwell-mxfp8", None, ["wan2.2_i2v_A14b_high_noise_lightx2v_4step.safetensors",
                                                  "wan2.2_i2v_A14b_low_noise_lightx2v_4step.safetensors"]),
])
def test_formats_without_a_published_file_use_the_bf16_distilled_file(model, preset, dit, files):
    from engine.presets import apply_overrides

    entry = get_model(model)
    plan = hub.plan_downloads(entry, load_config(apply_overrides(load_preset(preset), dit=dit)),
                              frozenset({"dit", "t5", "clip"}))
    assert plan.distilled_dit == files and "dit" not in plan.prequantized  # quantized on load
    assert [p.patterns for p in plan.parts if p.role == "dit"] == [files]
    base = plan.parts[0].patterns
    assert all(f"{name}/config.json" in base and f"{name}/*" not in base for name in entry.transformers)


def test_models_without_a_distilled_file_use_the_base_transformer():
    plan = hub.plan_downloads(get_model("wan2.1-t2v-1.3b"), load_config(load_preset("hopper-fp8")),
                              frozenset({"dit", "t5"}))
    assert plan.distilled_dit == [] and "transformer/*" in plan.parts[0].patterns


def test_plan_for_wan22_moe_names_both_experts():
    plan = hub.plan_downloads(get_model("wan2.2-i2v-a14b"), load_config(load_preset("ampere-int8")), frozenset({"dit"}))
    assert plan.prequantized["dit"] == ["wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors",
                                        "wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step.safetensors"]
    assert {"transformer/config.json", "transformer_2/config.json"} <= set(plan.parts[0].patterns)


def test_selective_download_with_progress_then_cache(fake, tmp_path):
    seen = []
    paths = hub.fetch(fp8_plan(), seen.append, endpoint=fake.url, cache_dir=tmp_path)
    fetched = {p for method, p, _ in fake.log if method == "GET" and "/resolve/" in p}
    assert not any("transformer/diffusion_pytorch_model" in p or "text_encoder/model" in p for p in fetched)
    assert not any("int8" in p or p.endswith("/wan2.1_t2v_14b_lightx2v_4step.safetensors") for p in fetched)
    assert (paths["base"] / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert paths["dit"].name == FP8_DIT and paths["dit"].stat().st_size == len(fake.repos[DISTILL][FP8_DIT])
    assert seen[-1].fraction == 1.0 and seen[-1].files_done == seen[-1].files_total
    assert any(0 < s.done_bytes < s.total_bytes for s in seen)  # byte-level progress, not only per file
    # Second time: everything comes from the cache, no file is fetched again.
    fake.log.clear()
    assert hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path) == paths
    assert not [entry for entry in fake.log if "/resolve/" in entry[1]]


def test_offline_uses_cache_and_says_when_missing(fake, tmp_path, monkeypatch):
    paths = hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)
    fake.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path) == paths
    assert fake.log == []
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path / "empty")


def test_resume_after_cut_connection(fake, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # The client keeps what it has written, in chunks; small chunks make a small file show it.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 2**16)
    fake.cut_after[FP8_DIT] = 100_000
    paths = hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)
    ranges = [rng for _, _, rng in fake.gets(FP8_DIT)]
    assert ranges == [None, "bytes=65536-"], ranges  # the second request continues where the first stopped
    assert paths["dit"].read_bytes() == fake.repos[DISTILL][FP8_DIT]


def test_interrupted_download_keeps_finished_files(fake, tmp_path):
    fake.cut_after[FP8_DIT] = 100_000
    fake.fail_after_cut = True  # the client's own retry meets a 503, so the first fetch fails
    with pytest.raises(HubError, match="503"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)
    fake.log.clear()
    paths = hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)
    fetched = [p for method, p, _ in fake.log if method == "GET" and "/resolve/" in p]
    assert not any(BASE in p for p in fetched)  # the base repo's files were finished and stay cached
    assert paths["dit"].read_bytes() == fake.repos[DISTILL][FP8_DIT]


def test_missing_file_404(fake, tmp_path):
    del fake.repos[DISTILL][FP8_DIT]
    with pytest.raises(HubError, match=f"has no file {FP8_DIT}"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)


def test_gated_repo_401(fake, tmp_path):
    fake.gated.add(BASE)
    with pytest.raises(HubError, match="gated.*HF_TOKEN"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)


def test_unknown_repo(fake, tmp_path):
    del fake.repos[ENC]
    with pytest.raises(HubError, match=f"repository {ENC} was not found"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)


def test_no_network(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(HubError, match="cannot reach"):
        hub.fetch(fp8_plan(), endpoint=f"http://127.0.0.1:{port}", cache_dir=tmp_path)


def test_free_disk_checked_before_download(fake, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(HubError, match="not enough disk space"):
        hub.fetch(fp8_plan(), endpoint=fake.url, cache_dir=tmp_path)
    assert not [entry for entry in fake.log if "/resolve/" in entry[1]]


def test_one_reachability_check_for_app_and_downloads(monkeypatch):
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert hub.unreachable(closed, timeout=2) is not None
    monkeypatch.setenv("HF_ENDPOINT", closed)
    assert app.hub_reachable() is False
    with pytest.raises(HubError, match="cannot reach"):
        hub._probe(closed)
    for proxy in ("http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"):  # a proxy decides: no direct probe
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
        assert hub.unreachable(closed, timeout=2) is None and app.hub_reachable()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ...unless the host bypasses it
        assert hub.unreachable(closed, timeout=2) is not None
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv(proxy)
