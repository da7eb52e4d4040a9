"""Reading the kit's files back: one place that turns any failure into one line.

Every file the kit reads (run.json, history.json, summary.json, throughput.json, a schedule, a
checkpoint, weights, a data set's .npz) goes through `read_json`, `read_torch` or `open_npz`. A
file that is missing, empty, cut short, of another kind or from another version raises
FileNotFoundError (missing, unreadable) or ValueError (wrong content) with one line that names
the file, says what it holds or should hold, and what to do, e.g.::

    runs/a/run.json is not JSON (Expecting value: line 1 column 1 (char 0)); it should hold the
    run's settings ... To go on: start the run afresh with --overwrite, or give another --out.

What a file should hold and what to do about it are looked up by its name (`describe`); a caller
may say it instead (``what=``, ``todo=``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["describe", "read_json", "read_run", "read_torch", "open_npz", "file_error"]

# file name (a regular expression on the name alone) -> (what it holds, what to do when it is unreadable)
_KINDS: tuple[tuple[str, str, str], ...] = (
    (r"run\.json", "the run's settings (run.json: a JSON object with a \"config\" entry, written when a run "
                   "starts)",
     "start the run afresh with --overwrite, or give another --out"),
    (r"history\.json", "one record per finished epoch (history.json, rewritten after every epoch)",
     "resume the run (--resume) to rewrite it, or start the run afresh with --overwrite"),
    (r"summary\.json", "a run's outcome (summary.json, written when the run finishes or stops)",
     "rerun the command that made the run (--overwrite starts it afresh)"),
    (r"throughput\.json", "the images/s measured when the experiment started (throughput.json)",
     "delete it and rerun the experiment's command: it measures again"),
    (r"load\.json", "the machine's load after every epoch (load.json)", "delete it; the next run writes it again"),
    (r"checkpoint\.pt", "a training checkpoint (checkpoint.pt: model, optimizer, schedule and position, "
                        "written every epoch)",
     "start the run afresh with --overwrite (or restore the file from a copy)"),
    (r"model(\.part\d+)?\.pt", "weights (model.pt or model.partK.pt, written by train --save-weights)",
     "pass the model*.pt files of a run trained with --save-weights"),
    (r".*\.npz", "images and labels (an .npz archive with x uint8 [N, 32, 32, 3] and y integer labels [N])",
     "write it with numpy.savez(path, x=images, y=labels), or pass another --data"),
)


def describe(path: str | os.PathLike) -> tuple[str, str]:
    """(what the file `path` holds, what to do when it cannot be read), from its name."""
    name = Path(path).name
    for pattern, what, todo in _KINDS:
        if re.fullmatch(pattern, name):
            return what, todo
    if name.endswith(".json"):
        return "a JSON file", "check or re-create it"
    return "a file of this kit", "check or re-create it"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def file_error(path: str | os.PathLike, problem: str, *, what: str | None = None, todo: str | None = None,
               missing: bool = False) -> Exception:
    """The one-line error for `path`: "<path> <problem>; it should hold <what>. To go on: <todo>."
    (FileNotFoundError when `missing`, else ValueError)."""
    known_what, known_todo = describe(path)
    message = (f"{path} {_one_line(problem)}; it should hold {what or known_what}. "
               f"To go on: {todo or known_todo}.")
    return FileNotFoundError(message) if missing else ValueError(message)


def _check_readable(path: Path, what: str | None, todo: str | None) -> None:
    if not path.exists():
        raise file_error(path, "does not exist", what=what, todo=todo, missing=True)
    if path.is_dir():
        raise file_error(path, "is a directory, not a file", what=what, todo=todo, missing=True)
    if path.stat().st_size == 0:
        raise file_error(path, "is empty (0 bytes: a copy or save that did not finish?)", what=what, todo=todo)


def read_json(path: str | os.PathLike, *, what: str | None = None, todo: str | None = None,
              keys: tuple[str, ...] = ()) -> Any:
    """The JSON value in `path`; with `keys`, a JSON object that must hold each of them."""
    path = Path(path)
    _check_readable(path, what, todo)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise file_error(path, f"cannot be read ({exc.strerror or exc})", what=what, todo=todo, missing=True) from exc
    except UnicodeDecodeError as exc:
        raise file_error(path, "is not text (binary content)", what=what, todo=todo) from exc
    except json.JSONDecodeError as exc:
        raise file_error(path, f"is not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})",
                         what=what, todo=todo) from exc
    if keys:
        if not isinstance(value, dict):
            raise file_error(path, f"holds a JSON {type(value).__name__}, not an object with {list(keys)}",
                             what=what, todo=todo)
        missing = [key for key in keys if key not in value]
        if missing:
            raise file_error(path, f"lacks {', '.join(repr(k) for k in missing)} (it has "
                                   f"{', '.join(repr(k) for k in value) or 'nothing'})", what=what, todo=todo)
    return value


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """run.json: the run's record, whose "config" is a JSON object."""
    run = read_json(path, keys=("config",))
    if not isinstance(run["config"], dict):
        raise file_error(path, f"has a \"config\" that is a JSON {type(run['config']).__name__}, not an object")
    return run


def read_torch(path: str | os.PathLike, *, map_location: Any = "cpu", what: str | None = None,
               todo: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain values only: loading runs no code)."""
    import torch

    path = Path(path)
    _check_readable(path, what, todo)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise file_error(path, f"cannot be read ({exc.strerror or exc})", what=what, todo=todo, missing=True) from exc
    except Exception as exc:  # the unpickler's EOFError, IndexError, KeyError, UnpicklingError, a zip's RuntimeError
        with open(path, "rb") as file:
            head = file.read(64)
        if head.startswith(b"{") or head.startswith(b"[") or all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            problem = "is text, not a file written by torch.save"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problem = f"is not a readable torch file ({type(exc).__name__}{': ' + reason if reason else ''})"
        raise file_error(path, problem, what=what, todo=todo) from exc


def open_npz(path: str | os.PathLike, *, what: str | None = None, todo: str | None = None):
    """``numpy.load(path, allow_pickle=False)``: the open archive (use it as a context manager)."""
    import numpy as np

    path = Path(path)
    _check_readable(path, what, todo)
    try:
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise file_error(path, f"cannot be read ({exc.strerror or exc})", what=what, todo=todo,
                             missing=True) from exc
        raise file_error(path, f"is not a readable .npz file ({_one_line(exc, 120)})", what=what, todo=todo) from exc
    except Exception as exc:  # zipfile and pickle errors all mean "not a readable .npz"
        raise file_error(path, f"is not a readable .npz file ({type(exc).__name__}: {_one_line(exc, 120)})",
                         what=what, todo=todo) from exc
