"""Run by tests/test_attention_fp8.py in a subprocess with TRITON_INTERPRET=1 (set before triton is
imported): the FP8 quantize launch of the cuDNN path against reference.quantize_fp8_tensor."""
import sys

import torch

from engine.attention import fp8_qkv
from engine.attention import interpret_fix
from engine.attention import reference as R

interpret_fix.install()
seed = int(sys.argv[1])
# 1 token (the smoothed K is all zeros), a partial 128-token block, several statistics chunks
# (CHUNK = 1024), permuted views as the fused block passes them, heads 12
for i, (b, s, h, d) in enumerate([(1, 1, 2, 32), (2, 77, 3, 32), (1, 1100, 2, 16), (1, 130, 12, 16)]):
    q, k, v = R.wan_like_qkv(b, s, h, d, seed=seed + i)
    if i == 3:  # strided: [B, S, H, D] views of [B, H, S, D] memory
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    x = fp8_qkv.quantize_fp8(q, k, v)
    kd = k.double()
    for name, t, got, row in (("q", q.double(), x.q8, 0), ("k", kd - kd.mean(1, keepdim=True), x.k8, 1),
                              ("v", v.double(), x.v8, 2)):
        want, scale = R.quantize_fp8_tensor(t)
        got_scale = x.scales[row, 0].double()
        assert torch.equal(x.scales[row], x.scales[row, :1].expand(4)), (name, x.scales)
        assert abs(got_scale / scale - 1) < 1e-6, (name, float(got_scale), float(scale))
        # every e4m3 code equal, except at a rounding tie of the float64 value: bf16 inputs make exact
        # ties common (amax 3.875, v 0.7265625 -> 84.0, halfway between 80 and 88), and the float32
        # scale or K mean, one rounding step off the float64 one, decides them; then one e4m3 step
        got = got.double()
        differ = got != want
        exact = (t / scale).clamp(-448, 448)
        # K: the float32 mean (chunked sums) is a few float32 ulps off the float64 one, so a near-tie
        # within 1e-3 of a code step may go either way
        tie = (exact - (got + want) / 2).abs() <= 1e-5 * exact.abs() + (1e-3 if name == "k" else 0.0)
        assert got.is_contiguous() and got.shape == q.shape, name
        assert bool(tie[differ].all()), (name, (b, s, h, d), int(differ.sum()), int((differ & ~tie).sum()))
        step = torch.maximum(got.abs(), want.abs()) / 8 + 2.0 ** -9  # one e4m3 step (3 mantissa bits)
        assert bool(((got - want).abs() <= step).all()), (name, (b, s, h, d))
    print(f"ok {(b, s, h, d)}")
