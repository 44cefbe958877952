"""A catalog model end to end through the app's service: plan, download from a fake Hub, load the
LightX2V-format DiT, generate. The "14B" repos hold the tiny model, so it runs on CPU in seconds."""
import pytest

from engine.gpu import GB, GpuInfo
from engine.request import VideoRequest
from engine.service import VideoService
from tests.fakehub import FakeHub
from tests.test_infer import read_mp4

BASE = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
DISTILL = "lightx2v/Wan2.1-Distill-Models"
INT8_DIT = "wan2.1_t2v_14b_int8_lightx2v_4step.safetensors"
BF16_DIT = "wan2.1_t2v_14b_lightx2v_4step.safetensors"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    from diffusers import WanTransformer3DModel

    from engine.infer import save_tiny

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    tiny = save_tiny(tmp_path / "tiny", "t2v")
    dit = lightx2v_int8_dit(WanTransformer3DModel.from_pretrained(tiny, subfolder="transformer"),
                            tmp_path / INT8_DIT)
    bf16 = lightx2v_bf16_dit(WanTransformer3DModel.from_pretrained(tiny, subfolder="transformer"),
                             tmp_path / BF16_DIT)
    with FakeHub() as hub:
        hub.add_folder(BASE, tiny)
        hub.add_repo(DISTILL, {INT8_DIT: dit.read_bytes(), BF16_DIT: bf16.read_bytes()})
        yield hub


def lightx2v_int8_dit(transformer, path):
    """LightX2V's int8 layout, by the independent writer under the hand-written Wan names."""
    import torch
    from safetensors.torch import save_file

    from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected
    from tests.wan_names import diffusers_to_wan_table

    table = diffusers_to_wan_table(num_layers=len(transformer.blocks), i2v=True)
    wan = {table[k]: v.detach().float() for k, v in transformer.state_dict().items()}
    save_file({k: v.contiguous() for k, v in quantize_state_dict(wan, "int8", wan_dit_selected).items()}, str(path))
    return path


def lightx2v_bf16_dit(transformer, path):
    """LightX2V's bf16 distilled layout: Wan key names, every tensor bf16, nothing quantized."""
    import torch
    from safetensors.torch import save_file

    from tests.wan_names import diffusers_to_wan_table  # hand-written names, not the engine's key map

    table = diffusers_to_wan_table(num_layers=len(transformer.blocks), i2v=True)
    save_file({table[k]: v.to(torch.bfloat16).contiguous() for k, v in transformer.state_dict().items()}, str(path))
    return path


def test_catalog_model_downloads_only_what_it_needs_and_generates(fake_hub, tmp_path):
    a100 = GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB)
    svc = VideoService(a100, demo=False, out_dir=tmp_path / "out", endpoint=fake_hub.url, cache_dir=tmp_path / "cache")
    seen = []
    req = VideoRequest(prompt="a lighthouse", height=32, width=48, num_frames=5, steps=2)
    result = svc.run("wan2.1-t2v-14b", req, overrides=dict(t5="bf16"), on_download=seen.append)
    fetched = [path for method, path, _ in fake_hub.log if method == "GET" and "/resolve/" in path]
    assert any(path.endswith(INT8_DIT) for path in fetched)
    assert not any("transformer/diffusion_pytorch_model" in path for path in fetched)  # bf16 DiT never fetched
    assert not any(path.endswith("_lightx2v_4step.safetensors") and INT8_DIT not in path for path in fetched)
    assert seen and seen[-1].fraction == 1.0
    assert read_mp4(result.path) == (5, (32, 48, 3))
    assert svc.loaded_summary().count("DiT from") == 1  # the LightX2V file was loaded, not re-quantized
    assert set(v.split(":")[0] for v in result.stats.kernels["transformer"].values()) == {"int8"}
    # The second run reuses the loaded model: nothing more is fetched.
    fake_hub.log.clear()
    svc.run("wan2.1-t2v-14b", req, overrides=dict(t5="bf16"))
    assert fake_hub.log == []


def test_a_format_without_a_published_file_quantizes_the_bf16_distilled_file(fake_hub, tmp_path):
    from torch import nn

    blackwell = GpuInfo("NVIDIA B200", (10, 0), 180 * GB, 180 * GB)
    svc = VideoService(blackwell, demo=False, out_dir=tmp_path / "out", endpoint=fake_hub.url,
                       cache_dir=tmp_path / "cache")
    assert svc.preset_for("wan2.1-t2v-14b").name == "blackwell-fp8"
    req = VideoRequest(prompt="a lighthouse", height=32, width=48, num_frames=5, steps=2)
    result = svc.run("wan2.1-t2v-14b", req, preset="blackwell-nvfp4", overrides=dict(t5="bf16"))
    fetched = [path for method, path, _ in fake_hub.log if method == "GET" and "/resolve/" in path]
    assert any(path.endswith("/" + BF16_DIT) for path in fetched)
    assert not any("transformer/diffusion_pytorch_model" in path or INT8_DIT in path for path in fetched)
    summary = svc.loaded_summary()
    assert "DiT from" in summary and BF16_DIT in summary and "quantized on load: nvfp4" in summary
    assert "NVFP4 runs on the native block-scaled GEMM of NVIDIA B200" in summary  # says which path, and its check
    assert set(v.split(":")[0] for v in result.stats.kernels["transformer"].values()) == {"nvfp4"}
    transformer = svc._loaded[1].pipe.transformer
    assert not any(type(m) is nn.Linear for n, m in transformer.named_modules() if n.startswith("blocks."))
    assert read_mp4(result.path) == (5, (32, 48, 3))
