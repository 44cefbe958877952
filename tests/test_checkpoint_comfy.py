"""ComfyUI comfy_quant files (independent writer) load into WanTransformer3DModel; the converter writes them."""
import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import SafeTensorsFile, write_safetensors
from engine.convert import main
from engine.errors import CheckpointError
from engine.formats import Quantized, get_format
from tests.comfy_writer import comfy_state_dict, conf
from tests.dit_helpers import rel_err, run, tiny_model, wan_state_dict
from tests.lightx2v_writer import wan_dit_selected

CASES = {"float8_e4m3fn": ("fp8", 0.08), "int8_tensorwise": ("int8", 0.05), "nvfp4": ("nvfp4", 0.35),
         "mxfp8": ("mxfp8", 0.08)}


@pytest.fixture(scope="module")
def model_and_ref():
    m = tiny_model()
    return m, run(m)


@pytest.mark.parametrize("comfy_fmt", list(CASES))
def test_comfy_quant_each_format(tmp_path, model_and_ref, comfy_fmt):
    m, ref = model_and_ref
    fmt, bound = CASES[comfy_fmt]
    path = tmp_path / f"wan_{comfy_fmt}.safetensors"
    write_safetensors(path, comfy_state_dict(wan_state_dict(m), comfy_fmt, wan_dit_selected))
    loaded, report = load_dit(path, m.config)
    assert report.formats == {fmt: 24} and report.naming == "Wan/LightX2V"
    assert any(f"24 {comfy_fmt}" in n for n in report.notes)
    assert rel_err(run(loaded, torch.bfloat16), ref) < bound


def test_comfy_nvfp4_nibbles_scales_and_input_scale(tmp_path, model_and_ref):
    m, _ = model_and_ref
    sd = wan_state_dict(m)
    path = tmp_path / "nv.safetensors"
    write_safetensors(path, comfy_state_dict(sd, "nvfp4", wan_dit_selected, input_absmax=5.0))
    loaded, _ = load_dit(path, m.config, dtype=torch.float32)
    q = loaded.blocks[0].attn1.to_q
    assert float(q.input_global_scale) == pytest.approx(6 * 448 / 5.0, rel=1e-5)
    w = sd["blocks.0.self_attn.q.weight"]
    back = get_format("nvfp4").dequantize_weight(q.quantized_weight())
    assert rel_err(back, w) < 0.15  # a nibble or tile-order mistake gives ~1.0


def test_converter_writes_comfy_quant(tmp_path, model_and_ref):
    m, ref = model_and_ref
    write_safetensors(tmp_path / "wan.safetensors", wan_state_dict(m))
    torch.save({"absmax": {"blocks.0.ffn.0.weight": torch.tensor(4.0)}}, tmp_path / "calib.pt")
    for fmt, bound, extra in (("nvfp4", 0.35, []), ("mxfp8", 0.08, []), ("fp8", 0.08, ["--comfy_quant"])):
        out = tmp_path / fmt
        assert main(["-s", str(tmp_path / "wan.safetensors"), "-o", str(out), "--quantized", "--linear_type", fmt,
                     "--comfyui_mode", "--single_file", "--calib", str(tmp_path / "calib.pt")] + extra) == 0
        st = SafeTensorsFile(out / "converted.safetensors")
        assert st.dtype("blocks.0.ffn.0.comfy_quant") == torch.uint8 and "scaled_fp8" not in st
        if fmt == "nvfp4":
            assert st.shape("blocks.0.ffn.0.weight_scale_2") == () and st.shape("blocks.0.ffn.0.input_scale") == ()
            assert "blocks.0.ffn.2.input_scale" not in st
        loaded, report = load_dit(out / "converted.safetensors", m.config)
        assert report.formats == {fmt: 24}
        assert rel_err(run(loaded, torch.bfloat16), ref) < bound


def test_unsupported_and_corrupt_comfy_quant_are_named(tmp_path, model_and_ref):
    m, _ = model_and_ref
    sd = comfy_state_dict(wan_state_dict(m), "int8_tensorwise", wan_dit_selected)
    key = "model.diffusion_model.blocks.1.ffn.2.comfy_quant"
    for value, message in ((conf("int8_tensorwise", convrot=True), "int8_tensorwise with convrot"),
                           (conf("awq_w4a16"), "'awq_w4a16' has no equivalent"),
                           (torch.tensor([123, 34], dtype=torch.uint8), "not UTF-8 JSON")):
        sd[key] = value
        write_safetensors(tmp_path / "bad.safetensors", sd)
        with pytest.raises(CheckpointError, match=message) as e:
            load_dit(tmp_path / "bad.safetensors", m.config)
        assert "blocks.1.ffn.net.2" in str(e.value) and "bad.safetensors" in str(e.value)


def test_nvfp4_and_mxfp8_tile_order_with_many_tiles():
    """256x512: 2x8 tiles of nvfp4 scales (2x4 of mxfp8), so row-major vs column-major tile order shows."""
    from engine.checkpoint.comfy import from_comfy_quant
    from engine.checkpoint.formats import decode_layer
    from tests import comfy_writer

    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 256)[:, None]
    for comfy_fmt, fmt, bound in (("nvfp4", "nvfp4", 0.15), ("mxfp8", "mxfp8", 0.05)):
        tensors = {f"l.{s}": v for s, v in getattr(comfy_writer, comfy_fmt)(w).items()}
        from_comfy_quant(tensors, "mem")
        buffers = decode_layer(fmt, {k[2:]: v for k, v in tensors.items()}, 256, 512, "mem")
        back = get_format(fmt).dequantize_weight(Quantized(buffers["weight"], buffers["weight_scale"],
                                                           buffers.get("weight_global_scale"), cols=512))
        assert rel_err(back, w) < bound
