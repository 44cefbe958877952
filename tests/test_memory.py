"""engine.memory: weights counted against the real modules, peaks against the measured H200 runs,
the plan per GPU class and size, the sentences, the config keys, and VAE tiling on a loaded model."""
import pytest
import torch

from engine import memory
from engine.apply import quantize_model
from engine.builder import build_tiny
from engine.config import load_config
from engine.errors import ConfigError
from engine.presets import load_preset
from engine.memory import ARCHS, GIB, Arch, Formats, Placement, estimate
from engine.request import VideoRequest

A14, A13 = ARCHS[14], ARCHS[1.3]
FP8_INT8_T5 = Formats("fp8", "int8", "int8")


def _meta_bytes(module, bytes_per=2):
    return bytes_per * sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch, kwargs", [(A14, dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)),
                                          (A13, dict(num_attention_heads=12, ffn_dim=8960, num_layers=30))])
def test_bf16_transformer_bytes_match_diffusers_model(arch, kwargs):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**kwargs)
    counted = memory.dit_bytes(arch, None)
    assert counted == pytest.approx(_meta_bytes(model), rel=0.01)


def test_text_encoder_and_vae_bytes_match_the_real_configs():
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        t5 = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, feed_forward_proj="gated-gelu"))
        vae = AutoencoderKLWan()
    assert memory.t5_bytes(None) == pytest.approx(_meta_bytes(t5), rel=0.01)
    assert memory.VAE_BYTES == _meta_bytes(vae, 4)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "nvfp4", "mxfp8"])
