"""Scheme names (both LightX2V styles) and the JSON config loader."""
import json

import pytest

from engine.config import load_config
from engine.errors import ConfigError, SchemeError
from engine.schemes import SCHEMES, resolve_scheme, valid_names

MISSION_MM_TYPES = {
    "Default": None,
    "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Vllm": "fp8",
    "W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm": "int8",
    "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Q8F": "fp8",
    "W-int8-channel-sym-A-int8-channel-sym-dynamic-Q8F": "int8",
    "W-fp8-block128-sym-A-fp8-channel-group128-sym-dynamic-Deepgemm": "fp8_block128",
    "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Sgl": "fp8",
}
SHORT_NAMES = {
    "fp8-vllm": "fp8", "int8-vllm": "int8", "fp8-sgl": "fp8", "int8-sgl": "int8", "fp8-q8f": "fp8",
    "int8-q8f": "int8", "fp8-triton": "fp8", "int8-triton": "int8", "int8-torchao": "int8",
    "fp8-torchao": "fp8", "fp8-b128-deepgemm": "fp8_block128", "mxfp8": "mxfp8", "nvfp4": "nvfp4",
    "mxfp4": "mxfp4", "fp8-pertensor": "fp8_tensor", "int8": "int8", "fp8": "fp8",
}


@pytest.mark.parametrize("name,fmt", {**MISSION_MM_TYPES, **SHORT_NAMES}.items())
def test_every_name_resolves_to_its_format(name, fmt):
    assert resolve_scheme(name).format == fmt


def test_library_names_run_our_kernels_and_say_so(caplog):
    caplog.set_level("INFO", logger="engine.schemes")
    s = resolve_scheme("fp8-sgl")
    assert s.library == "sgl" and s.kernel == "auto"
    assert "sgl-kernel" in caplog.text and "no native package needed" in caplog.text
    assert resolve_scheme("int8-triton").kernel == "triton"


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(SchemeError) as e:
        resolve_scheme("fp9-fast")
    for name in ("fp8-vllm", "nvfp4", "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Vllm"):
        assert name in str(e.value)


@pytest.mark.parametrize("name", ["int4-g128-marlin", "mxfp6-mxfp8", "gguf-Q4_K_M"])
def test_recognised_but_unsupported_scheme_says_what_to_use(name):
    with pytest.raises(SchemeError, match="does not run: .*use"):
        resolve_scheme(name)


def test_new_schemes_register_without_editing_a_switch():
    from engine.schemes import register_scheme
    register_scheme("int8-custom-test", "int8", kernel="emulated")
    try:
        assert resolve_scheme("INT8-custom-test").kernel == "emulated"
    finally:
        SCHEMES.pop("int8-custom-test")
    assert "int8-custom-test" not in valid_names()


def write(tmp_path, obj, name="cfg.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_old_style_config_with_mixed_encoders(tmp_path):
    cfg = load_config(write(tmp_path, {
        "dit_quantized_ckpt": "/ckpt/dit", "mm_config": {"mm_type": "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Vllm"},
        "t5_quantized": True, "t5_quant_scheme": "int8", "t5_quantized_ckpt": "/ckpt/t5.pth",
        "clip_quantized": True, "clip_quant_scheme": "fp8", "clip_quantized_ckpt": "/ckpt/clip.pth",
        "infer_steps": 4}))
    assert cfg.dit.scheme.format == "fp8" and cfg.dit.ckpt == "/ckpt/dit"
    assert cfg.t5.scheme.format == "int8" and cfg.t5.ckpt == "/ckpt/t5.pth"
    assert cfg.clip.scheme.format == "fp8" and cfg.get("infer_steps") == 4


def test_new_style_config(tmp_path):
    cfg = load_config(write(tmp_path, {"dit_quantized": True, "dit_quant_scheme": "fp8-b128-deepgemm"}))
    assert cfg.dit.scheme.format == "fp8_block128" and not cfg.t5.quantized and not cfg.clip.quantized


def test_default_mm_type_and_quantized_false_mean_bf16(tmp_path):
    assert not load_config({"mm_config": {"mm_type": "Default"}}).dit.quantized
    assert not load_config({"dit_quantized": False, "dit_quant_scheme": "fp8-sgl"}).dit.quantized


@pytest.mark.parametrize("data,match", [
    ("{\"dit_quantized\": true,", "not valid JSON \\(line 1"),
    ([1, 2], "must be a JSON object"),
    ({"dit_quantized": "yes"}, "`dit_quantized` must be true or false"),
    ({"dit_quantized": True}, "no `dit_quant_scheme`"),
    ({"t5_quantized": True}, "`t5_quant_scheme` is missing"),
    ({"dit_quantized": True, "dit_quant_scheme": "fp7"}, "`dit_quant_scheme`: unknown quantization scheme 'fp7'"),
    ({"mm_config": {"mm_type": "W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm"},
      "dit_quantized": True, "dit_quant_scheme": "fp8-sgl"}, "name different formats"),
    ({"mm_config": "fp8"}, "`mm_config` must be an object"),
])
def test_bad_config_gives_clear_error(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(write(tmp_path, data))
    assert "cfg.json" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
