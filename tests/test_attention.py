"""8-bit attention on the CPU: the reference against float64, the Triton kernel in the interpreter,
the config keys and refusals, and the processor on a real (tiny) diffusers Wan transformer."""
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.attention import (AttentionPlan, denoising_steps, explain, install_attention, plan_from_config,
                              select_path, set_denoising_step)
from engine.attention import reference as R
from engine.attention.paths import PATHS
from engine.errors import ConfigError, KernelError
from tests.dit_helpers import run, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("b,s,h,d", [(1, 1, 1, 128), (1, 77, 12, 64), (2, 130, 40, 32), (1, 300, 3, 128)])
def test_reference_close_to_float64(b, s, h, d):
    q, k, v = R.wan_like_qkv(b, s, h, d, seed=s + h, dtype=torch.float32)
    exact = R.attention_f64(q, k, v)
    # the plain attention itself against torch's float64 SDPA (an independent implementation)
    sdpa = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert R.rel_error(exact, sdpa) < 1e-12
    err = R.rel_error(R.sage_reference(q, k, v), exact)
    # one key: p = 1 and each V channel is its own amax, which FP8 holds exactly
    assert err < (1e-6 if s == 1 else 0.06)


def test_k_smoothing_is_exact_under_softmax():
    q, k, v = R.wan_like_qkv(1, 150, 2, 64, seed=3, dtype=torch.float64)
    shifted = k + torch.randn(1, 1, 2, 64, dtype=torch.float64) * 10
    a, b = R.sage_reference(q, k, v), R.sage_reference(q, shifted, v)
    assert R.rel_error(b, a) < 1e-3  # same INT8 keys after smoothing, up to a rounding flip
    no_smooth = R.sage_reference(q, shifted, v, recipe=R.Recipe(smooth_k=False))
    assert R.rel_error(no_smooth, R.attention_f64(q, k, v)) > R.rel_error(a, R.attention_f64(q, k, v))


def test_triton_kernel_matches_reference_in_interpreter(rng):
    pytest.importorskip("triton")
    seed = int(torch.randint(0, 2**20, (1,), generator=rng))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "attention_interpret_check.py"), str(seed)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 16


def test_config_keys_map_to_paths(caplog):
    with caplog.at_level(logging.INFO, logger="engine.attention"):
        plan = plan_from_config({"self_attn_1_type": "sage_attn2", "cross_attn_1_type": "sage_attn2",
                                 "attn_bf16_first_steps": 2, "attn_bf16_last_steps": 1, "attn_bf16_blocks": [0, 39]})
    assert (plan.self_attn, plan.bf16_first_steps, plan.bf16_last_steps, plan.bf16_blocks) == ("sage8", 2, 1, {0, 39})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "8-bit" in lines[0] and "cross_attn_1_type=sage_attn2" in lines[0]
    for name in ("torch_sdpa", "flash_attn2", "flash_attn3"):
        assert plan_from_config({"self_attn_1_type": name}).self_attn == "sdpa"
    assert plan_from_config({}).self_attn == "sdpa"


@pytest.mark.parametrize("cfg,words", [
    ({"self_attn_1_type": "radial_attn"}, ["self_attn_1_type", "sage_attn2", "torch_sdpa"]),
    ({"cross_attn_2_type": 3}, ["cross_attn_2_type", "valid values"]),
    ({"attn_bf16_first_steps": -1}, ["attn_bf16_first_steps"]),
    ({"attn_bf16_last_steps": True}, ["attn_bf16_last_steps"]),
    ({"attn_bf16_blocks": "0,1"}, ["attn_bf16_blocks", "list"]),
])
def test_config_refusals(cfg, words):
    with pytest.raises(ConfigError) as e:
        plan_from_config(cfg, "my.json")
    assert all(w in str(e.value) for w in words + ["my.json"])


