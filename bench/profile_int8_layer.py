"""Where a QuantLinear forward's time goes: 14B 5120->5120 at M = 32760 tokens, int8 [triton] and fp8 [torch].

    PYTHONUNBUFFERED=1 python bench/profile_int8_layer.py

One GPU process, everything side by side:
1. interleaved rounds of do_bench medians: bf16 F.linear, each whole layer, its activation quantizer
   alone and its GEMM alone (activation pre-quantized), and the int8 layer with each TMA tile config
   forced (by overwriting the autotuner's cached pick);
2. the whole int8 / fp8 layer split in place with CUDA events (quantizer | GEMM), with and without
   an L2 flush before each call;
3. host time per call (launch overhead) against GPU time per call;
4. torch.profiler per-kernel durations and the idle gaps between the kernels of one call;
5. the whole layer captured in a CUDA graph (no launch gaps possible);
6. SM clock / power while each workload runs (nvidia-smi, read only).
Logs and the profiler traces go to $OUT when it is set.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.kernels import triton_gemm  # noqa: E402
from engine.linear import QuantLinear  # noqa: E402

M, K, N = 32760, 5120, 5120
OUT = os.environ.get("OUT")
LINES = []


def log(*a):
    line = " | ".join(str(x) for x in a)
    LINES.append(line)
    print(line, flush=True)


def bench(fn, rep=100):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def main():
    torch.set_grad_enabled(False)
    log(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=gen)
    x[:, torch.randperm(K, device="cuda", generator=gen)[:4]] *= 40
    x = x.to(torch.bfloat16)
    lin = torch.nn.Linear(K, N, device="cuda", dtype=torch.bfloat16)
    lin.weight.copy_(torch.randn(N, K, device="cuda", generator=gen) / K ** 0.5)
    ref = torch.addmm(lin.bias.float(), x.float(), lin.weight.float().t())
    qi = QuantLinear.from_linear(lin, "int8", kernel="triton")
    qf = QuantLinear.from_linear(lin, "fp8", kernel="torch")
    ki, kf = qi.kernel_for(x.device), qf.kernel_for(x.device)
    y_auto = qi(x)  # first call: the autotuner picks the TMA config
    tuner = triton_gemm._tma_kernel()
    key = next(k for k in tuner.cache if tuple(k[:3]) == (32768, N, K))
    picked = tuner.cache[key]
    timings = getattr(tuner, "configs_timings", {}) or {}
    log("autotuner pick", picked, "; its timings:",
        ", ".join(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} s{c.num_stages} g{c.kwargs['GROUP_M']}="
                  f"{(t[0] if isinstance(t, (list, tuple)) else t):.3f}" for c, t in timings.items()))
    log("int8 rel err", f"{rel(y_auto, ref):.4f}", "fp8 rel err", f"{rel(qf(x), ref):.4f}")
    qxi, sxi = ki.quantize_input(qi, x)
    qxf, sxf = kf.quantize_input(qf, x)

    def forced(cfg):
        def call():
            tuner.cache[key] = cfg
            try:
                return qi(x)
            finally:
                tuner.cache[key] = picked
        return call

    fns = {
        "bf16 F.linear": lambda: F.linear(x, lin.weight, lin.bias),
        "int8 whole": lambda: qi(x),
        "int8 quantizer alone": lambda: ki.quantize_input(qi, x),
        "int8 GEMM alone": lambda: ki.forward_quantized(qi, qxi, sxi, M),
        "fp8 whole": lambda: qf(x),
        "fp8 quantizer alone": lambda: kf.quantize_input(qf, x),
        "fp8 GEMM alone": lambda: kf.forward_quantized(qf, qxf, sxf, M),
    }
    for cfg in tuner.configs:
        kw = cfg.kwargs
        name = f"int8 whole cfg {kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages} g{kw['GROUP_M']}"
        y = forced(cfg)()
        log(name, f"rel err {rel(y, ref):.4f}")
        fns[name] = forced(cfg)

    # 1. interleaved rounds
    res = {k: [] for k in fns}
    for r in range(5):
        for k, fn in fns.items():
            res[k].append(bench(fn))
        log(f"round {r}", ", ".join(f"{k}={v[-1]:.3f}" for k, v in res.items()))
    base = statistics.median(res["bf16 F.linear"])
    log("\n== do_bench medians over 5 interleaved rounds (ms; min-max) ==")
    for k, v in res.items():
        med = statistics.median(v)
        log(f"{k:55s} {med:.3f}  ({min(v):.3f}-{max(v):.3f})  {base / med:.3f}x bf16")
    for p in ("int8", "fp8"):
        s = statistics.median(res[f"{p} quantizer alone"]) + statistics.median(res[f"{p} GEMM alone"])
        log(f"{p}: quantizer + GEMM alone = {s:.3f} ms; whole = {statistics.median(res[f'{p} whole']):.3f} ms")

    # 2. in-place split with events
    flush_buf = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    log("\n== whole layer split in place with CUDA events (median ms of 60) ==")
    for p, lay, kern, qx, sx in (("int8", qi, ki, qxi, sxi), ("fp8", qf, kf, qxf, sxf)):
        for flush in (True, False):
            ev = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(60)]
            ev2 = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(60)]
            for e in ev:
                if flush:
                    flush_buf.zero_()
                e[0].record()
                q, s = kern.quantize_input(lay, x)
                e[1].record()
                kern.forward_quantized(lay, q, s, M)
                e[2].record()
            for e in ev2:
                if flush:
                    flush_buf.zero_()
                e[0].record()
                kern.forward_quantized(lay, qx, sx, M)
                e[1].record()
            torch.cuda.synchronize()
            qt = statistics.median(e[0].elapsed_time(e[1]) for e in ev)
            gt = statistics.median(e[1].elapsed_time(e[2]) for e in ev)
            tt = statistics.median(e[0].elapsed_time(e[2]) for e in ev)
            ga = statistics.median(e[0].elapsed_time(e[1]) for e in ev2)
            log(f"{p} flush={flush}: quantizer {qt:.3f} | GEMM after it {gt:.3f} | whole {tt:.3f} "
                f"| GEMM alone, same loop {ga:.3f}")

    # 3. host time per call vs GPU time per call
    log("\n== host (launch) time per call vs GPU time per call, 50 calls ==")
    for k in ("bf16 F.linear", "int8 whole", "int8 quantizer alone",
              "int8 GEMM alone", "fp8 whole"):
        fn = fns[k]
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        log(f"{k:35s} host {(t1 - t0) / 50 * 1e6:7.1f} us/call, wall {(t2 - t0) / 50 * 1e3:.3f} ms/call")

    # 4. profiler: kernels and gaps
    from torch.profiler import ProfilerActivity, profile
    log("\n== torch.profiler, 10 calls each after an L2 flush ==")
    for p, fn in (("int8", fns["int8 whole"]), ("fp8", fns["fp8 whole"]), ("bf16", fns["bf16 F.linear"])):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                flush_buf.zero_()
                fn()
            torch.cuda.synchronize()
        path = os.path.join(OUT or "/tmp", f"trace_{p}.json")
        prof.export_chrome_trace(path)
        try:
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8)
        except Exception:
            table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=8)
        log(table)
        evs = [e for e in json.load(open(path))["traceEvents"]
               if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and e.get("ph") == "X"]
        evs.sort(key=lambda e: e["ts"])
        calls, cur = [], None
        for e in evs:
            if "FillFunctor" in e["name"] or e.get("cat") == "gpu_memset":
                cur = []
                calls.append(cur)
            elif cur is not None:
                cur.append(e)
        per = {}
        spans, gaps = [], []
        for c in calls:
            if not c:
                continue
            spans.append(c[-1]["ts"] + c[-1]["dur"] - c[0]["ts"])
            gaps.append(sum(b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(c, c[1:])))
            for e in c:
                per.setdefault(e["name"][:70], []).append(e["dur"])
        for name, d in per.items():
            log(f"{p} kernel {name}: median {statistics.median(d) / 1e3:.3f} ms x{len(d)}")
        if spans:
            log(f"{p}: first kernel start -> last kernel end, median {statistics.median(spans) / 1e3:.3f} ms; "
                f"idle between its kernels {statistics.median(gaps) / 1e3:.3f} ms")

    # 5. CUDA graph of the whole layer
    log("\n== CUDA graph replay ==")
    for p, fn in (("int8 whole", fns["int8 whole"]), ("fp8 whole", fns["fp8 whole"]),
                  ("bf16 F.linear", fns["bf16 F.linear"])):
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                yg = fn()
            g.replay()
            torch.cuda.synchronize()
            same = torch.equal(yg, fn())
            t_g = statistics.median(bench(g.replay) for _ in range(3))
            t_e = statistics.median(bench(fn) for _ in range(3))
            log(f"{p}: graph {t_g:.3f} ms, eager {t_e:.3f} ms, graph output identical={same}")
            del g, yg
        except Exception as e:
            log(f"{p}: graph FAILED {type(e).__name__}: {str(e)[:120]}")

    # 6. SM clock and power under each workload
    log("\n== nvidia-smi while each workload runs ~1.5 s (sm MHz, W, C, throttle reasons) ==")
    for k in ("bf16 F.linear", "int8 whole", "int8 GEMM alone", "int8 quantizer alone", "fp8 whole"):
        fn = fns[k]
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu,"
                                    "clocks_throttle_reasons.active", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True)
                samples.append(r.stdout.strip())
                time.sleep(0.15)
        t = threading.Thread(target=sample)
        t0 = time.perf_counter()
        t.start()
        while time.perf_counter() - t0 < 1.5:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
        stop.set()
        t.join()
        log(f"{k:25s}", " ; ".join(samples[1:6]))

    if OUT:
        open(os.path.join(OUT, "profile.txt"), "w").write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
