"""Compile the 8-bit attention kernel for sm_90 on a machine without a GPU, and count what matters.

Per config: registers and stack bytes (spills land on the stack; ptxas' report through
`cuobjdump -res-usage`, both shipped with triton), whether ptxas serialises the wgmmas (its
advisory C7514: each waited for before the next), and static SASS instruction counts, all and by
opcode (MUFU.EX2, FFMA, F2FP, the shuffles SHFL and STS/LDS that a tile reshape could add, and
WARPGROUP.DEPBAR, the waits on wgmma).
Only a static view: whether a variant is faster needs bench/bench_attention.py --sweep on the GPU.
The local triton may differ from the GPU machine's (docs/benchmarks.md "Registers").

    python bench/attention_sm90_compile.py                 # the SWEEP configs of bench_attention
    python bench/attention_sm90_compile.py --dump DIR      # also write each config's ttgir/ptx/sass
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from engine.attention import triton_sage as ts  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
OPS = ("MUFU.EX2", "FFMA", "FADD", "FMUL", "FMNMX", "SHF", "IADD3", "IMAD", "LOP3", "F2FP", "SHFL", "STS", "LDS",
       "HGMMA", "IGMMA", "QGMMA", "WARPGROUP.DEPBAR")


def compile_config(cfg: ts.Config, d: int = 128):
    fn = ts._attn_kernel
    sig = {"Q8": "*i8", "QS": "*fp32", "K8": "*i8", "KS": "*fp32", "V8": "*fp8e4nv", "VS": "*fp32",
           "OUT": "*bf16", "seq": "i32", "sp": "i32", "H": "i32", "so_b": "i32", "so_s": "i32", "so_h": "i32"}
    if cfg.tma:
        sig.update(desc_q=f"tensordesc<i8[{cfg.block_m}, {d}]>", desc_k=f"tensordesc<i8[{cfg.block_n}, {d}]>",
                   desc_v=f"tensordesc<fp8e4nv[{d}, {cfg.block_n}]>")
    else:
        sig.update(desc_q="constexpr", desc_k="constexpr", desc_v="constexpr")
    consts = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D=d, TMA=cfg.tma, WS=cfg.warp_specialize,
                  FAST=cfg.fast_convert, OVERLAP=cfg.overlap and cfg.fast_convert,
                  SUM_MMA=cfg.sum_fp8_p and cfg.fast_convert, PROMOTE=cfg.block_n if cfg.fp32_pv else None,
                  POLY=cfg.poly_exp2 if cfg.fast_convert else 0, SPLIT=cfg.poly_split(),
                  FRESH=cfg.pv_fresh and cfg.fast_convert, LANES=cfg.lane_fold)
    if not cfg.tma:
        consts.update(desc_q=None, desc_k=None, desc_v=None)
    for k in consts:
        sig[k] = "constexpr"
    sig = {k: sig[k] for k in fn.arg_names}
    # the launch specialises 16-byte-aligned pointers and multiples of 16 (sp, strides)
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]]
             for k in ("Q8", "QS", "K8", "KS", "V8", "VS", "OUT", "sp", "so_b", "so_s", "so_h")}
    src = ASTSource(fn, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 128),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def serialised(ptx: str) -> str:
    """ptxas' advisory C7514 (every wgmma waited for: no two in flight), from the newest ptxas here."""
    exe = next((os.path.join(BIN, n) for n in ("ptxas-blackwell", "ptxas") if os.path.exists(os.path.join(BIN, n))))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([exe, "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    return "yes" if "C7514" in out.stdout + out.stderr else "no"


def sass_counts(cubin: bytes):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True).stdout
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
    counts = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+(?:\.[A-Z0-9_]+)*)", line)
        if m:
            op = m.group(1)
            counts["all"] += 1
            for name in OPS:
                if op == name or op.startswith(name + "."):
                    counts[name] += 1
    return usage.groups() if usage else ("?", "?", "?"), counts, sass


def main():
    from bench.bench_attention import SWEEP
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", default=None)
    a = ap.parse_args()
    print(f"triton {triton.__version__}, sm_90, D 128; SASS counts are static (whole kernel, loop body once)")
    print(f"{'config':<34}{'reg':>5}{'stack':>6}{'serial':>7}{'instr':>7}  " + " ".join(f"{o}" for o in OPS))
    for cfg in SWEEP:
        try:
            k = compile_config(cfg)
        except Exception as e:  # report and go on: one config the compiler rejects
            print(f"{cfg.label():<34} failed: {type(e).__name__}: {str(e)[:400]}")
            continue
        (reg, stack, _), counts, sass = sass_counts(k.asm["cubin"])
        print(f"{cfg.label():<34}{reg:>5}{stack:>6}{serialised(k.asm['ptx']):>7}{counts['all']:>7}  "
              + " ".join(f"{counts[o]:>{len(o)}}" for o in OPS), flush=True)
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                with open(os.path.join(a.dump, f"{cfg.label()}.{ext}"), "w") as f:
                    f.write(k.asm[ext])
            with open(os.path.join(a.dump, f"{cfg.label()}.sass"), "w") as f:
                f.write(sass)


if __name__ == "__main__":
    main()