def test_registry_explains_itself():
    reasons = dict(explain("sage8", "cpu", 128, torch.bfloat16))
    assert "CUDA" in reasons["sage8_triton"] and reasons["sage8_reference"] is None
    assert select_path("sage8", "cpu", 128, torch.bfloat16).name == "sage8_reference"
    assert select_path("sdpa", "cpu", 128, torch.bfloat16).name == "sdpa"
    with pytest.raises(KernelError, match="valid: sdpa, sage8"):
        select_path("fp4", "cpu", 128, torch.bfloat16)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in dict(explain("sage8", "cuda", 128, torch.bfloat16))["sage8_triton"]
    # Hopper's Gluon kernel is asked first, and says why it does not run here
    assert [name for name, _ in explain("sage8", "cpu", 128, torch.bfloat16)][:2] == ["sage8_gluon", "sage8_triton"]
    assert "CUDA" in reasons["sage8_gluon"] or "triton" in reasons["sage8_gluon"]


def test_gluon_path_declines_other_gpus_and_head_sizes(monkeypatch):
    from engine.attention import paths

    if paths.gluon_sage is None or paths.gluon_sage.gluon is None:
        pytest.skip("no Gluon in this triton")
    monkeypatch.setattr(paths.gluon_sage, "available", lambda: None)  # the version gate: test_gluon_compile.py
    path = PATHS["sage8_gluon"]
    cuda = torch.device("cuda")
    monkeypatch.setattr(paths, "cuda_capability", lambda device: (8, 9))
    assert "9.0" in path.unavailable(cuda, 128, torch.bfloat16)
    monkeypatch.setattr(paths, "cuda_capability", lambda device: (9, 0))
    assert path.unavailable(cuda, 128, torch.bfloat16) is None
    assert "head dim 64" in path.unavailable(cuda, 64, torch.bfloat16)
    assert "float32" in path.unavailable(cuda, 128, torch.float32)
    # on Hopper the triton-version reason is the one given (elsewhere the GPU's comes first)
    monkeypatch.setattr(paths.gluon_sage, "available", lambda: "triton 9.9: not run on a GPU")
    assert path.unavailable(cuda, 128, torch.bfloat16) == "triton 9.9: not run on a GPU"
    assert "runs on CUDA GPUs only" == path.unavailable(torch.device("cpu"), 128, torch.bfloat16)


