"""Per-layer schemes (`dit_layer_schemes`, engine/layer_rules.py) on the tiny model, on CPU: which layer got
which format and which rule chose it, validation, and the mixed model's output against the unquantized one."""
import pytest
import torch
from torch import nn

from engine.config import load_config
from engine.errors import ConfigError
from engine.gpu import GB, GpuInfo
from engine.presets import check_config_for_gpu, format_notices
from engine.linear import QuantLinear
from engine.pipeline import quantize_pipeline
from engine.stats import kernel_table
from engine.tiny import build_tiny_pipeline
from tests.test_tiny_pipeline import LATENT_BOUNDS, transformer_delta

RULES = [[r"blocks\.0\.attn1\..*", "bf16"],          # rule 1: the first block's self-attention stays bf16
         [r"blocks\.\d+\.ffn\..*", "nvfp4"],           # rule 2: FFNs in NVFP4
         [r"blocks\.\d+\.attn\d\..*", "fp8-sgl"]]      # rule 3: the other attention projections in FP8
MIXED = {"dit_quantized": True, "dit_quant_scheme": "int8-vllm", "dit_layer_schemes": RULES}


def expected_format(name: str) -> tuple[str, str]:
    """Written out independently of the rule matcher: the tiny DiT has blocks 0 and 1."""
    if name.startswith("blocks.0.attn1."):
        return "bf16", "rule 1"
    if ".ffn." in name:
        return "nvfp4", "rule 2"
    return "fp8", "rule 3"


@pytest.fixture(scope="module")
def unquantized_delta():
    return transformer_delta(build_tiny_pipeline("t2v"))


def test_each_layer_gets_the_first_matching_rule_and_the_report_says_which(unquantized_delta):
    pipe = build_tiny_pipeline("t2v")
    names = [n for n, m in pipe.transformer.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")
             and (".attn" in n or ".ffn." in n) and "norm" not in n]
    report = quantize_pipeline(pipe, load_config(MIXED))["transformer"]
    assert sorted(report.chosen) == sorted(names) and len(names) == 2 * (4 + 4 + 2)
    for name in names:
        fmt, rule = expected_format(name)
        module = pipe.transformer.get_submodule(name)
        got = module.fmt if isinstance(module, QuantLinear) else "bf16"
        assert got == fmt, name
        assert report.chosen[name][0] == fmt and report.chosen[name][1].startswith(rule), name
    assert report.format == "fp8+nvfp4"  # in the order the layers come in the model
    assert "4 layers bf16 by rule 1 `blocks\\.0\\.attn1\\..*`" in report.summary()
    table = kernel_table(pipe, torch.device("cpu"))["transformer"]
    assert table["ffn.net.0.proj"] == "nvfp4: emulated (rule 2 `blocks\\.\\d+\\.ffn\\..*`)"
    assert table["attn1.to_q"] == ("bf16 (rule 1 `blocks\\.0\\.attn1\\..*`) x1; "
                                   "fp8: emulated (rule 3 `blocks\\.\\d+\\.attn\\d\\..*`) x1")
    # the mixed model stays within the loosest bound of the formats it holds (nvfp4's)
    err = float((transformer_delta(pipe) - unquantized_delta).norm() / unquantized_delta.norm())
    assert err < LATENT_BOUNDS["nvfp4"], err


def test_layers_no_rule_matches_take_the_component_scheme():
    pipe = build_tiny_pipeline("t2v")
    cfg = load_config({"dit_quantized": True, "dit_quant_scheme": "int8", "dit_layer_schemes": [RULES[1]]})
    report = quantize_pipeline(pipe, cfg)["transformer"]
    assert pipe.transformer.blocks[1].attn2.to_k.fmt == "int8"
    assert report.chosen["blocks.1.attn2.to_k"] == ("int8", "dit_quant_scheme")
    assert pipe.transformer.blocks[1].ffn.net[2].fmt == "nvfp4"
    only_rules = load_config({"dit_quantized": True, "dit_layer_schemes": [RULES[1]]})  # no component scheme
    pipe = build_tiny_pipeline("t2v")
    report = quantize_pipeline(pipe, only_rules)["transformer"]
    assert type(pipe.transformer.blocks[0].attn1.to_q) is nn.Linear and len(report.swapped) == 4
    assert report.chosen["blocks.0.attn1.to_q"] == ("bf16", "no rule (no dit_quant_scheme)")


@pytest.mark.parametrize("rules, match", [
    ([["blocks\\.\\d+\\.ffn\\..*", "int9"]], "`dit_layer_schemes` entry 1: unknown quantization scheme 'int9'"),
    ([["blocks\\.(\\d+\\.ffn", "fp8"]], "entry 1: .* is not a valid regular expression"),
    ({"blocks.0": "fp8"}, "must be a list of \\[pattern, scheme\\] pairs"),
    ([["blocks.0"]], "entry 1 must be \\[pattern, scheme\\]"),
])
def test_bad_rules_are_refused_when_the_config_loads(rules, match):
    with pytest.raises(ConfigError, match=match):
        load_config({"dit_quantized": True, "dit_quant_scheme": "fp8", "dit_layer_schemes": rules})


