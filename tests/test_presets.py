"""Preset choice per GPU class, with capability and memory given as inputs."""
import pytest

from engine.catalog import get_model
from engine.config import load_config
from engine.errors import ConfigError, HardwareError
from engine.gpu import GB, GpuInfo
from engine.presets import (DEFAULT_SIZE, apply_overrides, check_config_for_gpu, check_fits, choose_preset,
                            format_notices, list_presets, load_preset, lighter_preset, plan_for)


def gpu(name, cap, total_gb, free_gb=None):
    return GpuInfo(name, cap, int(total_gb * GB), int((free_gb if free_gb is not None else total_gb) * GB))


@pytest.mark.parametrize("info, preset", [
    (gpu("NVIDIA H100 80GB HBM3", (9, 0), 80), "hopper-fp8"),
    (gpu("NVIDIA H200", (9, 0), 141), "hopper-fp8"),
    (gpu("NVIDIA L40S", (8, 9), 48), "ada-fp8"),
    (gpu("NVIDIA A100-SXM4-80GB", (8, 0), 80), "ampere-int8"),
    (gpu("NVIDIA B200", (10, 0), 180), "blackwell-fp8"),
    (gpu("NVIDIA GeForce RTX 5090", (12, 0), 32), "blackwell-fp8"),
    (gpu("NVIDIA GeForce RTX 4090", (8, 9), 24), "vram24-fp8"),
    (gpu("NVIDIA GeForce RTX 3090", (8, 6), 24), "vram24-int8"),
    (gpu("NVIDIA GeForce RTX 4080", (8, 9), 16), "vram16-fp8"),
    # the fp16 decode (the GPU default, 4.1 GB at 480p) fits untiled beside the streamed blocks from 7 GB up
    (gpu("NVIDIA GeForce RTX 4070", (8, 9), 12), "vram16-fp8"),
    (gpu("NVIDIA GeForce RTX 3060", (8, 6), 12), "vram16-int8"),
    (gpu("NVIDIA GeForce RTX 4060", (8, 9), 8), "vram16-fp8"),
    (None, "cpu-demo"),
])
def test_preset_per_gpu_class_for_14b(info, preset):
    choice = choose_preset(info, get_model("wan2.1-t2v-14b"))
    assert choice.name == preset, choice.reason
    assert choice.reason and choice.config == load_preset(preset)
    load_config(choice.config)  # every chosen preset is a valid LightX2V config


@pytest.mark.parametrize("info, model, size, preset", [
    (gpu("NVIDIA GeForce RTX 4090", (8, 9), 24), "wan2.1-t2v-1.3b", None, "ada-fp8"),
    (gpu("NVIDIA GeForce RTX 4070", (8, 9), 12), "wan2.1-t2v-1.3b", None, "ada-fp8"),  # tiles the decode
    (gpu("NVIDIA GeForce RTX 4060", (8, 9), 8), "wan2.1-t2v-1.3b", None, "vram24-fp8"),
    (gpu("NVIDIA GeForce RTX 3060", (8, 6), 8), "wan2.1-t2v-1.3b", None, "vram24-int8"),
    (gpu("NVIDIA GeForce RTX 4060", (8, 9), 6), "wan2.1-t2v-1.3b", None, "vram24-fp8"),
    (gpu("NVIDIA GeForce RTX 4090", (8, 9), 24), "wan2.1-t2v-14b", (720, 1280, 81), "vram16-fp8"),  # blocks streamed
    (gpu("NVIDIA H100 80GB HBM3", (9, 0), 80), "wan2.1-t2v-14b", (720, 1280, 81), "hopper-fp8"),
    (gpu("NVIDIA GeForce RTX 4090", (8, 9), 24), "wan2.1-t2v-14b", (480, 832, 33), "ada-fp8"),  # short: fits
])
def test_preset_per_model_and_size(info, model, size, preset):
    choice = choose_preset(info, get_model(model), size)
    assert choice.name == preset, choice.reason


@pytest.mark.parametrize("tier, cap_gb", [("vram24", 24), ("vram16", 16), ("vram12", 12), ("vram12", 8)])
def test_each_tier_completes_the_default_request_on_its_gpu_class(tier, cap_gb):
    for kind in ("fp8", "int8"):
        est = plan_for(get_model("wan2.1-t2v-14b"), load_preset(f"{tier}-{kind}"), DEFAULT_SIZE, cap_gb * GB)
        assert est.need <= cap_gb * GB, (tier, kind, est.need / GB)
    small = plan_for(get_model("wan2.1-t2v-1.3b"), load_preset("vram12-fp8"), DEFAULT_SIZE, 6 * GB)
    assert small.need <= 6 * GB


def test_reason_says_what_is_offloaded_and_a_size_too_large_is_refused():
    rtx4070 = gpu("NVIDIA GeForce RTX 4070", (8, 9), 12)
    choice = choose_preset(rtx4070, get_model("wan2.1-t2v-14b"))
    assert "streamed to the GPU block by block" in choice.reason and "decodes whole frames" in choice.reason
    entry = get_model("wan2.1-t2v-14b")
    with pytest.raises(HardwareError, match=r"1280x720, 81 frames .* does not fit.*12.0 GiB"):
        check_fits(rtx4070, entry, choice.config, (720, 1280, 81))
    assert "block by block" in check_fits(rtx4070, entry, choice.config, DEFAULT_SIZE)
    heavy = check_fits(rtx4070, entry, load_preset("ada-fp8"), DEFAULT_SIZE)
    assert "more than this GPU has" in heavy and "vram16-fp8" in heavy


