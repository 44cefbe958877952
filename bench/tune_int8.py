"""Side-by-side tuning run for the int8 path and the 14B transformer (one GPU call).

    PYTHONUNBUFFERED=1 python bench/tune_int8.py [--no-transformer]

1. int8 per-token activation quantizer: the previous hand-written round-half-even (kept here as a
   copy) vs the current kernel (libdevice rint), outputs compared bit for bit.
2. int8 GEMM at the 14B shapes (M = 32768 padded rows): every tile config of the pointer-based
   kernel and of the TMA kernel, each checked against the autotuned pointer kernel's output.
3. SDPA backends at the 14B self-attention shape.
4. 14B x4 transformer forward: bf16 eager, fp8/int8 fused eager, fp8 fused + compile_repeated_blocks.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.kernels import triton_gemm, triton_quant  # noqa: E402
from engine.kernels.triton_quant import _round_half_even, row_block, row_warps  # noqa: E402

M = 32760
RESULTS = []


def bench(fn, rep=150):
    return do_bench(fn, warmup=30, rep=rep, return_mode="median")


def log(*a):
    line = " | ".join(str(x) for x in a)
    RESULTS.append(line)
    print(line, flush=True)


@triton.jit
def _old_int8_quant(x_ptr, q_ptr, s_ptr, M, K, BLOCK: tl.constexpr):
    """The int8_row quantizer as it was (hand-written rounding)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    live = offs < tl.where(row < M, K, 0)
    v = tl.load(x_ptr + row * K + offs, mask=live, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(v), axis=0)
    scale = tl.maximum(amax, 1e-5) / 127.0
    y = v * (1.0 / scale)
    tl.store(s_ptr + row, scale)
    y = tl.minimum(tl.maximum(y, -127.0), 127.0)
    tl.store(q_ptr + row * K + offs, _round_half_even(y).to(tl.int8), mask=mask)


def part_quant():
    gen = torch.Generator(device="cuda").manual_seed(1)
    for k in (5120, 13824, 1536, 8960):
        x = torch.randn(M, k, device="cuda", generator=gen).to(torch.bfloat16)
        x[:, :4] *= 40
        x[0, 0] = 0.5 * (x[0, 1].float() / x[0, 1].float().abs().max()).to(torch.bfloat16)  # arbitrary
        mp = 32768
        q_old = torch.empty((mp, k), dtype=torch.int8, device="cuda")
        s_old = torch.empty((mp, 1), dtype=torch.float32, device="cuda")
        block = row_block(k)
        old = lambda: _old_int8_quant[(mp,)](x, q_old, s_old, M, k, BLOCK=block, num_warps=row_warps(block))  # noqa: E731
        old()
        q_new, s_new = triton_quant.quantize_rows(x, "int8_row", False, 16)
        same = torch.equal(q_old, q_new) and torch.equal(s_old, s_new)
        t_old = bench(old)
        t_new = bench(lambda: triton_quant.quantize_rows(x, "int8_row", False, 16))
        t_fp8 = bench(lambda: triton_quant.quantize_rows(x, "fp8_row", False, 16))
        gb = (M * k * 2 + mp * k) / 1e9
        log("quant", f"K={k}", f"int8 old {t_old:.3f} ms ({gb / t_old:.2f} TB/s)",
            f"int8 new {t_new:.3f} ms ({gb / t_new:.2f} TB/s)", f"fp8 {t_fp8:.3f} ms", f"bit-identical={same}")
        del x, q_old, s_old, q_new, s_new


SWEEP = [(128, 256, 128, 8, 3, 8), (128, 256, 128, 8, 4, 8), (256, 128, 128, 8, 3, 8), (256, 128, 128, 8, 4, 8),
         (128, 128, 128, 8, 4, 8), (128, 128, 128, 4, 4, 8), (128, 256, 64, 8, 4, 8), (128, 256, 64, 8, 5, 8),
         (256, 128, 64, 8, 4, 8), (128, 256, 128, 8, 3, 16), (128, 256, 128, 8, 3, 4), (64, 256, 128, 4, 4, 8),
         (128, 256, 256, 8, 2, 8)]


