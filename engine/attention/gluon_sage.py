"""Our 8-bit attention for Hopper in Gluon: the "sage8" recipe (reference.SAGE8) with a Hopper schedule.

Numerics: INT8 q·kᵀ with per-token Q scales and K scales per lane group (quantize_qkv's
k_block="lanes": the 32 keys of a 128-key block that one thread holds in the warpgroup-MMA layout
share a scale, SageAttention2's per-thread granularity), exp2 softmax, FP8 P·V with each key
block's product taken into a fresh FP32 accumulator and added at full precision. Triton 3.6 cannot
express this schedule for sm90; Gluon (triton.experimental.gluon) can:

- one producer warp loads K (and its scales) and V blocks by TMA into a ring of shared-memory stages;
- two consumer warpgroups take 64 query rows each and share every K/V stage;
- per key block, a consumer runs the softmax, then issues one batch of matrix instructions (this
  block's P·V and the next block's Q·Kᵀ) and waits for it while the other consumer's softmax runs;
  PINGPONG orders the two consumers' batches by an mbarrier handshake (FlashAttention-3's);
- with K scales per lane group, each thread takes its row maximum over raw scores and folds the
  scales into the exponent's FMA: about 100 fewer instructions per block than per-token scales,
  which is most of the speed (H200, 14B 480p: 26.3 ms against 32.4 per token; docs/benchmarks.md).

Registers are re-allocated between the partitions (setmaxnreg): the producer needs few.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
except ImportError:  # pragma: no cover - older triton, or none: the registry says so
    gluon = None

from ..errors import KernelError
from .triton_qkv import LOG2_P_SCALE, PAD, Quantized, quantize_qkv

try:
    from triton.compiler.errors import CompilationError
except ImportError:  # pragma: no cover - no triton: nothing here runs
    class CompilationError(Exception):
        pass



@dataclass(frozen=True)
class Config:
    block_n: int = 128
    stages: int = 3
    pingpong: bool = False  # measured even with it off (26.3 vs 26.6 ms, H200); kept for other GPUs
    ks_thread: bool = True  # K scales per lane group (quantize_qkv k_block="lanes"); else per token
    consumer_regs: int = 240  # setmaxnreg: 2·128·240 + 128·24 of the SM's 65,536 registers
    producer_regs: int = 24

    def label(self) -> str:
        return (f"gluon-N{self.block_n}s{self.stages}" + ("-pp" if self.pingpong else "")
                + ("-kst" if self.ks_thread else "") + f"-r{self.consumer_regs}")

    def constexprs(self) -> dict:
        """The kernel's compile-time arguments for this config (the launch and the compile tests)."""
        return dict(BLOCK_N=self.block_n, STAGES=self.stages, PINGPONG=self.pingpong, KS_THREAD=self.ks_thread,
                    CONSUMER_REGS=self.consumer_regs, PRODUCER_REGS=self.producer_regs)


DEFAULT = Config()
ROWS = 64  # query rows per consumer warpgroup; a CTA takes 2 * ROWS
HEAD_DIM = 128  # the head size the kernel is built and checked for (every Wan model's)
if gluon is not None:
    # TMA global -> shared: async_copy_global_to_shared in triton 3.6; renamed async_load later, and
    # the old name now raises at compile time (triton 3.9), so take whichever this triton has
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    BLOCK_M = gl.constexpr(ROWS)
    LOG2_448_C = gl.constexpr(LOG2_P_SCALE)  # P's FP8 scale rides in the exponent
    WG0, WG1 = gl.constexpr(0), gl.constexpr(1)  # the consumers' indices, as partition arguments


def _triton_version() -> tuple[int, int]:
    import triton
    try:
        return tuple(int(x) for x in triton.__version__.split(".")[:2])
    except ValueError:  # a local build ("3.6.0+git...") parses; anything stranger is let through
        return (99, 0)


