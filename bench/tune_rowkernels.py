"""Time the one-row Triton kernels of the fused Wan block at 14B shapes, per number of warps.

    PYTHONUNBUFFERED=1 python bench/tune_rowkernels.py

M = 32760 tokens, D = 5120 (ffn 13824). Each kernel is memory-bound: the table gives the bytes it
must move, its time (do_bench median, L2 flushed) and the bandwidth that makes; the H100 reaches
about 3 TB/s on a plain copy (measured in the same run). `engine.kernels.triton_quant.ROW_WARPS`
holds the choices this measured.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_kernels import env_line  # noqa: E402
from engine.kernels import triton_quant, triton_wan  # noqa: E402

M, D, FF, HEADS, HD = 32760, 5120, 13824, 40, 128
WARPS = (4, 8, 16, 32)


def main():
    from triton.testing import do_bench
    torch.manual_seed(0)
    dev = "cuda"
    bf = dict(device=dev, dtype=torch.bfloat16)
    h, y = torch.randn(1, M, D, **bf), torch.randn(1, M, D, **bf)
    ff = torch.randn(M, FF, **bf)
    gate, shift, scale = (torch.randn(1, 1, D, device=dev) * 0.1 for _ in range(3))
    w, b = torch.randn(D, device=dev), torch.randn(D, device=dev)
    attn_bhsd = torch.randn(1, HEADS, M, HD, **bf)  # SDPA output [B, H, S, Dh] ...
    heads_view = attn_bhsd.transpose(1, 2)  # ... read in place as [B, S, H, Dh]
    heads_bshd = torch.randn(1, M, HEADS, HD, **bf)
    ang = torch.randn(M, HD // 2, device=dev).repeat_interleave(2, dim=1)
    cos, sin = ang.cos(), ang.sin()
    nw = torch.randn(D, device=dev)
    mb = M * D
    cases = [
        ("norm_quant", "norm1: LayerNorm + modulation + fp8", 3 * mb,
         lambda: triton_quant.norm_quant(h, "fp8_row", 1e-6, shift=shift, scale=scale, pad=16)),
        ("norm_quant", "norm2: residual*gate + LayerNorm(affine) + fp8", 7 * mb,
         lambda: triton_quant.norm_quant(h, "fp8_row", 1e-6, y=y, gate=gate, weight=w, bias=b, pad=16)),
        ("norm_quant", "norm3: residual + LayerNorm + modulation + fp8", 7 * mb,
         lambda: triton_quant.norm_quant(h, "fp8_row", 1e-6, y=y, shift=shift, scale=scale, pad=16)),
        ("quantize_heads", "attention output [B,S,H,Dh] contiguous -> fp8", 3 * mb,
         lambda: triton_quant.quantize_heads(heads_bshd, "fp8_row", pad=16)),
        ("quantize_heads", "attention output [B,H,S,Dh] permuted view -> fp8", 3 * mb,
         lambda: triton_quant.quantize_heads(heads_view, "fp8_row", pad=16)),
        ("quantize_rows", "GELU + fp8, K=13824", 3 * M * FF,
         lambda: triton_quant.quantize_rows(ff, "fp8_row", gelu=True, pad=16)),
        ("quantize_rows", "int8 per token, K=5120", 3 * mb,
         lambda: triton_quant.quantize_rows(h.view(M, D), "int8_row", pad=16)),
        ("rmsnorm_rope", "q/k RMSNorm + rotary", 4 * mb,
         lambda: triton_wan.rmsnorm_rope(h, nw, 1e-6, HD, cos, sin)),
        ("rmsnorm_rope", "cross-attn q RMSNorm", 4 * mb,
         lambda: triton_wan.rmsnorm_rope(h, nw, 1e-6, HD)),
        ("gated_residual", "h + y*gate", 6 * mb,
         lambda: triton_wan.gated_residual(h, y, gate)),
    ]
    out = torch.empty_like(h)
    copy_ms = do_bench(lambda: out.copy_(h), return_mode="median")
    lines = [f"Device: {env_line()}", "Command: `python bench/tune_rowkernels.py`", "",
             f"Plain copy of [{M}, {D}] bf16: {copy_ms:.3f} ms ({4 * mb / copy_ms / 1e9:.2f} TB/s)", "",
             "| kernel | case | GB moved | " + " | ".join(f"{w} warps ms (TB/s)" for w in WARPS) + " |",
             "|---|---|---|" + "---|" * len(WARPS)]
    for name, label, nbytes, fn in cases:
        cells = []
        for warps in WARPS:
            triton_quant.ROW_WARPS[name] = warps
            try:
                fn()
                torch.cuda.synchronize()
                ms = do_bench(fn, return_mode="median")
                cells.append(f"{ms:.3f} ({nbytes / ms / 1e9:.2f})")
            except Exception as e:  # e.g. too many registers for this many warps
                cells.append(f"failed: {type(e).__name__}")
        triton_quant.ROW_WARPS.pop(name, None)
        lines.append(f"| {name} | {label} | {nbytes / 1e9:.2f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
