"""Video decode speed: the full Wan VAE under each speed setting, LightVAE and the tiny decoder.

Full Wan VAE (AutoencoderKLWan default config = Wan2.1's, random weights, the same for every variant)
at 480x832x81 (latents 16x21x60x104): fp32 (today), bf16, fp16, bf16/fp16-mixed, channels-last-3d,
cuDNN benchmark, regional torch.compile: decode time, peak GPU memory, PSNR of the frames against the fp32
decode of the same latents. LightVAE (the same network at base width 24) and the tiny decoder
(TAEHV layout, widths 256/128/64/64) at 480p and 720p x 81: time and peak. The settings are applied
by engine/vae/speed.py, the engine's own code, so the numbers are the engine's.

    python bench/bench_vae.py                 # GPU, about 3-4 minutes on an H200
    python bench/bench_vae.py --skip-compile  # without the torch.compile row
    python bench/bench_vae.py --tiny          # CPU smoke run, small shapes, seconds
    python bench/bench_vae.py --json out.json # also write the rows as JSON

Random weights are scaled at the output so the fp32 frames are not saturated at +-1 (saturated
frames would make the PSNR meaningless); the table prints the saturated fraction of the reference.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.vae.wrapper import decode_tiny  # noqa: E402
from engine.vae.speed import VaeSpeed, apply_speed  # noqa: E402
from engine.vae.tae import TinyDecoder, load_tiny_decoder  # noqa: E402

FULL_VARIANTS = [  # (label, VaeSpeed); the first is the reference
    ("fp32 (today)", VaeSpeed("fp32")),
    ("fp32 + cudnn.benchmark", VaeSpeed("fp32", cudnn_benchmark=True)),
    ("fp32 + channels-last + cudnn.benchmark", VaeSpeed("fp32", True, True)),
    ("bf16", VaeSpeed("bf16")),
    ("bf16-mixed", VaeSpeed("bf16-mixed")),
    ("bf16 + channels-last", VaeSpeed("bf16", channels_last=True)),
    ("bf16 + channels-last + cudnn.benchmark", VaeSpeed("bf16", True, True)),
    ("bf16-mixed + channels-last + cudnn.benchmark", VaeSpeed("bf16-mixed", True, True)),
    ("fp16 + channels-last + cudnn.benchmark", VaeSpeed("fp16", True, True)),  # 3 more mantissa bits than bf16
    ("fp16-mixed + channels-last + cudnn.benchmark", VaeSpeed("fp16-mixed", True, True)),
    # issue 15: the row above plus the Triton RMS norm + SiLU (engine/vae/fused_norm.py); on the CPU
    # (--tiny) it declines and the row runs the unfused decode, the row's "note" says so
    ("fp16 + channels-last + cudnn.benchmark + fused norm", VaeSpeed("fp16", True, True, fused_norm=True)),
]
COMPILE_VARIANT = ("bf16 + channels-last + cudnn.benchmark + compile", VaeSpeed("bf16", True, True, True))


class Budget(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on small shapes")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--reps", type=int, default=2, help="timed decodes per row (after one warm-up)")
    ap.add_argument("--budget", type=float, default=225.0, help="seconds; rows that would start later are skipped")
    ap.add_argument("--compile-limit", type=float, default=100.0, help="seconds allowed for the compile row")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--vae-dir", help="a diffusers Wan model folder: use its real VAE weights for the full rows "
                                      "(fp16 overflow and bf16 error show only with real weights)")
    args = ap.parse_args()
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        sizes = {"480p": (2, 4, 4)}
        full_dim, light_dim, reps = 4, 1, 1
    else:
        if not cuda:
            print("no CUDA device: run with --tiny for the CPU smoke run")
            return 2
        sizes = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
        full_dim, light_dim, reps = 96, 24, args.reps
    print(f"full VAE weights: {args.vae_dir or 'random (scaled so the frames are not saturated)'}")
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}; "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} (fp32 convolutions use TF32 when True)")
    rows: list[dict] = []

    def left():
        return args.budget - (time.perf_counter() - start)

    def emit(row):
        rows.append(row)
        print(_line(row), flush=True)

    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # .to(bf16) warns on every copy; the table says what ran

    torch.manual_seed(0)
    if args.vae_dir:
        full = AutoencoderKLWan.from_pretrained(args.vae_dir, subfolder="vae", torch_dtype=torch.float32)
        full = full.eval().requires_grad_(False).to(dev)
    else:
        full = _calibrated(AutoencoderKLWan(base_dim=full_dim).eval().requires_grad_(False), dev)
    latents = {name: _latents(full, shape, dev) for name, shape in sizes.items()}
    z = latents["480p"]
    # reference: the fp32 decode, today's path
    ref = None

    def full_row(label, speed, limit=None):
        nonlocal ref
        if left() < 0 or (limit is not None and left() < 20):
            emit(dict(decoder="full", variant=label, size="480p", error="skipped: over the time budget"))
            return
        try:
            vae = copy.deepcopy(full)
            note = apply_speed(vae, speed)
            out, row = _measure(lambda: vae.decode(z.to(vae.dtype)).sample, reps, dev,
                                None if limit is None else min(limit, left()), _decoder_part(vae))
            if ref is None:
                ref = out.float()
                row["saturated"] = float((ref.abs() >= 0.999).float().mean())
            row["psnr_db"] = _psnr(out, ref)
            if "declined" in note:
                row["note"] = note
            emit(dict(decoder="full", variant=label, size="480p", **row))
            del vae, out
        except Exception as e:  # one failing option must not hide the others' numbers
            emit(dict(decoder="full", variant=label, size="480p", error=f"{type(e).__name__}: {str(e)[:120]}"))
        _free(dev)

    for label, speed in FULL_VARIANTS:
        full_row(label, speed)
    # LightVAE: the same network at base width 24 (75% of the channels pruned)
    torch.manual_seed(1)
    light = _calibrated(AutoencoderKLWan(base_dim=light_dim).eval().requires_grad_(False), dev)
    light_variants = [("fp32", VaeSpeed("fp32")), ("bf16 (LightX2V's published setting)", VaeSpeed("bf16")),
                      ("fp16-mixed + channels-last + cudnn.benchmark", VaeSpeed("fp16-mixed", True, True)),
                      ("fp16 + channels-last + cudnn.benchmark + fused norm", VaeSpeed("fp16", True, True, fused_norm=True))]
    for size, zz in latents.items():
        light_ref = None  # PSNR against the light fp32 decode, at 480p only (720p: time and peak)
        for label, speed in light_variants if size == "480p" else light_variants[1:]:
            if left() < 0:
                emit(dict(decoder="light", variant=label, size=size, error="skipped: over the time budget"))
                continue
            try:
                vae = copy.deepcopy(light)
                note = apply_speed(vae, speed)
                out, row = _measure(lambda: vae.decode(zz.to(vae.dtype)).sample, reps, dev, None, _decoder_part(vae))
                if size == "480p":
                    light_ref = out.float() if light_ref is None else light_ref
                    row["psnr_db"] = _psnr(out, light_ref)
                if "declined" in note:
                    row["note"] = note
                emit(dict(decoder="light", variant=label, size=size, **row))
                del vae, out
            except Exception as e:
                emit(dict(decoder="light", variant=label, size=size, error=f"{type(e).__name__}: {str(e)[:120]}"))
            _free(dev)
        light_ref = None
    del light
    _free(dev)
    # tiny decoder: random weights written in the TAEHV layout and read back by the engine's loader
    torch.manual_seed(2)
    path = Path("/tmp/bench_vae_lighttaew2_1.safetensors")
    from safetensors.torch import save_file

    widths = (32, 16, 8, 8) if args.tiny else (256, 128, 64, 64)  # the published files' widths on the GPU
    save_file({k: v.contiguous() for k, v in TinyDecoder(widths=widths).state_dict().items()}, str(path))
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = load_tiny_decoder(path, dtype).to(dev)
    cfg = AutoencoderKLWan(base_dim=1).config  # Wan2.1 latent mean/std
    for size, zz in latents.items():
        kind = "bf16" if cuda else "fp32"
        for label, chunk in ((f"{kind}, 1 latent frame per pass", 1), (f"{kind}, 4 latent frames per pass", 4),
                             (f"{kind}, all frames at once", 0)):
            if left() < 0:
                emit(dict(decoder="tiny", variant=label, size=size, error="skipped: over the time budget"))
                continue
            try:
                out, row = _measure(lambda: decode_tiny(tiny, zz, cfg, True, chunk), reps, dev, None, tiny)
                emit(dict(decoder="tiny", variant=label, size=size, frames=out.shape[2], **row))
                del out
            except Exception as e:
                emit(dict(decoder="tiny", variant=label, size=size, error=f"{type(e).__name__}: {str(e)[:120]}"))
            _free(dev)
    path.unlink(missing_ok=True)
    del tiny
    _free(dev)
    if not (args.skip_compile or args.tiny):  # last: its compile time is the least predictable
        full_row(*COMPILE_VARIANT, limit=args.compile_limit)
    _table(rows, time.perf_counter() - start)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _calibrated(vae, dev):
    """Scale the last convolution so random weights give frames with std ~0.4 instead of +-1 noise."""
    vae = vae.to(dev)
    seen = []
    hook = vae.decoder.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.float().std().item()))
    with torch.no_grad():
        vae.decode(_latents(vae, (2, 12, 12), dev))
    hook.remove()
    scale = 0.4 / max(statistics.mean(seen), 1e-6)
    vae.decoder.conv_out.weight.data *= scale
    vae.decoder.conv_out.bias.data *= scale
    return vae


def _latents(vae, shape, dev):
    """What the pipeline hands vae.decode: the DiT's normalised latent, un-normalised."""
    g = torch.Generator(device="cpu").manual_seed(123)
    x = torch.randn(1, vae.config.z_dim, *shape, generator=g).to(dev)
    mean = torch.tensor(vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=dev).view(1, -1, 1, 1, 1)
    return x * std + mean


