"""Hostile and careless safetensors files (issue 11, classes 1, 2, 4, 6): a real tiny DiT checkpoint,
corrupted in many generated ways, ends in a CheckpointError naming the file (and the tensor), or loads
correctly. Nothing escapes as a raw exception, nothing blocks, nothing loads silently wrong."""
import json
import os
import random
import signal
import struct

import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import SafeTensorsFile, write_safetensors
from engine.checkpoint.sources import TensorSource
from engine.errors import CheckpointError
from tests.dit_helpers import tiny_model, wan_state_dict
from tests.hostile_helpers import correct, expect_error, record
from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected

CFG = dict(tiny_model().config)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The bytes of a real int8 LightX2V checkpoint of the tiny DiT, and its parsed header."""
    d = tmp_path_factory.mktemp("good")
    sd = quantize_state_dict(wan_state_dict(tiny_model()), "int8", wan_dit_selected)
    write_safetensors(d / "dit.safetensors", sd, {"format": "int8"})
    blob = (d / "dit.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    return blob, json.loads(blob[8:8 + hlen]), hlen


def with_header(header, data: bytes, raw: bytes | None = None) -> bytes:
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def test_truncated_at_many_offsets(tmp_path, good):
    blob, _, hlen = good
    rng = random.Random(0)
    offsets = sorted({0, 1, 7, 8, 9, hlen // 2, hlen + 7, hlen + 8, len(blob) - 1}
                     | {rng.randrange(len(blob)) for _ in range(40)})
    for n in offsets:
        path = tmp_path / f"cut{n}.safetensors"
        path.write_bytes(blob[:n])
        expect_error("1-raw", lambda: TensorSource(path), str(path))


def _mutations(header, rng):
    keys = [k for k in header if k != "__metadata__"]
    bad_dtypes = ["F33", "", 5, None, ["F32"], {"a": 1}, True, "f32"]
    bad_shapes = [[-1, 4], [2.5], ["2"], "4", None, [[2]], [True, 2], 7, [2**40, 2**40]]
    bad_offsets = [[5, 1], [-8, 0], ["0", "8"], [0], [0, 1, 2], None, "0-8", [0.0, 8.0], [True, 8]]
    for _ in range(12):
        key = rng.choice(keys)
        for field, values in (("dtype", bad_dtypes), ("shape", bad_shapes), ("data_offsets", bad_offsets)):
            h = json.loads(json.dumps(header))
            h[key][field] = rng.choice(values)
            yield f"{key} {field}={h[key][field]!r}", h, key
    for bad in ([1, 2], 5, "x", {"format": 3}, {"a": ["b"]}, {"a": None}):
        h = json.loads(json.dumps(header))
        h["__metadata__"] = bad
        yield f"metadata {bad!r}", h, None
    for _ in range(8):  # one tensor's entry of the wrong JSON type
        h = json.loads(json.dumps(header))
        key = rng.choice(keys)
        h[key] = rng.choice([[1, 2], "F32", 3, None, True])
        yield f"{key} entry {h[key]!r}", h, key


def test_header_fields_of_the_wrong_type_or_value(tmp_path, good):
    blob, header, hlen = good
    data = blob[8 + hlen:]
    for i, (what, h, key) in enumerate(_mutations(header, random.Random(1))):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(with_header(h, data))
        names = [str(path)] + ([key] if key else [])
        expect_error("1-raw", lambda: SafeTensorsFile(path), *names)


def test_headers_that_are_not_objects_deep_or_duplicated(tmp_path, good):
    blob, header, hlen = good
    data = blob[8 + hlen:]
    first = next(k for k in header if k != "__metadata__")
    dup = json.dumps(header)[:-1] + ", " + json.dumps(first) + ": " + json.dumps(header[first]) + "}"
    raws = [b"[]", b"5", b'"x"', b"null", b"[" * 100000 + b"]" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000,
            b"\xff\xfe{}", b"{", dup.encode(), b"{}"]
    for i, raw in enumerate(raws):
        path = tmp_path / f"h{i}.safetensors"
        path.write_bytes(with_header(None, data, raw))
        expect_error("1-raw", lambda: SafeTensorsFile(path), str(path))


def test_overlapping_gapped_and_trailing_data_are_refused(tmp_path, good):
    blob, header, hlen = good
    data = blob[8 + hlen:]
    rng = random.Random(2)
    spans = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    for i in range(20):
        h = json.loads(json.dumps(header))
        j = rng.randrange(1, len(spans))
        key = spans[j][1]
        b, e = h[key]["data_offsets"]
        shift = rng.choice([-4, -2, 2, 4])  # moves the tensor onto its neighbour, or leaves a gap
        h[key]["data_offsets"] = [b + shift, e + shift]
        path = tmp_path / f"o{i}.safetensors"
        path.write_bytes(with_header(h, data))
        expect_error("2-silent", lambda: SafeTensorsFile(path), str(path))
    path = tmp_path / "trailing.safetensors"
    path.write_bytes(blob + b"\0" * 16)
    expect_error("2-silent", lambda: SafeTensorsFile(path), str(path), match="after its last tensor")


def test_dtype_whose_size_does_not_match_the_shape(tmp_path, good):
    blob, header, hlen = good
    data = blob[8 + hlen:]
    swaps = {"F32": ["BF16", "F16", "I8", "F64", "U8"], "BF16": ["F32", "I8", "I64"], "I8": ["F32", "BF16"]}
    i = 0
    for key, info in header.items():
        if key == "__metadata__" or info["dtype"] not in swaps or info["data_offsets"][0] == info["data_offsets"][1]:
            continue
        for new in swaps[info["dtype"]]:
            h = json.loads(json.dumps(header))
            h[key]["dtype"] = new
            path = tmp_path / f"d{i}.safetensors"
            path.write_bytes(with_header(h, data))
            expect_error("2-silent", lambda: SafeTensorsFile(path), str(path), key)
            i += 1
        if i > 40:
            break


def test_same_size_dtype_swap_is_caught_by_the_model(tmp_path, good):
    """F32 declared I32 (same bytes) cannot be told from the header; the model's dtype check catches it."""
    blob, header, hlen = good
    data = blob[8 + hlen:]
    f32 = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32" and "scale" not in k][:3]
    for i, key in enumerate(f32):
        h = json.loads(json.dumps(header))
        h[key]["dtype"] = "I32"
        path = tmp_path / f"s{i}" / "dit.safetensors"
        path.parent.mkdir()
        path.write_bytes(with_header(h, data))
        expect_error("2-silent", lambda: load_dit(path, CFG))


