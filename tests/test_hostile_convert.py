"""The converter loses nothing and leaves nothing behind (issue 11, classes 2 and 3): source = output,
stale layouts, name escapes, a LoRA that matches nothing, already-quantized or foreign sources, a full
or read-only disk at many points, and a kill -9 mid-write. The source always stays intact and no
final-named partial output is ever left."""
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine.checkpoint.files as cf
from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import write_safetensors
from engine.convert import main
from tests.dit_helpers import tiny_model, wan_state_dict
from tests.hostile_helpers import correct, record
from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected

CFG = dict(tiny_model().config)
FINAL = (".safetensors", ".pth", ".index.json")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    write_safetensors(d / "wan.safetensors", wan_state_dict(tiny_model()))
    return d / "wan.safetensors"


def digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files if f.is_file())).hexdigest()


def weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(FINAL)) if folder.is_dir() else []


def refused(argv, capsys, *words) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith("error: "), err
    for w in words:
        assert w in err, err
    record("3-lost", "clear-error")
    return err


def test_output_equal_to_or_containing_the_source(tmp_path, source, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(source.read_bytes())
    os.symlink(folder, tmp_path / "link")
    before = digest(folder)
    for out, args in ((folder, []), (folder, ["--single_file", "-o_n", "diffusion_pytorch_model"]),
                      (tmp_path / "link", []), (tmp_path, []), (folder / ".", ["-o_e", ".pth"])):
        refused(["-s", str(folder), "-o", str(out), *args], capsys, "source")
    f = folder / "diffusion_pytorch_model.safetensors"
    for out in (folder, tmp_path, tmp_path / "link"):
        refused(["-s", str(f), "-o", str(out), "--single_file", "-o_n", "diffusion_pytorch_model"], capsys, "source")
    assert digest(folder) == before


def test_reconverting_into_an_older_layout_is_refused(tmp_path, source, capsys):
    out = tmp_path / "out"
    assert main(["-s", str(source), "-o", str(out), "-c", "40"]) == 0
    first = weight_files(out)
    assert len(first) > 2
    before = digest(out)
    for args in (["--single_file"], ["--save_by_block"], ["-c", "200"], ["-o_n", "other"], ["-o_e", ".pth"]):
        refused(["-s", str(source), "-o", str(out), *args], capsys, "already holds")
        assert digest(out) == before
    assert main(["-s", str(source), "-o", str(out), "-c", "40"]) == 0  # the same layout: replaced in place
    assert weight_files(out) == first
    load_dit(out, CFG)
    correct("3-lost")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "a\\b", "/abs", "x\0y"])
def test_output_name_with_a_path_is_refused(tmp_path, source, name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["-s", str(source), "-o", str(tmp_path / "out"), "--single_file", "-o_n", name])
    assert e.value.code == 2 and "--output_name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and weight_files(tmp_path) == []
    record("3-lost", "clear-error")


def test_lora_that_matches_nothing_writes_nothing(tmp_path, source, capsys):
    for i, keys in enumerate((["unet.down.0.lora_down.weight", "unet.down.0.lora_up.weight"],
                              ["blocks.99.self_attn.q.lora_A.weight", "blocks.99.self_attn.q.lora_B.weight"],
                              ["just_a_tensor"])):
        lora = tmp_path / f"lora{i}.safetensors"
        write_safetensors(lora, {keys[0]: torch.randn(4, 8), **({keys[1]: torch.randn(8, 4)} if len(keys) > 1 else {})})
        out = tmp_path / f"out{i}"
        refused(["-s", str(source), "-o", str(out), "--lora_path", str(lora)], capsys, "LoRA")
        assert weight_files(out) == []


def test_already_quantized_or_foreign_sources_are_refused(tmp_path, source, capsys):
    from tests.test_encoders_load import wan_t5_weights
    sd = wan_state_dict(tiny_model())
    for fmt in ("int8", "fp8", "nvfp4"):
        q = tmp_path / f"{fmt}.safetensors"
        write_safetensors(q, quantize_state_dict(sd, fmt, wan_dit_selected))
        for extra in (["--quantized", "--linear_type", "int8"], []):
            refused(["-s", str(q), "-o", str(tmp_path / f"o_{fmt}"), *extra], capsys, "already quantized")
    t5 = tmp_path / "t5.pth"
    torch.save(wan_t5_weights(torch.Generator().manual_seed(0)), t5)
    refused(["-s", str(t5), "-o", str(tmp_path / "o_t5"), "-t", "wan_dit", "--quantized", "--linear_type", "int8"],
            capsys, "wan_t5")
    for t in ("wan_t5", "wan_clip"):
        refused(["-s", str(source), "-o", str(tmp_path / f"o_{t}"), "-t", t], capsys, "wan_dit")
    assert all(weight_files(p) == [] for p in tmp_path.iterdir() if p.is_dir())


