"""DiT checkpoints written by an independent LightX2V-layout writer load into WanTransformer3DModel."""
import json

import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import write_safetensors
from engine.linear import QuantLinear
from tests.dit_helpers import rel_err, run, tiny_model, wan_state_dict
from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected

# Whole-model relative error of the bf16 run against the float32 model, about 1.5x the error measured
# on CPU (torch 2.13, this file's seeds; write each format with tests/lightx2v_writer.py, load_dit, run(), rel_err): int8
# 0.0077, fp8 0.0266, fp8_block128 0.0294, mxfp8 0.0289, nvfp4 0.111 (bf16 alone: 0.0064). Measured
# breakages they must fail: k/v swapped 0.055-0.062 (nvfp4 0.119), ffn.2 zeroed 0.062-0.068 (nvfp4
# 0.119), biases of quantized layers dropped 0.21. NVFP4's own error hides the first two at model
# level; test_checkpoint_exact.py catches them per layer.
BOUNDS = {"int8": 0.012, "fp8": 0.04, "fp8_block128": 0.044, "mxfp8": 0.044, "nvfp4": 0.166}


@pytest.fixture(scope="module")
def model_and_ref():
    m = tiny_model()
    return m, run(m)


@pytest.mark.parametrize("fmt", list(BOUNDS))
def test_single_file_each_format(tmp_path, model_and_ref, fmt):
    m, ref = model_and_ref
    path = tmp_path / f"wan_{fmt}.safetensors"
    write_safetensors(path, quantize_state_dict(wan_state_dict(m), fmt, wan_dit_selected))
    loaded, report = load_dit(path, m.config)
    assert report.formats == {fmt: 24} and report.naming == "Wan/LightX2V"
    assert isinstance(loaded.blocks[0].attn1.to_q, QuantLinear)
    assert loaded.blocks[0].attn1.to_q.weight.device.type == "cpu"
    assert loaded.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # kept in fp32
    assert rel_err(run(loaded, torch.bfloat16), ref) < BOUNDS[fmt]


def _write_index(folder, files):
    weight_map = {k: name for name, tensors in files.items() for k in tensors}
    for name, tensors in files.items():
        write_safetensors(folder / name, tensors)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_save_by_block_and_chunked_layouts(tmp_path, model_and_ref):
    m, ref = model_and_ref
    sd = quantize_state_dict(wan_state_dict(m), "int8", wan_dit_selected)
    by_block = {}
    for k, v in sd.items():
        name = f"block_{k.split('.')[1]}.safetensors" if k.startswith("blocks.") else "non_block.safetensors"
        by_block.setdefault(name, {})[k] = v
    (tmp_path / "blocks").mkdir()
    _write_index(tmp_path / "blocks", by_block)
    keys = list(sd)
    parts = {f"m_part{i // 40}.safetensors": {k: sd[k] for k in keys[i:i + 40]} for i in range(0, len(keys), 40)}
    (tmp_path / "parts").mkdir()
    _write_index(tmp_path / "parts", parts)
    for folder, layout in (("blocks", "save_by_block"), ("parts", "sharded (index)")):
        loaded, report = load_dit(tmp_path / folder, m.config)
        assert report.layout == layout and report.formats["int8"] == 24
        assert rel_err(run(loaded, torch.bfloat16), ref) < BOUNDS["int8"]


