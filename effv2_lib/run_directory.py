"""One training run on disk: create or resume it, save its state, finish it.

A run directory (``--out runs/NAME``) holds run.json (what the run is), checkpoint.pt (everything
the next step depends on), history.json (one record per finished epoch), summary.json (the
outcome), the figures (curves.png, confusion_matrix.png) and optionally the final weights
(model.pt). `RunDirectory` is the only code that decides what goes into which file, and what a
checkpoint holds: `save` writes it and `resume` reads it back into the trainer's objects. The
rules that keep a run from being lost (atomic writes, a directory holding another run is never
overwritten unless asked) are `effv2_lib.checkpoint`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    RunDirectoryError,
    atomic_write_json,
    capture_rng_state,
    check_training_state,
    load_checkpoint,
    load_state_checked,
    prepare_run_dir,
    save_checkpoint,
    save_weights,
)
from .report import write_plots
from .schedule import ProgressiveSchedule

__all__ = ["RunDirectory", "WEIGHT_SHARD_BYTES"]

# Largest file the GPU machines send back (16 MiB), less room for the container.
WEIGHT_SHARD_BYTES = 15 * 2**20


class RunDirectory:
    """A run's files. ``out=None`` keeps the run in memory (nothing is read or written);
    ``writer=False`` (every distributed rank but 0) never writes.

    Args:
        out: the run directory.
        checkpoint_dir: where checkpoint.pt goes instead of `out` (e.g. a faster disk).
        writer: whether this process writes.
    """

    def __init__(self, out: str | os.PathLike | None, checkpoint_dir: str | os.PathLike | None = None, *,
                 writer: bool = True) -> None:
        self.out = None if out is None else Path(out)
        self.checkpoint = None if out is None else Path(checkpoint_dir or out) / CHECKPOINT_FILE
        self.writer = writer and out is not None

    def create_or_resume(self, run: Mapping[str, Any], *, resume: bool, overwrite: bool,
                         compare: Sequence[str]) -> None:
        """A new run writes run.json into an empty (or, with `overwrite`, a replaced) directory; a
        resume checks that the directory holds this run: the `compare` keys of its config agree."""
        if self.writer:
            prepare_run_dir(self.out, run, resume=resume, overwrite=overwrite, compare=compare,
                            checkpoint=self.checkpoint)

    def save(self, *, epoch: int, step: int, partial: dict[str, Any] | None, model: nn.Module, optimizer,
             scheduler, ema, rng: list, schedule: ProgressiveSchedule, config: dict[str, Any],
             history: list[dict[str, Any]], elapsed: float, compile_error: str | None) -> None:
        """checkpoint.pt: the run continues at (epoch, step), with `partial` the unfinished epoch's
        sums; at an epoch's end (`partial` None) also history.json."""
        if not self.writer:
            return
        save_checkpoint({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng,  # every rank's generators
            "schedule": schedule.to_dict(),
            "config": config,
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "history": history,
            "elapsed": elapsed,
            "compile_error": compile_error,
        }, self.checkpoint)
        if partial is None:
            atomic_write_json(self.out / HISTORY_FILE, history)

    def resume(self, map_location, *, schedule: ProgressiveSchedule, model: nn.Module, optimizer, scheduler,
               ema) -> dict[str, Any]:
        """Load the checkpoint into model, optimizer, scheduler and EMA; return where the run stands:
        epoch, step, partial, history, elapsed, compile_error and rng (one state per rank).

        Without a checkpoint (the run was stopped before its first one, so `create_or_resume` started
        it afresh) the run stands at its beginning, every generator where it is now."""
        if not self.checkpoint.is_file():
            world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            return {"epoch": 0, "step": 0, "partial": None, "history": [], "elapsed": 0.0,
                    "compile_error": None, "rng": [capture_rng_state()] * world_size}
        state = check_training_state(load_checkpoint(self.checkpoint, map_location=map_location), self.checkpoint)
        saved_schedule = ProgressiveSchedule.from_dict(state["schedule"])
        if saved_schedule != schedule:
            raise RunDirectoryError(f"the checkpoint's schedule differs from this run's:\n"
                                    f"{saved_schedule.table()}\nvs\n{schedule.table()}")
        load_state_checked(model, state["model"], source=self.checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if state.get("ema") is None:
                raise RunDirectoryError("the checkpoint holds no EMA weights; resume without --ema")
            ema.load_state_dict(state["ema"])
        return {"epoch": int(state["epoch"]), "step": int(state["step"]), "partial": state.get("partial"),
                "history": list(state["history"]), "elapsed": float(state["elapsed"]),
                "compile_error": state.get("compile_error"), "rng": state["rng"]}

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]], *, title: str,
               classes: Sequence[str], weights: Mapping[str, Any] | None = None) -> None:
        """The final weights (if given; their file names join the summary), summary.json and the
        figures: training curves and, after a finished run, the confusion matrix."""
        if not self.writer:
            return
        if weights is not None:
            summary["weights"] = [f.name for f in save_weights(weights, self.out / WEIGHTS_FILE, WEIGHT_SHARD_BYTES)]
        atomic_write_json(self.out / SUMMARY_FILE, summary)
        if history:
            write_plots(self.out, history, title, summary.get("confusion_matrix"), classes,
                        summary.get("final_test_acc"))
