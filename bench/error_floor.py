"""How low can the error of an 8-bit format go on the benchmark's inputs? (runs on CPU)

    python bench/error_floor.py --rows 1024

Same inputs as `bench_kernels.py --part linear` (Gaussian activations with 4 channels 40x larger,
Gaussian weights / sqrt(K), nn.Linear's bias), fewer rows (the error is a per-row average).
Relative error ||y - y_ref|| / ||y_ref|| against the float64 product of the bf16 inputs, for:

- our formats through the reference kernel (engine/kernels/emulated.py), which the GPU kernels
  match (tests/gpu);
- block fp8, oracle scales: activation blocks 1x128 and weight blocks 128x128 in e4m3, as
  fp8_block128, but each block's scale is the one of 35 candidates that rounds that block with the
  least squared error (see e4m3_oracle), instead of amax / 448;
- int8 oracle: per-token int8 whose scale is the best of 41 clipping levels (0.2-1.0 of amax) for
  each token, picked with knowledge of the exact activation, with the weights left exact: about the
  best per-token int8 can do (to within that grid of levels).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.linear import QuantLinear  # noqa: E402

SHAPES = [("1.3B qkvo", 1536, 1536), ("1.3B ffn down", 8960, 1536),
          ("14B qkvo", 5120, 5120), ("14B ffn up", 5120, 13824), ("14B ffn down", 13824, 5120)]


def e4m3_oracle(v: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """v [R, C] as e4m3 with one scale per block, each block's scale the best (least squared
    error) of amax/448 * t for t in 0.9, 0.95 and 33 steps over [1, 2]: a power of two does not
    change relative rounding, so one octave of t tries every alignment of the grid."""
    br, bc = block
    r, c = v.shape
    blocks = v.float().reshape(r // br, br, c // bc, bc)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    best, best_err = None, None
    for t in [0.9, 0.95] + torch.linspace(1.0, 2.0, 33).tolist():
        s = amax * (t / 448)
        q = (blocks / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
        err = (q - blocks).pow(2).sum(dim=(1, 3), keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, q, best), torch.minimum(err, best_err)
    return best.reshape(r, c).double()


def int8_oracle(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    best, best_err = None, None
    for c in torch.linspace(0.2, 1.0, 41, dtype=torch.float64):
        s = amax * c / 127
        q = torch.clamp(torch.round(x / s), -127, 127) * s
        err = (q - x).pow(2).sum(dim=1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, q, best), torch.minimum(err, best_err)
    return best


def rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(0)
    lines = [f"Command: `python bench/error_floor.py --rows {args.rows}` (CPU, torch {torch.__version__})", "",
             "| shape | fp8 (ours) | fp8_block128 (ours) | block fp8, oracle scales | int8 (ours) | "
             "int8 oracle clip, exact weights |", "|---|---|---|---|---|---|"]
    for name, k, n in SHAPES:
        x = torch.randn(args.rows, k, generator=gen)
        x[:, torch.randperm(k, generator=gen)[:4]] *= 40
        x = x.to(torch.bfloat16)
        lin = torch.nn.Linear(k, n).to(torch.bfloat16)
        lin.weight.copy_(torch.randn(n, k, generator=gen) / k ** 0.5)
        w, b = lin.weight.double(), lin.bias.double()
        ref = x.double() @ w.t() + b
        row = {}
        for fmt in ("fp8", "fp8_block128", "int8"):
            row[fmt] = rel(QuantLinear.from_linear(lin, fmt, kernel="emulated")(x), ref)
        row["block_oracle"] = rel(e4m3_oracle(x, (1, 128)) @ e4m3_oracle(w, (128, 128)).t() + b, ref)
        row["oracle"] = rel(int8_oracle(x) @ w.t() + b, ref)
        lines.append(f"| {name} | {row['fp8']:.4f} | {row['fp8_block128']:.4f} | {row['block_oracle']:.4f} | "
                     f"{row['int8']:.4f} | {row['oracle']:.4f} |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
