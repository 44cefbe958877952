"""Formats and kernels as the one source of truth: what runs where is asked of the registries, for any
GPU, on a CPU machine (capabilities given as inputs)."""
import pytest

from engine import convert, schemes, service
from engine.catalog import get_model
from engine.config import load_config
from engine.errors import HardwareError
from engine.formats import ACT_KINDS, FORMATS
from engine.gpu import GB, GpuInfo
from engine.presets import check_config_for_gpu, choose_preset, format_problem, load_preset
from engine.kernels import KERNELS, capable, formats_for, runnable
from engine.request import VideoRequest
from engine.service import VideoService

CAPS = {(7, 0): "Tesla V100", (7, 5): "Tesla T4", (8, 0): "A100", (8, 6): "RTX 3090", (8, 9): "L40S",
        (9, 0): "H100", (10, 0): "B200", (12, 0): "RTX 5090"}


def gpu(cap, gb=80):
    return GpuInfo(CAPS[cap], cap, gb * GB, gb * GB)


@pytest.mark.parametrize("cap", list(CAPS))
def test_the_chosen_preset_runs_on_that_capability(cap):
    """Every format the auto preset names has a kernel at that capability; where none has, bf16 and a
    sentence saying so."""
    choice = choose_preset(gpu(cap), get_model("wan2.1-t2v-14b"))
    cfg = load_config(choice.config)
    check_config_for_gpu(cfg, gpu(cap))  # would raise HardwareError naming the format
    for comp in ("dit", "t5", "clip"):
        quant = getattr(cfg, comp)
        if quant.quantized:
            assert runnable(quant.scheme.format, cap), (cap, comp)
    if cap < (8, 0):
        assert choice.name == "pre-ampere-bf16" and not cfg.dit.quantized
        assert "no kernel of this engine runs an 8-bit format" in choice.reason
        assert f"{cap[0]}.{cap[1]}" in choice.reason and "bf16" in choice.reason
    else:
        assert cfg.dit.quantized


@pytest.mark.parametrize("cap", [(7, 0), (7, 5)])
def test_int8_before_ampere_is_refused_before_any_download(cap, tmp_path):
    """The old mismatch: below sm80 the chooser picked ampere-int8 and the KernelError came after the
    download. Now the check (which downloads nothing) refuses it with the registry's reasons."""
    with pytest.raises(HardwareError) as e:
        check_config_for_gpu(load_config(load_preset("ampere-int8")), gpu(cap))
    msg = str(e.value)
    assert "INT8 needs compute capability 8.0 or newer" in msg and f"is compute capability {cap[0]}.{cap[1]}" in msg
    assert "choose bf16 for every component (preset pre-ampere-bf16" in msg
    svc = VideoService(gpu(cap, 32), demo=False, out_dir=tmp_path)
    req = VideoRequest(prompt="a boat", height=480, width=832, num_frames=81, steps=4)
    with pytest.raises(HardwareError, match="INT8 needs compute capability 8.0"):
        svc.check("wan2.1-t2v-14b", req, preset="ampere-int8")
    name, cfg, _ = svc.check("wan2.1-t2v-14b", req)  # auto: the bf16 preset passes the same checks
    assert name == "pre-ampere-bf16" and not cfg.dit.quantized


def test_capability_answers_are_pure_and_match_the_kernels():
    """The kernels' own answers, no GPU needed: int8 from 8.0, fp8 from 8.9, block fp8 on cuBLAS from 9.0,
    native MX/NV only on Blackwell majors 10 and 12, the reference kernel never automatic on a GPU."""
    assert formats_for((7, 5)) == []
    assert formats_for((8, 6)) == ["int8"]
    assert set(formats_for((8, 9), native=True)) == {"fp8", "int8", "fp8_block128", "fp8_tensor"}
    assert "nvfp4" in formats_for((8, 9)) and "nvfp4" not in formats_for((8, 9), native=True)
    assert "nvfp4" in formats_for((12, 0), native=True) and "nvfp4" not in formats_for((11, 0), native=True)
    reasons = dict(capable("fp8_block128", (8, 9), (5120, 5120)))
    assert "9.0" in reasons["torch"] and reasons["triton"] is None
    assert "multiple of 512" in dict(capable("fp8_block128", (9, 0), (8960, 1536)))["torch"]
    assert "emulated" not in dict(capable("int8", (9, 0)))  # by name only on a GPU
    assert [k.name for k in runnable("int8", None)] == ["emulated"]  # the CPU
    assert format_problem("fp8", gpu((8, 6))) and format_problem("fp8", gpu((8, 9))) is None


def test_user_vocabulary_comes_from_the_formats():
    """Converter choices, UI menus, scheme names and activation kinds are read from the format files;
    the user-facing names are the ones they always were."""
    before = {"int8": "int8", "fp8": "fp8", "fp8-block128": "fp8_block128", "fp8_block128": "fp8_block128",
              "mxfp8": "mxfp8", "nvfp4": "nvfp4", "mxfp4": "mxfp4"}  # the choices as they were written out
    assert before.items() <= convert.LINEAR_TYPES.items() and "fp8_tensor" not in convert.LINEAR_TYPES.values()
    assert service.SCHEME_CHOICES[:7] == ("preset", "bf16", "fp8", "int8", "fp8-block128", "mxfp8", "nvfp4")
    assert "mxfp4" not in service.SCHEME_CHOICES and "fp8-pertensor" not in service.SCHEME_CHOICES
    for name, fmt in FORMATS.items():
        assert schemes.resolve_scheme(fmt.label).format == name
        assert fmt.act_kind in ACT_KINDS or fmt.act_kind in ("tensor", "block")
        assert any(name in k.formats for k in KERNELS.values())  # every format has a kernel
    assert schemes.resolve_scheme("fp8-pertensor").format == "fp8_tensor"


def test_memory_advice_before_ampere_names_a_preset_that_runs_there(tmp_path):
    t4 = gpu((7, 5), 16)
    from engine.presets import check_fits

    heavy = {**load_preset("pre-ampere-bf16"), "cpu_offload": False, "use_tiling_vae": False}
    with pytest.raises(HardwareError) as e:
        check_fits(t4, get_model("wan2.1-t2v-14b"), heavy, (480, 832, 81), strict=True)
    assert "pre-ampere-bf16" in str(e.value) and "int8" not in str(e.value)
    svc = VideoService(t4, demo=False, out_dir=tmp_path)
    text = svc.explain("wan2.1-t2v-14b")
    assert "pre-ampere-bf16" in text and "no kernel of this engine runs an 8-bit format" in text
