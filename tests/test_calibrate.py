"""NVFP4 calibration: prompts through the tiny pipeline -> calib.pt -> converter -> load_dit."""
import pytest
import torch

from engine.calibrate import calibrate_pipeline, write_calib
from engine.checkpoint.dit import load_dit
from engine.convert import main
from engine.errors import EngineError
from engine.linear import QuantLinear
from engine.tiny import build_tiny_pipeline, tiny_transformer

SIZE = dict(height=32, width=32, num_frames=5)


def _latents(pipe, prompt="a red fox"):
    return pipe(prompt=prompt, num_inference_steps=1, output_type="latent", max_sequence_length=64,
                generator=torch.Generator().manual_seed(7), **SIZE).frames.float()


def test_calibrate_convert_nvfp4_and_load(tmp_path):
    pipe = build_tiny_pipeline("t2v")  # the same weights `--calibrate_model_path tiny` builds
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["-s", str(tmp_path / "src"), "-o", str(out), "-d", "backward", "--quantized", "--linear_type",
                 "nvfp4", "--single_file", "--calibrate_prompts", "a cat", "a dog", "--calibrate_model_path", "tiny",
                 "--calibrate_steps", "1", "--calibrate_size", "32", "32", "5"]) == 0
    calib = torch.load(out / "calib.pt", weights_only=True)["absmax"]
    assert len(calib) == 20 and "blocks.1.ffn.2.weight" in calib  # 2 blocks x (4 self + 4 cross + 2 ffn), Wan names
    assert all(float(v) > 0 for v in calib.values())
    assert not list(out.glob(".*partial*"))

    ref = _latents(pipe)
    loaded, report = load_dit(out / "converted.safetensors", dtype=torch.float32)
    assert report.formats == {"nvfp4": 20}
    q = loaded.blocks[1].ffn.net[2]
    assert isinstance(q, QuantLinear)
    assert float(q.input_global_scale) == pytest.approx(6 * 448 / float(calib["blocks.1.ffn.2.weight"]), rel=1e-5)
    pipe.transformer = loaded
    got = _latents(pipe)
    # measured 0.060 on CPU (NVFP4 with calibrated static activation scales, one step); bound 1.5x
    assert float((got - ref).norm() / ref.norm()) < 0.09


def test_wan22_both_transformers_are_calibrated(tmp_path):
    from diffusers import WanPipeline

    base = build_tiny_pipeline("t2v")
    torch.manual_seed(1)
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                       scheduler=base.scheduler, transformer=base.transformer,
                       transformer_2=tiny_transformer(), boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(EngineError, match="transformer_2 never ran"):
        calibrate_pipeline(pipe, ["a cat"], steps=1, max_sequence_length=64, **SIZE)
    tables = calibrate_pipeline(pipe, ["a cat"], steps=2, max_sequence_length=64, **SIZE)
    assert set(tables) == {"transformer", "transformer_2"}
    assert len(tables["transformer_2"]) == 20
    assert not pipe.transformer._forward_pre_hooks  # hooks are removed afterwards


def test_write_calib_is_atomic(tmp_path, monkeypatch):
    path = write_calib(tmp_path / "calib.pt", {"blocks.0.ffn.0.weight": torch.tensor(2.0)})

    def broken_save(obj, f, *a, **k):
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_calib(path, {"blocks.0.ffn.0.weight": torch.tensor(9.0)})
    assert float(torch.load(path, weights_only=True)["absmax"]["blocks.0.ffn.0.weight"]) == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["calib.pt"]


def test_calibration_options_are_checked(tmp_path, capsys):
    base = ["-s", str(tmp_path), "-o", str(tmp_path / "o"), "--quantized", "--calibrate_prompts", "a cat"]
    with pytest.raises(SystemExit):
        main(base + ["--linear_type", "nvfp4"])  # no --calibrate_model_path
    with pytest.raises(SystemExit):
        main(base + ["--linear_type", "int8", "--calibrate_model_path", "tiny"])
    assert "NVFP4" in capsys.readouterr().err
    with pytest.raises(EngineError, match="at least one prompt"):
        calibrate_pipeline(object(), [])


def test_calibration_table_is_the_running_max_of_every_call():
    """Independent forward pre-hooks, named from the hand-written key table, record max |x| of every
    call of every selected layer; the calibration must equal their running max exactly and must have
    seen every prompt and step."""
    from tests.lightx2v_writer import wan_dit_selected
    from tests.wan_names import diffusers_to_wan_table

    pipe = build_tiny_pipeline("t2v")
    pipe.set_progress_bar_config(disable=True)
    table = diffusers_to_wan_table(i2v=False)
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for diff, wan in table.items():
        module = pipe.transformer.get_submodule(diff.rpartition(".")[0])
        if diff.endswith(".weight") and isinstance(module, torch.nn.Linear) and wan_dit_selected(wan):
            calls = seen.setdefault(wan, [])
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, calls=calls: calls.append(args[0].detach().abs().max().float())))
    prompts, steps = ["a cat", "a red fox running in deep snow at dusk"], 2
    try:
        tables = calibrate_pipeline(pipe, prompts, steps=steps, guidance_scale=1.0, max_sequence_length=64, **SIZE)
    finally:
        for h in handles:
            h.remove()
    got = tables["transformer"]
    assert sorted(got) == sorted(seen) and len(got) == 20
    for key, calls in seen.items():
        assert len(calls) == len(prompts) * steps, key  # one forward per step per prompt (no CFG)
        assert torch.equal(got[key].reshape(()), torch.stack(calls).max()), key
    # the test data can tell a running max from the last call's or the first prompt's
    assert any(float(c[-1]) < float(max(c)) for c in seen.values())
    assert any(float(max(c[steps:])) > float(max(c[:steps])) for c in seen.values())
