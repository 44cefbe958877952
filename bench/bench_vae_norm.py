"""The decoder's RMS norm + SiLU alone: diffusers' WanRMS_norm then SiLU against engine/vae/fused_norm.py's
Triton kernel, at the full Wan decoder's 480p shapes (one latent frame's chunk: T=1 at the mid block,
up to T=4 after the temporal upsamples), fp16, each layout the decoder hands over. Prints the time and
the kernel's effective bandwidth (one read and one write of the activation), to judge the tile sizes.

    python bench/bench_vae_norm.py   # GPU, seconds
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.vae.fused_norm import rms_norm_silu  # noqa: E402

SHAPES = [(384, 1, 60, 104), (384, 2, 120, 208), (192, 4, 240, 416), (96, 4, 480, 832)]  # (C, T, H, W)


def timed(fn, reps=20):
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    print(f"{'C':>4} {'T':>2} {'H':>4} {'W':>4} {'layout':18} {'diffusers ms':>13} {'fused ms':>9} {'GB/s':>7}")
    for C, T, H, W in SHAPES:
        norm = WanRMS_norm(C, images=False).cuda().half()
        for layout in ("ncthw", "channels_last_3d", "permuted"):
            x = torch.randn(1, C, T, H, W, device="cuda", dtype=torch.float16)
            if layout == "channels_last_3d":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            elif layout == "permuted":
                x = x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
            with torch.no_grad():
                ms_ref = timed(lambda: F.silu(norm(x)))
                ms = timed(lambda: rms_norm_silu(x, norm.gamma, norm.bias, norm.scale))
            gbs = 2 * x.numel() * x.element_size() / ms / 1e6
            print(f"{C:>4} {T:>2} {H:>4} {W:>4} {layout:18} {ms_ref:13.3f} {ms:9.3f} {gbs:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
