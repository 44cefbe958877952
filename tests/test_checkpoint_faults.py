"""Truncated, corrupt, incomplete or mismatched files: a CheckpointError naming the file and the key."""
import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import SafeTensorsFile, write_safetensors
from engine.errors import CheckpointError
from tests.dit_helpers import tiny_model, wan_state_dict
from tests.lightx2v_writer import quantize_state_dict, wan_dit_selected


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    m = tiny_model()
    sd = quantize_state_dict(wan_state_dict(m), "int8", wan_dit_selected)
    path = tmp_path_factory.mktemp("good") / "int8.safetensors"
    write_safetensors(path, sd)
    return m, sd, path


def test_truncated_file_names_file_and_key(tmp_path, good):
    _, _, path = good
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) - 100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors \(tensor '.+'\) .*truncated"):
        SafeTensorsFile(cut)


@pytest.mark.parametrize("blob,why", [(b"abc", "too short"), (b"\xff" * 8 + b"{}", "header length"),
                                      (b"\x04\x00\x00\x00\x00\x00\x00\x00nope", "not valid JSON")])
def test_corrupt_headers(tmp_path, blob, why):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(CheckpointError, match=why):
        SafeTensorsFile(p)


def test_missing_scale(tmp_path, good):
    m, sd, _ = good
    broken = {k: v for k, v in sd.items() if k != "blocks.1.ffn.2.weight_scale"}
    write_safetensors(tmp_path / "x.safetensors", broken)
    with pytest.raises(CheckpointError, match="blocks.1.ffn.net.2.*missing scale|blocks.1.ffn.net.2"):
        load_dit(tmp_path / "x.safetensors", m.config)


def test_shape_mismatch_names_key(tmp_path, good):
    m, sd, _ = good
    broken = dict(sd)
    broken["blocks.0.norm3.weight"] = torch.ones(65, dtype=torch.bfloat16)
    write_safetensors(tmp_path / "x.safetensors", broken)
    with pytest.raises(CheckpointError, match=r"x\.safetensors: tensor 'blocks.0.norm2.weight' has shape \[65\]"):
        load_dit(tmp_path / "x.safetensors", m.config)


def test_extra_tensor_means_other_variant(tmp_path, good):
    m, sd, _ = good
    write_safetensors(tmp_path / "x.safetensors", {**sd, "blocks.9.self_attn.q.bias": torch.zeros(64)})
    with pytest.raises(CheckpointError, match="no place in this model"):
        load_dit(tmp_path / "x.safetensors", m.config)


def test_write_is_atomic(tmp_path):
    with pytest.raises(CheckpointError):
        write_safetensors(tmp_path / "o.safetensors", {"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.complex64)})
    assert list(tmp_path.iterdir()) == []