@pytest.mark.parametrize("fault", ["nan", "inf", "-inf", "zero", "negative"])
def test_bad_scales_are_refused_naming_the_layer(tmp_path, fault):
    sd = quantize_state_dict(wan_state_dict(tiny_model()), "int8", wan_dit_selected)
    rng = random.Random(hash(fault) % 1000)
    scales = sorted(k for k in sd if k.endswith(".weight_scale"))
    for i in range(4):
        key = rng.choice(scales)
        bad = dict(sd)
        s = bad[key].clone()
        s.view(-1)[rng.randrange(s.numel())] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
                                                "zero": 0.0, "negative": -0.01}[fault]
        bad[key] = s
        path = tmp_path / f"{i}.safetensors"
        write_safetensors(path, bad)
        expect_error("2-silent", lambda: load_dit(path, CFG), str(path), "weight_scale")


def test_nan_in_high_precision_weights_is_refused(tmp_path):
    sd = wan_state_dict(tiny_model())
    rng = random.Random(3)
    floats = sorted(k for k, v in sd.items() if v.is_floating_point())
    for i in range(10):
        key = rng.choice(floats)
        bad = {k: v.to(torch.bfloat16) for k, v in sd.items()}
        t = bad[key].clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
        bad[key] = t
        path = tmp_path / f"{i}.safetensors"
        write_safetensors(path, bad)
        expect_error("2-silent", lambda: load_dit(path, CFG), str(path), "NaN or Inf")


def test_good_file_still_loads(tmp_path, good):
    blob, _, _ = good
    (tmp_path / "dit.safetensors").write_bytes(blob)
    _, report = load_dit(tmp_path / "dit.safetensors", CFG)
    assert report.formats["int8"] > 0
    correct("1-raw")


# ---- regular files only, true causes ---------------------------------------------------------
def _no_hang(fn):
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("blocked on a FIFO"))
    signal.alarm(20)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fifo_directory_symlink_loop_and_lfs_pointer(tmp_path, good):
    blob, _, _ = good
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    _no_hang(lambda: expect_error("4-fifo", lambda: TensorSource(fifo), str(fifo), match="FIFO"))
    folder = tmp_path / "withfifo"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    _no_hang(lambda: expect_error("4-fifo", lambda: TensorSource(folder), "model.safetensors", match="FIFO"))
    index = tmp_path / "idx"
    index.mkdir()
    os.mkfifo(index / "diffusion_pytorch_model.safetensors.index.json")
    _no_hang(lambda: expect_error("4-fifo", lambda: TensorSource(index), "index.json", match="FIFO"))

    dirnamed = tmp_path / "x.safetensors"
    dirnamed.mkdir()
    expect_error("6-cause", lambda: TensorSource(dirnamed), str(dirnamed), match="a folder named like")
    inner = tmp_path / "inner"
    (inner / "y.safetensors").mkdir(parents=True)
    expect_error("6-cause", lambda: TensorSource(inner), "y.safetensors", match="is a folder, not a file")

    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    msg = expect_error("6-cause", lambda: TensorSource(loop), str(loop), match="symlink loop")
    assert "does not exist" not in msg
    dangling = tmp_path / "dangling.safetensors"
    os.symlink(tmp_path / "gone.safetensors", dangling)
    expect_error("6-cause", lambda: TensorSource(dangling), "gone.safetensors", match="symlink")

    for name in ("lfs.safetensors", "lfs.pth"):
        p = tmp_path / name
        p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 1234\n")
        expect_error("1-raw", lambda: TensorSource(p), str(p), match="git lfs pull")


