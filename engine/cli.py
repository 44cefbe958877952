"""What every command line of the engine does around its work: log to stderr, and turn any failure
into one sentence and a non-zero exit status instead of a traceback.

EngineError: its message, exit 2. OSError (disk full, read-only, permission): one sentence, exit 2.
Anything else is a defect of this engine: one sentence naming it, the traceback written to a private
log file (shown on stderr too with ENGINE_DEBUG=1), exit 1. Ctrl-C: exit 130.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from typing import Callable

from .checkpoint.files import os_error_sentence
from .errors import EngineError


def run_command(work: Callable[[], object], debug: bool | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = os.environ.get("ENGINE_DEBUG", "") not in ("", "0") if debug is None else debug
    try:
        work()
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {os_error_sentence(e, e.filename or 'a file', 'use')}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- the last line of defence: a sentence, never a traceback
        text = traceback.format_exc()
        where = _save_traceback(text)
        first = (str(e).splitlines() or [""])[0][:300]
        print(f"error: an unexpected internal error ({type(e).__name__}: {first}). This is a defect of the engine, "
              f"not of your input; the traceback is in {where} (set ENGINE_DEBUG=1 to print it here).",
              file=sys.stderr)
        if debug:
            print(text, file=sys.stderr)
        return 1
    return 0


def _save_traceback(text: str) -> str:
    try:
        fd, path = tempfile.mkstemp(prefix="engine-error-", suffix=".log")  # private (0600), never shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return "nowhere (the temp folder is not writable)"
