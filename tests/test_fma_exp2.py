"""The polynomial exp2 of engine/attention/fma_exp2.py: its Triton form in the interpreter (accuracy,
edges, tile splits) and its inline-PTX form, which no CPU runs, by executing its PTX lines here."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_polynomial_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fma_exp2_check.py")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 8


def _imm(tok):
    return np.uint32(int(tok[2:], 16)) if tok.startswith("0f") else np.uint32(int(tok))


def run_ptx(text: str, inputs: np.ndarray) -> np.ndarray:
    """Executes the few PTX opcodes fma_exp2's asm uses, on float32/int32 numpy arrays (b32 bits);
    ex2.approx is taken as exact 2^x (its error, ~2^-22, is not what is tested)."""
    regs = {f"${i + 4}": inputs[i].view(np.uint32) for i in range(4)}
    u = lambda r: regs[r] if r in regs else _imm(r)  # noqa: E731  (bits of a register or immediate)
    f = lambda r: u(r).view(np.float32)  # noqa: E731
    for line in text.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [t.strip() for t in args.split(",")]
        with np.errstate(over="ignore", invalid="ignore"):
            if op == "ex2.approx.ftz.f32":
                out = np.exp2(f(a[1]).astype(np.float64)).astype(np.float32)
            elif op == "max.f32":
                out = np.maximum(f(a[1]), f(a[2]))
            elif op == "add.rn.f32":
                out = f(a[1]) + f(a[2])
            elif op == "sub.rn.f32":
                out = f(a[1]) - f(a[2])
            elif op == "fma.rn.f32":  # exact product in float64, one rounding (double rounding aside)
                out = (f(a[1]).astype(np.float64) * f(a[2]) + f(a[3])).astype(np.float32)
            elif op == "shl.b32":
                out = (u(a[1]) << np.uint32(int(a[2]))).astype(np.uint32)
            elif op == "add.s32":
                out = (u(a[1]) + u(a[2])).astype(np.uint32)
            else:
                raise AssertionError(f"opcode not emulated: {op}")
        regs[a[0]] = np.asarray(out).view(np.uint32)
    return np.stack([regs[f"${i}"].view(np.float32) for i in range(4)])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_inline_ptx_polynomial(count):
    pytest.importorskip("triton")
    from engine.attention.fma_exp2 import C1, C2, C3, mixed_ptx

    for c in (C1, C2, C3):  # the coefficients are float32 values: the PTX immediates lose nothing
        assert struct.unpack("<f", struct.pack("<f", c))[0] == c
    x = np.linspace(-126, 12, 400_001, dtype=np.float32)
    y = run_ptx(mixed_ptx(count), np.stack([x] * 4))
    rel = np.abs(y.astype(np.float64) / np.exp2(x.astype(np.float64)) - 1)
    assert rel[:4 - count].max() < 1e-7 and (rel[4 - count:].min(axis=0) > 1e-7).mean() > 0.9  # which lanes
    assert rel.max() < 1.5e-4
    edge = np.array([-np.inf, -1000, -127.5, -127], dtype=np.float32)
    assert (run_ptx(mixed_ptx(count), np.stack([edge] * 4))[4 - count:] == 0).all()
    low = np.linspace(-127, -126, 1001, dtype=np.float32)
    y = run_ptx(mixed_ptx(count), np.stack([low] * 4))[4 - count:]
    assert ((y >= 0) & (y <= 2.0 ** -126)).all()


def test_config_labels_and_refusals():
    pytest.importorskip("triton")
    from engine.attention import triton_sage as ts

    assert ts.DEFAULT.poly_exp2 == 0 and ts.DEFAULT.label() == "M64N128w4s3-tma"
    assert ts.Config(poly_exp2=1).label().endswith("-px1")
    assert ts.Config(poly_exp2=2, poly_asm=False).label().endswith("-px2t")
    for bad in (ts.Config(poly_exp2=5), ts.Config(poly_exp2=3, poly_asm=False)):
        with pytest.raises(ValueError, match="poly_exp2"):
            bad.poly_split()
