"""Run by tests/test_kernels_triton_interpret.py in a subprocess with TRITON_INTERPRET=1 (set before
triton is imported): our Triton kernels on the CPU, small shapes, against engine/formats."""
import sys
import types
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from engine.formats import get_format
from engine.kernels import triton_gemm, triton_mx, triton_quant, triton_wan


def gpu_branch():
    """Make the interpreter take the branch a GPU takes (triton_quant.HW_FP8_CAST true).

    That branch uses three hardware primitives the interpreter cannot run as they are: libdevice's
    rint, exp2 and fast_dividef (extern calls: triton 3.9's interpreter returns None for them) and the
    float32 -> e4m3 cast (the interpreter rounds the mantissa half-up and can drop its carry; the GPU's
    cvt.rn.satfinite rounds to nearest even). Here they get their documented semantics from numpy and
    torch (fast_dividef as an exact division), so what is checked is the branch's own logic, with the
    primitives taken as specified; the primitives themselves are checked only on a GPU (tests/gpu)."""
    import triton.language as tl
    from triton.runtime import interpreter

    used = Counter()

    def elementwise(fn):  # a libdevice call on interpreter tensors, computed by numpy
        def call(*args):
            used[fn.__name__] += 1
            x = args[0]
            data = fn(*[a.handle.data if hasattr(a, "handle") else a for a in args])
            handle = interpreter.TensorHandle(np.asarray(data, dtype=x.handle.data.dtype), x.handle.dtype)
            return tl.core.tensor(handle, x.type)
        return call

    convert = interpreter._convert_float

    def convert_float(values, src, dst, rounding):
        if dst == tl.float8e4nv and src == tl.float32:  # round to nearest even, saturating (satfinite)
            used["e4m3 cast"] += 1
            f = torch.from_numpy(np.array(values, dtype=np.float32)).clamp(-448, 448)
            return f.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        return convert(values, src, dst, rounding)

    interpreter._convert_float = convert_float
    triton_quant.libdevice = types.SimpleNamespace(rint=elementwise(np.rint), exp2=elementwise(np.exp2),
                                                   fast_dividef=elementwise(np.divide))
    triton_quant.HW_FP8_CAST = tl.constexpr(True)
    return used


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


def _mx_input(m, k, gen):
    """Awkward rows for quantize_mx: outliers, a zero row, negative zeros and tiny negatives (whose
    codes keep the sign bit), and blocks that put elements and scales exactly on rounding ties.
    bf16 values: on fp32 inputs the reference's fp32 log2 can round a scale exponent down when
    amax/elem_max is an ulp above a power of two; for bf16 and fp16 values it never does (checked
    offline for every one of them)."""
    x = torch.randn(m, k, generator=gen) * 3
    x[:, 1] *= 50
    x[7] *= 1000
    x[3] = 0
    x[5] = -torch.rand(k, generator=gen) * 1e-3
    x[5, ::3] = -0.0
    e2m1_ties = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]  # amax 6: scale 1 for MXFP4, and NVFP4 at gs 1
    e4m3_ties = [448.0, 1.0625, 1.1875, 1.5 * 2 ** -9, 0.5 * 2 ** -9]  # amax 448: scale 1 for MXFP8; subnormal ties
    x[9] = 0
    x[9, :16] = torch.tensor(e2m1_ties + [-v for v in e2m1_ties])
    x[9, 32:42] = torch.tensor(e4m3_ties + [-v for v in e4m3_ties])
    x[11, :48] = torch.tensor([6.375, 7.125, 1.0]).repeat_interleave(16)  # NVFP4 e4m3 scales 1.0625, 1.1875 at gs 1
    return x.to(torch.bfloat16)


