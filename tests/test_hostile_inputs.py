"""Hostile and careless .pth files, calib.pt, LoRAs, configs, model_index.json and command lines
(issue 11, classes 1, 2, 6): a typed error naming the file/key, or the correct result."""
import errno
import json
import logging
import random

import pytest
import torch

from engine.builder import _index
from engine.checkpoint.dit import read_calib
from engine.checkpoint.io import load_pth, write_safetensors
from engine.checkpoint.sources import TensorSource
from engine.cli import run_command
from engine.config import parse_config
from engine.config_keys import ENGINE_KEYS, LIGHTX2V_KEYS
from engine.errors import ConfigError, EngineError
from engine.lora import LoraSet
from tests.hostile_helpers import correct, expect_error, record


def test_pth_files_that_are_something_else(tmp_path):
    write_safetensors(tmp_path / "real.safetensors", {"a.weight": torch.ones(2, 2)})
    cases = {
        "st.pth": (tmp_path / "real.safetensors").read_bytes(),
        "text.pth": b"<html><body>404 Not Found</body></html>\n",
        "lfs.pth": b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n",
        "empty.pth": b"",
        "random.pth": bytes(random.Random(0).randrange(256) for _ in range(300)),
        "json.pt": b'{"weight": [1, 2, 3]}',
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        msg = expect_error("1-raw", lambda: TensorSource(path), str(path))
        assert "weights_only" not in msg


def test_pth_truncated_at_many_offsets(tmp_path):
    torch.save({"blocks.0.attn.q.weight": torch.randn(8, 8), "norm.weight": torch.ones(8)}, tmp_path / "full.pth")
    blob = (tmp_path / "full.pth").read_bytes()
    rng = random.Random(4)
    for n in sorted({1, 4, 30, len(blob) - 1} | {rng.randrange(len(blob)) for _ in range(30)}):
        path = tmp_path / f"cut{n}.pth"
        path.write_bytes(blob[:n])
        expect_error("1-raw", lambda: load_pth(path), str(path))


def test_pth_contents_that_are_not_a_state_dict(tmp_path):
    t = torch.ones(2, 2)
    cases = [{1: t}, {(1, 2): t}, {"w": t.to_sparse()}, {"w": torch.empty(2, 2, device="meta")},
             [t, t], t, 5, "weights", {"a": 1, "b": "x"}, {}, {"state_dict": {3: t}}, None]
    for i, obj in enumerate(cases):
        path = tmp_path / f"c{i}.pth"
        torch.save(obj, path)
        expect_error("1-raw", lambda: load_pth(path), str(path))
    path = tmp_path / "pickle.pth"
    torch.save({"w": t, "obj": argparse_namespace()}, path)
    msg = expect_error("1-raw", lambda: load_pth(path), str(path), match="argparse.Namespace")
    assert "weights_only" not in msg and "trust" not in msg


def argparse_namespace():
    import argparse
    return argparse.Namespace(a=1)


def test_pth_wrapped_state_dict_still_loads(tmp_path):
    t = torch.randn(3, 3)
    torch.save({"state_dict": {"w": t}, "epoch": 3}, tmp_path / "ok.pth")
    assert torch.equal(load_pth(tmp_path / "ok.pth")["w"], t)
    correct("1-raw")


def test_calib_of_the_wrong_shape_or_type(tmp_path):
    good = {"blocks.0.ffn.0.weight": torch.tensor(2.0)}
    cases = [[1, 2], torch.ones(3), "absmax", {"absmax": {1: torch.tensor(1.0)}},
             {"absmax": {"blocks.0.ffn.0.weight": "big"}}, {"absmax": {"blocks.0.ffn.0.weight": torch.tensor(float("nan"))}},
             {"absmax": {"blocks.0.ffn.0.weight": torch.tensor(0.0)}}, {"absmax": {"blocks.0.ffn.0.weight": torch.tensor(-3.0)}},
             {"absmax": {"blocks.0.ffn.0.weight": torch.empty(0)}}, {"absmax": {"blocks.0.ffn.0.weight": torch.tensor(True)}},
             {"absmax": {}}, {"absmax": {"x": torch.tensor(float("inf"))}}]
    for i, obj in enumerate(cases):
        path = tmp_path / f"calib{i}.pt"
        torch.save(obj, path)
        expect_error("1-raw", lambda: read_calib(path), str(path))
    torch.save({"absmax": good}, tmp_path / "calib.pt")
    assert float(read_calib(tmp_path / "calib.pt")["blocks.0.ffn.0.weight"]) == 2.0
    correct("1-raw")


def test_lora_shapes_that_do_not_match(tmp_path):
    rng = random.Random(5)
    weight = torch.randn(16, 32)
    for i in range(20):
        rank = rng.choice([2, 4])
        down = torch.randn(rng.choice([rank, rank + 1]), rng.choice([32, 31, 64]))
        up = torch.randn(rng.choice([16, 8, 17]), rng.choice([rank, rank + 2]))
        if down.shape == (rank, 32) and up.shape == (16, rank):
            down = torch.randn(rank, 33)
        path = tmp_path / f"l{i}.safetensors"
        write_safetensors(path, {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                                 "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up})
        lora = LoraSet([path])
        expect_error("1-raw", lambda: lora.apply("blocks.0.self_attn.q.weight", weight), "blocks.0.self_attn.q")


def test_lora_nan_or_bad_alpha(tmp_path):
    weight = torch.randn(16, 32)
    for i, (down, alpha) in enumerate([(torch.full((4, 32), float("nan")), None), (torch.randn(4, 32), torch.ones(3)),
                                       (torch.randn(4, 32), torch.tensor(float("inf"))),
                                       (torch.randn(4, 32) * 1e30, torch.tensor(1e30))]):
        t = {"blocks.0.self_attn.q.lora_down.weight": down, "blocks.0.self_attn.q.lora_up.weight": torch.randn(16, 4)}
        if alpha is not None:
            t["blocks.0.self_attn.q.alpha"] = alpha
        write_safetensors(tmp_path / f"n{i}.safetensors", t)
        lora = LoraSet([tmp_path / f"n{i}.safetensors"])
        expect_error("2-silent", lambda: lora.apply("blocks.0.self_attn.q.weight", weight), "blocks.0.self_attn.q")


def _typos(key, rng):
    i = rng.randrange(len(key))
    j = min(i + 1, len(key) - 1)
    return {key[:i] + key[i + 1:], key[:i] + key[j] + key[i] + key[j + 1:] if j > i else key + "s",
            key[:i] + key[i] + key[i:]} - {key}


def test_config_typos_warn_with_the_closest_key(caplog):
    rng = random.Random(6)
    for key in sorted(ENGINE_KEYS) + ["dit_quant_scheme", "t5_quantized_ckpt"]:
        for typo in _typos(key, rng):
            if typo in ENGINE_KEYS | LIGHTX2V_KEYS:
                continue
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="engine.config"):
                parse_config({typo: None}, "cfg.json")
            text = caplog.text
            assert f"`{typo}`" in text and "cfg.json" in text and "did you mean" in text, (typo, text)
            record("2-silent", "clear-warning")
    for typo, want in (("mm_confg", "mm_config"), ("dit_quant_shceme", "dit_quant_scheme"),
                       ("t5_quantised_ckpt", "t5_quantized_ckpt"), ("infer_step", "infer_steps")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.config"):
            parse_config({typo: "x"}, "cfg.json")
        assert f"did you mean `{want}`" in caplog.text
        record("2-silent", "clear-warning")


def test_lightx2v_keys_not_used_get_one_info_line(caplog):
    keys = sorted(k for k in LIGHTX2V_KEYS - ENGINE_KEYS if not k.startswith("_"))[:30]
    with caplog.at_level(logging.INFO, logger="engine.config"):
        parse_config({k: None for k in keys}, "cfg.json")
    lines = [r for r in caplog.records if "not used by this engine" in r.getMessage()]
    assert len(lines) == 1 and all(k in lines[0].getMessage() for k in keys)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    correct("2-silent")


def test_config_values_of_the_wrong_type_and_contradictions():
    bad = [("infer_steps", True), ("infer_steps", "4"), ("infer_steps", 2.5), ("target_video_length", [81]),
           ("sample_shift", "5"), ("sample_shift", float("nan")), ("enable_cfg", "false"), ("seed", None if False else "1"),
           ("denoising_step_list", "1000,750,500"), ("denoising_step_list", [1000, "750"]), ("denoising_step_list", []),
           ("denoising_step_list", [True, 500]), ("sample_guide_scale", [5]), ("sample_guide_scale", "5"),
           ("cpu_offload", 1), ("fused_wan", "yes"), ("offload_granularity", 3), ("high_noise_quantized_ckpt", 5)]
    for key, value in bad:
        expect_error("1-raw", lambda: parse_config({key: value}, "cfg.json"), "cfg.json", key, kind=ConfigError)
    contradictions = [
        {"dit_quantized": False, "mm_config": {"mm_type": "W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Vllm"}},
        {"dit_quantized": False, "dit_quantized_ckpt": "x.safetensors"},
        {"t5_quantized": False, "t5_quantized_ckpt": "t5.pth"},
        {"mm_config": {"mm_type": "W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm"}, "dit_quant_scheme": "fp8-sgl"},
        {"mm_config": "fp8"}, {"dit_quantized": "true"}, {"dit_quant_scheme": 8}]
    for cfg in contradictions:
        expect_error("2-silent", lambda: parse_config(cfg, "cfg.json"), "cfg.json", kind=ConfigError)
    cfg = parse_config({"infer_steps": 4, "sample_guide_scale": [4.0, 3.0], "denoising_step_list": [1000, 750, 500, 250],
                        "dit_quantized": True, "dit_quant_scheme": "fp8-sgl"}, "cfg.json")
    assert cfg.dit.scheme.format == "fp8"
    correct("1-raw")


def test_broken_model_index(tmp_path):
    for i, text in enumerate(["{", "[]", "5", '{"_class_name": 5}', '{"_class_name": "WanPipeline", "transformer": "x"}',
                              "[" * 100000, "\xff"]):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "model_index.json").write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff\xfe")
        expect_error("1-raw", lambda: _index(d), "model_index.json", kind=ConfigError)


@pytest.mark.parametrize("exc", [IndexError("list index out of range"), KeyError("weight"), AttributeError("x"),
                                 TypeError("bad"), RuntimeError("CUDA error"), RecursionError("deep"),
                                 UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), ValueError("v"),
                                 OSError(errno.ENOSPC, "No space left on device", "/out/x"),
                                 OSError(errno.EROFS, "Read-only file system", "/out/x"),
                                 PermissionError(errno.EACCES, "Permission denied", "/out/x"),
                                 EngineError("a clear sentence")])
def test_run_command_never_shows_a_traceback(exc, capsys):
    def work():
        raise exc
    code = run_command(work, debug=False)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    if isinstance(exc, OSError):
        assert "/out/x" in err and any(w in err for w in ("disk is full", "read-only", "permission denied"))
    record("1-raw", "clear-error")


def test_convert_cli_bad_device_is_a_sentence(tmp_path, capsys):
    from engine.convert import main
    write_safetensors(tmp_path / "s.safetensors", {"patch_embedding.weight": torch.ones(2, 2)})
    for device in ("cuda:99", "gpu", "cuda:x", "tpu") + (() if torch.cuda.is_available() else ("cuda",)):
        code = main(["-s", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "o"), "--device", device])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "--device" in err, err
        record("1-raw", "clear-error")
    assert not (tmp_path / "o").exists()