def test_permission_problem_is_not_called_a_bad_download(tmp_path, good, monkeypatch):
    import errno

    import engine.checkpoint.files as cf
    blob, _, _ = good
    path = tmp_path / "dit.safetensors"
    path.write_bytes(blob)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(cf.os, "open", denied)
    msg = expect_error("6-cause", lambda: TensorSource(path), str(path), match="permission denied")
    assert "download" not in msg


def test_index_weight_map_of_the_wrong_type(tmp_path, good):
    blob, header, _ = good
    keys = [k for k in header if k != "__metadata__"]
    bads = [None, [], "dit.safetensors", 5, {}, {keys[0]: 5}, {keys[0]: None}, {keys[0]: ["dit.safetensors"]},
            {keys[0]: "../dit.safetensors"}, {keys[0]: "/etc/passwd"}, {keys[0]: "sub/dit.safetensors"},
            {keys[0]: ""}, {keys[0]: "missing.safetensors"}, {"absent.key": "dit.safetensors"}]
    for i, wm in enumerate(bads):
        d = tmp_path / f"i{i}"
        d.mkdir()
        (d / "dit.safetensors").write_bytes(blob)
        index = d / "diffusion_pytorch_model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        expect_error("1-raw", lambda: TensorSource(d), "index.json")
    for i, raw in enumerate(["[]", "5", "{", "[" * 100000, '{"weight_map": ' * 40000 + "1" + "}" * 40000]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "diffusion_pytorch_model.safetensors.index.json").write_text(raw)
        expect_error("1-raw", lambda: TensorSource(d), "index.json")


def test_metadata_config_of_the_wrong_type(tmp_path, good):
    sd = quantize_state_dict(wan_state_dict(tiny_model()), "int8", wan_dit_selected)
    for i, cfg in enumerate(["[1, 2]", "5", "not json", '"x"', '{"num_layers": "two"}', '{"patch_size": 5}',
                             "[" * 100000]):
        path = tmp_path / f"c{i}.safetensors"
        write_safetensors(path, sd, {"config": cfg})
        expect_error("1-raw", lambda: load_dit(path), str(path))
    for i, fmt in enumerate(["nvfp4", "fp8", "bogus"]):  # metadata says one format, tensors hold int8
        path = tmp_path / f"f{i}.safetensors"
        write_safetensors(path, sd, {"format": fmt})
        msg = expect_error("6-cause", lambda: load_dit(path, CFG), str(path))
        assert "config asks" not in msg and "the config" not in msg.split(":")[1]


@pytest.mark.slow
def test_random_state_dict_corruptions(tmp_path):
    """Generated corruptions of real quantized checkpoints of every format: a missing, reshaped, renamed or
    emptied tensor is always a clear error; a changed dtype, an extra or per-tensor scale either loads
    (the file is still consistent) or is a clear error -- never a raw exception."""
    base = wan_state_dict(tiny_model())
    rng = random.Random(7)
    fmts = ["int8", "fp8", "fp8_block128", "mxfp8", "nvfp4", None]
    for i in range(36):
        fmt = fmts[i % len(fmts)]
        sd = quantize_state_dict(base, fmt, wan_dit_selected) if fmt else dict(base)
        op = ["drop", "shape", "rename", "empty", "dtype", "extra", "scalar"][rng.randrange(7)]
        key = rng.choice(sorted(sd))
        if op == "drop":
            del sd[key]
        elif op == "shape":
            sd[key] = torch.zeros(*[s + rng.choice([-1, 1, 2]) or 1 for s in sd[key].shape] or [2]).to(sd[key].dtype)
        elif op == "rename":
            sd["blocks.x." + key] = sd.pop(key)
        elif op == "empty":
            sd[key] = torch.empty(0, dtype=sd[key].dtype)
        elif op == "dtype":
            sd[key] = sd[key].to(rng.choice([torch.int8, torch.uint8, torch.float16, torch.int64, torch.bool]))
        elif op == "extra":
            sd[key.rpartition(".")[0] + "." + rng.choice(["weight_scale", "weight_global_scale", "alpha"])] = \
                torch.ones(rng.choice([1, 3, 64]))
        else:
            sd[key] = torch.tensor(1.0)
        path = tmp_path / f"{i}.safetensors"
        write_safetensors(path, sd)
        if op in ("drop", "shape", "rename", "empty"):
            expect_error("1-raw", lambda: load_dit(path, CFG), str(path))
            continue
        try:
            load_dit(path, CFG)
            correct("1-raw")
        except CheckpointError as e:
            assert str(path) in str(e) and "Traceback" not in str(e), str(e)
            record("1-raw", "clear-error")
