"""Training state on disk: atomic checkpoints, random-number states, protected run directories.

A run directory (``--out runs/NAME``) holds one training run (`effv2_lib.run_directory.RunDirectory`
decides what goes into each file; this module provides the safe reads and writes):

    run.json            what the run is (its configuration), written when it starts
    checkpoint.pt       the latest full training state, rewritten every epoch (and on Ctrl-C)
    history.json        one record per finished epoch
    summary.json        the outcome (accuracies, time, hardware, command)
    curves.png, confusion_matrix.png
    model.pt            the final weights alone (optional; may be split into model.partK.pt)

Three rules keep a run from being lost:

* Every file is written next to its final name and then renamed over it (`os.replace`, atomic
  on POSIX and Windows). A crash or a second Ctrl-C while writing leaves the previous version
  intact, never half a file.
* A checkpoint holds everything the next step depends on: model, optimizer, learning-rate
  scheduler, EMA weights, every random-number generator, the schedule and the position (epoch
  and step). Resuming from it continues the run as if it had never stopped.
* `prepare_run_dir` refuses to write into a directory that holds another run, unless told to
  overwrite it or to resume it (and then only if the configurations agree).

Checkpoints hold only tensors and plain Python values, so `load_checkpoint` reads them with
``torch.load(weights_only=True)``: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RUN_FILE",
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
    "SUMMARY_FILE",
    "RUN_ARTIFACTS",
    "RunDirectoryError",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "prepare_run_dir",
    "save_weights",
    "load_weights",
]

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
WEIGHTS_FILE = "model.pt"
# What a run writes into its directory (glob patterns); --overwrite removes these, nothing else.
RUN_ARTIFACTS = (RUN_FILE, CHECKPOINT_FILE, HISTORY_FILE, SUMMARY_FILE, CURVES_FILE, CONFUSION_FILE,
                 "model.pt", "model.part*.pt")
CHECKPOINT_FORMAT = "effv2-train-checkpoint/1"


class RunDirectoryError(FileExistsError):
    """The output directory holds another run (or nothing to resume)."""


# ------------------------------------------------------------------------------ atomic files
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """torch.save `state` to `path` atomically; `state` gets a format tag added."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors land on `map_location`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a training checkpoint of this version "
                         f"(expected format {CHECKPOINT_FORMAT!r}, found {found!r})")
    return state


# ------------------------------------------------------------------------- random numbers
def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators (CPU and every CUDA device).

    NumPy's state is stored as a tensor and plain values so that the checkpoint loads with
    ``weights_only=True``.
    """
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo `capture_rng_state`: every global generator continues where it was captured."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state lacks {sorted(missing)}; expected what capture_rng_state returns")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -------------------------------------------------------------------------- run directories
def _describe(run: Mapping[str, Any]) -> str:
    started = run.get("started", "at an unknown time")
    return f"the run started {started}"


def prepare_run_dir(out: str | os.PathLike, run: Mapping[str, Any], *, resume: bool = False,
                    overwrite: bool = False, compare: tuple[str, ...] = (),
                    checkpoint: str | os.PathLike | None = None) -> Path:
    """Claim `out` for the run described by `run` (a JSON-able dict with a ``"config"`` entry).

    * `out` missing or holding none of `RUN_ARTIFACTS`: created, run.json written.
    * `overwrite`: our artifacts in `out` (and `checkpoint`) are deleted, other files stay;
      run.json is written.
    * `resume`: `out` must hold run.json and `checkpoint` must exist, and the saved ``config``
      must agree with ``run["config"]`` on every key in `compare`; run.json is left as it is.
    * otherwise a directory holding a run raises `RunDirectoryError`.

    `checkpoint` is where the run keeps its checkpoint (default: ``out/checkpoint.pt``).
    """
    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint is not None else out / CHECKPOINT_FILE
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in the "
                         "directory, overwrite deletes it")
    if "config" not in run:
        raise ValueError("run must hold a 'config' entry (the run's configuration)")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out} exists and is not a directory")
    present = sorted({path for pattern in RUN_ARTIFACTS for path in out.glob(pattern)}
                     | ({checkpoint} if checkpoint.exists() else set()))
    names = ", ".join(str(p.relative_to(out)) if p.parent == out else str(p) for p in present)
    run_file = out / RUN_FILE
    if resume:
        if not run_file.is_file() or not checkpoint.is_file():
            raise RunDirectoryError(f"nothing to resume in {out}: it needs {RUN_FILE} and {checkpoint}, "
                                    f"found {names or 'neither'}")
        saved = read_json(run_file)
        saved_config, config = saved.get("config", {}), run["config"]
        differing = [f"{key}: {saved_config.get(key)!r} in the directory, {config.get(key)!r} now"
                     for key in compare if saved_config.get(key) != config.get(key)]
        if differing:
            raise RunDirectoryError(f"{out} holds a different run ({_describe(saved)}); it differs in "
                                    + "; ".join(differing)
                                    + ". Resume it with its own settings, or pick another --out.")
        return out
    if present and not overwrite:
        what = _describe(read_json(run_file)) if run_file.is_file() else "files of a run"
        raise RunDirectoryError(f"{out} already holds {what} ({names}). Pass --resume "
                                f"(resume=True) to continue it, --overwrite (overwrite=True) to replace "
                                f"it, or choose another output directory.")
    for path in present:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 **run})
    return out


# --------------------------------------------------------------------- portable weights
def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 max_bytes: int | None = None) -> list[Path]:
    """Save a state_dict in fp32/int as one file, or as ``NAME.partK.pt`` shards of at most
    `max_bytes` of tensor data each (for transports that cap the size of a file).

    Returns the files written; `load_weights` reads them back.
    """
    path = Path(path)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    if max_bytes is None or sum(t.numel() * t.element_size() for t in tensors.values()) <= max_bytes:
        save_checkpoint({"weights": tensors}, path)
        return [path]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_bytes:
            raise ValueError(f"tensor {key!r} alone has {nbytes} bytes, more than max_bytes={max_bytes}")
        if size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    stem = path.name.removesuffix(".pt")
    return [save_checkpoint({"weights": shard}, path.with_name(f"{stem}.part{k}.pt"))
            for k, shard in enumerate(shards)]


def load_weights(paths: str | os.PathLike | list) -> dict[str, torch.Tensor]:
    """Merge the state_dict saved by `save_weights` (one path or the list of shards)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("paths must name at least one weights file")
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint(path)
        if "weights" not in state:
            raise ValueError(f"{path} holds no 'weights' (it is a training checkpoint: use its 'model')")
        merged.update(state["weights"])
    return merged