# triton releases this kernel has run with on a GPU (docs/benchmarks.md); others compile (the CPU
# test tests/test_gluon_compile.py builds it for sm_90 with whatever triton is installed) but Gluon's
# semantics move between releases, so until a GPU run says so the Triton kernel runs there instead
GPU_CHECKED_TRITON = ((3, 6),)


def available() -> str | None:
    """None when this triton has Gluon's Hopper API in the form the kernel is written for and was run
    with on a GPU, else why not. Older Gluon (3.4, 3.5) has these modules too, with an API the kernel was
    never built against (warp_specialize's arguments, as we recall, changed in 3.6)."""
    if gluon is None:
        return "this triton has no triton.experimental.gluon Hopper API (need 3.6+)"
    version = _triton_version()
    if version < (3, 6):
        return f"triton {version[0]}.{version[1]}'s Gluon API is older than the kernel's (need 3.6+)"
    if version not in GPU_CHECKED_TRITON:
        checked = ", ".join(f"{a}.{b}" for a, b in GPU_CHECKED_TRITON)
        return (f"triton {version[0]}.{version[1]}: the Gluon kernel has been run on a GPU with triton {checked} "
                "only (it compiles with this one; run tests/gpu/test_attention_gpu.py on a Hopper GPU and add "
                "the version to gluon_sage.GPU_CHECKED_TRITON)")
    return None


