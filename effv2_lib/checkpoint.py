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

from .files import describe, file_error, read_json, read_run, read_torch

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
    "read_run",
    "save_checkpoint",
    "load_checkpoint",
    "TRAINING_STATE_KEYS",
    "check_training_state",
    "load_state_checked",
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
    """Read a checkpoint written by `save_checkpoint` (tensors land on `map_location`).

    A file that is missing, empty, text, cut short or of another format raises one line naming it
    (`effv2_lib.files`); so do the weights alone (model.pt, ``{"weights": ...}``, written by
    `save_weights` under the same format tag) where a training checkpoint was expected.
    """
    state = _load_tagged(path, map_location, "a training checkpoint")
    if "weights" in state and "model" not in state:
        raise file_error(path, "holds a model's weights alone (model.pt, written by --save-weights), not a "
                               "training checkpoint", todo="a resume needs the run's own checkpoint.pt (start "
                                                           "afresh with --overwrite); evaluate weights with "
                                                           "python -m effv2_lib.evaluate")
    return state


def _load_tagged(path: str | os.PathLike, map_location: str | torch.device, kind: str) -> dict[str, Any]:
    """A file of `save_checkpoint` (`kind`: "a training checkpoint" or "weights"): a dict with our format tag."""
    what = describe(path)[0] if describe(path)[0] != describe("")[0] else f"{kind} (written by effv2_lib)"
    state = read_torch(path, map_location=map_location, what=what)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise file_error(path, f"is not {kind} of this version (expected format {CHECKPOINT_FORMAT!r}, "
                               f"found {found!r})", what=what)
    return state


# What `effv2_lib.run_directory.RunDirectory.save` puts into a training checkpoint and a resume reads.
TRAINING_STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "schedule", "epoch", "step", "history",
                       "elapsed")


def check_training_state(state: Mapping[str, Any], path: str | os.PathLike) -> Mapping[str, Any]:
    """`state` (loaded from `path`) if it holds every entry a resume reads, else one line naming the file."""
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if missing:
        raise file_error(path, f"lacks {', '.join(missing)} (it holds {', '.join(sorted(map(str, state)))})")
    return state


def _signature(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items() if hasattr(value, "shape")}


def identify_model(state_dict: Mapping[str, Any]) -> str | None:
    """The name of the `effv2_lib.model.MODEL_NAMES` network whose weights `state_dict` holds (any
    number of classes), or None."""
    from .model import MODEL_NAMES, build_model

    signature = _signature(state_dict)
    heads = {shape[0] for key, shape in signature.items() if len(shape) == 2 and key.endswith("weight")}
    cifar_first = sorted(MODEL_NAMES, key=lambda name: name not in ("cifar", "cifar-tiny", "resnet20"))
    for name in cifar_first:  # the networks this kit trains first: they are small, and the likely ones
        for classes in sorted(heads) or [10]:
            try:
                with torch.device("meta"):  # shapes only: no memory, no initialization
                    candidate = build_model(name, num_classes=classes)
                if _signature(candidate.state_dict()) == signature:
                    return name
            except (ValueError, TypeError):
                continue
    return None


def load_state_checked(model: torch.nn.Module, state_dict: Mapping[str, Any], *, source: str | os.PathLike,
                       model_name: str | None = None) -> None:
    """``model.load_state_dict(state_dict)``; weights of another network raise one line saying which
    network `source` holds and which was asked for (instead of torch's listing of every key)."""
    ours, theirs = _signature(model.state_dict()), _signature(state_dict)
    if ours == theirs:
        model.load_state_dict(state_dict)
        return
    asked = repr(model_name) if model_name else type(model).__name__
    held = identify_model(state_dict)
    if held is not None:
        classes = [shape[0] for key, shape in theirs.items() if len(shape) == 2 and key.endswith("weight")]
        raise ValueError(f"{source} holds the weights of the model {held!r}"
                         + (f" ({classes[-1]} classes)" if classes else "")
                         + f", not of {asked} as asked; give --model {held} (or the weights of a {model_name} run)")
    missing = [key for key in ours if key not in theirs]
    unexpected = [key for key in theirs if key not in ours]
    shapes = [f"{key}: {list(theirs[key])} in the file, {list(ours[key])} in the model"
              for key in ours if key in theirs and ours[key] != theirs[key]]
    details = "; ".join(part for part in (
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "") if part)
    raise ValueError(f"{source} holds weights of no network of this kit that fits {asked}: {details}")


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


