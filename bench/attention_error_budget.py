"""Error budget of the 8-bit self-attention recipe, and candidate fixes, on the CPU in float64.

Each row switches parts of the recipe (engine/attention/reference.py `Variant`; all-defaults is the
kernel's recipe, `sage_reference` with block_n 128) and prints the relative L2 error against float64
attention on the same bf16 Wan-like inputs (`wan_like_qkv`), for each length.

    python bench/attention_error_budget.py                       # 2048 4096 8192 tokens, 2 heads
    python bench/attention_error_budget.py --lengths 2048 --heads 1 --only base,p_e4m3x2
    python bench/attention_error_budget.py --lengths 32760 --heads 4 --rows 256 \
        --only qk_int8_only,p_e4m3_only,v_e4m3_only,p+v,base,sum_fp8_p   # Wan's length, a few minutes

--rows N: only N random query rows (the same rows for every variant) against all keys. Exact for
everything here but smooth_q (Q's mean is over all rows), which --rows refuses: Q's scales are per
token (block_q 1) unless a variant sets block_q, and that too is refused with --rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.attention.reference import Variant, attention_f64, rel_error, sage_variant, wan_like_qkv  # noqa: E402

EXACT = dict(qk="exact", p="exact", v="exact")
ROWS = {
    # budget: nothing quantized (only the scores' FP32 rounding: the floor), one part at a time, pairs
    "fp32_scores": Variant(qk="exact", p="exact", v="exact"),
    "qk_int8_only": Variant(p="exact", v="exact"),
    "p_e4m3_only": Variant(qk="exact", v="exact"),
    "v_e4m3_only": Variant(qk="exact", p="exact"),
    "qk+p": Variant(v="exact"),
    "qk+v": Variant(p="exact"),
    "p+v": Variant(qk="exact"),
    "base": Variant(),  # the kernel's recipe
    # candidate fixes (everything else as the kernel)
    "sum_fp8_p": Variant(sum_fp8_p=True),
    "smooth_v": Variant(smooth_v=True),
    "p_row_scale": Variant(p_row_scale=True),
    "p_e5m2": Variant(p="e5m2"),
    "p_int8_row": Variant(p="int8", p_row_scale=True),
    "pv_int8_row": Variant(p="int8", p_row_scale=True, v="int8"),
    "p_e4m3x2": Variant(p="e4m3x2"),
    "p_e4m3x2+sum": Variant(p="e4m3x2", sum_fp8_p=True),
    "pv_int8_row+sum": Variant(p="int8", p_row_scale=True, v="int8", sum_fp8_p=True),
    "smooth_q": Variant(smooth_q=True),
    "pv_int8+smooth_q": Variant(p="int8", p_row_scale=True, v="int8", smooth_q=True),
    "v_int8_p_exact": Variant(p="exact", v="int8"),
    "qk_block64": Variant(block_q=64, block_k=64),
    "qk_block128": Variant(block_q=128, block_k=128),
    "no_smooth_k": Variant(smooth_k=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--rows", type=int, default=0, help="this many random query rows (0: all)")
    a = ap.parse_args()
    rows = {n: v for n, v in ROWS.items() if not a.only or n in a.only.split(",")}
    if a.rows:
        bad = [n for n, v in rows.items() if v.smooth_q or v.block_q != 1]
        if bad:
            ap.error(f"--rows needs all query rows for {', '.join(bad)} (Q's mean or block scales); use --only")
    data = {}
    for s in a.lengths:
        q, k, v = wan_like_qkv(1, s, a.heads, seed=a.seed)
        if a.rows and a.rows < s:
            pick = torch.randperm(s, generator=torch.Generator().manual_seed(a.seed))[:a.rows].sort().values
            q = q[:, pick]
        ref = attention_f64(q, k, v)
        t = time.time()
        for name, var in rows.items():
            data[name, s] = rel_error(sage_variant(q, k, v, var=var), ref)
        print(f"# {s} tokens done in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
    if a.rows:
        print(f"# {a.rows} random query rows of each length, {a.heads} heads, seed {a.seed}")
    print(f"{'variant':<16}" + "".join(f"{s:>10}" for s in a.lengths))
    for name in rows:
        print(f"{name:<16}" + "".join(f"{data[name, s]:>10.4f}" for s in a.lengths))


if __name__ == "__main__":
    main()