if gluon is not None:
    @gluon.jit
    def _loader(k_desc, ks_desc, v_desc, k_smem, ks_smem, v_smem, k_ready, v_ready, kv_empty, seq, sp,
                BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, KS_THREAD: gl.constexpr):
        """K (with its per-token scales for the per-token form; the lane-group form loads its four
        scales per block itself, _group_scales) and V, block by block, into the ring of stages."""
        bh = gl.program_id(1)
        n_blocks = gl.cdiv(seq, BLOCK_N)
        for j in range(n_blocks):
            s = j % STAGES
            # a fresh barrier counts as having completed the phase before phase 0
            mbarrier.wait(kv_empty.index(s), ((j // STAGES) & 1) ^ 1)
            if KS_THREAD:
                mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            else:
                mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes + ks_desc.block_type.nbytes)
                _tma_load(ks_desc, [bh * sp + j * BLOCK_N], k_ready.index(s), ks_smem.index(s))
            _tma_load(k_desc, [bh * sp + j * BLOCK_N, 0], k_ready.index(s), k_smem.index(s))
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            _tma_load(v_desc, [bh * D, j * BLOCK_N], v_ready.index(s), v_smem.index(s))

    @gluon.jit
    def _issue_qk(q_smem, k_smem, k_ready, j, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                  STAGES: gl.constexpr):
        s = j % STAGES
        mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout)
        return warpgroup_mma(q_smem, k_smem.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)

    @gluon.jit
    def _scaled_exp2(si, ks_smem, ks4, qs, m_i, seq, j, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, MASK: gl.constexpr, KS_THREAD: gl.constexpr):
        """p = 448·exp2(qs·ks·(q8·k8) − qs·m) for block j's int32 scores, and the new running max m.
        int32 -> float32 by adding the bits of 1.5·2^23 (|q8·k8| < 2^22, so the float is exact).
        KS_THREAD: K's scales are shared by the keys one thread holds (quantize_qkv's k_block="lanes":
        key c of a block belongs to group (c % 8) // 2), so the maximum is taken over the raw scores
        first and scales and offset fold into one FMA per score with the exponent's. ks4: block j's
        four group scales (_group_scales)."""
        bits = (si + 0x4B400000).to(gl.float32, bitcast=True)
        if MASK:
            n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            bits = gl.where((n < seq)[None, :], bits, -float("inf"))
        if KS_THREAD:
            b4 = gl.reshape(bits, [BLOCK_M, BLOCK_N // 8, 4, 2])  # key c = 8·g + 2·t + e; t: the lane's group
            bmax = gl.max(gl.max(b4, axis=3), axis=1)  # [BLOCK_M, 4], within each thread
            ks4 = gl.convert_layout(ks4, gl.SliceLayout(0, bmax.type.layout))
            m_new = gl.maximum(m_i, gl.convert_layout(gl.max((bmax - 12582912.0) * ks4[None, :], axis=1),
                                                      m_i.type.layout))
            qs_g = gl.convert_layout(qs, gl.SliceLayout(1, bmax.type.layout))
            m_g = gl.convert_layout(m_new, gl.SliceLayout(1, bmax.type.layout))
            c1 = qs_g[:, None] * ks4[None, :]
            c0 = LOG2_448_C - c1 * 12582912.0 - (qs_g * m_g)[:, None]
            p = gl.exp2(b4 * c1[:, None, :, None] + c0[:, None, :, None])
            p = gl.convert_layout(gl.reshape(p, [BLOCK_M, BLOCK_N]), s_layout)
        else:
            ks = ks_smem.index(j % STAGES).load(gl.SliceLayout(0, s_layout))
            t = bits * ks[None, :] + (ks * -12582912.0)[None, :]
            m_new = gl.maximum(m_i, gl.max(t, axis=1))
            p = gl.exp2(t * qs[:, None] + (LOG2_448_C - qs * m_new)[:, None])
        return p, m_new

    @gluon.jit
    def _group_scales(KS, bh, sp, j, s_layout: gl.constexpr, BLOCK_N: gl.constexpr):
        """Block j's K scales for KS_THREAD, one per lane group (key 2·t stands for its group)."""
        g_layout: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, gl.reshape(
            gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), [BLOCK_M, BLOCK_N // 8, 4, 2]).type.layout)))
        return gl.load(KS + bh * sp + j * BLOCK_N + 2 * gl.arange(0, 4, layout=g_layout))

    @gluon.jit
    def _block(j, si, ks4, acc, m_i, l_i, tphase, qs, KS, bh, sp, seq, q_smem, k_smem, ks_smem, v_smem, k_ready,
               v_ready, kv_empty, turn, s_layout: gl.constexpr, o_layout: gl.constexpr, WG: gl.constexpr,
               BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, PINGPONG: gl.constexpr,
               KS_THREAD: gl.constexpr, MASK: gl.constexpr, LAST: gl.constexpr):
        """Block j's softmax (its scores si done on entry), then one batch of matrix products: block j's
        P·V (into a fresh accumulator, added at full precision) and block j+1's Q·Kᵀ, issued in this
        warpgroup's turn and waited for while the other warpgroup runs its softmax. Nothing is in
        flight across the loop's back edge (ptxas then serialises every wgmma, C7514), and P is used
        where it is made (an FP8 tensor carried across iterations is unpacked to bytes and repacked).
        """
        p, m_new = _scaled_exp2(si, ks_smem, ks4, qs, m_i, seq, j, s_layout, BLOCK_N, STAGES, MASK, KS_THREAD)
        alpha = gl.exp2(qs * (m_i - m_new))
        p8 = p.to(gl.float8e4nv)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        if PINGPONG:
            mbarrier.wait(turn.index(WG), tphase)
            tphase ^= 1
        s = j % STAGES
        mbarrier.wait(v_ready.index(s), (j // STAGES) & 1)
        pv = warpgroup_mma(gl.convert_layout(p8, gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)),
                           v_smem.index(s).permute((1, 0)), gl.zeros([BLOCK_M, D], gl.float32, o_layout),
                           use_acc=False, is_async=True)
        if not LAST:
            si = _issue_qk(q_smem, k_smem, k_ready, j + 1, s_layout, BLOCK_N, STAGES)
            if KS_THREAD:
                ks4 = _group_scales(KS, bh, sp, j + 1, s_layout, BLOCK_N)
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - WG))
        if LAST:
            pv = warpgroup_mma_wait(0, deps=(pv,))
        else:
            pv, si = warpgroup_mma_wait(0, deps=(pv, si))
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None] + pv
        mbarrier.arrive(kv_empty.index(s))
        return si, ks4, acc, m_new, l_i, tphase

    @gluon.jit
    def _consumer(q_desc, k_smem, ks_smem, v_smem, q_smem, q_bar, k_ready, v_ready, kv_empty, turn,
                  QS, KS, VS, OUT, seq, sp, H, so_b, so_s, so_h,
                  WG: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                  PINGPONG: gl.constexpr, KS_THREAD: gl.constexpr):
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 32])
        pid, bh = gl.program_id(0), gl.program_id(1)
        row0 = pid * 2 * BLOCK_M + WG * BLOCK_M
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [bh * sp + row0, 0], q_bar, q_smem)
        rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
        qs = gl.load(QS + bh * sp + rows)
        m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout)
        n_blocks = gl.cdiv(seq, BLOCK_N)
        mbarrier.wait(q_bar, 0)

        tphase = 0
        if PINGPONG:
            mbarrier.wait(turn.index(WG), tphase)
            tphase ^= 1
        si = _issue_qk(q_smem, k_smem, k_ready, 0, s_layout, BLOCK_N, STAGES)
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - WG))
        ks4 = _group_scales(KS, bh, sp, 0, s_layout, BLOCK_N)
        si = warpgroup_mma_wait(0, deps=(si,))
        for j in range(0, n_blocks - 1):
            si, ks4, acc, m_i, l_i, tphase = _block(
                j, si, ks4, acc, m_i, l_i, tphase, qs, KS, bh, sp, seq, q_smem, k_smem, ks_smem, v_smem, k_ready,
                v_ready, kv_empty, turn, s_layout, o_layout, WG, BLOCK_N, D, STAGES, PINGPONG, KS_THREAD,
                False, False)
        si, ks4, acc, m_i, l_i, tphase = _block(  # the last block, masked past seq
            n_blocks - 1, si, ks4, acc, m_i, l_i, tphase, qs, KS, bh, sp, seq, q_smem, k_smem, ks_smem, v_smem,
            k_ready, v_ready, kv_empty, turn, s_layout, o_layout, WG, BLOCK_N, D, STAGES, PINGPONG, KS_THREAD,
            True, True)

        d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        vs = gl.load(VS + bh * D + d)
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        out = acc / l_o[:, None] * vs[None, :]
        r = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
        b, h = bh // H, bh % H
        ptr = OUT + b * so_b + h * so_h + r[:, None] * so_s + d[None, :]
        gl.store(ptr, out.to(OUT.dtype.element_ty), mask=(r < seq)[:, None])

    @gluon.jit
    def _attn_kernel(q_desc, k_desc, ks_desc, v_desc, QS, KS, VS, OUT, seq, sp, H, so_b, so_s, so_h,
                     BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, PINGPONG: gl.constexpr,
                     KS_THREAD: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                     PRODUCER_REGS: gl.constexpr):
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_M, D], q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, D], k_desc.layout)
        ks_smem = gl.allocate_shared_memory(ks_desc.dtype, [STAGES, BLOCK_N], ks_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, D, BLOCK_N], v_desc.layout)
        bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
        q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
        kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
        for i in gl.static_range(2):
            mbarrier.init(q_bar.index(i), count=1)
            mbarrier.init(turn.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_empty.index(i), count=2)  # both consumers release a stage
        mbarrier.arrive(turn.index(0))  # consumer 0 issues first

        gl.warp_specialize([
            (_consumer, (q_desc, k_smem, ks_smem, v_smem, q_smem.index(0), q_bar.index(0), k_ready,
                         v_ready, kv_empty, turn, QS, KS, VS, OUT, seq, sp, H, so_b, so_s, so_h,
                         WG0, BLOCK_N, D, STAGES, PINGPONG, KS_THREAD)),
            (_consumer, (q_desc, k_smem, ks_smem, v_smem, q_smem.index(1), q_bar.index(1), k_ready,
                         v_ready, kv_empty, turn, QS, KS, VS, OUT, seq, sp, H, so_b, so_s, so_h,
                         WG1, BLOCK_N, D, STAGES, PINGPONG, KS_THREAD)),
            (_loader, (k_desc, ks_desc, v_desc, k_smem, ks_smem, v_smem, k_ready, v_ready, kv_empty, seq, sp,
                       BLOCK_N, D, STAGES, KS_THREAD)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def _descriptors(x: Quantized, config: Config):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    b, h, sp, d = x.q8.shape

    def desc(t, block):
        dtype = {torch.int8: gl.int8, torch.float8_e4m3fn: gl.float8e4nv, torch.float32: gl.float32}[t.dtype]
        return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dtype))
    return (desc(x.q8.view(b * h * sp, d), [ROWS, d]), desc(x.k8.view(b * h * sp, d), [config.block_n, d]),
            desc(x.ks.view(b * h * sp), [config.block_n]), desc(x.v8.view(b * h * d, sp), [d, config.block_n]))


def attention_quantized(x: Quantized, out: torch.Tensor, config: Config = DEFAULT) -> torch.Tensor:
    """Writes out [B, S, H, D] (any strides with D contiguous) from triton_qkv's 8-bit copies."""
    b, h, sp, d = x.q8.shape
    if x.k_block != k_block(config):
        raise ValueError(f"gluon attention {config.label()} reads K scales of k_block={k_block(config)!r}; "
                         f"these copies were quantized with k_block={x.k_block!r} (use gluon_sage.quantize)")
    if config.stages < 2:  # block j+1's K is waited for while block j's stage is still held: one stage deadlocks
        raise ValueError(f"gluon attention {config.label()}: needs 2+ stages")
    if PAD % (2 * ROWS) or PAD % config.block_n:
        raise ValueError(f"gluon attention: tiles of {config.label()} must divide the token padding {PAD}")
    dq, dk, dks, dv = _descriptors(x, config)
    grid = (math.ceil(x.seq / (2 * ROWS)), b * h)
    try:
        _attn_kernel[grid](dq, dk, dks, dv, x.qs, x.ks, x.vs, out, x.seq, sp, h,
                           out.stride(0), out.stride(1), out.stride(2),
                           D=d, **config.constexprs(), num_warps=4,
                           enable_fp_fusion=True)  # as measured: triton 3.10 turns the default off
    except CompilationError as e:  # Gluon's API moves between triton releases: say so, not a traceback
        import triton
        raise KernelError(
            f"our Gluon attention kernel does not compile with triton {triton.__version__} "
            f"({str(e).strip().splitlines()[-1][:300]}). Install triton 3.6 (the version it is checked with), "
            "or set self_attn_1_type to torch_sdpa.") from e
    return out


def recipe(config: Config = DEFAULT):
    """The reference recipe (engine/attention/reference.py) this kernel's config computes."""
    from . import reference
    return dataclasses.replace(reference.SAGE8, block_n=config.block_n, k_lanes=config.ks_thread)


def k_block(config: Config = DEFAULT):
    """The quantize_qkv k_block this kernel's config reads."""
    return "lanes" if config.ks_thread else 1


def quantize(q, k, v, scale: float | None = None, config: Config = DEFAULT) -> Quantized:
    """The 8-bit copies this kernel's config reads (triton_qkv.quantize_qkv)."""
    return quantize_qkv(q, k, v, scale, 1, k_block(config))


def attention_8bit(q, k, v, scale: float | None = None, config: Config = DEFAULT, out=None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v on [B, S, H, D] tensors through the Gluon kernel; returns q's dtype."""
    x = quantize(q, k, v, scale, config)
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return attention_quantized(x, out, config)
