"""engine.checkpoint.io.SafeTensorsFile over safetensors.safe_open: files written by safetensors' own
writer (or by hand, byte by byte) read back equal, without copies, and without touching the file."""
import json
import struct

import torch

from safetensors.torch import save_file

from engine.checkpoint.io import SafeTensorsFile


def test_reads_what_safetensors_wrote_including_e8m0(tmp_path):
    g = torch.Generator().manual_seed(3)
    want = {"w": torch.randn(64, 32, generator=g).to(torch.float8_e4m3fn),
            "s": torch.randint(100, 140, (64, 1), generator=g, dtype=torch.uint8).view(torch.float8_e8m0fnu),
            "b": torch.randn(64, generator=g).to(torch.bfloat16), "empty": torch.zeros(0, 5)}
    save_file(want, tmp_path / "x.safetensors", metadata={"k": "v"})
    f = SafeTensorsFile(tmp_path / "x.safetensors")
    assert sorted(f.keys()) == sorted(want) and f.metadata == {"k": "v"}
    for k, t in want.items():
        got = f.get(k)
        assert got.dtype == t.dtype == f.dtype(k) and tuple(got.shape) == tuple(t.shape) == f.shape(k)
        assert torch.equal(got.view(torch.uint8), t.view(torch.uint8))


def test_tensors_view_one_mapping_and_writes_stay_private(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(1024, dtype=torch.float32), "b": torch.ones(8)}, path)
    before = path.read_bytes()
    f = SafeTensorsFile(path)
    a1, a2 = f.get("a"), f.get("a")
    assert a1.data_ptr() == a2.data_ptr()  # a copying reader would hand out two buffers
    a1[0] = 99.0
    f.close()
    assert a2[0] == 99.0 and path.read_bytes() == before  # copy-on-write: the file is never written
    assert SafeTensorsFile(path).get("a")[0] == 0.0


def test_misaligned_tensor_is_copied_to_an_aligned_buffer(tmp_path):
    # A hand-written file whose F32 tensor starts at data byte 1 (a writer that did not sort by size).
    header = {"u": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "f": {"dtype": "F32", "shape": [3], "data_offsets": [1, 13]}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    values = [1.5, 2.5, -3.0]
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes([7])
                                             + struct.pack("<3f", *values))
    f = SafeTensorsFile(tmp_path / "m.safetensors")
    got = f.get("f")
    assert got.tolist() == values and got.data_ptr() % 4 == 0
    assert f.get("u").tolist() == [7]
