"""Every GPU kernel against the emulated reference, on awkward sizes, with poisoned outputs.

Run on a CUDA machine: python -m pytest -q tests/gpu. Skipped elsewhere.
"""
import pytest
import torch
from torch import nn

from engine.kernels import explain
from engine.kernels.emulated import reference_linear
from engine.linear import QuantLinear

CASES = [("fp8", "torch"), ("fp8", "triton"), ("int8", "torch"), ("int8", "triton"),
         ("fp8_block128", "torch"), ("fp8_block128", "triton"), ("fp8_tensor", "torch"),
         ("mxfp8", "triton_mx"), ("mxfp4", "triton_mx"), ("nvfp4", "triton_mx")]
SIZES = [(1, 256, 384), (7, 384, 256), (33, 512, 640), (257, 1536, 1536), (1000, 1024, 8960 // 2)]


def poison():
    """Fill the allocator's free blocks with NaN so that an output element no kernel wrote shows up."""
    free = torch.cuda.mem_get_info()[0]
    junk = torch.full((min(free // 4, 2**28),), float("nan"), device="cuda")
    del junk


def usable(fmt, kernel, layer):
    return dict(explain(fmt, torch.device("cuda"), layer))[kernel]


@pytest.mark.parametrize("fmt,kernel", CASES)
@pytest.mark.parametrize("m,k,n", SIZES)
def test_kernel_matches_reference(fmt, kernel, m, k, n):
    gen = torch.Generator(device="cuda").manual_seed(m * 7 + k + n)
    lin = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5)
    fast = QuantLinear.from_linear(lin, fmt, kernel=kernel)
    why = usable(fmt, kernel, fast)
    if why:
        pytest.skip(why)
    x = torch.randn(m, k, device="cuda", generator=gen)
    x[:, :3] *= 30
    x = x.to(torch.bfloat16)
    want = reference_linear(fast, x).float()
    for _ in range(2):
        poison()
        got = fast(x)
        assert fast.kernel_for(x.device).name == kernel
        assert torch.isfinite(got).all(), "unwritten or non-finite output"
        err = ((got.float() - want).norm() / want.norm()).item()
        # bf16 output rounding and accumulation order; MX/NVFP4 also round the operands to bf16
        assert err < 1e-2, f"{fmt}/{kernel} {m}x{k}x{n}: {err}"


@pytest.mark.parametrize("kind,fmt", [("fp8_row", "fp8"), ("int8_row", "int8"), ("fp8_g128", "fp8_block128")])
@pytest.mark.parametrize("m,k", [(1, 128), (37, 1536), (300, 5120), (5, 13824)])
def test_activation_quantizer_matches_format(kind, fmt, m, k):
    from engine.formats import get_format
    from engine.kernels import triton_quant

    x = (torch.randn(m, k, device="cuda") * 3).to(torch.bfloat16)
    x[:, 1] *= 50
    poison()
    q, s = triton_quant.quantize_rows(x, kind, pad=16)
    ref = get_format(fmt).quantize_activation(x)
    assert q.shape[0] % 16 == 0 and q.shape[0] >= m
    assert torch.equal(q[m:].float(), torch.zeros_like(q[m:].float()))
    torch.testing.assert_close(s[:m].float(), ref.scale.float(), rtol=1e-6, atol=0)
    mismatch = (q[:m].float() != ref.data.float()).float().mean().item()
    assert mismatch < 1e-3  # 1/scale in fast division can move a rare tie by one step


def test_fused_wan_block_matches_diffusers_forward():
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel

    from engine.apply import quantize_model
    from engine.fused import install_fused_wan, uninstall_fused_wan

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64,
                                      in_channels=16, out_channels=16, text_dim=64, freq_dim=32, ffn_dim=512,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=64).to(torch.bfloat16).eval()
    lat = torch.randn(2, 16, 3, 10, 14, device="cuda", dtype=torch.bfloat16)  # 105 tokens: odd
    ctx = torch.randn(2, 512, 64, device="cuda", dtype=torch.bfloat16)
    ts = torch.tensor([300, 700], device="cuda")
    for fmt in ("fp8", "int8", "fp8_block128"):
        m = __import__("copy").deepcopy(model)
        quantize_model(m, fmt)
        with torch.no_grad():
            want = m(lat, ts, ctx, return_dict=False)[0].float()
            assert install_fused_wan(m) == 2
            poison()
            got = m(lat, ts, ctx, return_dict=False)[0].float()
            uninstall_fused_wan(m)
        assert torch.isfinite(got).all()
        err = ((got - want).norm() / want.norm()).item()
        assert err < 2e-2, f"{fmt}: fused block differs from diffusers' forward by {err}"


def test_custom_ops_compile_without_graph_breaks():
    lin = nn.Linear(512, 256, device="cuda", dtype=torch.bfloat16)
    q = QuantLinear.from_linear(lin, "fp8", kernel="triton")
    if usable("fp8", "triton", q):
        pytest.skip("fp8 triton kernel unavailable")
    x = torch.randn(77, 512, device="cuda", dtype=torch.bfloat16)
    want = q(x)
    got = torch.compile(q, fullgraph=True)(x)
    torch.testing.assert_close(got, want)
