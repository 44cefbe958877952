"""The cuDNN FP8 attention family on the CPU: its float64 reference, the quantize launch in the
Triton interpreter, the registry's reasons, the config value, and the processor on a tiny Wan."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from engine.attention import AttentionPlan, explain, install_attention, plan_from_config, select_path
from engine.attention import cudnn_fp8, paths
from engine.attention import reference as R
from engine.attention.paths import PATHS, gpu_problem
from engine.errors import ConfigError, KernelError
from tests.dit_helpers import run, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("b,s,h,d", [(1, 1, 1, 128), (1, 77, 12, 64), (2, 130, 40, 32), (1, 300, 3, 128)])
def test_fp8_reference_close_to_float64(b, s, h, d):
    q, k, v = R.wan_like_qkv(b, s, h, d, seed=s + h, dtype=torch.float32)
    exact = R.attention_f64(q, k, v)
    err = R.rel_error(R.fp8_tensor_reference(q, k, v), exact)
    # one key: out = v8 · sv, V's e4m3 rounding only (≤ 2^-4 relative per value); otherwise the
    # per-tensor e4m3 Q·Kᵀ dominates: 0.07-0.09 measured on these inputs at 512-2048 tokens
    assert 0 < err < (0.04 if s == 1 else 0.12)
    # and it is a different recipe from the INT8 one (per-token INT8 Q, K: about half the error)
    if s > 1:
        assert R.rel_error(R.sage_reference(q, k, v), exact) < err


def test_fp8_reference_smoothing():
    q, k, v = R.wan_like_qkv(1, 150, 2, 64, seed=3, dtype=torch.float64)
    shifted = k + torch.randn(1, 1, 2, 64, dtype=torch.float64) * 10
    a, b = R.fp8_tensor_reference(q, k, v), R.fp8_tensor_reference(q, shifted, v)
    assert R.rel_error(b, a) < 1e-3  # same e4m3 keys after smoothing, up to a rounding flip
    exact = R.attention_f64(q, k, v)
    assert R.rel_error(R.fp8_tensor_reference(q, shifted, v, smooth_k=False), exact) > R.rel_error(a, exact)


def test_fp8_reference_with_an_fp8_output():
    """out_fp8 (cuDNN's e4m3 O on Hopper): every output is an e4m3 value times 2·V's scale, and the
    rounding moves the result by about e4m3's relative step, not more."""
    q, k, v = R.wan_like_qkv(1, 200, 3, 64, seed=5, dtype=torch.float64)
    wide, narrow = R.fp8_tensor_reference(q, k, v), R.fp8_tensor_reference(q, k, v, out_fp8=True)
    _, sv = R.quantize_fp8_tensor(v.double())
    units = narrow / (2 * sv)
    assert torch.allclose(units.float().to(torch.float8_e4m3fn).double(), units, rtol=1e-12, atol=0)
    assert not torch.allclose(wide / (2 * sv), units)
    assert 0.005 < R.rel_error(narrow, wide) < 0.05  # e4m3 rounds to within 2^-4 relative


def test_fp8_output_headroom():
    """Why cudnn_fp8 writes O in units of 2·V's scale: with V's largest channel nearly constant, O in V's
    own units passes 448 (P is summed into l before its e4m3 rounding), close to e4m3's overflow at 464."""
    worst = 0.0
    for seed in range(3):
        q, k, v = R.wan_like_qkv(1, 512, 2, 64, seed=seed, dtype=torch.float64)
        v[..., 0] = 5 + 1e-3 * torch.randn_like(v[..., 0])
        _, sv = R.quantize_fp8_tensor(v)
        worst = max(worst, float((R.fp8_tensor_reference(q, k, v) / sv).abs().max()))
    assert 448 < worst < 2 * 448 * 0.9


def test_fp8_reference_quantizer():
    x = torch.tensor([[-3.0, 0.5], [1.0, 2.0]], dtype=torch.float64)
    codes, scale = R.quantize_fp8_tensor(x)
    assert float(scale) == 3.0 / 448 and codes.abs().max() == 448
    assert torch.allclose(codes * scale, x, rtol=2 ** -4)  # e4m3: 3 mantissa bits
    zeros, one = R.quantize_fp8_tensor(torch.zeros(3, dtype=torch.float64))
    assert float(one) == 1.0 and not zeros.any()


def test_quantize_kernel_in_interpreter(rng):
    pytest.importorskip("triton")
    seed = int(torch.randint(0, 2**20, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "attention_fp8_interpret_check.py"), str(seed)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 4


def test_config_value_maps_to_the_family(caplog):
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        plan = plan_from_config({"self_attn_1_type": "cudnn_fp8", "attn_bf16_first_steps": 1})
    assert plan.self_attn == "cudnn_fp8" and plan.bf16_first_steps == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "cudnn_fp8" in lines[0] and "cuDNN sdpa_fp8" in lines[0] and "first 1" in lines[0]
    # LightX2V's own values keep their meaning
    assert {plan_from_config({"self_attn_1_type": n}).self_attn for n in ("sage_attn2", "sage_attn3")} == {"sage8"}
    assert {plan_from_config({"self_attn_1_type": n}).self_attn
            for n in ("torch_sdpa", "flash_attn2", "flash_attn3")} == {"sdpa"}
    with pytest.raises(ConfigError, match="cudnn_fp8"):
        plan_from_config({"self_attn_1_type": "cudnn-fp8"}, "x.json")


def test_bf16_steps_and_blocks_apply_to_the_family():
    plan = AttentionPlan("cudnn_fp8", bf16_blocks=frozenset({1}))
    assert plan.eightbit_for(0) and not plan.eightbit_for(1)


def _no_frontend(monkeypatch):
    monkeypatch.setitem(sys.modules, "cudnn", None)  # import cudnn raises ImportError


def test_registry_reasons_without_a_gpu(monkeypatch):
    _no_frontend(monkeypatch)
    reasons = dict(explain("cudnn_fp8", "cpu", 128, torch.bfloat16))
    assert "CUDA" in reasons["cudnn_fp8"] and reasons["cudnn_fp8_reference"] is None
    assert select_path("cudnn_fp8", "cpu", 128, torch.bfloat16).name == "cudnn_fp8_reference"
    if not torch.cuda.is_available():
        with pytest.raises(KernelError) as e:
            select_path("cudnn_fp8", "cuda", 128, torch.bfloat16)
        assert "no CUDA GPU" in str(e.value) and "torch_sdpa" in str(e.value)


@pytest.mark.parametrize("cap,head_dim,dtype,words", [
    ((8, 9), 128, torch.bfloat16, ["8.9", "9.0", "Hopper", "sage_attn2"]),
    ((8, 0), 128, torch.bfloat16, ["8.0", "9.0"]),
    ((9, 0), 96, torch.bfloat16, ["head dim 96"]),
    ((9, 0), 128, torch.float32, ["torch.float32"]),
    ((9, 0), 128, torch.bfloat16, ["nvidia-cudnn-frontend is not importable", "pip install nvidia-cudnn-frontend"]),
    ((10, 0), 64, torch.float16, ["nvidia-cudnn-frontend is not importable"]),
])
def test_registry_reasons_on_a_gpu(monkeypatch, cap, head_dim, dtype, words):
    pytest.importorskip("triton")
    _no_frontend(monkeypatch)
    monkeypatch.setattr(paths, "cuda_capability", lambda device: cap)
    monkeypatch.setattr(paths, "device_label", lambda device: "GPU 0 (Some GPU)")
    why = PATHS["cudnn_fp8"].unavailable(torch.device("cuda", 0), head_dim, dtype)
    assert why is not None and all(w in why for w in words), why


def _builds_with(monkeypatch, build):
    """cudnn_fp8 with `build` in place of cuDNN's graph build, and its caches empty."""
    monkeypatch.setattr(cudnn_fp8, "build_graph", build)
    monkeypatch.setattr(cudnn_fp8, "_GRAPHS", {})
    monkeypatch.setattr(cudnn_fp8, "_O_DTYPE", {})


def test_registry_reason_when_cudnn_declines_the_graph(monkeypatch):
    """With the frontend present, a graph cuDNN will not build is the reason, with cuDNN's words."""
    pytest.importorskip("triton")
    frontend = type(sys)("cudnn")
    monkeypatch.setattr(cudnn_fp8, "load_frontend", lambda: (frontend, None))
    monkeypatch.setattr(cudnn_fp8, "backend_version", lambda c: "9.99.0")
    built = []

    def refuse(cudnn, device, b, h, s, d, out_dtype, scale):
        built.append((b, h, s, d, out_dtype))
        raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED: no engine for this head dim\nmore detail")

    _builds_with(monkeypatch, refuse)
    monkeypatch.setattr(paths, "cuda_capability", lambda device: (9, 0))
    path = paths.CudnnFp8Path()  # a fresh one: the registered path caches its probes
    why = path.unavailable(torch.device("cuda", 3), 64, torch.bfloat16)
    assert "cuDNN 9.99.0" in why and "head dim 64" in why and "CUDNN_STATUS_NOT_SUPPORTED" in why
    # a bf16 O first, then fp16 (cast after), then e4m3 (dequantized after), each with cuDNN's first line
    assert "more detail" not in why and all(f"{t} output" in why for t in ("bfloat16", "float16", "float8_e4m3fn"))
    assert built == [(1, 1, cudnn_fp8.PROBE_TOKENS, 64, t) for t in (torch.bfloat16, torch.float16, torch.float8_e4m3fn)]
    assert path.unavailable(torch.device("cuda", 3), 64, torch.bfloat16) == why and len(built) == 3  # cached
    with pytest.raises(KernelError) as e:  # at run time: the shape, cuDNN's words, what to set instead
        cudnn_fp8.graph_for(frontend, torch.device("cuda", 3), 1, 40, 32760, 128, torch.bfloat16, 0.088)
    assert all(w in str(e.value) for w in ("H=40", "S=32760", "D=128", "NOT_SUPPORTED", "sage_attn2"))
    n = len(built)
    with pytest.raises(KernelError) as again:  # the refusal is kept: no rebuild at every call
        cudnn_fp8.graph_for(frontend, torch.device("cuda", 3), 1, 40, 32760, 128, torch.bfloat16, 0.088)
    assert str(again.value) == str(e.value) and len(built) == n


def test_gpu_problem_names_hopper():
    why = gpu_problem("cudnn_fp8", (8, 9), "NVIDIA L40S")
    assert "NVIDIA L40S" in why and "9.0+" in why and "Hopper" in why and "Ada" not in why
    assert gpu_problem("cudnn_fp8", (9, 0), "NVIDIA H100") is None
    assert "Ada" in gpu_problem("sage8", (8, 0), "NVIDIA A100")


def test_graph_declares_with_the_real_frontend():
    """The graph our path builds, declared and validated by nvidia-cudnn-frontend itself (no GPU
    needed up to validate); skipped where the frontend is not installed."""
    cudnn, why = cudnn_fp8.load_frontend()
    if cudnn is None:
        pytest.skip(why)
    g, uids = cudnn_fp8.declare_graph(cudnn, 2, 3, 77, 128, torch.bfloat16, 0.1)
    assert len(set(uids.values())) == 11
    outputs = {t.uid for t in g.get_outputs()}
    assert outputs == {uids["o"], uids["amax_o"]}


def test_processor_on_diffusers_wan_takes_the_reference(monkeypatch):
    model = tiny_model()
    base = run(model)
    calls = []
    ref_path = PATHS["cudnn_fp8_reference"]
    original = ref_path.run
    monkeypatch.setattr(ref_path, "run", lambda q, k, v, scale=None: calls.append(q.shape) or original(q, k, v, scale))
    assert install_attention(model, AttentionPlan("cudnn_fp8")) == 2
    out = run(model)
    assert len(calls) == 2 and calls[0][2] == 2  # attn1 of both blocks, [B, S, H, D]
    assert 0 < R.rel_error(out, base) < 0.15
    install_attention(model, AttentionPlan())
    assert torch.equal(run(model), base)


def test_graph_falls_back_to_an_fp16_output_and_says_so(monkeypatch, caplog):
    def build(cudnn, device, b, h, s, d, out_dtype, scale):
        if out_dtype == torch.bfloat16:
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED: bf16 O")
        return cudnn_fp8.Fp8Graph(None, {}, None, None, "engine7", out_dtype)

    _builds_with(monkeypatch, build)
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        g = cudnn_fp8.graph_for(object(), torch.device("cuda", 0), 1, 12, 1000, 128, torch.bfloat16, 0.088)
        assert cudnn_fp8.graph_for(object(), torch.device("cuda", 0), 1, 12, 1000, 128, torch.bfloat16, 0.088) is g
    assert g.out_dtype == torch.float16
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "engine7" in lines[0] and "converted to torch.bfloat16" in lines[0]


def test_graph_falls_back_to_an_fp8_output_as_hopper_needs(monkeypatch, caplog):
    """cuDNN 9.19 on Hopper builds sdpa_fp8 with an FP8 O only (docs/benchmarks.md, 2026-12-03): the
    graph is built with an e4m3 O and the log line says it is converted."""
    tried = []

    def build(cudnn, device, b, h, s, d, out_dtype, scale):
        tried.append((s, out_dtype))
        if out_dtype != torch.float8_e4m3fn:
            raise RuntimeError("sdpa fp8 forward with HALF/BFLOAT16 output is only supported on Blackwell")
        return cudnn_fp8.Fp8Graph(None, {}, None, None, "engine9", out_dtype)

    _builds_with(monkeypatch, build)
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        g = cudnn_fp8.graph_for(object(), torch.device("cuda", 0), 1, 12, 1000, 128, torch.bfloat16, 0.088)
    assert g.out_dtype == torch.float8_e4m3fn
    assert "O in torch.float8_e4m3fn, converted to torch.bfloat16" in caplog.records[0].getMessage()
    # the next shape on that device starts with the O dtype that built
    cudnn_fp8.graph_for(object(), torch.device("cuda", 0), 1, 12, 2000, 128, torch.bfloat16, 0.088)
    assert tried == [(1000, torch.bfloat16), (1000, torch.float16), (1000, torch.float8_e4m3fn),
                     (2000, torch.float8_e4m3fn)]


def test_bench_helpers(tmp_path, monkeypatch):
    """bench/bench_forward.py's kernel grouping (the attention quantize launches apart from the linears'
    own quantize kernels) and table, and bench/cudnn_frontend.py's --wheel-dir handling."""
    from bench import bench_forward as bf
    from bench.cudnn_frontend import use_wheel_dir

    groups = {n: bf.kernel_group(n) for n in ("_qkv_stats_kernel", "_fp8qkv_stats_kernel", "_qkv_quant_kernel",
                                              "_fp8qkv_quant_kernel", "_quant_kernel", "_norm_quant_kernel",
                                              "_attn_kernel", "_rmsnorm_rope_kernel",
                                              "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16")}
    assert groups == {"_qkv_stats_kernel": "quantize: statistics", "_fp8qkv_stats_kernel": "quantize: statistics",
                      "_qkv_quant_kernel": "quantize: write 8-bit", "_fp8qkv_quant_kernel": "quantize: write 8-bit",
                      "_quant_kernel": "other", "_norm_quant_kernel": "other", "_attn_kernel": "attention",
                      "_rmsnorm_rope_kernel": "rmsnorm+rope",
                      "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16": "attention"}
    rows = [dict(model="14B", res="480p", blocks=40, variant="bf16 eager", ms=3000.0, rel_err_vs_bf16=0.0,
                 first_call_s=9.0, rounds_ms=[3000.0], joules=2100.0, watts=700.0),
            dict(model="14B", res="480p", blocks=40, variant="fp8 fused", ms=2000.0, rel_err_vs_bf16=0.01,
                 first_call_s=9.0, rounds_ms=[2000.0], profile_ms={"attention": 1600.0, "quantize: statistics": 8.0},
                 joules=1300.0, watts=650.0),
            dict(model="14B", res="480p", blocks=40, variant="fp8 fused + cudnn fp8", skipped="not importable")]
    table = bf.tables(rows)
    assert "| 2000.0 | 1.50x | 1.00x |" in table and "not run: not importable" in table
    assert "1600.0 / 40.00" in table and "8.0 / 0.20" in table
    assert "| 14B x40 | 480p | fp8 fused | 1300 | 650 | 1.62x |" in table  # bf16's joules over these
    from bench.energy import Nvml
    gpu = Nvml(0)  # without an NVIDIA driver: a reason, and no numbers rather than an error
    assert (gpu.why is None) == (gpu.energy_j() is not None)
    (tmp_path / "pkg" / "cudnn").mkdir(parents=True)
    (tmp_path / "pkg" / "cudnn" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert str(tmp_path / "pkg") in use_wheel_dir(str(tmp_path / "pkg")) and sys.path[0] == str(tmp_path / "pkg")
    (tmp_path / "empty").mkdir()
    assert "no wheel for cp" in use_wheel_dir(str(tmp_path / "empty"))
    assert "no --wheel-dir" in use_wheel_dir(None)