def check_quantize_mx(gen):
    from engine.formats.swizzle import swizzle

    def assert_same(q, ref, rows, what):
        data, scale = q.data.view(torch.uint8), q.scale.view(torch.uint8)
        assert torch.equal(data[:rows], ref.data.view(torch.uint8)), what
        assert torch.equal(scale[:rows], ref.scale.view(torch.uint8)), what
        assert not data[rows:].any() and not scale[rows:].any(), what

    cases = [("mxfp8", None), ("mxfp4", None), ("nvfp4", None), ("nvfp4", 6 * 448 / 20.0), ("nvfp4", 1.0)]
    for fmt, gs in cases:
        gs = None if gs is None else torch.tensor([gs])
        for k in (160, 96, 64):
            x = _mx_input(37, k, gen)
            ref = get_format(fmt).quantize_activation(x, gs)
            q = triton_mx.quantize_mx(x, fmt, gs, pad_rows=128, swizzled=k == 160)
            what = f"{fmt} gs={gs} k={k}"
            assert q.data.shape[0] == 128 and q.data.dtype == (torch.float8_e4m3fn if fmt == "mxfp8" else torch.uint8)
            if fmt == "nvfp4":
                assert torch.equal(q.global_scale, ref.global_scale), what
            if k == 160:  # 5 or 10 blocks: swizzle pads them to a multiple of 4 with zeros
                assert torch.equal(q.scale.view(torch.uint8), swizzle(ref.scale.view(torch.uint8))), what
                assert torch.equal(q.data[:37].view(torch.uint8), ref.data.view(torch.uint8)), what
            else:
                assert_same(q, ref, 37, what)
    # every finite bf16 magnitude as a block's amax, either sign: the e8m0 exponent across its whole
    # range, subnormals and the 2**-127 floor included. Passed as fp32 holding bf16 values: the
    # interpreter's bf16 -> fp32 cast mangles subnormals (a GPU's is a shift)
    mags = torch.arange(0, 0x7F80, dtype=torch.int16).view(torch.bfloat16).float()
    for fmt in ("mxfp8", "mxfp4"):
        x = torch.zeros(mags.numel(), 32)
        x[:, 0] = torch.where(torch.arange(mags.numel()) % 2 == 1, -mags, mags)
        x[:, 1:] = x[:, :1] * torch.rand(mags.numel(), 31, generator=gen)
        x = x.reshape(128, -1).to(torch.bfloat16).float()  # 255 blocks a row
        assert_same(triton_mx.quantize_mx(x, fmt, pad_rows=1), get_format(fmt).quantize_activation(x), x.shape[0], fmt)


def check_torch_mx_operands(gen):
    """torch_mx's CUDA path (quantize_mx writing swizzled scales) hands scaled_mm the same bytes as
    its torch path (the format's quantizer, then swizzle); scaled_mm is test_torch_mx's decoder."""
    from torch import nn

    from engine.kernels import torch_mx
    from engine.linear import QuantLinear
    from tests.test_torch_mx import fake_scaled_mm

    def raw(t):
        return [raw(e) for e in t] if isinstance(t, list) else t.contiguous().view(torch.uint8)

    seen = []
    fused, mm = torch_mx._fused_quantizer, torch_mx.scaled_mm
    torch_mx.scaled_mm = lambda a, b, scale_a, *args, **kw: seen.append(raw([a, scale_a])) or fake_scaled_mm(
        a, b, scale_a, *args, **kw)
    kernel = torch_mx.TorchMXKernel()
    try:
        for fmt, gs in (("mxfp8", None), ("mxfp4", None), ("nvfp4", None), ("nvfp4", 6 * 448 / 20.0)):
            layer = QuantLinear.from_linear(nn.Linear(160, 48), fmt)
            if gs is not None:
                layer.input_global_scale = torch.tensor([gs])
            kernel.prepare(layer)
            x = _mx_input(37, 160, gen)
            outs = []
            for use_triton in (False, True):
                torch_mx._fused_quantizer = lambda x, use_triton=use_triton: use_triton
                outs.append(kernel.forward(layer, x))
            (a0, s0), (a1, s1) = seen[-2:]
            assert torch.equal(a0, a1) and torch.equal(outs[0], outs[1]), fmt
            assert all(torch.equal(u, v) for u, v in zip(s0, s1)) if fmt == "nvfp4" else torch.equal(s0, s1), fmt
    finally:
        torch_mx._fused_quantizer, torch_mx.scaled_mm = fused, mm


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
    used = gpu_branch() if sys.argv[2:] == ["gpu-branch"] else None
    for check in (check_quantize_rows, check_gelu_and_norm, check_gemm, check_mx, check_wan_elementwise,
                  check_quantize_heads, check_quantize_mx, check_torch_mx_operands):
        check(gen)
        print("ok", check.__name__, flush=True)
    if used is not None:  # the branch really ran: every emulated primitive was reached
        assert set(used) == {"rint", "exp2", "divide", "e4m3 cast"}, used
        print("gpu branch primitives", dict(used))

