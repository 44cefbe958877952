"""Run by tests/test_fma_exp2.py in a subprocess with TRITON_INTERPRET=1: the polynomial exp2 of
engine/attention/fma_exp2.py as Triton computes it, over a dense grid and at the edges, and the
tile splits between it and MUFU's exp2."""
import math

import torch
import triton
import triton.language as tl

from engine.attention.fma_exp2 import exp2_poly, exp2_split


@triton.jit
def _poly_kernel(X, Y, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + o, exp2_poly(tl.load(X + o, mask=o < n)), mask=o < n)


@triton.jit
def _split_kernel(X, Y, M: tl.constexpr, N: tl.constexpr, COUNT: tl.constexpr, SPLIT: tl.constexpr):
    o = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
    tl.store(Y + o, exp2_split(tl.load(X + o), COUNT, SPLIT))


def poly(x):
    y = torch.empty_like(x)
    block = 1 << 16
    _poly_kernel[(math.ceil(x.numel() / block),)](x, y, x.numel(), BLOCK=block)
    return y


# every score the kernel can feed it lies in [-inf, log2(448) + rounding]; the grid goes past both
x = torch.linspace(-126, 12, 2_000_001, dtype=torch.float32)
rel = (poly(x).double() / torch.exp2(x.double()) - 1).abs()
assert rel.max() < 1.5e-4, rel.max()
print(f"ok dense grid [-126, 12]: max relative error {rel.max():.3e}")

edge = torch.tensor([-float("inf"), -1e30, -1000.0, -128.0, -127.5, -127.0], dtype=torch.float32)
assert (poly(edge) == 0).all(), poly(edge)
low = torch.linspace(-127, -126, 10_001, dtype=torch.float32)
y = poly(low)
assert ((y >= 0) & (y <= 2.0 ** -126)).all(), y  # no borrow into the sign bit: never negative or NaN
print("ok edges: -inf and x <= -127 give exactly 0, (-127, -126) gives values in [0, 2^-126]")

# splits of a tile: each element is MUFU's exp2 or the polynomial, in the documented share
m, n = 16, 64
xt = torch.rand(m, n) * -20 + 8.8
exact, by_poly = torch.exp2(xt), poly(xt.flatten()).view(m, n)
for count, split in ((1, "where"), (2, "where"), (3, "where"), (2, "tl"), (4, "where"), (0, "tl")):
    yt = torch.empty_like(xt)
    _split_kernel[(1,)](xt, yt, M=m, N=n, COUNT=count, SPLIT=split)
    is_mufu = (yt / exact - 1).abs() < 1e-6  # the interpreter's exp2 (numpy's) may differ from torch's
    is_poly = (yt == by_poly) & ~is_mufu
    assert ((yt == by_poly) | is_mufu).all()
    want = torch.arange(n) % 4 >= 4 - count if split == "where" else torch.arange(n) % 2 == 1
    want = want[None, :].expand(m, n)
    # the polynomial's own error is under 1e-6 at a few percent of points, so those look like MUFU's
    assert not (is_poly & ~want).any() and (count == 0 or is_poly[want].float().mean() > 0.9)
    print(f"ok split {split} {count}/4: {is_poly.float().mean():.3f} of the tile by polynomial")
