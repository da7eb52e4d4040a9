"""How the command-line entry points fail: one ``error:`` line and a non-zero status, no traceback.

Bad input (a missing or corrupt file, labels out of range, an impossible schedule, a number out
of range) surfaces deep inside the library as ValueError, TypeError or OSError with a message
that says what was expected and what was given; that message is what a user needs, not the stack.
Set ``EFFV2_TRACEBACK=1`` to get the traceback back (when the message is not enough).

Arguments that name a file are read and checked while the command line is parsed
(`schedule_file`), so a bad file is reported as a usage error before anything runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .schedule import ProgressiveSchedule

__all__ = ["TRACEBACK_ENV_VAR", "one_line_errors", "schedule_file"]

TRACEBACK_ENV_VAR = "EFFV2_TRACEBACK"


def one_line_errors(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv)``: errors of bad input print ``error: ...`` and return 1, Ctrl-C returns 130."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except KeyboardInterrupt as exc:
            print(f"stopped: {exc}" if str(exc) else "interrupted", file=sys.stderr)
            return 130
        except (ValueError, TypeError, OSError, ArithmeticError, RuntimeError) as exc:
            if os.environ.get(TRACEBACK_ENV_VAR) == "1":
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the message
            print(f"error: {message}", file=sys.stderr)
            return 1

    return wrapper


def schedule_file(path: str) -> dict:
    """``--schedule FILE`` (an argparse type): a ProgressiveSchedule's JSON, checked as it is read."""
    try:
        return ProgressiveSchedule.from_json(Path(path).read_text(encoding="utf-8")).to_dict()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the schedule file {path}: {exc.strerror}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"{path} is not a schedule (ProgressiveSchedule JSON): {exc}") from exc
