"""Why the 8-bit attention kernel runs slower inside the 14B forward than alone (29.2 against 25.7 ms a
call at 480p; docs/benchmarks.md): the same call timed after different work, with the SM clock and power
sampled by nvidia-smi meanwhile.

    python bench/bench_attention_context.py [--out DIR] [--iters 30]

Per phase, `iters` times: the work before (nothing; the feed-forward's two fp8 GEMMs at the 14B 480p
shape; an idle wait of about the GEMMs' length; a 2 GiB copy that evicts L2), then one attention call
timed with CUDA events: our Gluon kernel on already-quantized Wan-like q/k/v, and cuDNN bf16 SDPA in
the same phases, and the GEMMs with no call after them. The clock column is the mean of nvidia-smi's
samples taken while the phase ran (every 10 ms), the throttle column the share of samples with an
active clock event other than idle; joules and watts come from NVML's energy counter over the phase
(bench/energy.py; nvidia-smi's power reading is a trailing average). JSON to DIR/context.json; the
table is printed last.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_attention import sdpa  # noqa: E402
from bench.energy import Nvml  # noqa: E402
from engine.attention import gluon_sage as gs  # noqa: E402
from engine.attention import reference as R  # noqa: E402

HEADS, TOKENS, DIM, FFN = 40, 32760, 5120, 13824  # Wan 14B at 480p x 81 frames
FIELDS = ("timestamp,clocks.sm,power.draw,temperature.gpu", ",clocks_event_reasons.active",
          ",clocks_throttle_reasons.active")


def start_sampler(path):
    """nvidia-smi every 10 ms into `path`; the clock-event field's name changed across drivers."""
    for extra in FIELDS[1:] + ("",):
        q = FIELDS[0] + extra
        try:
            ok = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                                capture_output=True).returncode == 0
        except FileNotFoundError:
            return None
        if ok:
            return subprocess.Popen(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits", "-lms", "10"],
                                    stdout=open(path, "w"), stderr=subprocess.DEVNULL)
    return None


def _number(text, parse=float):
    try:
        return parse(text)
    except ValueError:  # "[N/A]" and the like: that field is unknown, the sample still counts
        return None