def test_config_and_model_index_that_are_not_regular_files(tmp_path):
    import os
    from engine.config import load_config
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink(tmp_path / "loop.json", tmp_path / "loop.json")
    (tmp_path / "dir.json").mkdir()
    for name, cause in (("fifo.json", "FIFO"), ("loop.json", "symlink loop"), ("dir.json", "folder"),
                        ("none.json", "does not exist")):
        expect_error("6-cause", lambda: load_config(tmp_path / name), name, cause, kind=ConfigError)
    d = tmp_path / "model"
    d.mkdir()
    os.mkfifo(d / "model_index.json")
    expect_error("6-cause", lambda: _index(d), "model_index.json", "FIFO", kind=ConfigError)


def test_a_static_activation_scale_beside_an_int8_layer_is_reported_not_dropped_silently(caplog):
    import torch

    from engine.checkpoint.formats import decode_layer

    t = {"weight": torch.ones(4, 8, dtype=torch.int8), "weight_scale": torch.ones(4, 1),
         "input_global_scale": torch.ones(1), "alpha": torch.ones(1)}
    with caplog.at_level("WARNING", logger="engine.checkpoint"):
        out = decode_layer("int8", t, 4, 8, "f.safetensors: blocks.0.ffn.0")
    assert set(out) == {"weight", "weight_scale"}
    assert any("alpha, input_global_scale not used" in r.getMessage() for r in caplog.records)


def test_decoder_files_go_through_the_hardened_readers(tmp_path):
    import os

    import torch

    from engine.errors import CheckpointError
    from engine.vae.files import read_tensors

    torch.save({"decoder.0.weight": [1, 2, 3]}, tmp_path / "list.pth")
    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    (tmp_path / "dir.safetensors").mkdir()
    for name, words in [("list.pth", "not a map of names to tensors"), ("fifo.safetensors", "FIFO"),
                        ("lfs.safetensors", "LFS"), ("dir.safetensors", "folder"), ("none.pth", "does not exist")]:
        with pytest.raises(CheckpointError, match=words):
            read_tensors(tmp_path / name)
