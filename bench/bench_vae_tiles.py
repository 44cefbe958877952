"""Tiled VAE decode: engine/vae/tiling.py's exact tiles against the untiled decode and diffusers' blended tiles.

Full Wan VAE (Wan2.1 config, random weights scaled as in bench_vae.py), the GPU default speed settings
(engine/vae/speed.py: fp16, channels-last, cuDNN benchmark, fused norm), 81 frames at 480p and 720p.
Per row: decode seconds, peak GPU memory (decoder weights + what the decode allocated), engine.memory's
predicted peak for the same decode, and PSNR of the frames against the untiled decode of the same latents
(issue 10's target: a tiled decode within 0.5 dB of the untiled one).

    python bench/bench_vae_tiles.py [--json out.json]   # GPU, about 2 minutes on an H200
    python bench/bench_vae_tiles.py --tiny              # CPU smoke run, small shapes
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_vae import _calibrated, _decoder_part, _free, _latents, _measure, _psnr  # noqa: E402
from engine import memory, memory_decode  # noqa: E402
from engine.vae import tiling  # noqa: E402
from engine.vae.speed import FAST_SPEED, VaeSpeed, apply_speed  # noqa: E402

GRIDS = {"480p": [(1, 2), (2, 2), (2, 3)], "720p": [(1, 2), (2, 2), (2, 4)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        sizes, base_dim, speed, frames = {"480p": (1, 34, 36)}, 4, VaeSpeed(), 1  # frames over 256 px
    else:
        sizes, base_dim, speed, frames = {"480p": (21, 60, 104), "720p": (21, 90, 160)}, 96, FAST_SPEED, 81
    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    vae = _calibrated(AutoencoderKLWan(base_dim=base_dim).eval().requires_grad_(False), dev)
    note = apply_speed(vae, speed)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}; {note}; "
          f"reach {tiling.reach(vae.decoder)} latent px")
    dec = memory_decode.Decoder("full", speed.dtype)
    weights = sum(p.numel() * p.element_size() for p in _decoder_part(vae).parameters())
    rows = []
    for size, shape in sizes.items():
        z = _latents(vae, shape, dev).to(vae.dtype)
        h, w = shape[1] * 8, shape[2] * 8
        ref = None
        variants = [("untiled", None)] + [(f"exact {r}x{c}", tiling.Grid(r, c)) for r, c in GRIDS[size]] + \
                   [("diffusers blended 256/192", "diffusers")]
        for label, grid in variants:
            tiling.uninstall(vae)
            vae.disable_tiling() if grid is None else vae.enable_tiling()
            if isinstance(grid, tiling.Grid):
                tiling.install(vae, grid)
            try:
                out, row = _measure(lambda: vae.decode(z).sample, args.reps, dev, None, _decoder_part(vae))
            except torch.OutOfMemoryError as e:
                rows.append(dict(size=size, variant=label, error=str(e)[:100]))
                continue
            if ref is None:
                ref = out.float()
            row["psnr_db"] = _psnr(out, ref)
            exact = grid if isinstance(grid, tiling.Grid) else None
            pred = weights + memory_decode.transient(memory.DECODE_BYTES_PER_PIXEL, dec, h, w, frames,
                                                     grid == "diffusers", 16, exact)
            row["predicted_gb"] = pred / 2**30
            if exact is not None:
                lat = shape[1:]
                row["work"] = tiling.computed_area(*lat, exact, tiling.reach(vae.decoder)) / (lat[0] * lat[1])
            rows.append(dict(size=size, variant=label, **row))
            print(rows[-1], flush=True)
            del out
            _free(dev)
        del ref, z
        _free(dev)
    print(f"\n{'size':6}{'variant':28}{'s':>8}{'x untiled':>10}{'work':>6}{'peak GB':>9}{'pred GB':>9}{'err':>7}"
          f"{'PSNR dB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['size']:6}{r['variant']:28}  {r['error']}")
            continue
        base = next(x["seconds"] for x in rows if x["size"] == r["size"] and x["variant"] == "untiled")
        peak = r["peak_gb"] or 0.0
        err = f"{100 * (r['predicted_gb'] / peak - 1):+.1f}%" if peak else ""
        print(f"{r['size']:6}{r['variant']:28}{r['seconds']:8.3f}{r['seconds'] / base:10.2f}{r.get('work', 0):6.2f}"
              f"{peak:9.2f}{r['predicted_gb']:9.2f}{err:>7}{r['psnr_db']:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
