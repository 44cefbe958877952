"""python -m engine.convert: LightX2V keys/dtypes/layouts out, loadable back, LoRA merged first."""
import json

import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import SafeTensorsFile, write_safetensors
from engine.checkpoint.sources import TensorSource
from engine.convert import main
from engine.checkpoint.encoders import load_t5
from tests.dit_helpers import rel_err, run, tiny_model, wan_state_dict


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    m = tiny_model()
    d = tmp_path_factory.mktemp("src")
    m.save_pretrained(d)
    return m, run(m), d


@pytest.mark.parametrize("fmt,bound", [("int8", 0.03), ("fp8-block128", 0.08), ("mxfp8", 0.08)])
def test_convert_diffusers_to_lightx2v_by_block_and_load(tmp_path, diffusers_dir, fmt, bound):
    m, ref, src = diffusers_dir
    out = tmp_path / "out"
    assert main(["-s", str(src), "-o", str(out), "-d", "backward", "--quantized", "--linear_type", fmt,
                 "--non_linear_dtype", "torch.bfloat16", "--save_by_block", "--copy_no_weight_files"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["block_0.safetensors", "block_1.safetensors", "config.json",
                     "diffusion_pytorch_model.safetensors.index.json", "non_block.safetensors"]
    st = SafeTensorsFile(out / "block_0.safetensors")
    assert "blocks.0.self_attn.q.weight_scale" in st and "blocks.0.norm3.weight" in st  # LightX2V names
    assert st.metadata["format"] == fmt.replace("-", "_") and st.metadata["layout"] == "save_by_block"
    loaded, report = load_dit(out)  # config comes from the header metadata
    assert report.formats[fmt.replace("-", "_")] == 24
    assert rel_err(run(loaded, torch.bfloat16), ref) < bound


def test_names_round_trip_diffusers_lightx2v_diffusers(tmp_path, diffusers_dir):
    m, _, src = diffusers_dir
    main(["-s", str(src), "-o", str(tmp_path / "wan"), "-d", "backward", "--single_file", "-o_n", "wan"])
    main(["-s", str(tmp_path / "wan" / "wan.safetensors"), "-o", str(tmp_path / "back"), "-d", "forward", "-c", "30"])
    back = TensorSource(tmp_path / "back")
    assert back.layout == "sharded (index)" and len(back.files) == -(-len(m.state_dict()) // 30)
    assert sorted(back.keys()) == sorted(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(back.get(k), v)


def test_lora_is_merged_before_quantization(tmp_path):
    m = tiny_model()
    sd = wan_state_dict(m)
    write_safetensors(tmp_path / "wan.safetensors", sd)
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    write_safetensors(tmp_path / "lora.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)})
    main(["-s", str(tmp_path / "wan.safetensors"), "-o", str(tmp_path / "out"), "--single_file",
          "--lora_path", str(tmp_path / "lora.safetensors"), "--lora_strength", "0.5"])
    merged = SafeTensorsFile(tmp_path / "out" / "converted.safetensors").get("blocks.0.self_attn.q.weight")
    want = sd["blocks.0.self_attn.q.weight"] + 0.5 * (2.0 / 4) * up @ down
    torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-5)


def test_comfyui_mode_and_nvfp4_calibration(tmp_path, diffusers_dir):
    m, ref, src = diffusers_dir
    main(["-s", str(src), "-o", str(tmp_path / "c"), "-d", "backward", "--quantized", "--linear_type", "fp8",
          "--comfyui_mode", "--single_file"])
    st = SafeTensorsFile(tmp_path / "c" / "converted.safetensors")
    assert "scaled_fp8" in st and st.shape("blocks.0.ffn.0.scale_weight") == ()
    loaded, _ = load_dit(tmp_path / "c" / "converted.safetensors")
    assert rel_err(run(loaded, torch.bfloat16), ref) < 0.1
    torch.save({"absmax": {"blocks.0.ffn.2.weight": torch.tensor(3.0)}}, tmp_path / "calib.pt")
    main(["-s", str(src), "-o", str(tmp_path / "n"), "-d", "backward", "--quantized", "--linear_type", "nvfp4",
          "--single_file", "--calib", str(tmp_path / "calib.pt")])
    st = SafeTensorsFile(tmp_path / "n" / "converted.safetensors")
    assert st.dtype("blocks.0.ffn.2.weight") == torch.uint8 and st.shape("blocks.0.ffn.2.weight_scale") == (128, 8)
    assert "blocks.0.ffn.2.alpha" in st and "blocks.0.ffn.0.alpha" not in st
    loaded, _ = load_dit(tmp_path / "n" / "converted.safetensors")
    assert float(loaded.blocks[0].ffn.net[2].input_global_scale) == pytest.approx(6 * 448 / 3.0)


def test_t5_pth_with_old_linear_dtype_option(tmp_path):
    from tests.test_encoders_load import wan_t5_weights
    torch.save(wan_t5_weights(torch.Generator().manual_seed(0)), tmp_path / "t5.pth")
    assert main(["-s", str(tmp_path / "t5.pth"), "-o", str(tmp_path / "o"), "-t", "wan_t5", "--quantized",
                 "--linear_dtype", "torch.float8_e4m3fn", "-o_e", ".pth", "-o_n", "models_t5_umt5-xxl-enc-fp8"]) == 0
    model, report = load_t5(tmp_path / "o" / "models_t5_umt5-xxl-enc-fp8.pth")
    assert report.formats == {"fp8": 14}


def test_index_lists_every_tensor(tmp_path, diffusers_dir):
    _, _, src = diffusers_dir
    main(["-s", str(src), "-o", str(tmp_path / "o"), "-d", "backward", "--quantized", "--linear_type", "int8", "-c", "50"])
    index = json.loads((tmp_path / "o" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["metadata"]["format"] == "int8" and index["metadata"]["total_size"] > 0
    assert len(index["weight_map"]) == len(TensorSource(tmp_path / "o").keys())
    assert not list((tmp_path / "o").glob(".*partial*"))  # nothing half-written left behind
