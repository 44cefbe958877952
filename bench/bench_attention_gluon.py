"""The Gluon 8-bit attention kernel (engine/attention/gluon_sage.py) against our Triton kernel and
cuDNN bf16 SDPA, on an sm90 GPU. Each config runs in its own process with a time limit, so that a
kernel that deadlocks (a wrong barrier phase) costs its row, not the run.

    python bench/bench_attention_gluon.py [--out DIR] [--shapes all|14b480]

Per config: checks first (awkward sizes against the float64 reference of the recipe, output
poisoned with NaN; 128 full-length rows with a 3σ channel offset in V against float64), then the
kernel alone on already-quantized q/k/v (median ms, triton.testing.do_bench) at Wan's shapes, with
the relative error against cuDNN bf16 SDPA. The table is printed last; JSON to DIR/gluon.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import bench_attention  # noqa: E402
from bench.bench_attention import sdpa, timed  # noqa: E402
from engine.attention import gluon_sage as gs  # noqa: E402
from engine.attention import reference as R  # noqa: E402
from engine.attention import triton_sage as ts  # noqa: E402

SHAPES = {name: (heads, tokens) for name, heads, tokens in bench_attention.SHAPES}
G = gs.Config
CONFIGS = [G(), G(stages=4), G(pingpong=True)]


def check(cfg: gs.Config) -> dict:
    worst = 0.0
    for (b, s, h) in [(1, 1, 1), (1, 300, 2), (2, 129, 3), (1, 257, 2), (1, 128, 1), (1, 1000, 2)]:
        q, k, v = R.wan_like_qkv(b, s, h, 128, seed=s, device="cuda")
        out = torch.full_like(q, float("nan"))
        gs.attention_8bit(q, k, v, config=cfg, out=out)
        ref = R.sage_reference(q.cpu(), k.cpu(), v.cpu(), recipe=gs.recipe(cfg))
        nan = bool(torch.isnan(out).any())
        err = float("inf") if nan else R.rel_error(out.cpu(), ref)
        worst = max(worst, err)
    q, k, v = R.wan_like_qkv(1, 32760, 2, 128, seed=7, device="cuda")
    v = v + torch.randn(1, 1, 2, 128, device="cuda", dtype=v.dtype) * 3
    pick = torch.randperm(32760, device="cuda")[:128]
    exact = R.attention_f64(q[:, pick].cpu(), k.cpu(), v.cpu())
    long_err = R.rel_error(gs.attention_8bit(q, k, v, config=cfg)[:, pick].cpu(), exact)
    tri_err = R.rel_error(ts.attention_8bit(q, k, v)[:, pick].cpu(), exact)
    return dict(check_worst=worst, long_offset_v_err=long_err, triton_long_offset_v_err=tri_err)


def one(cfg: gs.Config, shapes: list[str]) -> dict:
    torch.set_grad_enabled(False)
    row = dict(config=cfg.label())
    t0 = time.perf_counter()
    row.update(check(cfg))
    row["check_s"] = time.perf_counter() - t0
    for name in shapes:
        h, s = SHAPES[name]
        q, k, v = R.wan_like_qkv(1, s, h, 128, seed=2, device="cuda")
        ref = sdpa(q, k, v, "CUDNN_ATTENTION").float()
        x = gs.quantize(q, k, v, None, cfg)
        out = torch.empty_like(q)
        gs.attention_quantized(x, out, cfg)
        flops = 4 * s * s * 128 * h
        ms = timed(lambda: gs.attention_quantized(x, out, cfg), False)
        row[name] = dict(ms=ms, tflops=flops / ms / 1e9, err=R.rel_error(out.float(), ref))
        del q, k, v, x, out, ref
    return row


def baseline(shapes: list[str]) -> dict:
    torch.set_grad_enabled(False)
    rows = {}
    for name in shapes:
        h, s = SHAPES[name]
        q, k, v = R.wan_like_qkv(1, s, h, 128, seed=2, device="cuda")
        ref = sdpa(q, k, v, "CUDNN_ATTENTION").float()
        x = ts.quantize_qkv(q, k, v)
        out = torch.empty_like(q)
        ts.attention_quantized(x, out)
        rows[name] = dict(cudnn_ms=timed(lambda: sdpa(q, k, v, "CUDNN_ATTENTION"), False),
                          triton_ms=timed(lambda: ts.attention_quantized(x, out), False),
                          triton_err=R.rel_error(out.float(), ref),
                          triton_lanes_err=R.rel_error(ts.attention_8bit(q, k, v, k_block="lanes").float(), ref),
                          quant_ms=timed(lambda: ts.quantize_qkv(q, k, v), False))
        del q, k, v, x, out, ref
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", default="14b480")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a config as JSON, in a child process
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--configs", default="all", help="'default', or 'all' (the sweep's CONFIGS)")
    a = ap.parse_args()
    shapes = list(SHAPES) if a.shapes == "all" else ["14B 480p"]
    if a.one:
        print("ROW " + json.dumps(one(gs.Config(**json.loads(a.one)), shapes)), flush=True)
        return
    import triton
    head = (f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(head, flush=True)
    result = dict(head=head, baseline=baseline(shapes), rows=[])
    print("baseline", result["baseline"], flush=True)
    for cfg in (CONFIGS if a.configs == "all" else [gs.DEFAULT]):
        cmd = [sys.executable, __file__, "--one", json.dumps(dataclasses.asdict(cfg)), "--shapes", a.shapes]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            got = [ln[4:] for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(got[0]) if got else dict(config=cfg.label(), error=(p.stderr or p.stdout)[-1500:])
        except subprocess.TimeoutExpired:
            row = dict(config=cfg.label(), error=f"no result in {a.timeout:.0f} s (a deadlock?)")
        result["rows"].append(row)
        print(row, flush=True)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gluon.json"), "w") as f:
            json.dump(result, f, indent=1)
    print(f"\n{'config':<30}{'check':>9}{'longV':>8}" + "".join(f"{n:>26}" for n in shapes))
    for name in shapes:
        bl = result["baseline"][name]
        print(f"{'cudnn bf16 / triton sage8':<30}{'':>9}{'':>8}{bl['cudnn_ms']:>12.2f} /{bl['triton_ms']:>7.2f} ms"
              f" ({bl['cudnn_ms'] / bl['triton_ms']:.2f}x)")
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['config']:<30} error: {row['error'][-300:]}")
            continue
        cells = "".join(f"{row[n]['ms']:>9.2f} ms {result['baseline'][n]['cudnn_ms'] / row[n]['ms']:.2f}x e{row[n]['err']:.3f}"
                        for n in shapes)
        print(f"{row['config']:<30}{row['check_worst']:>9.2e}{row['long_offset_v_err']:>8.4f}{cells}")


if __name__ == "__main__":
    main()
