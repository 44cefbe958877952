"""Request validation: the hints in its messages name values that are valid and are the nearest ones.

The numbers are parsed out of the message and checked against the rules themselves (multiples of 16,
4k+1 frames, the limits), not against the words of the message.
"""
import re

import pytest

from engine.request import Limits, RequestError, VideoRequest, validate

LIMITS = Limits()


def _hint(**fields) -> tuple[int, int, int]:
    """(asked, lower suggestion, upper suggestion) from the error's 'X v is not ...; try a or b'."""
    with pytest.raises(RequestError) as err:
        validate(VideoRequest(prompt="a fox", **fields))
    msg = str(err.value)
    m = re.search(r"(\d+) is not .*; try (\d+) or (\d+)$", msg)
    assert m, msg
    return tuple(int(g) for g in m.groups())


def _valid(**fields) -> bool:
    try:
        validate(VideoRequest(prompt="a fox", **fields))
    except RequestError:
        return False
    return True


@pytest.mark.parametrize("frames", [2, 3, 4, 6, 8, 50, 80, 82, 118, 120])
def test_frame_hint_names_the_two_nearest_valid_counts(frames):
    asked, lower, upper = _hint(num_frames=frames)
    assert asked == frames
    assert lower < frames < upper and upper - lower == 4
    assert (lower - 1) % 4 == 0 and (upper - 1) % 4 == 0
    assert _valid(num_frames=lower) and _valid(num_frames=upper)  # both within the limits too


@pytest.mark.parametrize("field", ["height", "width"])
@pytest.mark.parametrize("value", [33, 40, 47, 100, 481, 833, 1270, 1279])
def test_size_hint_names_the_two_nearest_multiples_of_16(field, value):
    asked, lower, upper = _hint(**{field: value})
    assert asked == value
    assert lower < value < upper and upper - lower == 16
    assert lower % 16 == 0 and upper % 16 == 0
    assert _valid(**{field: lower}) and _valid(**{field: upper})


@pytest.mark.parametrize("field,low,high", [("num_frames", 1, LIMITS.max_frames), ("height", 32, LIMITS.max_height),
                                            ("width", 32, LIMITS.max_width), ("steps", 1, LIMITS.max_steps)])
def test_limits_are_inclusive_and_named(field, low, high):
    assert _valid(**{field: low}) and _valid(**{field: high})
    for bad in (low - (16 if field in ("height", "width") else 4 if field == "num_frames" else 1),
                high + (16 if field in ("height", "width") else 4 if field == "num_frames" else 1)):
        with pytest.raises(RequestError) as err:
            validate(VideoRequest(prompt="a fox", **{field: bad}))
        assert re.search(rf"between {low} and {high}, got {bad}$", str(err.value)), str(err.value)