def samples(path):
    """(time, SM MHz, W, °C, clock-event bits or None) per line of nvidia-smi's output."""
    rows = []
    for line in open(path):
        f = [x.strip() for x in line.split(",")]
        try:
            t = dt.datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f")
        except (ValueError, IndexError):
            continue
        f += [""] * (5 - len(f))
        rows.append((t, _number(f[1]), _number(f[2]), _number(f[3]), _number(f[4], lambda x: int(x, 16))))
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _share(x):
    return "n/a" if x is None else f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    torch.set_grad_enabled(False)
    dev = torch.device("cuda")
    q, k, v = R.wan_like_qkv(1, TOKENS, HEADS, 128, seed=2, device="cuda")
    x = gs.quantize(q, k, v)
    out = torch.empty_like(q)
    a8 = torch.randn(TOKENS, DIM, device=dev).to(torch.float8_e4m3fn)
    w_up = torch.randn(FFN, DIM, device=dev).to(torch.float8_e4m3fn).t()
    h8 = torch.randn(TOKENS, FFN, device=dev).to(torch.float8_e4m3fn)
    w_down = torch.randn(DIM, FFN, device=dev).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=dev)
    big = torch.empty(2 << 30, dtype=torch.uint8, device=dev)
    big2 = torch.empty_like(big)

    def gemms():
        torch._scaled_mm(a8, w_up, one, one, out_dtype=torch.bfloat16)
        torch._scaled_mm(h8, w_down, one, one, out_dtype=torch.bfloat16)

    def evt_ms(fn):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        return a.elapsed_time(b)

    for _ in range(3):
        gemms(); gs.attention_quantized(x, out); sdpa(q, k, v, "CUDNN_ATTENTION")
    torch.cuda.synchronize()
    gemm_ms = sorted(evt_ms(gemms) for _ in range(5))[2]
    clock_khz = torch.cuda.get_device_properties(dev).clock_rate if hasattr(
        torch.cuda.get_device_properties(dev), "clock_rate") else 1_980_000
    sleep_cycles = int(gemm_ms * clock_khz)  # about the GEMMs' length at the top clock

    before = {"none": lambda: None, "fp8 GEMMs": gemms,
              "idle wait": lambda: torch.cuda._sleep(sleep_cycles),
              "2 GiB copy": lambda: big2.copy_(big)}
    kernels = {"gluon 8-bit": lambda: gs.attention_quantized(x, out),
               "cudnn bf16": lambda: sdpa(q, k, v, "CUDNN_ATTENTION"),
               "(none)": lambda: None}  # with the GEMMs only: their own joules, to subtract
    gpu = Nvml(torch.cuda.current_device())
    smi = os.path.join(args.out or tempfile.mkdtemp(), "nvidia-smi.csv")
    proc = start_sampler(smi)
    time.sleep(0.5)
    phases = []
    for kname, kern in kernels.items():
        for bname, work in before.items():
            if kname == "(none)" and bname != "fp8 GEMMs":
                continue
            torch.cuda.synchronize()
            j0 = gpu.energy_j()  # a 30-call phase lasts ~1 s: NVML's counter moves in steps of tens of ms
            t0 = dt.datetime.now()
            ms = []
            for _ in range(args.iters):
                work()
                ms.append(evt_ms(kern))
            t1 = dt.datetime.now()
            j1 = gpu.energy_j()
            ms.sort()
            phases.append(dict(kernel=kname, before=bname, median_ms=ms[len(ms) // 2], min_ms=ms[0],
                               max_ms=ms[-1], start=t0.isoformat(), end=t1.isoformat(),
                               joules_per_iter=None if None in (j0, j1) else (j1 - j0) / args.iters,
                               watts=None if None in (j0, j1) else (j1 - j0) / (t1 - t0).total_seconds()))
            print(f"{kname:<12} after {bname:<11} {ms[len(ms) // 2]:7.2f} ms (min {ms[0]:.2f}, max {ms[-1]:.2f})",
                  flush=True)
    time.sleep(0.3)
    if proc is not None:
        proc.terminate(); proc.wait()
        rows = samples(smi)
        for p in phases:
            t0, t1 = dt.datetime.fromisoformat(p["start"]), dt.datetime.fromisoformat(p["end"])
            s = [r for r in rows if t0 <= r[0] <= t1]
            if s:
                known = [r[4] for r in s if r[4] is not None]
                p.update(samples=len(s), sm_mhz=_mean(r[1] for r in s), smi_power_w=_mean(r[2] for r in s),
                         temp_c=max((r[3] for r in s if r[3] is not None), default=None),
                         throttled=sum(1 for r in known if r & ~1) / len(known) if known else None,
                         reasons=sorted({hex(r) for r in known}))
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                  gemm_ms=gemm_ms, sleep_cycles=sleep_cycles, iters=args.iters, phases=phases,
                  power_limit_w=gpu.power_limit_w(), nvml=gpu.why or ("ok; " + gpu.note if gpu.note else "ok"),
                  command="python3 bench/bench_attention_context.py " + " ".join(sys.argv[1:]))
    if args.out:
        json.dump(result, open(os.path.join(args.out, "context.json"), "w"), indent=1)
    print(f"\n{result['device']} {result['date']} UTC; fp8 GEMMs before each call: {gemm_ms:.2f} ms\n")
    nan = float("nan")
    limit = result["power_limit_w"]
    print(f"NVML: {result['nvml']}" + (f", enforced power limit {limit:.0f} W" if limit else "") + "\n")
    print("| kernel | work before each call | median ms | min | max | SM MHz | J per iteration (NVML) | W (NVML) "
          "| throttled | reasons |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in phases:
        print(f"| {p['kernel']} | {p['before']} | {p['median_ms']:.2f} | {p['min_ms']:.2f} | {p['max_ms']:.2f} | "
              f"{p.get('sm_mhz') or nan:.0f} | {p['joules_per_iter'] or nan:.2f} | {p['watts'] or nan:.0f} | "
              f"{_share(p.get('throttled'))} | {' '.join(p.get('reasons') or ['n/a'])} |")


if __name__ == "__main__":
    main()
