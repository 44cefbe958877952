"""Memory of reading a safetensors file: our reader (safe_open behind engine.checkpoint.io) against a
plain private mmap viewed with torch.frombuffer (what the hand-written reader did before), on CPU.

    python bench/bench_reader_rss.py [--gib 0.75] [--dir /tmp]

Each reader runs in a fresh process; RSS (VmRSS) is read after import, after opening, after touching
4 tensors and after touching every tensor. Equal rows mean neither reader copies.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2 ** 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(reader: str, path: str) -> None:
    sys.path.insert(0, ROOT)
    import torch
    from engine.checkpoint.io import SafeTensorsFile
    rows = {"imported": rss_mib()}
    if reader == "safe_open":
        f = SafeTensorsFile(path)
        keys, get = f.keys(), f.get
    else:
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        header.pop("__metadata__", None)
        keys = list(header)

        def get(k):
            b, e = header[k]["data_offsets"]
            raw = torch.frombuffer(mm, dtype=torch.uint8, count=e - b, offset=8 + hlen + b)
            return raw.view(torch.bfloat16).reshape(header[k]["shape"])
    rows["opened"] = rss_mib()
    held = [get(k) for k in keys]  # views only: nothing touched yet
    rows["views of all"] = rss_mib()
    total = sum(float(t.float().sum()) for t in held[:4])
    rows["touched 4"] = rss_mib()
    total += sum(float(t.float().sum()) for t in held[4:])
    rows["touched all"] = rss_mib()
    print(json.dumps({"rows": rows, "check": total}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=0.75)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    import torch
    from safetensors.torch import save_file
    n = max(1, round(args.gib * 1024 / 32))  # 32 MiB bf16 tensors
    path = os.path.join(args.dir, f"reader_rss_{os.getpid()}.safetensors")
    try:
        g = torch.Generator().manual_seed(0)
        save_file({f"t{i}": torch.randn(4096, 4096, generator=g).to(torch.bfloat16) for i in range(n)}, path)
        print(f"{path}: {os.path.getsize(path) / MIB:.0f} MiB, {n} tensors of 32 MiB")
        results = {}
        for reader in ("safe_open", "mmap+frombuffer"):
            out = subprocess.run([sys.executable, __file__, "--child", reader, path], capture_output=True,
                                 text=True, check=True).stdout
            results[reader] = json.loads(out.strip().splitlines()[-1])
        assert results["safe_open"]["check"] == results["mmap+frombuffer"]["check"], "readers disagree"
        print(f"{'RSS MiB':14}" + "".join(f"{r:>18}" for r in results))
        for row in results["safe_open"]["rows"]:
            print(f"{row:14}" + "".join(f"{results[r]['rows'][row]:18.0f}" for r in results))
    finally:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
