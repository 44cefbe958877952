"""exp2 on the FMA pipe by a polynomial, for part of the softmax's scores (FlashAttention-4's trick).

Why: on Hopper the MUFU unit does 16 ex2 per clock per SM, and in our 8-bit attention kernel one ex2
per score costs about as much as both 8-bit MMAs together (docs/benchmarks.md). A polynomial on the
FMA/ALU pipes (128 FP32 ops per clock per SM, ~9 instructions here) takes a share of them off MUFU.

The math, for x ≤ 128 (the kernel's exponents are ≤ log2(448) + rounding, about 8.8):
    x  = max(x, -127)                      -inf (masked keys) and anything below give exactly 0
    r  = x + 1.5·2^23                      rounds to the nearest integer j: r's low bits hold j
    f  = x - (r - 1.5·2^23)                f = x - j in [-0.5, 0.5]
    p  = 1 + f·(C1 + f·(C2 + f·C3))        ≈ 2^f in [0.707, 1.414], p(0) = 1 exactly
    2^x = bits(p) + (bits(r) << 23)        the shift keeps j << 23 (mod 2^32), j's exponent add
C1..C3 minimise the maximum relative error on [-0.5, 0.5] with p(0) = 1 fixed (linear program over
4001 points, rounded to float32); evaluated in float32 the maximum relative error is 1.02e-4
(tests/test_fma_exp2.py checks < 1.5e-4), far under FP8 e4m3's half-ulp 2^-4 that P is rounded to
next. A degree-2 fit gives 2.0e-3, too close to a rounding tie too often. p(0) = 1 exactly is what
makes x ≤ -127 give 0: j = -127, f = 0, bits(1.0) - (127 << 23) = 0; for x in (-127, -126.5) the
sum is a positive denormal below 2^-126 (f ≥ 0 so p ≥ 1, no borrow into the sign bit), which FP8
rounds to 0 like MUFU's flushed result.

Splitting a tile between MUFU and the polynomial (`count` of every 4 scores by polynomial):
- "asm": inline PTX over 4 of a thread's registers at a time, ex2.approx on the first 4 - count,
  the polynomial on the rest; no layout change. The interpreter cannot run PTX, so under
  TRITON_INTERPRET the same split is computed by `tl.where` on the column (`"where"`), same math.
- "tl": half and half by reshaping the tile to [M, N/2, 2] and tl.split (even columns MUFU, odd
  columns polynomial); free only if the compiler keeps column pairs in one thread's registers.
count 4 is the polynomial everywhere, plain Triton.
"""
from __future__ import annotations

import struct

import triton
import triton.language as tl

C1, C2, C3 = 0.6932829022407532, 0.2422109693288803, 0.055009059607982635  # float32 values
MAGIC = 12582912.0  # 1.5·2^23
CLAMP = -127.0


def _hex(x: float) -> str:
    """A float32 as a PTX immediate (0fXXXXXXXX)."""
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", x))[0]


def _poly_ptx(dst: str, src: str) -> str:
    """PTX lines computing dst = 2^src by the polynomial (b32 registers x, r, f, e declared)."""
    return "\n".join([
        f"max.f32 x, {src}, {_hex(CLAMP)};",
        f"add.rn.f32 r, x, {_hex(MAGIC)};",
        f"sub.rn.f32 f, r, {_hex(MAGIC)};",
        "sub.rn.f32 f, x, f;",
        f"fma.rn.f32 x, f, {_hex(C3)}, {_hex(C2)};",
        f"fma.rn.f32 x, x, f, {_hex(C1)};",
        f"fma.rn.f32 x, x, f, {_hex(1.0)};",
        "shl.b32 e, r, 23;",
        f"add.s32 {dst}, x, e;"])


def mixed_ptx(count: int) -> str:
    """PTX for 4 packed elements ($0..$3 out, $4..$7 in): MUFU for the first 4 - count."""
    lines = ["{", ".reg .b32 x, r, f, e;"]
    for i in range(4):
        if i < 4 - count:
            lines.append(f"ex2.approx.ftz.f32 ${i}, ${i + 4};")
        else:
            lines.append(_poly_ptx(f"${i}", f"${i + 4}"))
    lines.append("}")
    return "\n".join(lines)


PTX_1 = tl.constexpr(mixed_ptx(1))
PTX_2 = tl.constexpr(mixed_ptx(2))
PTX_3 = tl.constexpr(mixed_ptx(3))


@triton.jit
def exp2_poly(x):
    """2^x by the polynomial, elementwise, plain Triton (the module docstring's math)."""
    x = tl.maximum(x, -127.0)
    r = x + 12582912.0
    f = x - (r - 12582912.0)
    p = tl.fma(tl.fma(tl.fma(f, 0.055009059607982635, 0.2422109693288803), f, 0.6932829022407532), f, 1.0)
    bits = p.to(tl.int32, bitcast=True) + (r.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def exp2_split(x, COUNT: tl.constexpr, SPLIT: tl.constexpr):
    """2^x on a [M, N] tile, COUNT of every 4 scores by the polynomial, the rest by MUFU; SPLIT is
    "asm", "where" (asm's interpreter stand-in) or "tl" (COUNT 2 only); see the module docstring."""
    if COUNT == 0:
        y = tl.math.exp2(x)
    elif COUNT == 4:
        y = exp2_poly(x)
    elif SPLIT == "asm":
        if COUNT == 1:
            y = tl.inline_asm_elementwise(PTX_1, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
        elif COUNT == 2:
            y = tl.inline_asm_elementwise(PTX_2, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
        else:
            y = tl.inline_asm_elementwise(PTX_3, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
    elif SPLIT == "where":
        col = tl.arange(0, x.shape[1])[None, :] % 4
        y = tl.where(col >= 4 - COUNT, exp2_poly(x), tl.math.exp2(x))
    else:
        tl.static_assert(COUNT == 2, "the tl split does half and half only")
        a, b = tl.split(tl.reshape(x, [x.shape[0], x.shape[1] // 2, 2]))
        y = tl.reshape(tl.join(tl.math.exp2(a), exp2_poly(b)), [x.shape[0], x.shape[1]])
    return y