def test_diffusers_names_and_comfyui_scaled_fp8(tmp_path, model_and_ref):
    m, ref = model_and_ref
    diff = {}
    for k, v in m.state_dict().items():
        if k.endswith(".weight") and v.dim() == 2 and k.startswith("blocks."):
            scale = v.abs().max() / 448.0  # ComfyUI: one scalar scale per tensor
            diff["model.diffusion_model." + k] = (v / scale).to(torch.float8_e4m3fn)
            diff["model.diffusion_model." + k[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            diff["model.diffusion_model." + k] = v.to(torch.bfloat16)
    diff["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    path = tmp_path / "wan_scaled_fp8_e4m3_comfyui.safetensors"
    write_safetensors(path, diff)
    loaded, report = load_dit(path, m.config)
    assert report.naming == "diffusers" and report.formats == {"fp8": 24}
    assert any("ComfyUI" in n for n in report.notes)
    assert rel_err(run(loaded, torch.bfloat16), ref) < 0.044  # measured 0.0294 (k/v swapped: 0.061)


def test_plain_fp8_and_inferred_config(tmp_path):
    from diffusers import WanTransformer3DModel
    torch.manual_seed(3)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16,
                              out_channels=16, text_dim=32, freq_dim=32, ffn_dim=256, num_layers=2,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    sd = {k: (v.to(torch.float8_e4m3fn) if wan_dit_selected(k) and v.dim() == 2 else v)
          for k, v in wan_state_dict(m).items()}
    path = tmp_path / "plain_fp8.safetensors"
    write_safetensors(path, sd)
    loaded, report = load_dit(path)  # no config: read from the tensor shapes
    assert loaded.config.num_layers == 2 and loaded.config.ffn_dim == 256 and loaded.config.image_dim is None
    assert report.formats == {"fp8": 20}  # 2 blocks x (4 self + 4 cross + 2 ffn)
    assert torch.equal(loaded.blocks[0].attn1.to_q.weight_scale, torch.ones(128, 1))


def test_nvfp4_static_activation_scale_from_calib_beside(tmp_path, model_and_ref):
    m, ref = model_and_ref
    sd = quantize_state_dict(wan_state_dict(m), "nvfp4", wan_dit_selected)
    write_safetensors(tmp_path / "wan_nvfp4.safetensors", sd)
    absmax = {k: torch.tensor(4.0) for k in sd if k.endswith(".weight") and wan_dit_selected(k)}
    torch.save({"absmax": absmax}, tmp_path / "calib.pt")
    loaded, report = load_dit(tmp_path / "wan_nvfp4.safetensors", m.config)
    q = loaded.blocks[1].ffn.net[2]
    assert float(q.input_global_scale) == pytest.approx(6 * 448 / 4.0)
    assert any("calibration" in n for n in report.notes)


def test_config_scheme_must_match_the_file(tmp_path, model_and_ref):
    from engine.errors import CheckpointError
    m, _ = model_and_ref
    path = tmp_path / "int8.safetensors"
    write_safetensors(path, quantize_state_dict(wan_state_dict(m), "int8", wan_dit_selected))
    with pytest.raises(CheckpointError, match="asked for .* is fp8 but this layer holds int8"):
        load_dit(path, m.config, scheme="fp8")


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8", "fp8_block128"])
def test_swizzled_scales_of_real_sized_layers(fmt):
    """Rows % 128 == 0 and blocks % 4 == 0 (every real Wan layer): the swizzled scale has the plain
    shape, and must still be unswizzled. 256x512 spans several tiles both ways (and a 2x4 grid of
    128-blocks for fp8_block128, whose scale must not be read transposed)."""
    from engine.checkpoint.formats import decode_layer
    from engine.formats import Quantized, get_format
    from tests.lightx2v_writer import PLAIN_WRITERS, WRITERS

    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 256)[:, None]
    w[:, 128:256] *= 4  # 128-blocks of different scales along K too
    buffers = decode_layer(fmt, WRITERS[fmt](w), 256, 512, "mem")
    plain = PLAIN_WRITERS[fmt](w)["weight_scale"]
    assert torch.equal(buffers["weight_scale"].contiguous().view(torch.uint8), plain.contiguous().view(torch.uint8))
    f = get_format(fmt)
    back = f.dequantize_weight(Quantized(buffers["weight"], buffers["weight_scale"],
                                         buffers.get("weight_global_scale"), cols=512))
    assert rel_err(back, w) < (0.15 if fmt == "nvfp4" else 0.05)
