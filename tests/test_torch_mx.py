"""The native Blackwell MX/NVFP4 kernel (torch_mx) on a CPU machine.

No Blackwell GPU runs here, so F.scaled_mm is replaced by a decoder written from the documented
operand layout (dtypes, recipes, the 128x4 scale tiles, e8m0 / e4m3 / e2m1 bit patterns, NVFP4's
per-tensor decode scales), computing in float64. If the kernel's arguments mean what the layout
says, its output equals the reference kernel's.
"""
import logging

import pytest
import torch
from torch import nn
from torch.nn.functional import ScalingType, SwizzleType

from engine.kernels import base, select_kernel, torch_mx
from engine.kernels.base import explain
from engine.kernels.emulated import reference_linear
from engine.linear import QuantLinear

KERNEL = torch_mx.TorchMXKernel()
CUDA0 = torch.device("cuda:0")  # a device object only: nothing is allocated on it


# ---- an independent decoder for scaled_mm's block-scaled operands ----------------------------
def decode_e8m0(b):
    return torch.exp2(b.to(torch.float64) - 127)


def decode_e4m3(b):
    b = b.to(torch.int64)
    sign = torch.where(b & 0x80 != 0, -1.0, 1.0).double()
    e, mant = (b >> 3) & 0xF, (b & 7).double()
    normal = (1 + mant / 8) * torch.exp2((e - 7).double())
    return sign * torch.where(e == 0, mant / 8 * 2.0 ** -6, normal)


def decode_e2m1(nibble):
    nibble = nibble.to(torch.int64)
    e, mant = (nibble >> 1) & 3, (nibble & 1).double()
    mag = torch.where(e == 0, mant / 2, (1 + mant / 2) * torch.exp2((e - 1).double()))
    return torch.where(nibble & 8 != 0, -mag, mag)


