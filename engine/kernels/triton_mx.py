"""MXFP8, MXFP4 and NVFP4 on GPUs without block-scaled tensor cores (Hopper, Ada, Ampere): emulated.

Hopper has no MX/NVFP4 GEMM (cuBLAS answers NOT_SUPPORTED; these are sm100/sm120 features), so:
  1. the activation is quantized to the format and straight back (one Triton pass, bf16 out): the
     values the GEMM sees are exactly the format's values (MX: e4m3/e2m1 times a power of two is
     exact in bf16; NVFP4: rounded to bf16 after dividing by the global scale);
  2. the weight stays packed in GPU memory (the memory saving is real) and is unpacked to a
     temporary bf16 [N, K] per forward, one Triton pass;
  3. a bf16 GEMM.
So this is slower than bf16 (two extra passes), never faster: it exists so these checkpoints run,
with their accuracy, on the GPUs people have. The kernel the registry offers is mx_emulated.py; on
Blackwell (sm100/sm120) the native block-scaled GEMM of torch_mx.py ranks above it.
Each format's layout (element, block along K, scale kind) is read from engine/formats.
"""
from __future__ import annotations

import torch

from ..formats import Quantized, get_format

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

ELEMENT_MAX = {"e4m3": 448.0, "e2m1": 6.0}  # the elements this code rounds to, and their largest values


def layout(fmt: str) -> tuple[str, int, str]:
    """(element, block along K, scale kind) of a block-scaled format, as engine/formats declares it."""
    f = get_format(fmt)
    if not f.block_scaled:
        raise ValueError(f"{fmt} is not a block-scaled (MX/NV) format")
    return f.element, f.act_block[1], f.scale_kind


