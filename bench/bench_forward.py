"""Full-depth Wan transformer forwards: bf16 eager vs our fp8 fused linears vs fp8 linears + 8-bit
attention (our sage8 family: the Gluon kernel on Hopper, Triton elsewhere; and cuDNN's FP8
attention when nvidia-cudnn-frontend is importable).

    python bench/bench_forward.py [--json PATH] [--wheel-dir DIR] [--quick] [--budget-s 480] [--models 14B]

Sections: the 30-block 1.3B and the 40-block 14B config at 480p (832x480, 81 frames: 32,760 tokens),
then the 14B at 720p (1280x720: 75,600 tokens) when the time measured so far says it fits the
budget. Random weights, batch 1, one process. Per section every variant is warmed up once (Triton
compiles, the cuDNN graph builds: "first call s"), then timed in interleaved rounds (one forward
of each variant per round, so clock drift hits all alike); the table shows each variant's median.
At 480p one forward per 8-bit variant runs under torch.profiler: GPU time of the attention kernel,
of the quantize launch (statistics + quantize kernels that turn bf16 q/k/v into 8-bit copies), and
of the RMSNorm+RoPE kernel that writes q/k, per forward and per block, to judge whether folding the
quantization into that kernel would pay. --quick: 4 blocks of each config at 480p, 1 round.
Joules per forward come from NVML's energy counter (bench/energy.py): the H200 runs these at its power limit.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_kernels import WAN_1_3B, WAN_14B, env_line  # noqa: E402
from bench.cudnn_frontend import use_wheel_dir  # noqa: E402
from bench.energy import Nvml  # noqa: E402

RES = {"480p": (60, 104, 32760), "720p": (90, 160, 75600)}  # latent height, width; tokens at 21 frames
VARIANTS = ("bf16 eager", "fp8 fused", "fp8 fused + sage8", "fp8 fused + cudnn fp8")
FAMILY = {"fp8 fused": "sdpa", "fp8 fused + sage8": "sage8", "fp8 fused + cudnn fp8": "cudnn_fp8"}


def kernel_group(name: str) -> str:
    n = name.lower()
    # the attention quantize launches (engine/attention/triton_qkv.py, fp8_qkv.py); the linears'
    # own activation quantize kernels (engine/kernels) count as "other"
    if "_qkv_stats_kernel" in n or "_fp8qkv_stats_kernel" in n:
        return "quantize: statistics"
    if "_qkv_quant_kernel" in n or "_fp8qkv_quant_kernel" in n:
        return "quantize: write 8-bit"
    if "rmsnorm_rope" in n:
        return "rmsnorm+rope"
    if any(s in n for s in ("_attn_kernel", "sdpa", "fmha", "flash", "attention")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "xmma", "cutlass", "_mm_", "matmul", "scaled_mm")):
        return "gemm"
    return "other"


def profile_groups(run):
    """GPU ms per kernel group over one forward (after the warm-up), and the launch counts."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    ms, launches, attention = {}, {}, {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            g = kernel_group(e.name)
            t = e.time_range.elapsed_us() / 1000
            ms[g] = ms.get(g, 0.0) + t
            launches[g] = launches.get(g, 0) + 1
            if g == "attention":  # self- and cross-attention run different kernels: name them apart
                name = e.name[:120]
                n, total = attention.get(name, (0, 0.0))
                attention[name] = (n + 1, total + t)
    return ms, launches, {k: dict(launches=n, ms=t) for k, (n, t) in attention.items()}


