"""A pre-quantized file keeps the scheme's kernel preference (fp8-triton, int8-torch), as quantizing on
load does: the QuantLinear built by the loader records it, and kernel selection honours it."""
import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import write_safetensors
from engine.kernels import base, select_kernel
from engine.linear import QuantLinear
from tests.dit_helpers import tiny_model, wan_state_dict
from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected

CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("scheme, fmt, cap, auto, asked", [
    ("fp8-triton", "fp8", (9, 0), "torch", "triton"),  # cuBLAS first for small FP8 layers on Hopper
    ("int8-torch", "int8", (8, 0), "triton", "torch"),  # the fused Triton GEMM first for int8
])
def test_prequantized_load_keeps_the_kernel_preference(tmp_path, model, monkeypatch, scheme, fmt, cap, auto, asked):
    from engine.kernels import eightbit
    if eightbit.ops is None:
        pytest.skip("needs triton (the triton kernel must be a candidate)")
    path = tmp_path / f"{fmt}.safetensors"
    write_safetensors(path, quantize_state_dict(wan_state_dict(model), fmt, wan_dit_selected))
    loaded, _ = load_dit(path, model.config, scheme=scheme)
    plain, _ = load_dit(path, model.config, scheme=fmt)
    layers = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert layers and {m.kernel_preference for m in layers} == {asked}
    assert {m.kernel_preference for m in plain.modules() if isinstance(m, QuantLinear)} == {"auto"}
    monkeypatch.setattr(base, "cuda_capability", lambda device: cap)  # pretend cuda:0 is that GPU
    layer, other = loaded.blocks[0].attn1.to_q, plain.blocks[0].attn1.to_q
    assert select_kernel(layer.fmt, CUDA, layer.kernel_preference, layer=layer).name == asked
    assert select_kernel(other.fmt, CUDA, other.kernel_preference, layer=other).name == auto
    # the same preference as quantizing on load gives
    fresh = QuantLinear.from_linear(torch.nn.Linear(layer.in_features, layer.out_features), fmt, kernel=asked)
    assert fresh.kernel_preference == layer.kernel_preference