def test_rules_that_choose_no_layer_are_refused():
    cfg = load_config({"dit_quantized": True, "dit_quant_scheme": "fp8", "dit_layer_schemes": [
        ["blocks\\.\\d+\\.ffn\\..*", "nvfp4"], ["blocks\\.0\\.ffn\\..*", "int8"], ["transformer_blocks\\..*", "int8"]]})
    with pytest.raises(ConfigError) as e:
        quantize_pipeline(build_tiny_pipeline("t2v"), cfg)
    msg = str(e.value)
    assert "rule 2 `blocks\\.0\\.ffn\\..*` chooses no layer (every layer it matches is taken by an earlier rule)" in msg
    assert "rule 3 `transformer_blocks\\..*` chooses no layer;" not in msg and "rule 3" in msg
    assert "`dit_layer_schemes`" in msg and "blocks.0.attn1.to_q" in msg  # names real layers to copy


def test_contradictions_and_plain_configs():
    with pytest.raises(ConfigError, match="`dit_quantized` is false but `dit_layer_schemes`"):
        load_config({"dit_quantized": False, "dit_layer_schemes": [RULES[1]]})
    plain = load_config({"mm_config": {"mm_type": "W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm"}})
    assert plain.dit.rules == () and plain.dit.formats == ["int8"]  # LightX2V configs as before
    assert load_config(MIXED).dit.formats == ["int8", "nvfp4", "fp8"]


def test_the_gpu_check_covers_every_rule():
    a100 = GpuInfo("NVIDIA A100", (8, 0), 80 * GB, 80 * GB)
    with pytest.raises(ConfigError.__mro__[1]) as e:  # HardwareError, an EngineError
        check_config_for_gpu(load_config(MIXED), a100)
    assert "`dit_layer_schemes` rule 2" in str(e.value) and "`dit_layer_schemes` rule 3" in str(e.value)
    h100 = GpuInfo("NVIDIA H100", (9, 0), 80 * GB, 80 * GB)
    check_config_for_gpu(load_config(MIXED), h100)
    assert [n for n in format_notices(load_config(MIXED), h100) if "DiT NVFP4 runs emulated" in n]


def test_rules_over_a_prequantized_file(tmp_path):
    """A mixed pre-quantized DiT: layers the file holds quantized stay as loaded; rules that agree are
    recorded, a rule that contradicts the file is refused."""
    from engine.checkpoint.dit import load_dit
    from engine.checkpoint.io import write_safetensors
    from engine.errors import EngineError
    from tests.dit_helpers import tiny_model, wan_state_dict
    from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected

    m = tiny_model()
    path = tmp_path / "fp8.safetensors"
    write_safetensors(path, quantize_state_dict(wan_state_dict(m), "fp8", wan_dit_selected))
    agree = load_config({"dit_quantized": True, "dit_layer_schemes": [[r"blocks\.\d+\..*", "fp8"]]})
    model, _ = load_dit(path, m.config)
    from engine.apply import quantize_model
    report = quantize_model(model, agree.dit.scheme, layer_rules=agree.dit.rules, rules_key="dit_layer_schemes")
    assert report.swapped == [] and model.blocks[1].ffn.net[2].quant_rule.startswith("rule 1")
    clash = load_config({"dit_quantized": True, "dit_layer_schemes": [[r"blocks\.\d+\.ffn\..*", "nvfp4"]]})
    model, _ = load_dit(path, m.config)
    with pytest.raises(EngineError, match="rule 1 .* asks for nvfp4 for layer blocks.0.ffn.net.0.proj, which the "
                                          "loaded checkpoint holds in fp8"):
        quantize_model(model, clash.dit.scheme, layer_rules=clash.dit.rules, rules_key="dit_layer_schemes")


def test_hub_plan_takes_the_bf16_distilled_dit_when_rules_decide_per_layer():
    """A published fp8 DiT file cannot hold NVFP4 FFNs: with rules the plan downloads the bf16 distilled
    file and quantizes it layer by layer, instead of failing after the download."""
    from engine import hub
    from engine.builder import loadable_components
    from engine.catalog import get_model

    entry = get_model("wan2.1-t2v-14b")
    plain = load_config({"dit_quantized": True, "dit_quant_scheme": "fp8-sgl"})
    ruled = load_config({"dit_quantized": True, "dit_quant_scheme": "fp8-sgl", "dit_layer_schemes": [RULES[1]]})
    assert hub.plan_downloads(entry, plain, loadable_components()).prequantized.get("dit")
    plan = hub.plan_downloads(entry, ruled, loadable_components())
    assert "dit" not in plan.prequantized and plan.distilled_dit == list(entry.distilled_bf16_files())


def test_memory_model_counts_rules_at_their_heaviest_format():
    """A rule keeping layers in bf16 under an fp8 scheme must not shrink the predicted weights."""
    from engine import memory
    from engine.config import load_config

    plain = memory.formats_from_config(load_config({"dit_quant_scheme": "fp8"}))
    ruled = memory.formats_from_config(load_config({"dit_quant_scheme": "fp8",
                                                    "dit_layer_schemes": [["blocks\\.0\\..*", "bf16"]]}))
    assert plain.dit == "fp8" and ruled.dit is None and ruled.fused == plain.fused
