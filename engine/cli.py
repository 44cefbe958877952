"""What every command line of the engine does around its work: log to stderr, and turn an engine
error into one line and exit status 2 instead of a traceback."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import EngineError


def run_command(work: Callable[[], object]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        work()
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