def test_free_memory_not_total_decides():
    busy = gpu("NVIDIA H100", (9, 0), 80, free_gb=24)
    choice = choose_preset(busy, get_model("wan2.1-t2v-14b"))
    assert choice.name == "vram24-fp8" and "24.0 GiB is available" in choice.reason


def test_every_preset_file_is_a_valid_config():
    names = list_presets()
    assert {"hopper-fp8", "ada-fp8", "ampere-int8", "blackwell-fp8", "blackwell-nvfp4", "blackwell-mxfp8",
            "cpu-demo"} <= set(names)
    for name, about in names.items():
        cfg = load_config(load_preset(name))
        assert about, name
        assert cfg.dit.quantized or name == "pre-ampere-bf16"  # no 8-bit kernel runs before Ampere
        assert cfg.get("infer_steps") == 4 and cfg.get("sample_guide_scale") == 1.0


def test_lowmem_presets_use_int8_encoders_and_offload():
    for name in ("lowmem-fp8-offload", "lowmem-int8-block-offload"):
        cfg = load_config(load_preset(name))
        assert cfg.t5.scheme.format == "int8" and cfg.clip.scheme.format == "int8"
        assert cfg.get("cpu_offload") is True


def test_fp8_on_ampere_says_what_to_choose():
    cfg = load_config(load_preset("hopper-fp8"))
    with pytest.raises(HardwareError) as e:
        check_config_for_gpu(cfg, gpu("NVIDIA A100", (8, 0), 80))
    msg = str(e.value)
    assert "FP8 needs compute capability 8.9 or newer" in msg and "is compute capability 8.0" in msg
    assert "Choose int8 instead (preset ampere-int8)" in msg


def test_microscaled_formats_run_emulated_with_a_notice_and_need_fp8_hardware():
    cfg = load_config(load_preset("blackwell-nvfp4"))
    with pytest.raises(HardwareError, match="NVFP4 runs \\(emulated\\) on compute capability 8.9 or newer.*int8"):
        check_config_for_gpu(cfg, gpu("NVIDIA A100", (8, 0), 80))
    for info in (gpu("NVIDIA H100", (9, 0), 80), gpu("NVIDIA L40S", (8, 9), 48)):
        check_config_for_gpu(cfg, info)
        notes = format_notices(cfg, info)
        assert len(notes) == 1 and "DiT NVFP4 runs emulated" in notes[0] and "Choose fp8 for speed" in notes[0]
    for info in (gpu("NVIDIA B200", (10, 0), 180), gpu("NVIDIA RTX PRO 6000", (12, 0), 96)):
        check_config_for_gpu(cfg, info)
        notes = format_notices(cfg, info)
        assert len(notes) == 1 and "emulated on" not in notes[0]
        assert "DiT NVFP4 runs on the native block-scaled GEMM" in notes[0] and "at first use" in notes[0]
    assert choose_preset(gpu("NVIDIA B200", (10, 0), 180)).name == "blackwell-fp8"  # the auto choice stays FP8
    assert format_notices(load_config(load_preset("hopper-fp8")), gpu("NVIDIA H100", (9, 0), 80)) == []
    check_config_for_gpu(cfg, None)  # CPU: the reference kernel runs every format


def test_overrides_per_component():
    base = load_preset("hopper-fp8")
    out = apply_overrides(base, dit="int8-vllm", t5="bf16", clip="preset")
    cfg = load_config(out)
    assert cfg.dit.scheme.format == "int8" and not cfg.t5.quantized and cfg.clip.scheme.format == "fp8"
    assert base["dit_quant_scheme"] == "fp8-sgl"  # the preset itself is untouched
    assert not load_config(apply_overrides(base, dit="bf16")).dit.quantized
    with pytest.raises(ConfigError):
        apply_overrides(base, vae="int8")


def test_unknown_preset_and_path_tricks():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("../requirements")
    with pytest.raises(ConfigError):
        load_preset("nope")


def test_lighter_preset_chain():
    assert lighter_preset("hopper-fp8") == "vram24-fp8"
    assert lighter_preset("ampere-int8") == "vram24-int8"
    assert lighter_preset("vram24-int8") == "vram16-int8"
    assert lighter_preset("vram16-fp8") == "vram12-fp8"
    assert lighter_preset("vram12-fp8") is None
    assert lighter_preset("lowmem-int8-offload") == "lowmem-int8-block-offload"
    assert lighter_preset("lowmem-int8-block-offload") is None


@pytest.mark.parametrize("name, capability", [("hopper-fp8-speed", (9, 0)), ("ada-fp8-speed", (8, 9))])
def test_speed_presets_run_8bit_attention_where_it_runs(name, capability):
    """Issue 12: the Hopper/Ada speed presets use 8-bit self-attention; the family's plain preset does not."""
    from engine.attention.paths import gpu_problem
    from engine.attention.plan import plan_from_config

    cfg = load_config(load_preset(name))
    plain = load_config(load_preset(name.removesuffix("-speed")))
    assert plan_from_config(cfg, announce=False).self_attn == "sage8"
    assert plan_from_config(plain, announce=False).self_attn == "sdpa"
    assert {k: v for k, v in cfg.raw.items() if k not in ("_about", "self_attn_1_type")} == \
        {k: v for k, v in plain.raw.items() if k != "_about"}
    assert gpu_problem("sage8", capability, "GPU") is None
    assert "Set self_attn_1_type to torch_sdpa" in gpu_problem("sage8", (8, 0), "A100")
    assert lighter_preset(name) == "vram24-fp8"
