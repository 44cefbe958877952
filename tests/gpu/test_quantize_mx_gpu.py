"""triton_mx.quantize_mx on a CUDA GPU against the format's torch quantizer, bit for bit.

Any CUDA GPU (Hopper included): it needs only Triton. tests/kernels_interpret_check.py shows the same
on the CPU interpreter; here the hardware e4m3 cast, the GPU's divisions and its bf16 loads run.
"""
import pytest
import torch

from engine.formats import get_format
from engine.formats.swizzle import swizzle
from tests.kernels_interpret_check import _mx_input  # ties, negative zeros, tiny negatives

triton_mx = pytest.importorskip("engine.kernels.triton_mx")
if triton_mx.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

CASES = [("mxfp8", None), ("mxfp4", None), ("nvfp4", None), ("nvfp4", 6 * 448 / 20.0)]


def poison():
    """Fill the allocator's free blocks with NaN bytes so that an output byte no kernel wrote shows up."""
    junk = torch.full((min(torch.cuda.mem_get_info()[0] // 4, 2**28),), float("nan"), device="cuda")
    del junk


def assert_same(q, ref, rows, what):
    data, scale = q.data.view(torch.uint8), q.scale.view(torch.uint8)
    bad = (data[:rows] != ref.data.view(torch.uint8)).sum().item()
    assert bad == 0, f"{what}: {bad} element bytes differ"
    bad = (scale[:rows] != ref.scale.view(torch.uint8)).sum().item()
    assert bad == 0, f"{what}: {bad} scale bytes differ"
    assert not data[rows:].any() and not scale[rows:].any(), f"{what}: padding rows not zero"


@pytest.mark.parametrize("fmt,gs", CASES)
@pytest.mark.parametrize("k", [5120, 13824])
def test_quantize_mx_matches_format(fmt, gs, k):
    m = 1000
    gen = torch.Generator(device="cuda").manual_seed(k + len(fmt))
    x = torch.randn(m, k, device="cuda", generator=gen) * 2
    x[:, torch.randperm(k, device="cuda", generator=gen)[:8]] *= 60  # outlier channels
    x[::97] *= 300  # outlier tokens
    x[5] = 0
    x = x.to(torch.bfloat16)
    x[100:137, :160] = _mx_input(37, 160, torch.Generator().manual_seed(k)).cuda()
    gs = None if gs is None else torch.tensor([gs], device="cuda")
    ref = get_format(fmt).quantize_activation(x, gs)
    for _ in range(2):
        poison()
        q = triton_mx.quantize_mx(x, fmt, gs)
        assert q.data.shape[0] == 1024
        assert_same(q, ref, m, f"{fmt} {m}x{k}")
        if ref.global_scale is not None:
            assert torch.equal(q.global_scale, ref.global_scale)
    poison()
    qs = triton_mx.quantize_mx(x, fmt, gs, swizzled=True)
    assert torch.equal(qs.data.view(torch.uint8), q.data.view(torch.uint8))
    assert torch.equal(qs.scale.view(torch.uint8), swizzle(q.scale.view(torch.uint8)))


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp4"])
def test_quantize_mx_every_bf16_amax(fmt):
    """Every finite bf16 magnitude as the amax of a block, either sign: the e8m0 exponent over its
    whole range. Excluded: blocks whose scale amax / elem_max falls below the smallest normal float32
    (amax < 5.3e-36 for MXFP8, 7e-38 for MXFP4). There the GPU flushes subnormal float32 to zero and
    one code in a few differs (measured on H100, 2026-11-24: 836 of 32640 MXFP8 blocks, all with
    amax <= 2.6e-36); activations that small are zero for any purpose."""
    gen = torch.Generator().manual_seed(7)
    mags = torch.arange(0, 0x7F80, dtype=torch.int16).view(torch.bfloat16).float()
    x = torch.zeros(mags.numel(), 32)
    x[:, 0] = torch.where(torch.arange(mags.numel()) % 2 == 1, -mags, mags)
    x[:, 1:] = x[:, :1] * torch.rand(mags.numel(), 31, generator=gen)
    x = x.to(torch.bfloat16)
    ref = get_format(fmt).quantize_activation(x.reshape(128, -1).cuda())  # 255 blocks a row
    poison()
    q = triton_mx.quantize_mx(x.reshape(128, -1).cuda(), fmt, pad_rows=1)
    elem_max = 448.0 if fmt == "mxfp8" else 6.0
    normal = (mags >= elem_max * 2.0 ** -126).cuda()
    per_block = 32 if fmt == "mxfp8" else 16  # bytes of one 32-element block
    data, want = (t.data.view(torch.uint8).reshape(-1, per_block) for t in (q, ref))
    assert normal.sum() > 30000
    assert torch.equal(data[normal], want[normal]), f"{fmt}: element bytes differ in normal-range blocks"
    assert torch.equal(q.scale.view(torch.uint8).reshape(-1), ref.scale.view(torch.uint8).reshape(-1))
