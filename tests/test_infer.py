"""`python -m engine.infer`: an mp4 with the requested frames and size from a diffusers-format folder,
with the DiT quantized on load or read from a LightX2V-format quantized file."""
import json
import os
import subprocess
import sys

import pytest
import torch

from engine import infer
from tests.conftest import ROOT


def read_mp4(path):
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="ffmpeg") as reader:
        return reader.count_frames(), reader.get_data(0).shape


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {task: infer.save_tiny(root / task, task) for task in ("t2v", "i2v")}


def write_config(path, **keys):
    base = {"infer_steps": 2, "target_video_length": 9, "target_height": 48, "target_width": 32,
            "sample_guide_scale": 1.0, "sample_shift": 5.0, "fps": 8}
    path.write_text(json.dumps({**base, **keys}))
    return path


def test_command_line_t2v_quantized_on_load(tiny_dirs, tmp_path):
    cfg = write_config(tmp_path / "cfg.json", mm_config={"mm_type": "W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm"},
                       t5_quantized=True, t5_quant_scheme="int8")
    out = tmp_path / "out" / "t2v.mp4"
    cmd = [sys.executable, "-m", "engine.infer", "--model_cls", "wan2.1", "--task", "t2v",
           "--model_path", str(tiny_dirs["t2v"]), "--config_json", str(cfg), "--prompt", "a red fox",
           "--negative_prompt", "blurry", "--seed", "7", "--save_result_path", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2" in done.stdout and "transformer: int8" in done.stdout
    assert read_mp4(out) == (9, (48, 32, 3))


def lightx2v_int8_dit(transformer, path):
    """A LightX2V-format file (Wan key names, int8 weights with [N,1] fp32 scales) of a diffusers DiT,
    named from the hand-written table and quantized by the tests' own writer: no engine code."""
    from safetensors.torch import save_file

    from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected
    from tests.wan_names import diffusers_to_wan_table

    names = diffusers_to_wan_table(len(transformer.blocks), i2v=transformer.config.image_dim is not None)
    wan = {names[k]: v.float() for k, v in transformer.state_dict().items()}
    save_file({k: v.contiguous() for k, v in quantize_state_dict(wan, "int8", wan_dit_selected).items()}, str(path))
    return path


def test_i2v_with_lightx2v_quantized_dit(tiny_dirs, tmp_path, capsys):
    from diffusers import WanTransformer3DModel
    from PIL import Image

    dit = WanTransformer3DModel.from_pretrained(tiny_dirs["i2v"], subfolder="transformer")
    ckpt = lightx2v_int8_dit(dit, tmp_path / "wan_i2v_int8_lightx2v.safetensors")
    cfg = write_config(tmp_path / "cfg.json", dit_quantized=True, dit_quant_scheme="int8-vllm",
                       dit_quantized_ckpt=str(ckpt), clip_quantized=True, clip_quant_scheme="int8")
    Image.new("RGB", (40, 60), (200, 30, 30)).save(tmp_path / "in.png")
    out = tmp_path / "i2v.mp4"
    code = infer.main(["--model_cls", "wan2.1", "--task", "i2v", "--model_path", str(tiny_dirs["i2v"]),
                       "--config_json", str(cfg), "--prompt", "a red square", "--image_path",
                       str(tmp_path / "in.png"), "--save_result_path", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "transformer: DiT from" in printed and "int8" in printed  # read from the file, not re-quantized
    assert "image_encoder: int8" in printed
    assert read_mp4(out) == (9, (48, 32, 3))


def test_wrong_model_class_and_bad_request(tiny_dirs, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json")
    args = ["--task", "t2v", "--model_path", str(tiny_dirs["t2v"]), "--config_json", str(cfg), "--prompt", "x",
            "--save_result_path", str(tmp_path / "o.mp4")]
    assert infer.main(["--model_cls", "wan2.2_moe", *args]) == 2
    assert "expects 2 transformer(s)" in capsys.readouterr().err
    write_config(cfg, target_video_length=10)
    assert infer.main(args) == 2
    assert "not 4k+1" in capsys.readouterr().err
    assert infer.main(["--model_path", str(tmp_path), "--config_json", str(cfg), "--prompt", "x"]) == 2
    assert "not a diffusers-format model folder" in capsys.readouterr().err


def test_t5_from_a_lightx2v_int8_file(tiny_dirs, tmp_path, capsys):
    from transformers import UMT5EncoderModel

    from engine.checkpoint.keymaps import t5_from_hf
    from tests.lightx2v_writer import quantize_state_dict

    hf = UMT5EncoderModel.from_pretrained(tiny_dirs["t2v"], subfolder="text_encoder").state_dict()
    wan = {t5_from_hf(k): v for k, v in hf.items() if t5_from_hf(k)}
    quantized = quantize_state_dict(wan, "int8", lambda k: ".attn." in k or ".ffn." in k)
    torch.save(quantized, tmp_path / "models_t5_umt5-xxl-enc-int8.pth")
    cfg = write_config(tmp_path / "cfg.json", t5_quantized=True, t5_quant_scheme="int8",
                       t5_quantized_ckpt=str(tmp_path / "models_t5_umt5-xxl-enc-int8.pth"))
    out = tmp_path / "t5.mp4"
    assert infer.main(["--model_path", str(tiny_dirs["t2v"]), "--config_json", str(cfg), "--prompt", "waves",
                       "--save_result_path", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text_encoder:" in printed and "models_t5_umt5-xxl-enc-int8.pth" in printed
    assert read_mp4(out) == (9, (48, 32, 3))


def test_a_distill_config_uses_the_distilled_sampler(tiny_dirs, tmp_path, capsys, monkeypatch):
    from engine import generate as gen
    from engine.schedulers import DistillEulerScheduler

    used = []
    real = gen._run
    monkeypatch.setattr(gen, "_run", lambda model, *a: used.append(model.pipe.scheduler) or real(model, *a))
    cfg = write_config(tmp_path / "cfg.json", infer_steps=2, denoising_step_list=[1000, 500])
    out = tmp_path / "distill.mp4"
    assert infer.main(["--model_path", str(tiny_dirs["t2v"]), "--config_json", str(cfg), "--prompt", "waves",
                       "--save_result_path", str(out)]) == 0
    assert "sampler: distilled Euler" in capsys.readouterr().out
    assert isinstance(used[0], DistillEulerScheduler) and list(used[0].config.denoising_step_list) == [1000, 500]
    assert read_mp4(out) == (9, (48, 32, 3))