def tiled_to_matrix(flat, rows, cols):
    """The 128x4-tile layout, read back: tiles in row-major order, 512 bytes each, and inside a
    tile the element (r, c) at (r % 32) * 16 + (r // 32) * 4 + c."""
    prow, pcol = -(-rows // 128) * 128, -(-cols // 4) * 4
    assert flat.numel() == prow * pcol and flat.is_contiguous()
    r = torch.arange(prow).view(-1, 1)
    c = torch.arange(pcol).view(1, -1)
    tile = (r // 128) * (pcol // 4) + c // 4
    index = tile * 512 + (r % 32) * 16 + (r % 128 // 32) * 4 + c % 4
    return flat.reshape(-1).view(torch.uint8)[index]


def elements(t):
    """[rows, K] float64 values of a float8_e4m3fn or a packed float4_e2m1fn_x2 [rows, K/2] operand."""
    raw = t.contiguous().view(torch.uint8)
    if t.dtype == torch.float8_e4m3fn:
        return decode_e4m3(raw)
    assert t.dtype == torch.float4_e2m1fn_x2
    return torch.stack([decode_e2m1(raw & 0xF), decode_e2m1(raw >> 4)], dim=-1).flatten(-2)  # low = even


def fake_scaled_mm(mat_a, mat_b, scale_a, scale_recipe_a, scale_b, scale_recipe_b, swizzle_a=None,
                   swizzle_b=None, bias=None, output_dtype=torch.bfloat16, **unused):
    assert mat_a.dim() == 2 and mat_a.stride(1) == 1, "A must be row-major"
    assert mat_b.stride(0) == 1, "B must be column-major [K, N]"
    assert mat_a.dtype == mat_b.dtype and bias is None
    nv = mat_a.dtype == torch.float4_e2m1fn_x2 and isinstance(scale_a, list)
    if nv:
        assert scale_recipe_a == scale_recipe_b == [ScalingType.BlockWise1x16, ScalingType.TensorWise]
        assert swizzle_a == swizzle_b == [SwizzleType.SWIZZLE_32_4_4, SwizzleType.NO_SWIZZLE]
        (scale_a, global_a), (scale_b, global_b) = scale_a, scale_b
        assert global_a.dtype == global_b.dtype == torch.float32 and global_a.numel() == global_b.numel() == 1
        alpha, block, decode, scale_dtype = global_a.double() * global_b.double(), 16, decode_e4m3, torch.float8_e4m3fn
    else:
        assert scale_recipe_a == scale_recipe_b == ScalingType.BlockWise1x32
        assert swizzle_a == swizzle_b == SwizzleType.SWIZZLE_32_4_4
        alpha, block, decode, scale_dtype = 1.0, 32, decode_e8m0, torch.float8_e8m0fnu
    assert scale_a.dtype == scale_b.dtype == scale_dtype
    a, b = elements(mat_a), elements(mat_b.t())  # [M, K], [N, K]
    k = a.shape[1]
    assert b.shape[1] == k
    sa = decode(tiled_to_matrix(scale_a, a.shape[0], k // block))[:a.shape[0], :k // block]
    sb = decode(tiled_to_matrix(scale_b, b.shape[0], k // block))[:b.shape[0], :k // block]
    a = a * sa.repeat_interleave(block, 1)
    b = b * sb.repeat_interleave(block, 1)
    return ((a @ b.t()) * alpha).to(output_dtype)


# ---- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_verdicts():
    torch_mx._verdicts.clear()
    yield
    torch_mx._verdicts.clear()


def blackwell(monkeypatch, cap=(10, 0)):
    """Pretend cuda:N is a GPU of capability `cap` for torch_mx and the Triton kernels, and run the
    first-use check on CPU (where the fake scaled_mm lives)."""
    monkeypatch.setattr(base, "cuda_capability", lambda device: cap)
    real_verify = torch_mx.verify
    monkeypatch.setattr(torch_mx, "verify", lambda kernel, fmt, device: real_verify(kernel, fmt, torch.device("cpu")))


def make_layer(fmt, k, n, rng, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=rng) / k ** 0.5)
    return QuantLinear.from_linear(lin, fmt)


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


# ---- 1. reasons ----------------------------------------------------------------------------------
def test_reasons_on_cpu_and_before_blackwell(monkeypatch):
    assert "does not implement fp8" in KERNEL.unavailable("fp8", torch.device("cpu"))
    for fmt in ("mxfp8", "nvfp4", "mxfp4"):
        assert "needs a CUDA GPU; this is the CPU" in KERNEL.unavailable(fmt, torch.device("cpu"))
    for cap in [(9, 0), (8, 9), (11, 0)]:
        monkeypatch.setattr(base, "cuda_capability", lambda device, cap=cap: cap)
        why = KERNEL.unavailable("nvfp4", CUDA0)
        assert "Blackwell" in why and "10.x or 12.x" in why and f"{cap[0]}.{cap[1]}" in why
    assert torch_mx._verdicts == {}  # no check ran for GPUs that cannot pass it


def test_reasons_for_old_torch_and_odd_shapes(monkeypatch, rng):
    blackwell(monkeypatch, (12, 0))
    monkeypatch.setattr(torch_mx, "scaled_mm", fake_scaled_mm)
    for k, n in [(48, 64), (64, 40)]:
        why = KERNEL.unavailable("nvfp4", CUDA0, make_layer("nvfp4", k, n, rng))
        assert "multiple of 32" in why and f"{k}->{n}" in why
    monkeypatch.setattr(torch_mx, "scaled_mm", None)
    assert "no torch.nn.functional.scaled_mm" in KERNEL.unavailable("mxfp8", CUDA0)


# ---- 2. operand layout -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4", "mxfp4"])
@pytest.mark.parametrize("m,k,n", [(37, 160, 48), (200, 256, 144), (1, 64, 16), (128, 96, 32)])
def test_operands_mean_what_the_layout_says(fmt, m, k, n, monkeypatch, rng):
    monkeypatch.setattr(torch_mx, "scaled_mm", fake_scaled_mm)
    layer = make_layer(fmt, k, n, rng)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(n, generator=rng))
    x = torch.randn(m, k, generator=rng)
    x[:, torch.randperm(k, generator=rng)[:3]] *= 40
    KERNEL.prepare(layer)
    got = KERNEL.forward(layer, x)
    want = reference_linear(layer, x)
    assert got.shape == (m, n) and got.dtype == x.dtype
    # two bf16 roundings (GEMM output, then + bias) against the reference's one: up to ~2**-8
    # relative on a 16-value output; a wrong layout is off by O(1)
    assert rel_err(got, want) < 8e-3
    torch.testing.assert_close(got, want, rtol=2 ** -7, atol=2e-2 * want.abs().max().item())


def as_meta(v):
    if isinstance(v, torch.Tensor):
        return v.to("meta")
    return [as_meta(e) for e in v] if isinstance(v, list) else v


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_torch_own_argument_checks_accept_the_operands(fmt, monkeypatch, rng):
    """torch's meta function for scaled_mm runs its CUDA-side checks (sizes, dtypes, row/column-major,
    recipes, swizzles) on meta tensors. MXFP4 is left out: this torch's meta check counts its scale
    blocks from the packed width (K/2), unlike the CUDA code (ScaledBlas.cpp), which uses K."""
    shapes = []

    def checked(*args, **kw):
        out = torch.nn.functional.scaled_mm(*[as_meta(v) for v in args], **{key: as_meta(v) for key, v in kw.items()})
        shapes.append(tuple(out.shape))
        return fake_scaled_mm(*args, **kw)

    monkeypatch.setattr(torch_mx, "scaled_mm", checked)
    layer = make_layer(fmt, 160, 48, rng)
    KERNEL.prepare(layer)
    KERNEL.forward(layer, torch.randn(37, 160, generator=rng))
    assert shapes == [(128, 48)]


def test_nvfp4_static_input_scale_and_bf16_input(monkeypatch, rng):
    monkeypatch.setattr(torch_mx, "scaled_mm", fake_scaled_mm)
    layer = make_layer("nvfp4", 128, 64, rng, bias=False)
    x = (torch.randn(70, 128, generator=rng) * 3).to(torch.bfloat16)
    layer.input_global_scale = torch.tensor([6 * 448 / 20.0])  # calibrated: amax 20, some clipping
    KERNEL.prepare(layer)
    got = KERNEL.forward(layer, x)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, reference_linear(layer, x)) < 4e-3
    assert KERNEL.forward(layer, x[:0]).shape == (0, 64)


def test_weight_scales_are_swizzled_once(monkeypatch, rng):
    monkeypatch.setattr(torch_mx, "scaled_mm", fake_scaled_mm)
    layer = make_layer("mxfp8", 64, 32, rng)
    KERNEL.prepare(layer)
    cached = torch_mx.layer_cache(layer)["w_scales"]
    KERNEL.forward(layer, torch.randn(5, 64))
    assert torch_mx.layer_cache(layer)["w_scales"] is cached


# ---- 3. the first-use check ------------------------------------------------------------------
def wrong_scaled_mm(*args, **kw):
    return fake_scaled_mm(*args, **kw) * 1.1


def test_a_wrong_native_gemm_is_refused_once_and_the_emulation_runs(monkeypatch, caplog):
    blackwell(monkeypatch)
    monkeypatch.setattr(torch_mx, "scaled_mm", wrong_scaled_mm)
    with caplog.at_level(logging.WARNING, logger="engine.kernels"):
        for _ in range(3):
            reasons = dict(explain("nvfp4", CUDA0))
            assert select_kernel("nvfp4", CUDA0).name == "triton_mx"
    why = reasons["torch_mx"]
    assert "the native NVFP4 GEMM disagreed with the reference on " in why and "rel. error" in why
    assert "emulation" in why and reasons["triton_mx"] is None
    warnings = [r for r in caplog.records if "disagreed" in r.getMessage()]
    assert len(warnings) == 1  # verdict cached per (format, device)


@pytest.mark.parametrize("error,words", [(RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED\nmore"), "failed"),
                                         (NotImplementedError("MXFP4 scaling only supported on B200"), "no native")])
def test_a_raising_native_gemm_is_refused(error, words, monkeypatch):
    blackwell(monkeypatch, (12, 0))

    def raising(*args, **kw):
        raise error

    monkeypatch.setattr(torch_mx, "scaled_mm", raising)
    why = KERNEL.unavailable("mxfp4", CUDA0)
    assert words in why and str(error).splitlines()[0] in why and "emulation" in why
    assert select_kernel("mxfp4", CUDA0).name == "triton_mx"


def test_a_correct_native_gemm_is_selected_per_format_and_device(monkeypatch, rng):
    blackwell(monkeypatch)
    monkeypatch.setattr(torch_mx, "scaled_mm", fake_scaled_mm)
    layer = make_layer("mxfp8", 256, 128, rng)
    assert select_kernel("mxfp8", CUDA0, layer=layer).name == "torch_mx"
    assert select_kernel("nvfp4", CUDA0).name == "torch_mx"
    assert torch_mx._verdicts == {("mxfp8", 0): None, ("nvfp4", 0): None}
    monkeypatch.setattr(torch_mx, "scaled_mm", wrong_scaled_mm)  # another GPU, checked on its own
    assert select_kernel("mxfp8", torch.device("cuda:1")).name == "triton_mx"
    assert select_kernel("mxfp8", CUDA0).name == "torch_mx"  # cached verdict for cuda:0