if triton is not None:
    from .triton_quant import _round_e4m3, _round_half_even, _to_e4m3, row_warps

    @triton.jit
    def _round_e2m1(a):
        """a >= 0, already clamped to 6: nearest e2m1 magnitude, ties to the even code."""
        quantum = tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))
        inv_quantum = tl.where(a < 2.0, 2.0, tl.where(a < 4.0, 1.0, 0.5))  # no division: a GPU's is approximate
        return _round_half_even(a * inv_quantum) * quantum

    @triton.jit
    def _e8m0_exponent(r):
        """clamp(ceil(log2(r)), -127, 127) for r >= 0, exact from the bits, subnormal r included: the
        reference floors amax at 2**-127, so a zero block gets exponent -127 (scale byte 0)."""
        bits = r.to(tl.int32, bitcast=True)
        biased = bits >> 23
        mant = bits & 0x7FFFFF
        e = tl.where(biased == 0, tl.where(mant > 0x400000, -126, -127),
                     biased - 127 + (mant != 0).to(tl.int32))
        return tl.minimum(e, 127)

    @triton.jit
    def _exp2_int(e):
        return ((e + 127) << 23).to(tl.float32, bitcast=True)

    @triton.jit
    def _mx_blocks(v2, gs_ptr, E8M0: tl.constexpr, ELEM_MAX: tl.constexpr):
        """v2 [blocks, GROUP] float32 -> (v2 / block scale, real block scale [blocks], stored scale:
        e8m0 exponent or e4m3 value), with engine/formats' arithmetic. The divisions are div_rn
        because a GPU's `/` is approximate (div.full.f32) and would move scales at power-of-two
        edges; they run once per block, not per element."""
        amax = tl.max(tl.abs(v2), axis=1)
        if E8M0:  # power-of-two scale rounded up, so no element overflows
            stored = _e8m0_exponent(tl.math.div_rn(amax, ELEM_MAX))
            inv = _exp2_int(-stored)  # exact; stored <= 126 for any finite amax
            real = _exp2_int(stored + 1) * 0.5  # 2**-127 is subnormal: no bit pattern from _exp2_int
        else:  # NVFP4: e4m3 block scale under a global fp32 scale
            gs = tl.load(gs_ptr)
            stored = _round_e4m3(tl.minimum(tl.math.div_rn(amax, ELEM_MAX) * gs, 448.0))
            real = tl.math.div_rn(stored, gs)
            one = tl.full(real.shape, 1.0, tl.float32)
            inv = tl.where(real > 0, tl.math.div_rn(one, tl.where(real > 0, real, one)), 0.0)
        return v2 * inv[:, None], real, stored

    @triton.jit
    def _fake_quant_kernel(x_ptr, out_ptr, gs_ptr, M, K, stride_xm,
                           E2M1: tl.constexpr, E8M0: tl.constexpr, GROUP: tl.constexpr,
                           ELEM_MAX: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        v = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        y, real, _ = _mx_blocks(tl.reshape(v, (BLOCK // GROUP, GROUP)), gs_ptr, E8M0, ELEM_MAX)
        if E2M1:
            q = _round_e2m1(tl.minimum(tl.abs(y), 6.0))
            q = tl.where(y < 0, -q, q)
        else:
            q = _round_e4m3(tl.minimum(tl.maximum(y, -448.0), 448.0))
        out = tl.reshape(q * real[:, None], (BLOCK,))
        tl.store(out_ptr + row * K + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _quant_mx_kernel(x_ptr, q_ptr, s_ptr, gs_ptr, M, K, stride_xm, SCOLS, SWIZZLE: tl.constexpr,
                         E2M1: tl.constexpr, E8M0: tl.constexpr, GROUP: tl.constexpr,
                         ELEM_MAX: tl.constexpr, BLOCK: tl.constexpr):
        """One row of x -> its element bytes and scale bytes. Rows past M are the GEMM's padding:
        they read as zeros, which quantize to code 0 under scale byte 0, as the reference's zero rows."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        live = offs < tl.where(row < M, K, 0)
        v = tl.load(x_ptr + row * stride_xm + offs, mask=live, other=0.0).to(tl.float32)
        y, _, stored = _mx_blocks(tl.reshape(v, (BLOCK // GROUP, GROUP)), gs_ptr, E8M0, ELEM_MAX)
        y = tl.reshape(y, (BLOCK,))
        sign = tl.where(y.to(tl.int32, bitcast=True) < 0, 1, 0)  # signbit, -0 included, as torch's casts
        if E2M1:
            a = _round_e2m1(tl.minimum(tl.abs(y), 6.0))
            # magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 -> codes 0..7
            code = tl.where(a < 2.0, a * 2.0, tl.where(a < 4.0, a + 2.0, a * 0.5 + 4.0)).to(tl.int32) | (sign << 3)
            lo, hi = tl.split(tl.reshape(code, (BLOCK // 2, 2)))  # even element in the low nibble
            half = tl.arange(0, BLOCK // 2)
            tl.store(q_ptr + row * (K // 2) + half, (lo | (hi << 4)).to(tl.uint8), mask=half < K // 2)
        else:
            e4m3 = _to_e4m3(tl.minimum(tl.maximum(y, -448.0), 448.0)).to(tl.uint8, bitcast=True)
            # the interpreter's rounding loses the sign of values that round to zero; torch keeps it
            tl.store(q_ptr + row * K + offs, e4m3 | (sign << 7).to(tl.uint8), mask=offs < K)
        if E8M0:
            sbyte = (stored + 127).to(tl.uint8)
        else:
            sbyte = stored.to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # exact: already an e4m3 value
        c = tl.arange(0, BLOCK // GROUP)
        if SWIZZLE:  # engine.formats.swizzle's 128x4 tiles; SCOLS is the padded block count
            dst = ((row // 128) * SCOLS * 128 + (c // 4) * 512 + (row % 32) * 16 + (row % 128 // 32) * 4
                   + c % 4)
        else:
            dst = row * SCOLS + c
        tl.store(s_ptr + dst, sbyte, mask=c < SCOLS)

    @triton.jit
    def _e2m1_value(c):
        """4-bit code (int32) -> float32 value."""
        e = (c >> 1) & 3
        m = (c & 1).to(tl.float32)
        mag = tl.where(e == 0, 0.5 * m, (1.0 + 0.5 * m) * _exp2_int(e - 1))
        return tl.where((c & 8) != 0, -mag, mag)

    @triton.jit
    def _unpack_weight_kernel(w_ptr, s_ptr, gs_ptr, out_ptr, K, KS,
                              E2M1: tl.constexpr, E8M0: tl.constexpr, GROUP: tl.constexpr,
                              BLOCK: tl.constexpr):
        """One weight row: packed elements and per-block scales -> bf16 values."""
        row = tl.program_id(0).to(tl.int64)
        if E2M1:
            offs = tl.arange(0, BLOCK // 2)
            byte = tl.load(w_ptr + row * (K // 2) + offs, mask=offs < K // 2, other=0).to(tl.int32)
            v = tl.interleave(_e2m1_value(byte & 0xF), _e2m1_value(byte >> 4))  # low nibble = even element
        else:
            offs = tl.arange(0, BLOCK)
            v = tl.load(w_ptr + row * K + offs, mask=offs < K, other=0.0).to(tl.float32)
        g = tl.arange(0, BLOCK // GROUP)
        if E8M0:
            sbyte = tl.load(s_ptr + row * KS + g, mask=g < KS, other=127).to(tl.int32)
            scale = _exp2_int(tl.maximum(sbyte - 127, -126))
        else:
            scale = tl.load(s_ptr + row * KS + g, mask=g < KS, other=0.0).to(tl.float32) / tl.load(gs_ptr)
        out = tl.reshape(tl.reshape(v, (BLOCK // GROUP, GROUP)) * scale[:, None], (BLOCK,))
        cols = tl.arange(0, BLOCK)
        tl.store(out_ptr + row * K + cols, out.to(out_ptr.dtype.element_ty), mask=cols < K)


def _block(k: int) -> int:
    return max(128, triton.next_power_of_2(k))


def fake_quantize(x: torch.Tensor, fmt: str, global_scale: torch.Tensor | None = None,
                  out_dtype=torch.bfloat16) -> torch.Tensor:
    """Quantize x [M, K] to `fmt` and back, in one pass. NVFP4 needs the activation global scale
    (static from calibration, or 6*448/amax(x) computed here)."""
    elem, group, scale_kind = layout(fmt)
    m, k = x.shape
    out = torch.empty((m, k), dtype=out_dtype, device=x.device)
    if scale_kind == "e4m3" and global_scale is None:
        global_scale = (6.0 * 448.0) / x.abs().amax().float().clamp(min=1e-12)
    gs = global_scale.reshape(1).float() if global_scale is not None else out
    if x.stride(1) != 1:
        x = x.contiguous()
    block = _block(k)
    _fake_quant_kernel[(m,)](x, out, gs, m, k, x.stride(0), E2M1=elem == "e2m1", E8M0=scale_kind == "e8m0",
                             GROUP=group, ELEM_MAX=ELEMENT_MAX[elem], BLOCK=block,
                             num_warps=max(4, min(16, block // 512)))
    return out


def quantize_mx(x: torch.Tensor, fmt: str, global_scale: torch.Tensor | None = None, pad_rows: int = 128,
                swizzled: bool = False) -> Quantized:
    """x [M, K] -> the format's elements and block scales, bit for bit those of
    get_format(fmt).quantize_activation(x, global_scale), in one pass over x (NVFP4 without a static
    global scale adds the amax pass the format needs). Rows are padded with zeros to a multiple of
    `pad_rows`. data: mxfp8 float8_e4m3fn [Mp, K]; nvfp4/mxfp4 uint8 [Mp, K/2], two e2m1 codes a
    byte. scale: e8m0 as uint8 [Mp, K/32], or nvfp4 float8_e4m3fn [Mp, K/16]; with `swizzled`, laid
    out as engine.formats.swizzle.swizzle(scale) instead (Mp must then be a multiple of 128)."""
    elem, group, scale_kind = layout(fmt)
    m, k = x.shape
    if k % group:
        raise ValueError(f"{fmt}: {k} columns is not a multiple of the {group}-element block")
    mp = -(-m // pad_rows) * pad_rows
    if swizzled and mp % 128:
        raise ValueError("swizzled scales cover 128-row tiles: pad_rows must be a multiple of 128")
    ks = k // group
    gs = None
    if scale_kind == "e4m3":
        if global_scale is None:  # as Format._quantize; the inf-norm is amax(|x|) without an |x| copy
            tmax = torch.ones((), device=x.device)  # empty input: any scale works
            if x.numel():
                tmax = torch.linalg.vector_norm(x, float("inf")).float()
            global_scale = (ELEMENT_MAX[elem] * 448.0) / tmax.clamp(min=1e-12)
        gs = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(1)
    if elem == "e2m1":
        data = torch.empty((mp, k // 2), dtype=torch.uint8, device=x.device)
    else:
        data = torch.empty((mp, k), dtype=torch.float8_e4m3fn, device=x.device)
    scols = -(-ks // 4) * 4 if swizzled else ks
    scale = torch.empty((mp, scols), dtype=torch.uint8 if scale_kind == "e8m0" else torch.float8_e4m3fn,
                        device=x.device)
    if mp:
        if x.stride(1) != 1:
            x = x.contiguous()
        block = _block(k)
        _quant_mx_kernel[(mp,)](x, data.view(torch.uint8), scale.view(torch.uint8), gs if gs is not None else data,
                                m, k, x.stride(0), scols, SWIZZLE=swizzled, E2M1=elem == "e2m1",
                                E8M0=scale_kind == "e8m0", GROUP=group, ELEM_MAX=ELEMENT_MAX[elem], BLOCK=block,
                                num_warps=row_warps(block, "quantize_mx"))
    return Quantized(data=data, scale=scale, global_scale=gs, cols=k)


def unpack_weight(layer, out_dtype=torch.bfloat16) -> torch.Tensor:
    elem, group, scale_kind = layout(layer.fmt)
    n, k = layer.out_features, layer.in_features
    out = torch.empty((n, k), dtype=out_dtype, device=layer.weight.device)
    w = layer.weight.view(torch.uint8) if elem == "e2m1" else layer.weight.view(torch.float8_e4m3fn)
    s = layer.weight_scale.view(torch.uint8) if scale_kind == "e8m0" else layer.weight_scale
    gs = layer.weight_global_scale if scale_kind == "e4m3" else out
    block = _block(k)
    _unpack_weight_kernel[(n,)](w, s, gs, out, k, s.shape[1], E2M1=elem == "e2m1", E8M0=scale_kind == "e8m0",
                                GROUP=group, BLOCK=block, num_warps=max(4, min(16, block // 512)))
    return out
