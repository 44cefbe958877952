"""Shared by the hostile-input tests: every case must end in a typed EngineError whose message names
what it must name, or in a correct result. Set HOSTILE_TALLY=<file> to count the cases per class."""
import os

import pytest

from engine.errors import EngineError

FORBIDDEN = ("Traceback", "weights_only=False")


def record(cls: str, outcome: str) -> None:
    path = os.environ.get("HOSTILE_TALLY")
    if path:
        with open(path, "a") as f:
            f.write(f"{cls} {outcome}\n")


def expect_error(cls: str, fn, *names, kind=EngineError, match: str | None = None) -> str:
    """fn() must raise `kind` (an EngineError) whose message contains every one of `names`."""
    with pytest.raises(kind) as e:
        fn()
    msg = str(e.value)
    for name in names:
        assert str(name) in msg, f"{name!r} not named in: {msg}"
    if match is not None:
        assert match in msg, f"{match!r} not in: {msg}"
    assert not any(f in msg for f in FORBIDDEN), msg
    record(cls, "clear-error")
    return msg


def correct(cls: str) -> None:
    record(cls, "correct")
