"""Run by tests/test_kernels_triton_interpret.py in a subprocess with TRITON_INTERPRET=1 (set before
triton is imported): our Triton kernels on the CPU, small shapes, against engine/formats."""
import sys

import torch
import torch.nn.functional as F

from engine.formats import get_format
from engine.kernels import triton_gemm, triton_mx, triton_quant, triton_wan


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_quantize_rows(gen):
    for kind, fmt in (("fp8_row", "fp8"), ("int8_row", "int8"), ("fp8_g128", "fp8_block128")):
        x = (torch.randn(7, 300, generator=gen) * 3)
        x[:, 5] *= 40
        q, s = triton_quant.quantize_rows(x, kind, pad=4)
        ref = get_format(fmt).quantize_activation(x)
        assert q.shape[0] == 8 and (q[7:].float() == 0).all(), kind
        assert torch.equal(s[:7].float(), ref.scale.float()), kind
        assert torch.equal(q[:7].float(), ref.data.float()), kind


def check_gelu_and_norm(gen):
    x = torch.randn(5, 200, generator=gen).to(torch.bfloat16)
    q, s = triton_quant.quantize_rows(x, "fp8_row", gelu=True)
    f = get_format("fp8")
    want = f.dequantize_activation(f.quantize_activation(F.gelu(x, approximate="tanh").float()))
    # the interpreter truncates bf16 casts (the GPU rounds): compare at fp8 precision
    assert rel(f.dequantize_activation(type(f.quantize_activation(x))(q, s)), want) < 0.03
    b, n, d = 2, 3, 256
    h, y = (torch.randn(b, n, d, generator=gen).to(torch.bfloat16) for _ in range(2))
    gate, shift = torch.randn(b, 1, d, generator=gen), torch.randn(b, 1, d, generator=gen)
    scale = torch.randn(b, 1, d, generator=gen) * 0.1
    w, bias = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    new_h, q, s = triton_quant.norm_quant(h, "int8_row", 1e-6, y=y, gate=gate, weight=w, bias=bias,
                                          shift=shift, scale=scale)
    h2 = (h.float() + y.float() * gate).to(torch.bfloat16)
    assert rel(new_h, h2) < 1e-2
    n_ = F.layer_norm(h2.float(), (d,), w, bias, 1e-6) * (1 + scale) + shift
    got = q.float() * s
    assert rel(got, n_.reshape(-1, d)) < 0.02


def check_gemm(gen):
    for fmt, kind in (("int8", "int8_row"), ("fp8", "fp8_row"), ("fp8_block128", "fp8_g128")):
        m, k, n = 37, 384, 200
        x, w, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) / 20, torch.randn(n, generator=gen)
        f = get_format(fmt)
        qw = f.quantize_weight(w)
        q, s = triton_quant.quantize_rows(x, kind)
        y = triton_gemm.scaled_gemm(q, qw.data, s, qw.scale.contiguous(), b, torch.float32, fmt == "fp8_block128")
        want = f.dequantize_activation(f.quantize_activation(x)) @ f.dequantize_weight(qw).t() + b
        assert rel(y, want) < 1e-5, fmt


def check_mx(gen):
    from torch import nn

    from engine.linear import QuantLinear
    for fmt in ("mxfp8", "mxfp4", "nvfp4"):
        f = get_format(fmt)
        x = torch.randn(9, 256, generator=gen)
        x[:, 3] *= 30
        got = triton_mx.fake_quantize(x, fmt, out_dtype=torch.float32)
        assert torch.equal(got, f.dequantize_activation(f.quantize_activation(x))), fmt
        layer = QuantLinear.from_linear(nn.Linear(256, 48), fmt)
        w = triton_mx.unpack_weight(layer, torch.float32)
        assert torch.equal(w, f.dequantize_weight(layer.quantized_weight())), fmt


def check_wan_elementwise(gen):
    # 3 heads: the kernel pads the head count to a power of two
    b, n, heads, hd = 1, 6, 3, 16
    d = heads * hd
    x = torch.randn(b, n, d, generator=gen).to(torch.bfloat16)
    w = torch.randn(d, generator=gen)
    ang = torch.randn(n, hd // 2, generator=gen).repeat_interleave(2, dim=1)
    cos, sin = ang.cos(), ang.sin()
    got = triton_wan.rmsnorm_rope(x, w, 1e-6, hd, cos, sin)
    normed = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w).unflatten(2, (heads, hd))
    x1, x2 = normed[..., 0::2], normed[..., 1::2]
    c, s_ = cos[None, :, None, 0::2], sin[None, :, None, 1::2]
    want = torch.stack([x1 * c - x2 * s_, x1 * s_ + x2 * c], dim=-1).flatten(-2).flatten(2)
    assert rel(got, want) < 1e-2
    assert rel(triton_wan.rmsnorm_rope(x, w, 1e-6, hd), normed.flatten(2)) < 1e-2
    h, y, g = x, torch.randn(b, n, d, generator=gen).to(torch.bfloat16), torch.randn(b, 1, d, generator=gen)
    assert rel(triton_wan.gated_residual(h, y, g), h.float() + y.float() * g) < 1e-2



def check_quantize_heads(gen):
    x = torch.randn(2, 16, 5, 3, 32, generator=gen)[:, :, 0].transpose(1, 2)  # [B, S=3, H=16, Dh=32] view
    x = x.permute(0, 1, 2, 3)
    for kind in ("fp8_row", "int8_row", "fp8_g128"):
        q, s = triton_quant.quantize_heads(x, kind, pad=4)
        q2, s2 = triton_quant.quantize_rows(x.reshape(6, 512), kind, pad=4)
        assert torch.equal(q.float(), q2.float()) and torch.equal(s.float(), s2.float()), kind


if __name__ == "__main__":
    gen = torch.Generator().manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for check in (check_quantize_rows, check_gelu_and_norm, check_gemm, check_mx, check_wan_elementwise,
                  check_quantize_heads):
        check(gen)
        print("ok", check.__name__, flush=True)

