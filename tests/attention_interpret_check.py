"""Run by tests/test_attention.py in a subprocess with TRITON_INTERPRET=1 (set before triton is
imported): our 8-bit attention kernel against its float64 reference on small awkward shapes."""
import sys

import torch

from engine.attention import interpret_fix
from engine.attention import reference as R
from engine.attention import triton_sage as ts

interpret_fix.install()
seed = int(sys.argv[1])
cases = [((1, 1, 1, 64), ts.DEFAULT, (1, 1)),
         ((1, 200, 2, 64), ts.DEFAULT, (1, 1)),
         ((2, 77, 3, 32), ts.Config(128, 64, 4, 3, tma=False, fast_convert=False), (128, 64)),
         ((1, 130, 1, 64), ts.Config(128, 64, 8, 3, overlap=True), (128, 1))]
for i, (shape, cfg, blocks) in enumerate(cases):
    q, k, v = R.wan_like_qkv(*shape, seed=seed + i, dtype=torch.float32)
    out = torch.full_like(q, float("nan"))
    ts.attention_8bit(q, k, v, config=cfg, q_block=blocks[0], k_block=blocks[1], out=out)
    assert not torch.isnan(out).any(), (shape, cfg)
    ref = R.sage_reference(q, k, v, recipe=R.Recipe(*blocks, cfg.block_n))
    err = R.rel_error(out, ref)
    # the fast form folds scales into exp2 (fp32 rounding moves a few P values across an FP8 step)
    assert err < (1e-3 if not cfg.fast_convert else 5e-3), (shape, cfg.label(), err)
    if not cfg.fast_convert:
        # exact form: every row equal to float32 rounding, but for a value that sits on a rounding tie
        # (an INT8 or FP8 step; seen: one row of 462 at seed 1027861), which moves that one row only
        rows = ((out - ref).abs().amax(-1) / ref.abs().amax(-1).clamp_min(1e-30)).reshape(-1)
        assert (rows > 1e-5).float().mean() <= 0.01, (shape, cfg.label(), int((rows > 1e-5).sum()))
    print(f"ok {shape} {cfg.label()} {err:.1e}")

# softmax's sum over the FP8 P, by the tensor cores (sum_fp8_p)
q, k, v = R.wan_like_qkv(1, 200, 2, 64, seed=seed + 9, dtype=torch.float32)
v = v + 3.0
for cfg in (ts.Config(sum_fp8_p=True), ts.Config(128, 128, 8, 3, overlap=True, sum_fp8_p=True)):
    out = ts.attention_8bit(q, k, v, config=cfg)
    err = R.rel_error(out, R.sage_reference(q, k, v, recipe=R.Recipe(1, 1, cfg.block_n, sum_fp8_p=True)))
    assert err < 5e-3, (cfg.label(), err)
    print(f"ok sum_fp8_p {cfg.label()} {err:.1e}")
