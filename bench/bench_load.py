"""Peak host memory and time to load a >= 1 GB quantized DiT checkpoint (Wan2.1 T2V 1.3B shape, int8).

The file is written once (random int8 weights + per-channel scales in LightX2V's layout); each load
runs in a fresh subprocess so ru_maxrss is the load's own peak. Reported: the baseline after imports,
the peak during load_dit, and the resident size after reading every weight once (the model in use).

    python bench/bench_load.py [--dir /tmp/bench_load] [--format int8|fp8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

CHILD = r"""
import json, resource, sys, time, psutil, torch
sys.path.insert(0, sys.argv[3])
from engine.checkpoint.dit import load_dit
from diffusers import WanTransformer3DModel  # imports (lazy in diffusers) before the baseline
proc = psutil.Process()
base = proc.memory_info().rss
t0 = time.perf_counter()
model, report = load_dit(sys.argv[1], json.loads(sys.argv[2]))
seconds = time.perf_counter() - t0
peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
total = 0.0
for t in list(model.parameters()) + list(model.buffers()):
    total += float(t.float().sum()) if t.numel() < 2**22 else float(t[:1].float().sum() + t.view(-1)[::4096].float().sum())
    t.view(-1).view(torch.uint8).max() if t.is_contiguous() else None  # read every byte once
resident = proc.memory_info().rss
peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(base=base, peak_load=peak_load, resident=resident, peak_all=peak_all, seconds=seconds,
                      summary=report.summary())))
"""


def make_file(path: Path, fmt: str) -> int:
    import torch
    from diffusers import WanTransformer3DModel

    from engine.checkpoint.io import write_safetensors
    from engine.checkpoint.keymaps import diffusers_to_wan

    with torch.device("meta"):
        shapes = {k: (tuple(v.shape)) for k, v in WanTransformer3DModel(**WAN_1_3B).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, shape in shapes.items():
        wan = diffusers_to_wan(key)
        parts = wan.split(".")
        if wan.endswith(".weight") and len(shape) == 2 and len(parts) > 2 and parts[2] in ("self_attn", "cross_attn", "ffn"):
            data = torch.randint(-127, 128, shape, dtype=torch.int8, generator=g)
            out[wan] = data if fmt == "int8" else (data.float() * 3).to(torch.float8_e4m3fn)
            out[wan + "_scale"] = torch.rand(shape[0], 1, generator=g) * 1e-3
        else:
            out[wan] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    return write_safetensors(path, out, {"format": fmt, "producer": "bench_load"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/bench_load")
    ap.add_argument("--format", default="int8", choices=["int8", "fp8"])
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    path = Path(args.dir) / f"wan2.1_t2v_1.3b_{args.format}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        make_file(path, args.format)
    size = path.stat().st_size
    os.system(f"cat {path} > /dev/null")  # warm page cache: time the load, not the disk
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(WAN_1_3B), str(ROOT)],
                         capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    gib = lambda b: b / 2**30  # noqa: E731
    print(r["summary"])
    print(f"file                       {gib(size):.3f} GiB")
    print(f"RSS after imports          {gib(r['base']):.3f} GiB")
    print(f"peak RSS during load_dit   {gib(r['peak_load']):.3f} GiB  (+{gib(r['peak_load'] - r['base']):.3f} over "
          f"imports = {(r['peak_load'] - r['base']) / size:.2f}x file)")
    print(f"RSS after reading weights  {gib(r['resident']):.3f} GiB  (+{gib(r['resident'] - r['base']):.3f} = "
          f"{(r['resident'] - r['base']) / size:.2f}x file); peak overall {(r['peak_all'] - r['base']) / size:.2f}x file")
    print(f"load time                  {r['seconds']:.2f} s")


if __name__ == "__main__":
    main()
