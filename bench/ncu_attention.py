"""One launch of the Gluon attention kernel at a Wan shape, to be read by Nsight Compute:

    ncu --kernel-name regex:_attn_kernel --launch-skip 1 --launch-count 1 --section WarpStateStats \
        --section SchedulerStats --section ComputeWorkloadAnalysis python bench/ncu_attention.py [--heads 40]

(the first launch compiles; the second is the one measured). Config fields as key=value arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.attention import gluon_sage as gs  # noqa: E402
from engine.attention import reference as R  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--heads", type=int, default=40)
ap.add_argument("--tokens", type=int, default=32760)
ap.add_argument("config", nargs="*", help="Config fields, e.g. pingpong=True")
a = ap.parse_args()
cfg = dataclasses.replace(gs.DEFAULT, **{k: eval(v) for k, v in (c.split("=") for c in a.config)})
q, k, v = R.wan_like_qkv(1, a.tokens, a.heads, 128, seed=2, device="cuda")
x = gs.quantize(q, k, v, None, cfg)
out = torch.empty_like(q)
for _ in range(2):
    gs.attention_quantized(x, out, cfg)
torch.cuda.synchronize()
print(cfg.label(), "done")