def describe_data(data: Mapping[str, Any]) -> str:
    """A run's data as run.json records them (`effv2_lib.training_data.RunData.record`), in words."""
    return (f"{data.get('source')} ({data.get('train_images', '?'):,} training images, "
            f"fingerprint {data.get('fingerprint')})")


def prepare_run_dir(out: str | os.PathLike, run: Mapping[str, Any], *, resume: bool = False,
                    overwrite: bool = False, compare: tuple[str, ...] = (),
                    checkpoint: str | os.PathLike | None = None) -> Path:
    """Claim `out` for the run described by `run` (a JSON-able dict with a ``"config"`` entry).

    * `out` missing or holding none of `RUN_ARTIFACTS`: created, run.json written.
    * `overwrite`: our artifacts in `out` (and `checkpoint`) are deleted, other files stay;
      run.json is written.
    * `resume`: `out` must hold run.json and `checkpoint` must exist, and the saved ``config``
      must agree with ``run["config"]`` on every key in `compare`, and the data's fingerprints
      (``run["data"]``, where both record one) must be equal; run.json is left as it is.
    * `out` holding run.json alone (a run stopped before its first checkpoint: it has not
      started): started afresh, resume or not; run.json is rewritten.
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
    if present == [run_file]:
        # run.json alone: the run was stopped (killed, out of memory, a closed lid) before its first
        # checkpoint. Nothing to resume and nothing to lose: the same command starts it, resume or not.
        resume, overwrite = False, True
    if resume:
        if not run_file.is_file() or not checkpoint.is_file():
            raise RunDirectoryError(f"nothing to resume in {out}: it needs {RUN_FILE} and {checkpoint}, "
                                    f"found {names or 'neither'}. Start the run with the same command "
                                    f"without --resume.")
        saved = read_run(run_file)
        saved_config, config = saved.get("config", {}), run["config"]
        differing = [f"{key}: {saved_config.get(key)!r} in the directory, {config.get(key)!r} now"
                     for key in compare if saved_config.get(key) != config.get(key)]
        if differing:
            raise RunDirectoryError(f"{out} holds a different run ({_describe(saved)}); it differs in "
                                    + "; ".join(differing)
                                    + ". Resume it with its own settings, or pick another --out.")
        saved_data, data = saved.get("data"), run.get("data")
        if saved_data and data and saved_data.get("fingerprint") != data.get("fingerprint"):
            raise RunDirectoryError(f"{out} trained on {describe_data(saved_data)}, and this resume would go on "
                                    f"with {describe_data(data)}. Resume it on the data it started on (the same "
                                    f"--data, or EFFV2_DATA as it was then), or pick another --out.")
        return out
    if present and not overwrite:
        what = _describe(read_run(run_file)) if run_file.is_file() else "files of a run"
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
        state = _load_tagged(path, "cpu", "weights")
        if "weights" not in state:
            what = ("a training checkpoint (model, optimizer, schedule, ...)" if "model" in state
                    else f"entries {', '.join(sorted(map(str, state)))}")
            raise file_error(path, f"holds {what}, not weights",
                             todo="pass model.pt (or its model.partK.pt shards) of a run trained with "
                                  "--save-weights; a checkpoint's weights are load_checkpoint(path)['model']")
        weights = state["weights"]
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise file_error(path, "holds 'weights' that are not a dict of tensors")
        merged.update(weights)
    return merged
