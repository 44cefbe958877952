"""The native block-scaled GEMM (torch_mx) on a Blackwell GPU, against the reference, outputs poisoned.

Run on sm100 / sm120: python -m pytest -q tests/gpu/test_torch_mx_gpu.py. Skipped on other GPUs.
A failure here means the first-use check would also refuse the kernel (or should have): report it
with the GPU, the driver and the torch version.
"""
import pytest
import torch
from torch import nn

from engine.kernels import explain, torch_mx
from engine.kernels.emulated import reference_linear
from engine.linear import QuantLinear

SIZES = [(1, 256, 384), (37, 512, 640), (200, 1536, 1536), (1000, 1024, 4480), (4100, 5120, 5120)]


def poison():
    """Fill the allocator's free blocks with NaN so that an output element no kernel wrote shows up."""
    junk = torch.full((min(torch.cuda.mem_get_info()[0] // 4, 2**28),), float("nan"), device="cuda")
    del junk


def blackwell_or_skip():
    major, minor = torch.cuda.get_device_capability()
    if major not in torch_mx.BLACKWELL_MAJORS:
        pytest.skip(f"native block-scaled GEMMs need sm100/sm120; this GPU is {major}.{minor}")


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4", "mxfp4"])
@pytest.mark.parametrize("m,k,n", SIZES)
def test_native_gemm_matches_reference_and_is_selected(fmt, m, k, n):
    blackwell_or_skip()
    gen = torch.Generator(device="cuda").manual_seed(m * 7 + k + n)
    lin = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5)
    layer = QuantLinear.from_linear(lin, fmt)  # kernel="auto": the native one must win on its own
    why = dict(explain(fmt, torch.device("cuda"), layer))["torch_mx"]
    if fmt == "mxfp4" and why and "has no native" in why:
        pytest.skip(why)  # torch builds MXFP4 only with its optional GEMM library, and only for sm100
    assert why is None, why
    x = torch.randn(m, k, device="cuda", generator=gen)
    x[:, :3] *= 30
    x = x.to(torch.bfloat16)
    want = reference_linear(layer, x).float()
    for _ in range(2):
        poison()
        got = layer(x)
        assert layer.kernel_for(x.device).name == "torch_mx"
        assert torch.isfinite(got).all(), "unwritten or non-finite output"
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < 1e-2, f"{fmt} {m}x{k}x{n}: {err}"  # same quantized product; bf16 output rounding


def test_first_use_check_passed_for_the_main_formats():
    blackwell_or_skip()
    for fmt in ("mxfp8", "nvfp4"):
        assert dict(explain(fmt, torch.device("cuda")))["torch_mx"] is None
    assert torch_mx._verdicts[("nvfp4", torch.cuda.current_device())] is None
