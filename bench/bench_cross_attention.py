"""Wan's text cross-attention (every video token against 512 text tokens) through each SDPA backend.

    python bench/bench_cross_attention.py [--json PATH]

Why: the 40 cross-attention calls of a 14B forward do 1/64 of the self-attention's work; whether an 8-bit
path would pay (measured 2026-12-04: 25.6 ms for all 40, less than one self-attention call of 29.2 ms,
docs/benchmarks.md, so it was not built). The engine calls it through diffusers'
dispatch_attention_fn on [B, S, H, D] views (engine/fused.py); this times that call and torch SDPA
with each backend forced, on the same views and on contiguous [B, H, S, D] copies, bf16, batch 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_attention import timed  # noqa: E402
from bench.bench_kernels import env_line  # noqa: E402

SHAPES = {"1.3B 480p": (12, 32760), "14B 480p": (40, 32760), "14B 720p": (40, 75600)}
TEXT = 512
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    rows, lines = [], [f"Device: {env_line()}"]
    print(lines[0], flush=True)
    for name, (h, s) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        # the engine's layout: [B, S, H·D] projections viewed as [B, S, H, D]
        q = torch.randn(1, s, h * 128, device="cuda", dtype=torch.bfloat16, generator=g).unflatten(2, (h, 128))
        k = torch.randn(1, TEXT, h * 128, device="cuda", dtype=torch.bfloat16, generator=g).unflatten(2, (h, 128))
        v = torch.randn(1, TEXT, h * 128, device="cuda", dtype=torch.bfloat16, generator=g).unflatten(2, (h, 128))
        flops = 4 * s * TEXT * 128 * h
        ref = dispatch_attention_fn(q, k, v).float()
        row = dict(shape=name, heads=h, tokens=s, text=TEXT)
        row["engine (dispatch_attention_fn)"] = timed(lambda: dispatch_attention_fn(q, k, v), False)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        qc, kc, vc = (t.contiguous() for t in (qt, kt, vt))
        for label, args in (("views", (qt, kt, vt)), ("contiguous", (qc, kc, vc))):
            for b, backend in BACKENDS.items():
                key = f"{b} {label}"
                try:
                    with sdpa_kernel(backend):
                        out = F.scaled_dot_product_attention(*args)
                        row[key] = timed(lambda: F.scaled_dot_product_attention(*args), False)
                    row[key + " err"] = ((out.transpose(1, 2).float() - ref).norm() / ref.norm()).item()
                except RuntimeError as e:
                    row[key] = None
                    row[key + " why"] = str(e).splitlines()[0][:200]
        row["transpose copies"] = timed(lambda: [t.contiguous() for t in (qt, kt, vt)], False)
        for key in [k for k in row if isinstance(row[k], float) and not k.endswith("err")]:
            if key != "transpose copies":
                row[key + " TFLOP/s"] = flops / row[key] / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, qt, kt, vt, qc, kc, vc, ref
    print(f"\n{'shape':<12}" + "".join(f"{c:>22}" for c in ["engine"] + [f"{b} {l}" for l in ("views", "contiguous")
                                                             for b in BACKENDS]))
    for row in rows:
        cells = [row["engine (dispatch_attention_fn)"]] + [row[f"{b} {l}"] for l in ("views", "contiguous")
                                                           for b in BACKENDS]
        print(f"{row['shape']:<12}" + "".join(f"{c:>19.3f} ms" if c is not None else f"{'n/a':>22}" for c in cells))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "log": lines, "command": " ".join(sys.argv)}, f, indent=1)


if __name__ == "__main__":
    main()
