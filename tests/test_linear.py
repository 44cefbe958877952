"""QuantLinear against float64 references, with outlier activation channels."""
import pytest
import torch
from torch import nn

from engine.errors import KernelError
from engine.formats import get_format
from engine.kernels import explain, select_kernel
from engine.linear import QuantLinear
from reference import reference_dequant

# Relative Frobenius error of y = x W^T + b against the float64 product, activations with four
# outlier channels 40x larger than the rest. int8 and fp8 use issue #5's accuracy targets (0.06,
# 0.036). The others are the largest error seen over 300 seeds of these inputs plus a margin
# (fp8_block128: mean 0.0287, max 0.0327; mxfp8 0.038; fp8_tensor 0.037; nvfp4 0.125; mxfp4 0.185).
# Issue #5's 0.03 for block fp8 is for the benchmark's inputs and is checked there, on the GPU.
BOUNDS = {"int8": 0.06, "fp8": 0.036, "fp8_block128": 0.035, "mxfp8": 0.045, "fp8_tensor": 0.045,
          "nvfp4": 0.15, "mxfp4": 0.22}


def outlier_input(rng, m=97, k=512):
    x = torch.randn(m, k, generator=rng)
    x[:, torch.randperm(k, generator=rng)[:4]] *= 40
    return x


@pytest.mark.parametrize("fmt", sorted(BOUNDS))
def test_output_close_to_float64_product(fmt, rng):
    lin = nn.Linear(512, 384)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(384, 512, generator=rng) / 512 ** 0.5)
    x = outlier_input(rng)
    want = x.double() @ lin.weight.double().t() + lin.bias.double()
    got = QuantLinear.from_linear(lin, fmt)(x).double()
    err = ((got - want).norm() / want.norm()).item()
    assert err <= BOUNDS[fmt], f"{fmt}: relative error {err:.4f} > {BOUNDS[fmt]}"


@pytest.mark.parametrize("fmt", ["int8", "fp8", "fp8_tensor", "fp8_block128", "mxfp8", "nvfp4"])
def test_reference_kernel_equals_dequantize_then_matmul(fmt, rng):
    """The emulated kernel is the yardstick for fast kernels: it must be exactly the format's math.

    The format's quantizers are checked against the float64 model in test_formats.py (where float32
    and float64 may round a near-tie differently); here the products are compared in float64.
    """
    f = get_format(fmt)
    lin = nn.Linear(256, 136)
    x = outlier_input(rng, m=33, k=256)
    xq = f.dequantize_activation(f.quantize_activation(x)).double()
    wq = f.dequantize_weight(f.quantize_weight(lin.weight.detach())).double()
    assert torch.allclose(wq, reference_dequant(fmt, lin.weight.detach(), "weight"), rtol=0.13, atol=1e-3)
    want = xq @ wq.t() + lin.bias.double()
    got = QuantLinear.from_linear(lin, fmt)(x).double()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_leading_dims_bias_and_dtype_are_kept():
    lin = nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    q = QuantLinear.from_linear(lin, "int8")
    x = torch.randn(2, 3, 5, 64, dtype=torch.bfloat16)
    y = q(x)
    assert y.shape == (2, 3, 5, 32) and y.dtype == torch.bfloat16 and q.bias is None


def test_state_dict_uses_lightx2v_names_and_reloads_from_meta():
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_linear(lin, "nvfp4")
    sd = q.state_dict()
    assert set(sd) == {"weight", "weight_scale", "weight_global_scale", "bias"}
    fresh = QuantLinear(64, 32, "nvfp4", device="meta", bias_dtype=lin.bias.dtype)
    fresh.load_state_dict(sd, assign=True)
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), q(x))


def test_weight_bytes_shrink():
    lin = nn.Linear(1024, 1024, bias=False).to(torch.bfloat16)
    bf16 = lin.weight.numel() * 2
    for fmt, limit in {"int8": 0.52, "fp8": 0.52, "fp8_block128": 0.52, "mxfp8": 0.52, "nvfp4": 0.30}.items():
        q = QuantLinear.from_linear(lin, fmt)
        size = sum(t.numel() * t.element_size() for t in q.buffers())
        assert size / bf16 <= limit, fmt


def test_kernel_choice_explains_itself_on_cpu():
    reasons = dict(explain("fp8", torch.device("cpu")))
    assert reasons["emulated"] is None
    assert select_kernel("fp8", torch.device("cpu")).name == "emulated"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_kernel_lists_every_reason():
    with pytest.raises(KernelError, match="no kernel can run fp8") as e:
        select_kernel("fp8", torch.device("cuda"))  # no kernel takes a device this machine lacks
    assert "emulated" in str(e.value) and "compute capability 8.9" in str(e.value)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "mxfp8", "nvfp4"])
def test_dtype_casts_leave_quantized_buffers_alone(fmt):
    """`pipe.to(torch.bfloat16)` is common; float8 counts as floating point, so a plain module would
    turn the fp8 weight and fp32 scales into bf16."""
    q = QuantLinear.from_linear(nn.Linear(64, 32), fmt)
    before = {k: (v.dtype, v.clone()) for k, v in q.state_dict().items() if k != "bias"}
    x = torch.randn(3, 64)
    want = q(x)
    q.to(torch.bfloat16)
    assert q.bias.dtype == torch.bfloat16
    for name, (dtype, value) in before.items():
        buf = getattr(q, name)
        assert buf.dtype == dtype and torch.equal(buf.view(torch.uint8), value.view(torch.uint8)), name
    assert torch.allclose(q.float()(x), want, atol=1e-2)


def test_to_empty_from_meta_keeps_formats():
    q = QuantLinear(64, 32, "fp8", device="meta")
    q.to_empty(device="cpu")
    assert q.weight.device.type == "cpu" and q.weight.dtype == torch.float8_e4m3fn


def test_fp8_kernel_choice_weighs_the_layer_shape_on_hopper(monkeypatch):
    """On sm90 the TMA Triton GEMM goes first for the 14B FFN shapes (measured faster than cuBLAS
    there), cuBLAS for smaller layers; Ada keeps cuBLAS."""
    from engine.kernels import base, triton_gemm
    if triton_gemm.triton is None or triton_gemm.TensorDescriptor is None:
        pytest.skip("needs triton with host TMA descriptors")
    cuda = torch.device("cuda", 0)
    layers = {shape: QuantLinear(*shape, "fp8", device="meta") for shape in
              [(5120, 13824), (13824, 5120), (5120, 5120), (1536, 8960)]}
    for cap, want in (((9, 0), {(5120, 13824): "triton", (13824, 5120): "triton"}), ((8, 9), {})):
        monkeypatch.setattr(base, "cuda_capability", lambda device, cap=cap: cap)
        for shape, layer in layers.items():
            assert select_kernel("fp8", cuda, layer=layer).name == want.get(shape, "torch"), (cap, shape)
            assert [name for name, why in explain("fp8", cuda, layer) if why is None][:2] in (
                ["triton", "torch"], ["torch", "triton"])
    monkeypatch.setattr(triton_gemm, "USE_TMA", False)  # WANQ_GEMM_TMA=0: the pointer kernel, so cuBLAS
    monkeypatch.setattr(base, "cuda_capability", lambda device: (9, 0))
    assert select_kernel("fp8", cuda, layer=layers[(5120, 13824)]).name == "torch"
