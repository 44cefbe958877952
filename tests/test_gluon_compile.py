"""The Gluon attention kernel compiles for sm_90 with the installed triton, without a GPU.

Sage8GluonPath.unavailable only asks whether Gluon's Hopper API imports; a kernel this triton cannot
compile would then fail inside the custom op, mid-generation, with a compiler traceback. Gluon's API
moves between releases (triton 3.9 removed tma.async_copy_global_to_shared), so compile it here."""
import dataclasses
import os
import re
import subprocess
import tempfile

import pytest


@pytest.mark.parametrize("option", ["default", "per_token"])
def test_gluon_kernel_compiles_for_sm90(option):
    from engine.attention import gluon_sage as gs

    if gs.gluon is None or gs._triton_version() < (3, 6):  # not the GPU-run gate: compile with any 3.6+
        pytest.skip(gs.available())
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.experimental.gluon._runtime import GluonASTSource
    except ImportError:
        pytest.skip("this triton has no Gluon compile entry to call without a GPU")
    gl, d = gs.gl, gs.HEAD_DIM
    cfg = {"default": gs.DEFAULT, "per_token": dataclasses.replace(gs.DEFAULT, ks_thread=False)}[option]
    fn = gs._attn_kernel

    def layout(shape, dtype):
        return repr(gl.NVMMASharedLayout.get_default_for(shape, dtype))
    sig = {"q_desc": f"tensordesc<i8[{gs.ROWS}, {d}],{layout([gs.ROWS, d], gl.int8)}>",
           "k_desc": f"tensordesc<i8[{cfg.block_n}, {d}],{layout([cfg.block_n, d], gl.int8)}>",
           "ks_desc": f"tensordesc<fp32[{cfg.block_n}],{layout([cfg.block_n], gl.float32)}>",
           "v_desc": f"tensordesc<fp8e4nv[{d}, {cfg.block_n}],{layout([d, cfg.block_n], gl.float8e4nv)}>",
           "QS": "*fp32", "KS": "*fp32", "VS": "*fp32", "OUT": "*bf16",
           "seq": "i32", "sp": "i32", "H": "i32", "so_b": "i32", "so_s": "i32", "so_h": "i32"}
    consts = dict(D=d, **cfg.constexprs())
    sig.update({k: "constexpr" for k in consts})
    src = GluonASTSource(fn, {k: sig[k] for k in fn.arg_names}, consts, {})
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 128), options=dict(num_warps=4))
    except RuntimeError as e:
        if "ptxas" in str(e).lower():  # a triton build without the CUDA tool chain
            pytest.skip(str(e)[:200])
        raise
    assert kernel.asm["cubin"]
    # no local-memory stack: the variants that spilled ran 44-73% slower on the H200 (docs/benchmarks.md)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        stack = re.search(r"STACK:(\d+)", usage)
        assert stack and int(stack.group(1)) == 0, usage


def test_gluon_refusals_are_messages_not_tracebacks(monkeypatch):
    import ast

    import torch

    from engine.attention import gluon_sage as gs
    from engine.attention import triton_qkv
    from engine.errors import KernelError

    if gs.gluon is None:
        pytest.skip(gs.available())
    import triton
    from triton.compiler.errors import CompilationError

    # triton 3.5 imports the same Hopper names with other signatures: the registry must decline it
    monkeypatch.setattr(triton, "__version__", "3.5.1")
    assert "need 3.6+" in gs.available()
    monkeypatch.setattr(triton, "__version__", "3.6.0+git1234")
    assert gs.available() is None
    # a newer triton compiles it but has not run it on a GPU: declined with the way to enable it
    monkeypatch.setattr(triton, "__version__", "3.9.0")
    assert "GPU_CHECKED_TRITON" in gs.available() and "3.6" in gs.available()
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    # one stage would deadlock (block j+1's K waits on block j's stage)
    x = triton_qkv.Quantized(*(torch.zeros(1, 1, 128, 128) for _ in range(5)), torch.ones(1, 1, 128), 5,
                             k_block="lanes")
    with pytest.raises(ValueError, match="2\\+ stages"):
        gs.attention_quantized(x, torch.empty(1, 5, 1, 128), gs.Config(stages=1))

    # a kernel this triton cannot compile: a KernelError that says what to do
    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise CompilationError(None, ast.parse("x").body[0], "something has been removed")
            return launch
    monkeypatch.setattr(gs, "_attn_kernel", Broken())
    monkeypatch.setattr(gs, "_descriptors", lambda x, config: (None,) * 4)
    with pytest.raises(KernelError, match="does not compile with triton .*torch_sdpa"):
        gs.attention_quantized(x, torch.empty(1, 5, 1, 128))