def attention_alone(run, log, calls: int = 20) -> dict:
    """The 8-bit self-attention kernel alone, right after the profiled forward (same clocks and heat), on
    the q/k/v of the forward's first self-attention call and on Wan-like q/k/v of that shape: inside the
    forward it measured 29.2 ms a call against 25.7 alone (docs/benchmarks.md). GPU kernel ms per call."""
    from engine.attention import reference as R
    from engine.attention.paths import select_path

    seen = []
    path = None

    def record(q, k, v, scale=None):
        if not seen:
            seen.append((q.clone(), k.clone(), v.clone()))
        return type(path).run(path, q, k, v, scale)

    dev = torch.device("cuda", torch.cuda.current_device())
    path = select_path("sage8", dev, 128, torch.bfloat16)
    path.run = record  # the instance attribute shadows the class's run for one forward
    try:
        run()
    finally:
        del path.run
    q, k, v = seen[0]
    wan = R.wan_like_qkv(*q.shape, seed=2, device="cuda")
    out = {"path": path.name, "shape": list(q.shape)}
    for label, (a, b, c) in (("forward q/k/v", (q, k, v)), ("wan-like q/k/v", wan)):
        _, _, kernels = profile_groups(lambda: [path.run(a, b, c) for _ in range(calls)])
        per_call = {name: kk["ms"] / kk["launches"] for name, kk in kernels.items()}
        out[label] = per_call
        log(f"  attention alone after the forward, {label} {list(q.shape)}: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in per_call.items()))
    return out


def timed_forward(run) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def energy(run, gpu, min_s: float = 2.0) -> dict:
    """Joules per forward and mean watts over back-to-back forwards lasting at least min_s: NVML's energy
    counter moves in steps of tens of milliseconds on recent GPUs, too coarse for one short forward."""
    torch.cuda.synchronize()
    j0, t0, n = gpu.energy_j(), time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t0 < min_s:
        run()
        torch.cuda.synchronize()
        n += 1
    j1, seconds = gpu.energy_j(), time.perf_counter() - t0
    if j0 is None or j1 is None:
        return {"energy": f"not read: {gpu.why or 'NVML returned no energy reading'}"}
    return {"joules": (j1 - j0) / n, "watts": (j1 - j0) / seconds, "energy_forwards": n,
            **({"energy_note": gpu.note} if gpu.note else {})}


def build(cfg, layers):
    from diffusers import WanTransformer3DModel

    from engine.apply import quantize_model
    from engine.fused import install_fused_wan

    torch.manual_seed(0)
    with torch.device("cuda"):
        base = WanTransformer3DModel(**dict(cfg, num_layers=layers)).to(torch.bfloat16).eval()
    torch.cuda.empty_cache()
    fp8 = copy.deepcopy(base)
    quantize_model(fp8, "fp8")
    install_fused_wan(fp8)
    torch.cuda.empty_cache()
    return base, fp8


def section(name, res, base, fp8, layers, rounds, cudnn_why, do_profile, log):
    from engine.attention import AttentionPlan, install_attention

    h, w, tokens = RES[res]
    lat = torch.randn(1, 16, 21, h, w, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    ts = torch.tensor([500], device="cuda")

    installed = [None]

    def runner(variant):
        model = base if variant == "bf16 eager" else fp8

        def run():
            if model is fp8 and installed[0] != variant:  # a processor swap per block, outside the forward
                install_attention(fp8, AttentionPlan(FAMILY[variant]))
                installed[0] = variant
            return model(lat, ts, ctx, return_dict=False)[0]
        return run

    rows = {}
    runs = {}
    y_base = None
    for variant in VARIANTS:
        row = rows[variant] = dict(model=name, res=res, tokens=tokens, blocks=layers, variant=variant)
        if variant.endswith("cudnn fp8") and cudnn_why:
            row["skipped"] = cudnn_why
            continue
        run = runner(variant)
        try:
            t0 = time.perf_counter()
            y = run().float()
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - t0
        except Exception as e:  # one variant failing must not lose the others' numbers
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"{name} {res} {variant}: failed {row['error']}")
            continue
        if y_base is None:
            y_base = y
        row["rel_err_vs_bf16"] = ((y - y_base).norm() / y_base.norm()).item()
        del y
        runs[variant] = run
        row["rounds_ms"] = []
    for r in range(rounds):
        for variant, run in runs.items():
            rows[variant]["rounds_ms"].append(timed_forward(run))
        log(f"{name} {res} round {r}: " + ", ".join(f"{v} {rows[v]['rounds_ms'][-1]:.0f} ms" for v in runs))
    gpu = Nvml(torch.cuda.current_device())  # at the power limit joules, not FLOPs, set the pace
    for variant, run in runs.items():
        t = sorted(rows[variant]["rounds_ms"])
        rows[variant]["ms"] = t[len(t) // 2]
        rows[variant].update(energy(run, gpu))
    if do_profile:
        for variant in ("fp8 fused", "fp8 fused + sage8", "fp8 fused + cudnn fp8"):
            if variant in runs:
                ms, launches, kernels = profile_groups(runs[variant])
                rows[variant]["profile_ms"] = ms
                rows[variant]["profile_launches"] = launches
                rows[variant]["profile_attention_kernels"] = kernels
                for name, k in sorted(kernels.items(), key=lambda kv: -kv[1]["ms"]):
                    log(f"  {variant}: {k['launches']} x {name}: {k['ms']:.1f} ms")
                if variant == "fp8 fused + sage8":
                    try:  # a diagnostic: its failure is recorded, the forward's numbers stand
                        rows[variant]["attention_alone"] = attention_alone(runs[variant], log)
                    except Exception as e:
                        rows[variant]["attention_alone"] = f"failed: {type(e).__name__}: {e}"
                        log(f"  attention alone: failed: {type(e).__name__}: {e}")
    del lat, ctx, y_base
    return list(rows.values())


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def tables(rows):
    out = ["| model | res | variant | ms / forward (median) | x bf16 eager | x fp8 fused | rel. err vs bf16 | "
           "first call s | rounds ms |", "|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["model"], r["res"], r["variant"]): r.get("ms") for r in rows}
    for r in rows:
        key = (r["model"], r["res"])
        if "ms" not in r:
            out.append(f"| {r['model']} x{r['blocks']} | {r['res']} | {r['variant']} | "
                       f"{'not run: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r.get('error', '?')} ||||||")
            continue
        bf16, fp8 = ref.get((*key, "bf16 eager")), ref.get((*key, "fp8 fused"))
        out.append(f"| {r['model']} x{r['blocks']} | {r['res']} | {r['variant']} | {r['ms']:.1f} | "
                   f"{_ratio(bf16, r['ms'])} | {_ratio(fp8, r['ms'])} | "
                   f"{r['rel_err_vs_bf16']:.4f} | {r['first_call_s']:.1f} | "
                   + " ".join(f"{t:.0f}" for t in r["rounds_ms"]) + " |")
    spent = [r for r in rows if "joules" in r]
    if spent:
        out += ["", "GPU energy per forward (NVML's counter over back-to-back forwards of 2 s or more):", "",
                "| model | res | variant | J / forward | mean W | bf16 eager's J / this J |",
                "|---|---|---|---|---|---|"]
        joules = {(r["model"], r["res"], r["variant"]): r["joules"] for r in spent}
        for r in spent:
            base = joules.get((r["model"], r["res"], "bf16 eager"))
            out.append(f"| {r['model']} x{r['blocks']} | {r['res']} | {r['variant']} | {r['joules']:.0f} | "
                       f"{r['watts']:.0f} | {_ratio(base, r['joules'])} |")
    prof = [r for r in rows if "profile_ms" in r]
    if prof:
        out += ["", "GPU kernel time of one profiled forward (ms per forward / per block):", "",
                "| model | res | variant | attention | quantize: statistics (K mean, amax) | quantize: write 8-bit q/k/v "
                "| rmsnorm+rope (q, k) | gemm | other |", "|---|---|---|---|---|---|---|---|---|"]
        for r in prof:
            p, n = r["profile_ms"], r["blocks"]
            cells = " | ".join(f"{p.get(g, 0.0):.1f} / {p.get(g, 0.0) / n:.2f}"
                               for g in ("attention", "quantize: statistics", "quantize: write 8-bit", "rmsnorm+rope",
                                         "gemm", "other"))
            out.append(f"| {r['model']} x{n} | {r['res']} | {r['variant']} | {cells} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--wheel-dir", default=os.environ.get("CUDNN_FE_DIR"),
                    help="nvidia-cudnn-frontend: an installed --target folder or a folder of its wheels")
    ap.add_argument("--quick", action="store_true", help="4 blocks of each config at 480p, 1 round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, help="blocks of each config (default: full depth)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="skip the 14B 720p section when the time measured so far says it would not fit")
    ap.add_argument("--no-720p", action="store_true")
    ap.add_argument("--models", default="1.3B,14B", help="comma-separated: 1.3B, 14B")
    args = ap.parse_args()
    start = time.perf_counter()
    frontend_line = use_wheel_dir(args.wheel_dir)
    torch.set_grad_enabled(False)
    from engine.attention.paths import PATHS
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    log(f"Device: {env_line()}")
    log(frontend_line)
    cudnn_why = PATHS["cudnn_fp8"].unavailable(torch.device("cuda", torch.cuda.current_device()), 128, torch.bfloat16)
    log(f"cudnn fp8 path: {cudnn_why or 'available'}")
    rounds = 1 if args.quick else args.rounds
    rows = []
    models = [m.strip().upper() for m in args.models.split(",")]
    for name, cfg in (("1.3B", WAN_1_3B), ("14B", WAN_14B)):
        if name.upper() not in models:
            continue
        layers = 4 if args.quick else (args.layers or cfg["num_layers"])
        t0 = time.perf_counter()
        base, fp8 = build(cfg, layers)
        log(f"{name} x{layers}: built and quantized in {time.perf_counter() - t0:.0f} s; "
            f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated")
        t480 = time.perf_counter()
        rows += section(name, "480p", base, fp8, layers, rounds, cudnn_why, True, log)
        t480 = time.perf_counter() - t480
        if name == "14B" and not (args.quick or args.no_720p):
            # 720p: 2.3x the tokens and attention (most of the time) grows with their square, but no
            # compiles and no profiled forwards: about 3.5x the 480p section
            estimate = t480 * 3.5
            left = args.budget_s - (time.perf_counter() - start)
            if estimate < left:
                rows += section(name, "720p", base, fp8, layers, rounds, cudnn_why, False, log)
            else:
                log(f"14B 720p skipped: estimated {estimate:.0f} s from the 480p section, {left:.0f} s of the "
                    f"--budget-s {args.budget_s:.0f} left")
                rows.append(dict(model=name, res="720p", tokens=RES["720p"][2], blocks=layers, variant="(all)",
                                 skipped=f"estimated {estimate:.0f} s > {left:.0f} s left of --budget-s"))
        del base, fp8
        gc.collect()
        torch.cuda.empty_cache()
    table = tables(rows)
    log(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "log": lines, "command": " ".join(sys.argv)}, f, indent=1)
    print("\n" + table)


if __name__ == "__main__":
    main()