def _measure(fn, reps, dev, limit=None, module=None):
    """Median time of `reps` runs after one warm-up; peak = the decoder's weights plus the most memory
    the decode allocated above what was resident before it (other models, the reference frames)."""
    cuda = dev.type == "cuda"
    weights = sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0
    with torch.no_grad():
        t0 = time.perf_counter()
        if limit:
            seconds = max(1, int(limit))

            def stop(*_):
                raise Budget(f"warm-up (compile) took longer than {seconds} s; rerun with a larger --compile-limit")
            signal.signal(signal.SIGALRM, stop)
            signal.alarm(seconds)
        try:
            out = fn()
        finally:
            if limit:
                signal.alarm(0)
        if cuda:
            torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        del out
        times, peak = [], 0
        for _ in range(reps):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            out = fn()
            if cuda:
                torch.cuda.synchronize()
                peak = max(peak, torch.cuda.max_memory_allocated() - before + weights)
            times.append(time.perf_counter() - t0)
            if _ < reps - 1:
                del out
    return out, dict(seconds=statistics.median(times), warmup_s=warm, peak_gb=peak / 2**30 if cuda else None)


def _decoder_part(vae):
    """The modules a decode uses (the encoder's weights are not counted)."""
    return torch.nn.ModuleList([vae.post_quant_conv, vae.decoder])


