"""Our 8-bit attention kernel on a GPU: against its float64 reference with the output poisoned,
and against bf16 SDPA on Wan-like inputs."""
import pytest
import torch
import torch.nn.functional as F

from engine.attention import reference as R
from engine.attention import triton_sage as ts
from engine.attention.paths import select_path
from engine.errors import KernelError


def fp8_gpu():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


pytestmark = pytest.mark.skipif(not fp8_gpu(), reason="needs a GPU with FP8 (compute capability 8.9+)")


@pytest.mark.parametrize("shape,config,blocks", [
    ((1, 1, 1, 128), ts.DEFAULT, (1, 1)),
    ((1, 300, 12, 128), ts.DEFAULT, (1, 1)),
    ((2, 129, 3, 64), ts.Config(block_n=64, tma=False), (128, 64)),
    ((1, 517, 2, 128), ts.Config(128, 128, 8, 3, overlap=True), (1, 1)),
    # exp2 partly by polynomial (the inline PTX runs only on a GPU) and the fresh P·V form
    ((1, 300, 12, 128), ts.Config(poly_exp2=1), (1, 1)),
    ((1, 517, 2, 128), ts.Config(poly_exp2=3), (1, 1)),
    ((2, 129, 3, 64), ts.Config(poly_exp2=2, poly_asm=False), (1, 1)),
    ((1, 300, 12, 128), ts.Config(poly_exp2=4), (1, 1)),
    ((1, 517, 2, 128), ts.Config(pv_fresh=True, poly_exp2=2), (1, 1)),
    ((1, 517, 2, 128), ts.Config(128, 128, 8, 3, overlap=True, pv_fresh=True), (1, 1)),
])
def test_kernel_matches_reference_poisoned(shape, config, blocks):
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    q, k, v = R.wan_like_qkv(*shape, seed=seed, device="cuda")
    out = torch.full_like(q, float("nan"))
    ts.attention_8bit(q, k, v, config=config, q_block=blocks[0], k_block=blocks[1], out=out)
    assert not torch.isnan(out).any()
    ref = R.sage_reference(q.cpu(), k.cpu(), v.cpu(), recipe=R.Recipe(*blocks, config.block_n))
    # fp32 exp2 vs float64 exp moves a few P values across an FP8 rounding boundary; bf16 output
    assert R.rel_error(out.cpu(), ref) < 1e-2


def test_error_bound_against_bf16_sdpa():
    q, k, v = R.wan_like_qkv(1, 4096, 12, 128, seed=int(torch.randint(0, 1000, (1,))), device="cuda")
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out = select_path("sage8", q.device, 128, q.dtype).run(q, k, v)
    # measured 0.041 (per-token K scales) and 0.044 (lane groups, the sage8 recipe) at the real shapes
    # (docs/benchmarks.md): the stated bound with margin
    assert R.rel_error(out, ref) < 0.05


def test_fused_block_with_8bit_attention_against_diffusers():
    """The fused fp8 block with 8-bit self-attention against diffusers' own forward (bf16 attention),
    and against diffusers' forward with our 8-bit processor (same attention numerics)."""
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel

    from engine.apply import quantize_model
    from engine.attention import AttentionPlan, install_attention
    from engine.fused import install_fused_wan, uninstall_fused_wan

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128,
                                      in_channels=16, out_channels=16, text_dim=64, freq_dim=32, ffn_dim=1024,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=64).to(torch.bfloat16).eval()
    lat = torch.randn(1, 16, 5, 18, 22, device="cuda", dtype=torch.bfloat16)  # 495 tokens: not a multiple of 64
    ctx = torch.randn(1, 512, 64, device="cuda", dtype=torch.bfloat16)
    ts_ = torch.tensor([500], device="cuda")
    quantize_model(model, "fp8")
    with torch.no_grad():
        want = model(lat, ts_, ctx, return_dict=False)[0].float()
        assert install_attention(model, AttentionPlan("sage8")) == 2
        eager8 = model(lat, ts_, ctx, return_dict=False)[0].float()
        assert install_fused_wan(model) == 2
        fused8 = model(lat, ts_, ctx, return_dict=False)[0].float()
        uninstall_fused_wan(model)
        install_attention(model, AttentionPlan())
    assert torch.isfinite(fused8).all()
    assert R.rel_error(fused8, eager8) < 2e-2  # the fused block's own bound (tests/gpu/test_kernels_gpu.py)
    assert 0 < R.rel_error(eager8, want) < 0.05


