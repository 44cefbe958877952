"""engine.infer's --image_path: every bad image is a sentence, read lazily so a huge one is never decoded."""
from __future__ import annotations

import pytest
from PIL import Image

from engine import infer
from engine.errors import EngineError


@pytest.mark.parametrize("make, words", [
    (lambda p: Image.new("RGB", (5000, 8)).save(p), "5000x8; sides up to 4096"),
    (lambda p: p.write_bytes(b"not an image at all"), "cannot read the image"),
    (lambda p: p.write_bytes(b""), "cannot read the image"),
    (lambda p: p.mkdir(), "cannot read the image"),
])
def test_bad_images_are_named(tmp_path, make, words):
    path = tmp_path / "in.png"
    make(path)
    with pytest.raises(EngineError, match=words):
        infer._image(str(path))


def test_a_decompression_bomb_is_a_sentence(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises past twice this
    with pytest.raises(EngineError, match="cannot read the image"):
        infer._image(str(tmp_path / "bomb.png"))


def test_a_good_image_comes_back_rgb(tmp_path):
    Image.new("L", (40, 30)).save(tmp_path / "g.png")
    assert infer._image(str(tmp_path / "g.png")).mode == "RGB"