def _psnr(out, ref) -> float:
    mse = (out.float() - ref).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # frames span [-1, 1]: peak-to-peak 2


def _free(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _line(r) -> str:
    if "error" in r:
        return f"{r['decoder']:6} {r['size']:5} {r['variant']:48} {r['error']}"
    peak = f"{r['peak_gb']:6.2f} GB" if r.get("peak_gb") is not None else "     n/a "
    psnr = f"{r['psnr_db']:6.1f} dB" if r.get("psnr_db") is not None else ""
    return (f"{r['decoder']:6} {r['size']:5} {r['variant']:48} {r['seconds']:7.3f} s  (warm-up "
            f"{r['warmup_s']:6.1f} s)  {peak}  {psnr}")


def _table(rows, elapsed):
    base = next((r["seconds"] for r in rows if r["decoder"] == "full" and "seconds" in r), None)
    print(f"\n=== VAE decode, {elapsed:.0f} s in all; speed-up vs the fp32 full decode at 480p ===")
    print(f"{'decoder':7}{'size':6}{'variant':49}{'time':>9}{'x fp32':>8}{'peak GB':>9}{'PSNR dB':>9}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['decoder']:7}{r['size']:6}{r['variant']:49}{'-':>9}{'':>8}{'':>9}{'':>9}  {r['error']}")
            continue
        speed = f"{base / r['seconds']:.2f}" if base else ""
        peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "n/a"
        psnr = f"{r['psnr_db']:.1f}" if r.get("psnr_db") is not None else ""
        note = []
        if "saturated" in r:
            note.append(f"reference frames saturated: {100 * r['saturated']:.1f}%")
        if "frames" in r:
            note.append(f"{r['frames']} frames")
        if "note" in r:
            note.append(r["note"])
        print(f"{r['decoder']:7}{r['size']:6}{r['variant']:49}{r['seconds']:8.3f}s{speed:>8}{peak:>9}{psnr:>9}  "
              f"{'; '.join(note)}")
    print("peak GB: the decoder's weights + the most the decode allocated above what was resident before it.")
    print("PSNR: full rows against the fp32 full decode; light rows against the light fp32 decode.")


if __name__ == "__main__":
    sys.exit(main())