def part_gemm():
    from triton.tools.tensor_descriptor import TensorDescriptor
    gen = torch.Generator(device="cuda").manual_seed(2)
    for name, k, n in (("14B qkvo", 5120, 5120), ("14B ffn up", 5120, 13824), ("14B ffn down", 13824, 5120)):
        mp = 32768
        a = torch.randint(-127, 128, (mp, k), device="cuda", dtype=torch.int8, generator=gen)
        w = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=gen)
        sa = torch.rand(mp, 1, device="cuda", generator=gen) * 1e-3
        sw = torch.rand(n, 1, device="cuda", generator=gen) * 1e-3
        bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
        triton_gemm.USE_TMA = False
        ref = triton_gemm.scaled_gemm(a, w, sa, sw, bias, torch.bfloat16)
        t_ptr = bench(lambda: triton_gemm.scaled_gemm(a, w, sa, sw, bias, torch.bfloat16))
        triton_gemm.USE_TMA = True
        got = triton_gemm.scaled_gemm(a, w, sa, sw, bias, torch.bfloat16)
        t_tma = bench(lambda: triton_gemm.scaled_gemm(a, w, sa, sw, bias, torch.bfloat16))
        tops = 2 * M * n * k / 1e12
        log("gemm", name, f"autotuned pointer {t_ptr:.3f} ms ({tops / t_ptr * 1e3:.0f} TOPS)",
            f"autotuned TMA {t_tma:.3f} ms ({tops / t_tma * 1e3:.0f} TOPS)",
            f"max|diff|={(got.float() - ref.float()).abs().max().item():.3g}")
        if name == "14B qkvo":
            t_mm = bench(lambda: (torch._int_mm(a, w.t()).float() * sa * sw.t() + bias).to(torch.bfloat16))
            log("gemm", name, f"torch._int_mm + torch dequant {t_mm:.3f} ms")
        c = torch.empty((mp, n), dtype=torch.bfloat16, device="cuda")
        for bm, bn, bk, warps, stages, group in SWEEP:
            cfg = f"{bm}x{bn}x{bk} w{warps} s{stages} g{group}"
            grid = (triton.cdiv(mp, bm) * triton.cdiv(n, bn),)
            try:
                def ptr():
                    triton_gemm._scaled_gemm_kernel.fn[grid](
                        a, w, c, sa, sw, bias, mp, n, k, 32768, a.stride(0), w.stride(0), c.stride(0), 1, 0, 1, 0,
                        HAS_BIAS=True, ACC_INT=True, BLOCKWISE=False, EVEN_K=k % bk == 0,
                        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages)
                c.fill_(float("nan"))
                ptr()
                ok = torch.equal(c, ref)
                tp = bench(ptr)
            except Exception as e:
                tp, ok = float("nan"), f"{type(e).__name__}: {str(e)[:60]}"
            try:
                ad, wd = TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk])

                def tma():
                    triton_gemm._tma_gemm[grid](ad, wd, c, sa, sw, bias, mp, n, k, 32768, c.stride(0), 1, 1,
                                                HAS_BIAS=True, ACC_INT=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                                GROUP_M=group, num_warps=warps, num_stages=stages)
                c.fill_(float("nan"))
                tma()
                ok2 = torch.equal(c, ref)
                tt = bench(tma)
            except Exception as e:
                tt, ok2 = float("nan"), f"{type(e).__name__}: {str(e)[:60]}"
            log("gemm-cfg", name, cfg, f"pointer {tp:.3f} ms exact={ok}", f"TMA {tt:.3f} ms exact={ok2}")
        del a, w, c, ref, got
        torch.cuda.empty_cache()


def part_sdpa():
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (torch.randn(1, 40, M, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    flops = 4 * M * M * 128 * 40
    log("sdpa", f"default {bench(lambda: F.scaled_dot_product_attention(q, k, v), rep=300):.2f} ms")
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([be]):
                y = F.scaled_dot_product_attention(q, k, v)
                t = bench(lambda: F.scaled_dot_product_attention(q, k, v), rep=300)
            log("sdpa", be.name, f"{t:.2f} ms ({flops / t / 1e9:.0f} TFLOPS)",
                f"rel diff vs default {((y.float() - ref.float()).norm() / ref.float().norm()).item():.2e}")
        except Exception as e:
            log("sdpa", be.name, f"FAILED {type(e).__name__}: {str(e)[:80]}")
    del q, k, v, ref


def part_transformer():
    from diffusers import WanTransformer3DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.bench_kernels import WAN_14B
    from engine.apply import quantize_model
    from engine.fused import install_fused_wan
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = WanTransformer3DModel(**dict(WAN_14B, num_layers=4)).to(torch.bfloat16).eval()
    lat = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    ts = torch.tensor([500], device="cuda")

    def run(model):
        with torch.no_grad():
            return model(lat, ts, ctx, return_dict=False)[0]

    def measure(model, reps=5):
        y = run(model)
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(model)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1000, y

    t_base, y_base = measure(base)
    log("xfmr", "bf16 eager", f"{t_base:.1f} ms")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        t, _ = measure(base)
    log("xfmr", "bf16 eager, cuDNN attention", f"{t:.1f} ms", f"{t_base / t:.3f}x")
    models = {}
    for fmt in ("fp8", "int8"):
        model = copy.deepcopy(base)
        quantize_model(model, fmt)
        install_fused_wan(model)
        models[fmt] = model
    for tma in (False, True):
        triton_gemm.USE_TMA = tma
        t, y = measure(models["int8"])
        err = ((y.float() - y_base.float()).norm() / y_base.float().norm()).item()
        log("xfmr", f"int8 fused eager, TMA GEMM={tma}", f"{t:.1f} ms", f"{t_base / t:.3f}x", f"err {err:.4f}")
    del models["int8"]
    t, y = measure(models["fp8"])
    log("xfmr", "fp8 fused eager", f"{t:.1f} ms", f"{t_base / t:.3f}x")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        t, y = measure(models["fp8"])
    log("xfmr", "fp8 fused eager, cuDNN attention", f"{t:.1f} ms", f"{t_base / t:.3f}x")
    model = models["fp8"]
    model.compile_repeated_blocks(fullgraph=True)
    t0 = time.perf_counter()
    run(model)
    torch.cuda.synchronize()
    log("xfmr", "compile s", f"{time.perf_counter() - t0:.0f}")
    t, y = measure(model)
    log("xfmr", "fp8 fused + compile_repeated_blocks", f"{t:.1f} ms", f"{t_base / t:.3f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-transformer", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    for part in (part_quant, part_gemm, part_sdpa) + (() if args.no_transformer else (part_transformer,)):
        try:
            part()
        except Exception as e:
            import traceback
            traceback.print_exc()
            log(part.__name__, "FAILED", f"{type(e).__name__}: {e}")
        gc.collect()
        torch.cuda.empty_cache()
    print("\n==== summary ====")
    print("\n".join(RESULTS))
    out = os.environ.get("OUT")
    if out:
        open(os.path.join(out, "tune.txt"), "w").write("\n".join(RESULTS) + "\n")


if __name__ == "__main__":
    main()