def test_lane_groups_of_k_scales():
    """reference.quantize_int8_lanes against a brute-force grouping: in each 128 tokens, the tokens n
    with equal (n % 8) // 2 (the keys one thread holds in the warpgroup-MMA layout) share one scale."""
    x = torch.randn(2, 300, 3, 16, dtype=torch.float64) * torch.rand(1, 300, 3, 1, dtype=torch.float64)
    k8, scale = R.quantize_int8_lanes(x)
    n = torch.arange(300)
    group = (n // 128) * 4 + (n % 8) // 2
    amax = x.abs().amax(dim=3)
    brute = torch.stack([amax[:, group == group[i]].amax(dim=1) for i in range(300)], dim=1) / 127
    assert torch.equal(scale, brute) and torch.equal(group, R.lane_group(n))
    assert k8.abs().max() <= 127 and torch.equal(k8, R.round_half_away(x / scale[..., None]))
    # the family's recipe: close to per-token scales on Wan-like inputs, both near float64
    q, k, v = R.wan_like_qkv(1, 300, 2, 64, seed=5, dtype=torch.float32)
    exact = R.attention_f64(q, k, v)
    assert R.rel_error(R.sage_reference(q, k, v, recipe=R.SAGE8), exact) < 0.06


def test_quantized_copies_say_their_k_scales():
    from engine.attention import gluon_sage, triton_qkv

    with pytest.raises(ValueError, match="k_block 'rows'"):
        triton_qkv.quantize_qkv(*(torch.zeros(1, 8, 1, 64) for _ in range(3)), k_block="rows")
    x = triton_qkv.Quantized(*(torch.zeros(1, 1, 128, 128) for _ in range(5)), torch.ones(1, 1, 128), 5, k_block=1)
    with pytest.raises(ValueError, match="k_block='lanes'"):
        gluon_sage.attention_quantized(x, torch.empty(1, 5, 1, 128))
    from engine.attention import triton_sage
    with pytest.raises(ValueError, match="lane_fold needs copies quantized with k_block='lanes'"):
        triton_sage.attention_quantized(x, torch.empty(1, 5, 1, 128), triton_sage.Config(lane_fold=True))


def test_steps_and_blocks_decide():
    plan = AttentionPlan("sage8", 1, 1, frozenset({3}))
    with denoising_steps(4) as on_step_end:
        assert not plan.eightbit_for(0)  # first step
        on_step_end(None, 0, None, {})
        assert plan.eightbit_for(0) and not plan.eightbit_for(3)
        for i in (1, 2):
            on_step_end(None, i, None, {})
        assert not plan.eightbit_for(0)  # last step
    assert plan.eightbit_for(0)  # no step known: 8-bit, with a warning
    assert not AttentionPlan("sdpa").eightbit_for(0)


def test_processor_on_diffusers_wan(monkeypatch):
    model = tiny_model()
    base = run(model)
    calls = []
    ref_path = PATHS["sage8_reference"]
    original_run = ref_path.run
    monkeypatch.setattr(ref_path, "run", lambda q, k, v, scale=None: calls.append(q.shape) or original_run(q, k, v, scale))
    assert install_attention(model, AttentionPlan("sage8")) == 2
    out = run(model)
    assert len(calls) == 2 and calls[0][2] == 2  # attn1 of both blocks, [B, S, H, D]; attn2 stays SDPA
    assert 0 < R.rel_error(out, base) < 0.1
    install_attention(model, AttentionPlan("sage8", bf16_blocks=frozenset({0, 1})))
    assert torch.equal(run(model), base)
    install_attention(model, AttentionPlan("sage8", bf16_first_steps=1))
    set_denoising_step(0, 2)
    try:
        assert torch.equal(run(model), base)
        set_denoising_step(1, 2)
        assert not torch.equal(run(model), base)
    finally:
        set_denoising_step(None)
    install_attention(model, AttentionPlan())
    assert torch.equal(run(model), base)
    assert type(model.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"


def test_the_log_says_which_path_runs_and_why_not_a_faster_one(caplog):
    model = tiny_model()
    install_attention(model, AttentionPlan("sage8"))
    try:
        with caplog.at_level(logging.INFO, logger="engine.attention"):
            run(model)
    finally:
        install_attention(model, AttentionPlan())
    line = next(r.getMessage() for r in caplog.records if "self-attention runs" in r.getMessage())
    assert "runs sage8_reference" in line and "not sage8_gluon: " in line and "sage8_triton: " in line


def test_fused_block_attention_hook_takes_the_installed_path():
    from engine import fused

    model = tiny_model()
    attn = model.blocks[0].attn1
    q, k, v = (torch.randn(1, 40, attn.to_q.out_features) for _ in range(3))
    plain = fused._attention(attn, q, k, v, self_attention=True)
    install_attention(model, AttentionPlan("sage8"))
    try:
        got = fused._attention(attn, q, k, v, self_attention=True)
        heads = [t.unflatten(2, (attn.heads, -1)) for t in (q, k, v)]
        assert torch.allclose(got, R.sage_reference(*heads, recipe=R.SAGE8).float())
        assert torch.equal(fused._attention(attn, q, k, v), plain)  # cross-attention calls: unchanged
    finally:
        install_attention(model, AttentionPlan())
    assert torch.equal(fused._attention(attn, q, k, v, self_attention=True), plain)


def test_install_for_pipeline_covers_both_transformers():
    from types import SimpleNamespace

    from engine.attention import install_for_pipeline

    pipe = SimpleNamespace(transformer=tiny_model(), transformer_2=tiny_model(1))
    plan = install_for_pipeline(pipe, {"self_attn_1_type": "sage_attn2", "attn_bf16_blocks": [1]})
    for model in (pipe.transformer, pipe.transformer_2):
        assert type(model.blocks[0].attn1.processor).__name__ == "EightBitSelfAttnProcessor"
        assert model.blocks[0].attn1.__dict__["_eightbit"].wants_8bit()
        assert not model.blocks[1].attn1.__dict__["_eightbit"].wants_8bit()
    assert plan.bf16_blocks == {1}
    install_for_pipeline(pipe, {"self_attn_1_type": "flash_attn3"})
    assert type(pipe.transformer_2.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
