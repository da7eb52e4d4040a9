"""How the command-line entry points fail: one ``error:`` line and a non-zero status, no traceback.

Bad input (a missing or corrupt file, labels out of range, an impossible schedule, a number out
of range) surfaces deep inside the library as ValueError, TypeError or OSError with a message
that says what was expected and what was given; that message is what a user needs, not the stack.
Set ``EFFV2_TRACEBACK=1`` to get the traceback back (when the message is not enough).

Arguments that name a file are read and checked while the command line is parsed
(`schedule_file`), so a bad file is reported as a usage error before anything runs; so are numbers
out of their range (`int_at_least`) and an empty output path (`output_path`): no value is
silently replaced by a default. While a command runs, the data loader's messages name its options
(``--data``, ``--download``) instead of the library's arguments (`effv2_lib.data.command_line_words`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .data import command_line_words
from .schedule import ProgressiveSchedule

__all__ = ["TRACEBACK_ENV_VAR", "one_line_errors", "schedule_file", "int_at_least", "output_path", "model_name"]

TRACEBACK_ENV_VAR = "EFFV2_TRACEBACK"


def one_line_errors(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv)``: errors of bad input print ``error: ...`` and return 1, Ctrl-C returns 130."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            with command_line_words():
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
    from .files import read_json

    what = "a progressive schedule (ProgressiveSchedule JSON, e.g. saved by the schedule explorer)"
    todo = "write it with ProgressiveSchedule.to_json() or the schedule explorer, or give --preset"
    try:
        data = read_json(path, what=what, todo=todo)
    except (ValueError, OSError) as exc:  # "<path> <problem>; it should hold ... To go on: ..."
        detail = str(exc).removeprefix(str(Path(path))).strip()
        lead = f"cannot read the schedule file {path}" if isinstance(exc, OSError) else f"{path} is not a schedule"
        raise argparse.ArgumentTypeError(f"{lead}: it {detail}") from exc
    try:
        return ProgressiveSchedule.from_dict(data).to_dict()
    except (ValueError, TypeError, KeyError) as exc:
        raise argparse.ArgumentTypeError(" ".join(f"{path} is not a schedule ({exc}); it should hold {what}. "
                                                  f"To go on: {todo}.".split())) from exc


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, else a usage error (never a silent default)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def output_path(text: str) -> str:
    """An argparse type for ``--out`` and other paths written to: not empty (an empty path would
    write into the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (an empty path would write into the "
                                         "current directory; give a directory name such as runs/NAME)")
    return text


def model_name(text: str) -> str:
    """``--model`` (an argparse type): a named network (effv2_lib.model.MODEL_NAMES) or ``arch:`` and
    a searched network's stage codes (effv2_lib.search), else a usage error saying which exist."""
    from .model import check_model_name

    try:
        return check_model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