@pytest.mark.parametrize("config", [ts.DEFAULT, ts.Config(pv_fresh=True)])
def test_long_rows_with_v_offset_match_reference(config):
    """Wan-length rows (32,760 keys) with a per-channel offset in V: the case where FP8 P·V
    accumulated in the tensor cores' reduced precision (Triton's sm90 default) drifted 0.056 from
    bf16; each block's P·V is now promoted to FP32 (Config.fp32_pv, or pv_fresh's FMA)."""
    tokens = 32760
    q, k, v = R.wan_like_qkv(1, tokens, 1, 128, seed=int(torch.randint(0, 1000, (1,))), device="cuda")
    v = v + torch.randn(1, 1, 1, 128, device="cuda", dtype=v.dtype) * 3
    pick = torch.randperm(tokens, device="cuda")[:64]
    out = ts.attention_8bit(q, k, v, config=config)[:, pick].cpu()
    ref = R.sage_reference(q[:, pick].cpu(), k.cpu(), v.cpu(), recipe=R.Recipe(1, 1, ts.DEFAULT.block_n))
    assert R.rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("shape", [(1, 1, 1, 128), (1, 300, 12, 128), (2, 129, 3, 64), (1, 517, 2, 128)])
@pytest.mark.parametrize("config", [ts.Config(lane_fold=True), ts.Config(128, 128, 8, 3, tma=True, lane_fold=True)])
def test_triton_lane_fold_matches_reference_poisoned(shape, config):
    q, k, v = R.wan_like_qkv(*shape, seed=int(torch.randint(0, 2**31 - 1, (1,))), device="cuda")
    out = torch.full_like(q, float("nan"))
    ts.attention_8bit(q, k, v, config=config, out=out)
    assert not torch.isnan(out).any()
    ref = R.sage_reference(q.cpu(), k.cpu(), v.cpu(), recipe=R.Recipe(1, 1, config.block_n, k_lanes=True))
    assert R.rel_error(out.cpu(), ref) < 1e-2


# ---- the Gluon kernel for Hopper (the sage8 family's first path on sm90) ----------------------

def _hopper():
    from engine.attention import gluon_sage
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon kernel is written for Hopper (compute capability 9.0)")
    if gluon_sage.available():
        pytest.skip(gluon_sage.available())
    return gluon_sage


@pytest.mark.parametrize("shape", [(1, 1, 1, 128), (1, 300, 12, 128), (2, 129, 3, 128), (1, 517, 2, 128),
                                   (1, 128, 1, 128), (1, 4096, 2, 128)])
@pytest.mark.parametrize("variant", ["default", "pingpong", "stages2", "stages4", "per_token", "n64"])
def test_gluon_kernel_matches_reference_poisoned(shape, variant):
    gs = _hopper()
    config = {"default": gs.DEFAULT, "pingpong": gs.Config(pingpong=True), "stages2": gs.Config(stages=2),
              "stages4": gs.Config(stages=4), "per_token": gs.Config(ks_thread=False),
              "n64": gs.Config(block_n=64)}[variant]
    q, k, v = R.wan_like_qkv(*shape, seed=int(torch.randint(0, 2**31 - 1, (1,))), device="cuda")
    out = torch.full_like(q, float("nan"))
    gs.attention_8bit(q, k, v, config=config, out=out)
    assert not torch.isnan(out).any()
    ref = R.sage_reference(q.cpu(), k.cpu(), v.cpu(), recipe=gs.recipe(config))
    assert R.rel_error(out.cpu(), ref) < 1e-2


def test_gluon_kernel_long_rows_with_v_offset():
    gs = _hopper()
    tokens = 32760
    q, k, v = R.wan_like_qkv(1, tokens, 2, 128, seed=int(torch.randint(0, 1000, (1,))), device="cuda")
    v = v + torch.randn(1, 1, 2, 128, device="cuda", dtype=v.dtype) * 3
    pick = torch.randperm(tokens, device="cuda")[:64]
    out = gs.attention_8bit(q, k, v)[:, pick].cpu()
    ref = R.sage_reference(q[:, pick].cpu(), k.cpu(), v.cpu(), recipe=R.SAGE8)
    assert R.rel_error(out, ref) < 1e-2
    # the same recipe through the Triton kernel: one family, one set of numerics
    tri = ts.attention_8bit(q, k, v, k_block="lanes")[:, pick].cpu()
    assert R.rel_error(tri, ref) < 1e-2


def test_sage8_on_hopper_runs_the_gluon_kernel():
    _hopper()
    assert select_path("sage8", torch.device("cuda"), 128, torch.bfloat16).name == "sage8_gluon"
    assert select_path("sage8", torch.device("cuda"), 64, torch.bfloat16).name == "sage8_triton"


# ---- the cuDNN FP8 path (nvidia-cudnn-frontend; skipped where it is not importable) ----------

def _frontend():
    from engine.attention import cudnn_fp8
    cudnn, why = cudnn_fp8.load_frontend()
    if cudnn is None:
        pytest.skip(why)
    if torch.cuda.get_device_capability() < cudnn_fp8.MIN_CAPABILITY:
        pytest.skip("cuDNN's FP8 attention needs compute capability 9.0+")
    return cudnn


