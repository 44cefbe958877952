"""Where the time of a 14B-config Wan transformer forward goes (480p, 81 frames, 32760 tokens).

    PYTHONUNBUFFERED=1 python bench/profile_transformer.py --layers 4

Same model and inputs as `bench_kernels.py --part transformer`. Three things, one process:
  1. interleaved rounds (bf16 eager, our fp8 fused, our fp8 fused + compile_repeated_blocks, bf16 +
     compile_repeated_blocks): each round times every model, the table reports each model's median
     round, so power-capped clock drift hits every row alike;
  2. CUDA events around each transformer block: block time vs the rest of the forward (patch
     embedding, condition embedders, rotary tables, output head), which quantization leaves alone;
  3. torch.profiler over one forward: GPU kernel time by category (attention, GEMM, other) and the
     top kernels.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_kernels import WAN_14B, env_line  # noqa: E402


def category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("fmha", "flash", "sdpa", "attention", "cudnn")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "xmma", "cutlass", "_mm_", "matmul")):
        return "gemm"
    return "other"


def kernel_times(model, run):
    from torch.profiler import ProfilerActivity, profile
    run(model)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(model)
        torch.cuda.synchronize()
    per_name: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_name[e.name] = per_name.get(e.name, 0.0) + e.time_range.elapsed_us() / 1000
    return per_name


def gaps(model, run, top=8):
    """GPU idle time inside one forward: (sum of gaps between kernels, the largest gaps with the
    kernels around them, host-side synchronizing calls)."""
    from torch.profiler import ProfilerActivity, profile
    run(model)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:  # CUDA only: CPU tracing would slow launches
        run(model)
        torch.cuda.synchronize()
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    holes = [(b[0] - a[1], a[2], b[2]) for a, b in zip(kernels, kernels[1:]) if b[0] > a[1]]
    syncs: dict[str, int] = {}
    for e in prof.events():
        if any(w in e.name for w in ("Synchronize", "Memcpy", "memcpy")):  # runtime calls and copies
            syncs[e.name] = syncs.get(e.name, 0) + 1
    span = (kernels[-1][1] - kernels[0][0]) / 1000
    return sum(h[0] for h in holes) / 1000, span, sorted(holes, reverse=True)[:top], syncs


def block_split(model, run):
    """(ms in transformer blocks, ms for the whole forward), from CUDA events."""
    starts, ends, hooks = [], [], []
    for blk in model.blocks:
        hooks.append(blk.register_forward_pre_hook(lambda m, a: starts.append(_event())))
        hooks.append(blk.register_forward_hook(lambda m, a, o: ends.append(_event())))
    run(model)
    starts.clear(), ends.clear()
    t0 = _event()
    run(model)
    t1 = _event()
    torch.cuda.synchronize()
    for h in hooks:
        h.remove()
    return sum(s.elapsed_time(e) for s, e in zip(starts, ends)), t0.elapsed_time(t1)


def _event():
    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--ffn-triton", action="store_true", help="also time the FFN GEMMs on Triton")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from diffusers import WanTransformer3DModel

    from engine.apply import quantize_model
    from engine.fused import install_fused_wan

    torch.manual_seed(0)
    with torch.device("cuda"):
        base = WanTransformer3DModel(**dict(WAN_14B, num_layers=args.layers)).to(torch.bfloat16).eval()
    lat = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    ts = torch.tensor([500], device="cuda")

    def run(model):
        return model(lat, ts, ctx, return_dict=False)[0]

    fp8 = copy.deepcopy(base)
    quantize_model(fp8, "fp8")
    install_fused_wan(fp8)
    models = {"bf16 eager": base, "ours fp8 fused": fp8}
    if args.ffn_triton:
        # the FFN GEMMs on our Triton TMA GEMM instead of cuBLAS (faster at these shapes per layer)
        alt = copy.deepcopy(fp8)
        for blk in alt.blocks:
            for layer in (blk.ffn.net[0].proj, blk.ffn.net[2]):
                layer.kernel_preference, layer._kernels = "triton", {}
        install_fused_wan(alt)
        models["ours fp8 fused, FFN on triton"] = alt
    compile_s = {}
    compiled = [("ours fp8 fused + compile_repeated_blocks", models["ours fp8 fused"])]
    if args.ffn_triton:
        compiled.append(("ours fp8 fused, FFN on triton + compile_repeated_blocks", alt))
    compiled.append(("bf16 + compile_repeated_blocks", base))
    for name, src in compiled:
        m = copy.deepcopy(src)
        if src is not base:
            install_fused_wan(m)  # plans hold device-bound choices; remake them for the copy
        m.compile_repeated_blocks(fullgraph=True)
        t0 = time.perf_counter()
        run(m)
        torch.cuda.synchronize()
        compile_s[name] = time.perf_counter() - t0
        models[name] = m
    for m in models.values():
        run(m)
    torch.cuda.synchronize()

    rounds = {name: [] for name in models}
    for r in range(args.rounds):
        for name, m in models.items():
            times = []
            for _ in range(args.reps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                run(m)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1000)
            rounds[name].append(sorted(times)[len(times) // 2])
        print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rounds.items()), flush=True)
    med = {n: sorted(v)[len(v) // 2] for n, v in rounds.items()}
    y_base = run(base).float()

    lines = [f"Device: {env_line()}", f"Command: `python bench/profile_transformer.py {' '.join(sys.argv[1:])}`", "",
             f"| 14B config x{args.layers} layers, 480p x 81 frames | ms / forward (median of {args.rounds} "
             "interleaved rounds) | speed-up vs bf16 eager | rel. error vs bf16 | compile s | rounds |",
             "|---|---|---|---|---|---|"]
    for name, m in models.items():
        y = run(m).float()
        err = ((y - y_base).norm() / y_base.norm()).item()
        cs = f"{compile_s[name]:.0f}" if name in compile_s else "—"
        lines.append(f"| {name} | {med[name]:.1f} | {med['bf16 eager'] / med[name]:.2f}x | {err:.4f} | {cs} | "
                     + " ".join(f"{v:.1f}" for v in rounds[name]) + " |")
    lines += ["", "| model (eager) | blocks ms | rest of the forward ms | blocks speed-up vs bf16 | rounds (blocks ms) |",
              "|---|---|---|---|---|"]
    eager = [n for n in models if "compile" not in n]
    splits = {n: [] for n in eager}
    for _ in range(3):
        for name in eager:
            splits[name].append(block_split(models[name], run))
    med_split = {n: sorted(v)[1] for n, v in splits.items()}
    for name in eager:
        blocks, total = med_split[name]
        lines.append(f"| {name} | {blocks:.1f} | {total - blocks:.1f} | {med_split['bf16 eager'][0] / blocks:.3f}x | "
                     + " ".join(f"{b:.1f}" for b, _ in splits[name]) + " |")
    for name in ("bf16 eager", "ours fp8 fused", "ours fp8 fused + compile_repeated_blocks"):
        idle, span, holes, syncs = gaps(models[name], run)
        lines += ["", f"{name}: GPU idle {idle:.2f} ms between kernels over a {span:.1f} ms span; "
                  f"synchronizing host calls: {syncs or 'none'}", "", "| idle ms | after | before |", "|---|---|---|"]
        lines += [f"| {h / 1000:.3f} | `{a[:60]}` | `{b[:60]}` |" for h, a, b in holes]
    # profiled twice each, alternating, to tell a slower kernel from a drifting clock
    profiled = {}
    for name in ("bf16 eager", "ours fp8 fused + compile_repeated_blocks") * 2:
        profiled.setdefault(name, []).append(kernel_times(models[name], run))
    for name, passes in profiled.items():
        per = passes[-1]
        cats: dict[str, float] = {}
        for k, v in per.items():
            cats[category(k)] = cats.get(category(k), 0.0) + v
        attn = [sum(v for k, v in p.items() if category(k) == "attention") for p in passes]
        lines += ["", f"{name}: GPU kernel time per forward, {sum(per.values()):.1f} ms: "
                  + ", ".join(f"{c} {v:.1f} ms" for c, v in sorted(cats.items(), key=lambda kv: -kv[1]))
                  + f" (attention in each profiled pass: {', '.join(f'{a:.1f}' for a in attn)} ms)", "",
                  "| kernel | category | ms / forward |", "|---|---|---|"]
        for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:args.top]:
            lines.append(f"| `{k[:90]}` | {category(k)} | {v:.2f} |")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
