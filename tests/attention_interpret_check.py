"""Run by tests/test_attention.py in a subprocess with TRITON_INTERPRET=1 (set before triton is
imported): our 8-bit attention kernel against its float64 reference on small awkward shapes."""
import dataclasses
import sys

import torch

from engine.attention import interpret_fix
from engine.attention import reference as R
from engine.attention import triton_sage as ts

interpret_fix.install()
seed = int(sys.argv[1])


def at_ties(mine, ref, pre, what):
    """The kernel's copy where it differs from the reference's only at rounding ties: each differing
    value must have its unrounded value (`pre`, float64) at the midpoint of the two choices."""
    diff = mine != ref
    mid = (mine + ref)[diff] / 2
    assert ((pre[diff] - mid).abs() <= 1e-5 * mid.abs().clamp_min(1)).all(), f"{what} differs away from a tie"
    return mine


def reference_with_kernel_ties(q, k, v, recipe):
    """The reference over the kernel's own 8-bit copies, which may differ from the reference's at
    rounding ties: the kernel divides by float32 scales and smooths K with a float32 mean, the
    reference does both in float64. A tie in K or V moves every row of its head (seen: K of head
    (1, 2) at seed 106490), a tie in Q one row; any other difference is a bug and fails here."""
    q8, sq, k8, sk, v8, sv = R.sage_quantize(q, k, v, recipe)
    x = ts.quantize_qkv(q, k, v, None, recipe.block_q, "lanes" if recipe.k_lanes else recipe.block_k)
    n = k.shape[1]
    per_token = lambda s, block: s.repeat_interleave(block, dim=1)[:, :n, :, None]  # noqa: E731
    kd = k.double() - k.double().mean(dim=1, keepdim=True)
    q8 = at_ties(x.q8[:, :, :n].permute(0, 2, 1, 3).double(), q8, q.double() / per_token(sq, recipe.block_q), "INT8 Q")
    k8 = at_ties(x.k8[:, :, :n].permute(0, 2, 1, 3).double(), k8, kd / per_token(sk, 1 if recipe.k_lanes else recipe.block_k),
                 "INT8 K")
    v8 = at_ties(x.v8[..., :n].permute(0, 3, 1, 2).double(), v8, v.double() / sv[:, None], "FP8 V")
    return R.sage_attend(q8, sq, k8, sk, v8, sv, recipe=recipe)


cases = [((1, 1, 1, 64), ts.DEFAULT, (1, 1)),
         ((1, 200, 2, 64), ts.DEFAULT, (1, 1)),
         ((2, 77, 3, 32), ts.Config(128, 64, 4, 3, tma=False, fast_convert=False), (128, 64)),
         ((1, 130, 1, 64), ts.Config(128, 64, 8, 3, overlap=True), (128, 1)),
         # exp2 partly by polynomial (fma_exp2.py; the inline-PTX split runs as its tl.where
         # stand-in here): each P within 1.02e-4 relative of exp2 before its FP8 rounding, so against
         # the MUFU reference it adds l's ≤1.02e-4 and the rare P (~0.2%: those within 1e-4 of an
         # FP8 rounding midpoint) that rounds to the neighbouring FP8 value, well inside 5e-3
         ((1, 200, 2, 64), ts.Config(poly_exp2=1), (1, 1)),
         ((2, 77, 3, 32), ts.Config(poly_exp2=2, poly_asm=False), (1, 1)),
         ((1, 130, 1, 64), ts.Config(128, 64, 8, 3, overlap=True, poly_exp2=3), (128, 1)),
         ((1, 300, 2, 64), ts.Config(poly_exp2=4), (1, 1)),
         # P·V of each block from zero, then one FMA into the accumulator: fp32_pv's sum
         ((1, 200, 2, 64), ts.Config(pv_fresh=True, poly_exp2=2), (1, 1)),
         ((2, 130, 3, 32), ts.Config(128, 64, 8, 3, overlap=True, pv_fresh=True), (128, 64)),
         # K scales per lane group (reference.SAGE8, the family's recipe)
         ((1, 300, 2, 64), ts.DEFAULT, (1, "lanes")),
         ((2, 77, 3, 32), ts.Config(128, 64, 4, 3, tma=False, fast_convert=False), (1, "lanes")),
         # ... with the scales folded into the exponent's FMA (lane_fold)
         ((1, 300, 2, 64), ts.Config(lane_fold=True), (1, "lanes")),
         ((2, 130, 3, 32), ts.Config(128, 64, 4, 3, lane_fold=True), (1, "lanes"))]
for i, (shape, cfg, blocks) in enumerate(cases):
    q, k, v = R.wan_like_qkv(*shape, seed=seed + i, dtype=torch.float32)
    out = torch.full_like(q, float("nan"))
    ts.attention_8bit(q, k, v, config=cfg, q_block=blocks[0], k_block=blocks[1], out=out)
    assert not torch.isnan(out).any(), (shape, cfg)
    lanes = blocks[1] == "lanes"
    ref = reference_with_kernel_ties(q, k, v, R.Recipe(blocks[0], 1 if lanes else blocks[1], cfg.block_n, k_lanes=lanes))
    err = R.rel_error(out, ref)
    # a P value across an FP8 step moves its row by up to a few percent: in the fast form (scales
    # folded into exp2) a few such, in the exact form one on a tie (seen: 2.9% in one row of 462,
    # 1.2e-3 overall, at seed 8037785); the row check below is the exact form's strict one. The
    # coarse-Q case (one scale per 128 tokens, 130 tokens) has the longest tail: 5.1e-3 at seed 673 in a
    # scan of 300 seeds, 5.3e-3 in one test run; a bug shows as 1e-2 and more
    assert err < 8e-3, (shape, cfg.label(), err)
    if not cfg.fast_convert:
        # exact form: every row equal to float32 rounding, but for a Q or P value on a rounding tie,
        # which moves its one row (seen: one row of 462 at seed 1027861)
        rows = ((out - ref).abs().amax(-1) / ref.abs().amax(-1).clamp_min(1e-30)).reshape(-1)
        assert (rows > 1e-5).float().mean() <= 0.01, (shape, cfg.label(), int((rows > 1e-5).sum()))
    if cfg.poly_exp2:  # and against the same kernel with MUFU's exp2 (seen: 1e-4 to 1.1e-3)
        mufu = ts.attention_8bit(q, k, v, config=dataclasses.replace(cfg, poly_exp2=0), q_block=blocks[0],
                                 k_block=blocks[1])
        assert R.rel_error(out, mufu) < 3e-3, (shape, cfg.label(), R.rel_error(out, mufu))
    print(f"ok {shape} {cfg.label()} k_block={blocks[1]} {err:.1e}")

# softmax's sum over the FP8 P, by the tensor cores (sum_fp8_p)
q, k, v = R.wan_like_qkv(1, 200, 2, 64, seed=seed + 9, dtype=torch.float32)
v = v + 3.0
for cfg in (ts.Config(sum_fp8_p=True), ts.Config(128, 128, 8, 3, overlap=True, sum_fp8_p=True)):
    out = ts.attention_8bit(q, k, v, config=cfg)
    err = R.rel_error(out, R.sage_reference(q, k, v, recipe=R.Recipe(1, 1, cfg.block_n, sum_fp8_p=True)))
    assert err < 5e-3, (cfg.label(), err)
    print(f"ok sum_fp8_p {cfg.label()} {err:.1e}")