@pytest.mark.parametrize("shape", [(1, 300, 12, 128), (2, 129, 3, 64), (1, 517, 2, 128), (1, 1, 2, 128)])
def test_cudnn_fp8_against_float64_poisoned(shape):
    """cuDNN's sdpa_fp8 behind our quantize launch: output poisoned with NaN; against float64 attention
    no worse than the float64 reference of its own recipe plus 0.02 (fp8_tensor_reference measured
    0.07-0.09 on these inputs on the CPU), and close to that reference."""
    from engine.attention import cudnn_fp8
    from engine.attention.fp8_qkv import quantize_fp8

    from engine.attention.paths import PATHS

    cudnn = _frontend()
    why = PATHS["cudnn_fp8"].unavailable(torch.device("cuda", torch.cuda.current_device()), shape[-1], torch.bfloat16)
    if shape[-1] != 128 and why:
        pytest.skip(why)  # a head dim Wan does not use; Wan's 128 must be served
    assert why is None, why
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    q, k, v = R.wan_like_qkv(*shape, seed=seed, device="cuda")
    out = torch.full_like(q, float("nan"))
    x = quantize_fp8(q, k, v)
    try:
        cudnn_fp8.execute(cudnn, x, shape[-1] ** -0.5, out)
    except KernelError as e:
        # cuDNN 9.19 on Hopper builds no FP8-output graph for one token (H200, 2026-12-04); a refusal
        # must name the shape and the way out, and is accepted only there
        assert shape[1] == 1 and "S=1" in str(e) and "sage_attn2" in str(e), str(e)
        pytest.skip(f"cuDNN declines this shape: {str(e)[:200]}")
    torch.cuda.synchronize()
    assert not torch.isnan(out).any()
    exact = R.attention_f64(q.cpu(), k.cpu(), v.cpu())
    b, s, h, d = shape
    fp8_o = cudnn_fp8.graph_for(cudnn, q.device, b, h, s, d, out.dtype, d ** -0.5).out_dtype == torch.float8_e4m3fn
    recipe = R.fp8_tensor_reference(q.cpu(), k.cpu(), v.cpu(), out_fp8=fp8_o)
    err, ref_err = R.rel_error(out.cpu(), exact), R.rel_error(recipe, exact)
    print(f"seed {seed} {shape} O {'e4m3' if fp8_o else 'bf16/fp16'}: cuDNN fp8 vs float64 {err:.4f}, its reference vs float64 {ref_err:.4f}, "
          f"cuDNN vs reference {R.rel_error(out.cpu(), recipe):.4f}")
    assert err < ref_err + 0.02
    # measured 0.008-0.034 (H200, 2026-12-04): cuDNN's P and sums differ from float64's by enough to flip
    # many e4m3 roundings of O, so this bound cannot tell whether the O rounding is modelled; the next one can
    assert R.rel_error(out.cpu(), recipe) < 0.05
    if fp8_o:  # O was written in e4m3 (units of 2·V's scale): each output is an e4m3 value, up to bf16's rounding
        units = out.float() / (2 * x.scales[2, 0])
        back = units.to(torch.float8_e4m3fn).float()
        assert torch.allclose(units, back, rtol=2**-7, atol=1e-6)


def test_cudnn_fp8_path_error_against_bf16_sdpa():
    """Through the registry and the custom op at 4096 tokens, against bf16 SDPA (the stated bound:
    the per-tensor e4m3 Q·Kᵀ costs 0.07-0.09 on these inputs, see docs/benchmarks.md)."""
    _frontend()
    q, k, v = R.wan_like_qkv(1, 4096, 12, 128, seed=int(torch.randint(0, 1000, (1,))), device="cuda")
    path = select_path("cudnn_fp8", q.device, 128, q.dtype)
    assert path.name == "cudnn_fp8"
    out = path.run(q, k, v)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert R.rel_error(out, ref) < 0.12


def test_fused_block_with_cudnn_fp8_against_diffusers():
    """The fused fp8 block with cuDNN FP8 self-attention against diffusers' own forward (bf16
    attention) on the same fp8 linears."""
    _frontend()
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel

    from engine.apply import quantize_model
    from engine.attention import AttentionPlan, install_attention
    from engine.fused import install_fused_wan, uninstall_fused_wan

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128,
                                      in_channels=16, out_channels=16, text_dim=64, freq_dim=32, ffn_dim=1024,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=64).to(torch.bfloat16).eval()
    lat = torch.randn(1, 16, 5, 18, 22, device="cuda", dtype=torch.bfloat16)  # 495 tokens
    ctx = torch.randn(1, 512, 64, device="cuda", dtype=torch.bfloat16)
    ts_ = torch.tensor([500], device="cuda")
    quantize_model(model, "fp8")
    with torch.no_grad():
        want = model(lat, ts_, ctx, return_dict=False)[0].float()
        assert install_attention(model, AttentionPlan("cudnn_fp8")) == 2
        eager8 = model(lat, ts_, ctx, return_dict=False)[0].float()
        assert install_fused_wan(model) == 2
        fused8 = model(lat, ts_, ctx, return_dict=False)[0].float()
        uninstall_fused_wan(model)
        install_attention(model, AttentionPlan())
    assert torch.isfinite(fused8).all()
    assert R.rel_error(fused8, eager8) < 2e-2
    assert 0 < R.rel_error(eager8, want) < 0.12
