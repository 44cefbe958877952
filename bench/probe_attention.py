"""Is self-attention slower inside our fp8 block than inside the bf16 one, and why?

    PYTHONUNBUFFERED=1 python bench/probe_attention.py

Profiles of the 14B-config forward (bench/profile_transformer.py) put the same cuDNN attention
kernel at ~161-164 ms per forward in our fp8 path and ~148-160 ms in bf16. This captures the
q/k/v that each path hands to the attention dispatcher in a one-block 14B model and times the
attention alone on them, interleaved: as captured, as contiguous copies, and with the other
path's data, to separate layout from values.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_kernels import WAN_14B, env_line  # noqa: E402


def main():
    torch.set_grad_enabled(False)
    from triton.testing import do_bench
    import diffusers.models.transformers.transformer_wan as tw
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers import WanTransformer3DModel

    import engine.fused as fused
    from engine.apply import quantize_model

    captured = {}

    def spy(tag):
        def call(q, k, v, *a, **kw):
            if q.shape[1] == k.shape[1] and tag not in captured:  # self-attention only
                captured[tag] = (q, k, v)
            return dispatch_attention_fn(q, k, v, *a, **kw)
        return call

    torch.manual_seed(0)
    with torch.device("cuda"):
        base = WanTransformer3DModel(**dict(WAN_14B, num_layers=1)).to(torch.bfloat16).eval()
    lat = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    ts = torch.tensor([500], device="cuda")
    tw.dispatch_attention_fn = spy("bf16")
    base(lat, ts, ctx, return_dict=False)
    quantize_model(base, "fp8")
    fused.install_fused_wan(base)
    fused.dispatch_attention_fn = spy("fp8")
    base(lat, ts, ctx, return_dict=False)

    def describe(t):
        bits = t.contiguous().view(torch.int16)
        return (f"shape {tuple(t.shape)} stride {t.stride()} ptr%1024 {t.data_ptr() % 1024} "
                f"mean|x| {t.float().abs().mean().item():.3f} low-mantissa-bit-zero {(bits & 1 == 0).float().mean().item():.3f}")

    lines = [f"Device: {env_line()}", "Command: `python bench/probe_attention.py`", ""]
    for tag, (q, k, v) in captured.items():
        for name, t in zip("qkv", (q, k, v)):
            lines.append(f"- {tag} {name}: {describe(t)}")
    variants = {}
    for tag, (q, k, v) in captured.items():
        variants[f"{tag} as captured"] = (q, k, v)
        variants[f"{tag} contiguous copies"] = tuple(t.contiguous().clone() for t in (q, k, v))
    qb, kb, vb = captured["bf16"]
    q8, k8, v8 = captured["fp8"]
    variants["bf16 q,k + fp8 v"] = (qb, kb, v8)
    variants["fp8 q,k + bf16 v"] = (q8, k8, vb)
    variants["random normal q,k,v"] = tuple(torch.randn_like(t) for t in (qb, kb, vb))
    times = {n: [] for n in variants}
    for _ in range(4):
        for n, (q, k, v) in variants.items():
            times[n].append(do_bench(lambda: dispatch_attention_fn(q, k, v), warmup=3, rep=300, return_mode="median"))
    lines += ["", "| q, k, v | attention ms (median of 4 interleaved rounds) | rounds |", "|---|---|---|"]
    for n, ts_ in times.items():
        lines.append(f"| {n} | {sorted(ts_)[len(ts_) // 2]:.2f} | {' '.join(f'{t:.2f}' for t in ts_)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
