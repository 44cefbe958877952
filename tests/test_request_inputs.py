"""Careless and hostile requests, many of each kind: every one a RequestError naming the field, or a
correct cleaned request. Also the outputs folder the app serves (private, never a link or someone else's)
and its pruning."""
import os
import random
import sys
import time
import unicodedata

import pytest

from engine.errors import ConfigError
from engine.request import MAX_PROMPT_CHARS, Limits, RequestError, VideoRequest, validate
from engine.outputs import outputs_folder, prune_outputs

NUMBER_FIELDS = {"height": "height", "width": "width", "num_frames": "frame count", "steps": "steps",
                 "guidance": "guidance", "shift": "shift", "seed": "seed", "fps": "fps", "guidance_2": "guidance 2"}
rng = random.Random(1234)
# Code points without visible content: C0/C1 controls, DEL, format characters, spaces, lone surrogates,
# unassigned and private-use code points.
INVISIBLE = ([chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA1)] +
             ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u2028", "\u2029", "\u3000", "\ud800", "\udfff",
              "\U000e0001", "\ue000", "\U0010fffd", "\u0378"])


def request(**kw):
    return VideoRequest(**{**dict(prompt="a boat", height=32, width=32, num_frames=5, steps=2), **kw})


@pytest.mark.parametrize("field", sorted(NUMBER_FIELDS))
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number(field, value):
    with pytest.raises(RequestError, match=f"{NUMBER_FIELDS[field]} must be a number, got {str(value).lower()}"):
        validate(request(**{field: value}))


def invisible_prompts(count=400):
    for _ in range(count):
        yield "".join(rng.choice(INVISIBLE) for _ in range(rng.randint(1, 40)))


def test_prompts_without_visible_characters_are_empty():
    cases = list(invisible_prompts()) + ["", " ", "\x00" * 2000, "\n\t\r", None]
    for prompt in cases:
        with pytest.raises(RequestError, match="prompt is empty"):
            validate(request(prompt=prompt))
    assert len(cases) == 405


def test_visible_prompts_are_kept_without_control_characters():
    letters = "abcXYZ 013 éü 中文 日本 한국 ✨ – ،ب"
    for _ in range(400):
        noise = [rng.choice(INVISIBLE) for _ in range(rng.randint(0, 10))]
        word = [rng.choice(letters.replace(" ", "")) for _ in range(rng.randint(1, 10))]
        mixed = noise + word + noise[::-1]
        rng.shuffle(mixed)
        prompt = "".join(mixed)
        clean = validate(request(prompt=prompt)).prompt
        # every visible character survives, in order; no control, surrogate or unassigned one does
        assert [c for c in clean if not c.isspace() and unicodedata.category(c)[0] != "C"] == \
            [c for c in prompt if not c.isspace() and unicodedata.category(c)[0] != "C"]
        assert not any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") for c in clean)
        assert clean == clean.strip()


@pytest.mark.parametrize("value", [["a"], {"text": "x"}, 42, b"bytes", 3.5])
def test_a_prompt_that_is_not_text_is_named(value):
    with pytest.raises(RequestError, match="prompt must be text"):
        validate(request(prompt=value))
    with pytest.raises(RequestError, match="negative prompt must be text"):
        validate(request(negative_prompt=value))


def test_too_long_prompts_are_refused():
    validate(request(prompt="x" * MAX_PROMPT_CHARS))
    with pytest.raises(RequestError, match=f"limited to {MAX_PROMPT_CHARS}"):
        validate(request(prompt="x" * (MAX_PROMPT_CHARS + 1)))


def random_number():
    return rng.choice([rng.randint(-10**6, 10**6), rng.uniform(-1e6, 1e6), float("nan"), float("inf"), -0.0,
                       10**400, str(rng.randint(0, 100)), "1e999", "", None, [1], {"a": 1}, "0x10", True,
                       rng.choice([16, 32, 48, 64, 5, 9, 13, 17, 2, 4])])


def test_random_numbers_give_a_named_error_or_a_request_within_limits():
    limits = Limits(max_height=64, max_width=64, max_frames=17, max_steps=8, name="the tiny model")
    outcomes = {"error": 0, "ok": 0}
    for _ in range(2000):
        fields = {f: random_number() for f in rng.sample(sorted(NUMBER_FIELDS), rng.randint(1, 4))}
        try:
            req = validate(request(**fields), limits)
        except RequestError as e:
            assert any(name in str(e) for name in NUMBER_FIELDS.values()), str(e)
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert 32 <= req.height <= 64 and req.height % 16 == 0 and 32 <= req.width <= 64 and req.width % 16 == 0
        assert 1 <= req.num_frames <= 17 and req.num_frames % 4 == 1 and 1 <= req.steps <= 8
        for f in ("height", "width", "num_frames", "steps", "seed", "fps"):
            assert type(getattr(req, f)) is int
    assert outcomes["error"] > 1000 and outcomes["ok"] > 20, outcomes


# ---- the outputs folder ----------------------------------------------------------------------------

def test_the_default_outputs_folder_is_private_and_new():
    a, b = outputs_folder(None), outputs_folder(None)
    assert a != b and (a.stat().st_mode & 0o777) == 0o700
    a.rmdir(), b.rmdir()


def test_a_symlinked_outputs_folder_is_refused(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(ConfigError, match="symbolic link"):
        outputs_folder(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder|cannot create"):
        outputs_folder(tmp_path / "file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder away")
def test_a_folder_of_another_user_is_refused(tmp_path):
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        outputs_folder(tmp_path / "theirs")


def test_old_and_surplus_videos_are_pruned(tmp_path):
    now = time.time()
    for i in range(10):
        path = tmp_path / f"video-{i:02d}.mp4"
        path.write_bytes(b"x")
        os.utime(path, (now - i * 60, now - i * 60))  # video-00 newest
    os.utime(tmp_path / "video-01.mp4", (now - 10 * 86400, now - 10 * 86400))
    (tmp_path / "notes.txt").write_text("not ours")
    gone = prune_outputs(tmp_path, keep=tmp_path / "video-09.mp4", max_files=5, max_age_s=86400)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["notes.txt", "video-00.mp4", "video-02.mp4", "video-03.mp4", "video-04.mp4", "video-05.mp4",
                    "video-09.mp4"]
    assert len(gone) == 4 and sys.platform != "win32"