def test_quantized_block_bytes_match_a_quantized_block(fmt):
    """One Wan block quantized by engine.apply: stored bytes equal the count (bf16 biases, fp32 norms)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=1,
                                  text_dim=32, freq_dim=32).to(torch.bfloat16)
    for name, mod in model.named_modules():
        if set(name.split(".")) & {"scale_shift_table", "norm1", "norm2", "norm3", "norm_q", "norm_k"}:
            mod.float()
    model.blocks[0].scale_shift_table.data = model.blocks[0].scale_shift_table.data.float()
    quantize_model(model, fmt)
    block = model.blocks[0]
    stored = sum(t.numel() * t.element_size() for t in list(block.parameters()) + list(block.buffers()))
    assert memory.dit_block_bytes(Arch(1, 128, 256), fmt) == pytest.approx(stored, rel=0.005)


def test_token_counts_match_reference():
    assert memory.tokens(480, 832, 81) == 32760
    assert memory.tokens(720, 1280, 81) == 75600


@pytest.mark.parametrize("arch, formats, place, measured", [
    (A14, Formats("fp8", "fp8", "fp8"), Placement(), 29.1),
    (A14, Formats(None, None, None, fused=False), Placement(), 46.6),
    (A14, FP8_INT8_T5, Placement("model", "model"), 17.8),
    (A14, FP8_INT8_T5, Placement("leaf", "stream", True), 7.9),
    (A13, FP8_INT8_T5, Placement("model", "model", True), 6.6),
])
def test_predicted_peaks_match_measured_h200_runs(arch, formats, place, measured):
    """REFERENCE.md section 6 (480x832, 81 frames): the runs the calibration was fitted to (the measured
    sequential offload is modelled as layer-level streaming with the VAE on the GPU)."""
    est = estimate(arch, formats, place, 480, 832, 81)
    assert est.peak / GIB == pytest.approx(measured, rel=0.03)


def test_measured_out_of_memory_runs_are_predicted_not_to_fit():
    no_offload = estimate(A14, FP8_INT8_T5, Placement(), 480, 832, 81, budget=24 * GIB)
    assert no_offload.need > 24 * GIB
    untiled = estimate(A14, FP8_INT8_T5, Placement("leaf", "stream", False), 480, 832, 81)
    assert untiled.need > 12 * GIB and untiled.dominant == "decode"
    model_offload_13b = estimate(A13, FP8_INT8_T5, Placement("model", "model", False), 480, 832, 81)
    assert model_offload_13b.need > 8 * GIB and model_offload_13b.dominant == "decode"


def test_tiling_halves_the_decode_and_is_decided_by_the_budget():
    whole = memory.decode_transient(480, 832, 81, tiled=False)
    tiles = memory.decode_transient(480, 832, 81, tiled=True)
    assert tiles < whole / 2
    assert memory.decode_transient(240, 240, 81, True) == memory.decode_transient(240, 240, 81, False)  # one tile
    place = Placement("block", "stream", None)
    assert not estimate(A14, FP8_INT8_T5, place, 480, 832, 81, budget=16 * GIB).tiled
    assert estimate(A14, FP8_INT8_T5, place, 480, 832, 81, budget=12 * GIB).tiled
    assert estimate(A14, FP8_INT8_T5, place, 480, 832, 81, budget=10 * GIB).grid.tiles > 1


def test_streaming_keeps_two_blocks_not_the_transformer():
    resident = estimate(A14, FP8_INT8_T5, Placement("gpu", "stream", True), 480, 832, 81)
    streamed = estimate(A14, FP8_INT8_T5, Placement("block", "stream", True), 480, 832, 81)
    saved = resident.phases["denoise"] - streamed.phases["denoise"]
    assert saved == pytest.approx(memory.dit_bytes(A14, "fp8") - memory.dit_rest_bytes(A14)
                                  - 2 * memory.dit_block_bytes(A14, "fp8"), rel=1e-6)


def test_activations_grow_with_tokens_and_720p_costs_more():
    small = memory.dit_transient(A14, memory.tokens(480, 832, 81), fused=True)
    large = memory.dit_transient(A14, memory.tokens(720, 1280, 81), fused=True)
    assert large == pytest.approx(small * 75600 / 32760, rel=1e-3)
    assert memory.dit_transient(A14, 32760, fused=False) > small  # diffusers' forward keeps fp32 copies


def test_placement_from_lightx2v_keys():
    assert memory.placement_from_config({}) == Placement("gpu", "gpu", None)
    assert memory.placement_from_config({"t5_cpu_offload": True}) == Placement("gpu", "stream", None)
    assert memory.placement_from_config({"cpu_offload": True}) == Placement("model", "model", None)
    assert memory.placement_from_config({"cpu_offload": True, "offload_granularity": "block"}) == \
        Placement("block", "stream", None)
    assert memory.placement_from_config({"cpu_offload": True, "offload_granularity": "phase",
                                         "t5_cpu_offload": False, "use_tiling_vae": True}) == \
        Placement("leaf", "gpu", True)
    with pytest.raises(ConfigError, match="offload_granularity.*block, phase, model"):
        memory.placement_from_config({"cpu_offload": True, "offload_granularity": "layer"})
    with pytest.raises(ConfigError, match="use_tiling_vae` must be true or false"):
        memory.placement_from_config({"use_tiling_vae": "yes"})


def test_plan_sentence_and_refusal_name_what_and_why():
    est = estimate(A14, FP8_INT8_T5, Placement("block", "stream", True), 480, 832, 81, budget=10 * GIB)
    text = memory.describe(est, 10 * GIB, "Wan 14B")
    assert text.startswith("The transformer is streamed to the GPU block by block with prefetch")
    assert "text encoder is streamed" in text and "decodes in tiles (" in text and "10.0 GiB" in text
    big = estimate(A14, FP8_INT8_T5, Placement("block", "stream", True), 720, 1280, 81, budget=8 * GIB)
    refusal = memory.refusal(720, 1280, 81, big, 8 * GIB, "vram12-fp8")
    assert "1280x720, 81 frames" in refusal and "8.0 GiB" in refusal and "vram12-fp8" in refusal
    assert "transformer's activations" in refusal and "Lower the resolution" in refusal


@pytest.mark.parametrize("key, tiled", [(True, True), (False, False), (None, False)])
def test_prepare_decode_sets_vae_tiling_from_use_tiling_vae(key, tiled):
    raw = load_preset("cpu-demo")
    if key is not None:
        raw["use_tiling_vae"] = key
    loaded = build_tiny("t2v", load_config(raw))
    loaded.pipe.vae.use_tiling = not tiled
    assert memory.prepare_decode(loaded, VideoRequest("a fox", height=32, width=32, num_frames=9)) is None  # CPU
    assert loaded.pipe.vae.use_tiling is tiled


def test_estimate_of_a_loaded_model_reads_its_transformer():
    loaded = build_tiny("t2v", load_config(load_preset("cpu-demo")))
    arch = memory.arch_of_pipe(loaded.pipe)
    assert (arch.layers, arch.dim, arch.ffn) == (2, 64, 128)
    est = memory.estimate_loaded(loaded, 32, 32, 9)
    assert est.weights["transformer"] == memory.dit_bytes(arch, "int8")