class FullDisk:
    """A writer on a disk that fills after `left["bytes"]` more bytes (shared by every file written)."""

    def __init__(self, f, left, err):
        self.f, self.left, self.err = f, left, err

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.left["bytes"]:
            raise OSError(self.err, os.strerror(self.err), self.f.name)
        self.left["bytes"] -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


@pytest.mark.parametrize("layout", [["--single_file"], ["-c", "30"], ["--save_by_block"], ["-o_e", ".pth"]])
def test_full_or_read_only_disk_at_many_points(tmp_path, source, layout, monkeypatch, capsys):
    before = digest(source)
    real_open, total = open, source.stat().st_size
    budgets = [0, 8, 100, total // 7, total // 3, total // 2, total - 1]
    for i, budget in enumerate(budgets):
        err = errno.ENOSPC if i % 2 == 0 else errno.EDQUOT
        left = {"bytes": budget}
        monkeypatch.setattr(cf, "open", lambda p, mode="r", *a, b=left, e=err, **k:
                            FullDisk(real_open(p, mode, *a, **k), b, e), raising=False)
        out = tmp_path / f"out{i}"
        msg = refused(["-s", str(source), "-o", str(out), *layout], capsys, str(out))
        assert "disk is full" in msg or "quota" in msg
        assert weight_files(out) == [] and not any(p.name.startswith(".") for p in out.iterdir())
    monkeypatch.undo()
    for n, (target, err) in enumerate(((os, errno.ENOSPC), (os, errno.EROFS), (os, errno.EACCES))):
        for nth in (1, 2, 3):
            calls = {"n": 0}
            real = os.fsync if n == 0 else os.replace

            def fail(*a, real=real, nth=nth, err=err, calls=calls):
                calls["n"] += 1
                if calls["n"] == nth:
                    raise OSError(err, os.strerror(err))
                return real(*a)
            monkeypatch.setattr(os, "fsync" if n == 0 else "replace", fail)
            out = tmp_path / f"f{n}{nth}"
            code = main(["-s", str(source), "-o", str(out), *layout])
            err_text = capsys.readouterr().err
            monkeypatch.undo()
            if code == 0:  # fewer writes than nth in this layout: a complete, correct output
                load_dit(out, CFG)
                correct("3-lost")
                continue
            assert code == 2 and "Traceback" not in err_text and str(out) in err_text, err_text
            assert weight_files(out) == [] and not any(p.name.startswith(".") for p in out.iterdir())
            record("3-lost", "clear-error")
    assert digest(source) == before


KILLED = r'''
import sys, time, pathlib
import engine.checkpoint.io as io
real = io.write_safetensors
def slow(path, tensors, meta=None):
    if not list(pathlib.Path(path).parent.glob("*.safetensors")):
        return real(path, tensors, meta)
    def write(f):
        f.write(b"x" * 1000)
        f.flush()
        pathlib.Path(sys.argv[1]).write_text("writing")
        time.sleep(600)
    io.atomic_write(path, write)
import engine.convert as c
c.write_safetensors = slow
sys.exit(c.main(sys.argv[2:]))
'''


@pytest.mark.slow
def test_kill_9_mid_write_leaves_no_final_output(tmp_path, source):
    before = digest(source)
    out, marker = tmp_path / "out", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(marker), "-s", str(source), "-o", str(out), "-c", "30"],
                            cwd=Path(__file__).resolve().parents[1])
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the converter never reached the second file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert weight_files(out) == []
    leftovers = [p.name for p in out.iterdir()]
    assert leftovers and all(".partial-" in n for n in leftovers)  # only the staging folder
    assert main(["-s", str(source), "-o", str(out), "-c", "30"]) == 0  # the rerun clears the leftovers
    assert not any(p.name.startswith(".") for p in out.iterdir())
    load_dit(out, CFG)
    assert digest(source) == before
    record("3-lost", "correct")
