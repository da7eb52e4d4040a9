"""Where a training run starts and what it leaves behind to continue from.

A run with ``--out`` opens its run directory (`open_run_directory`: run.json for a new run, or the
check that the directory holds this same run), starts at the beginning or at the `ResumePoint`
its checkpoint records (`read_resume_point`), and saves its training state after every epoch and
when stopped in the middle of one (`save_training_state`). What goes into which file is
`effv2_lib.run_directory.RunDirectory`'s; this module decides when, and with which of the run's
objects. Under torchrun only rank 0 writes, and every rank fails or none.

A resume continues bit for bit on the CPU: the checkpoint holds every rank's random generators,
restored after everything that draws random numbers while being built (`effv2_lib.run_setup`),
and the data generators are reseeded per epoch (`effv2_lib.training_data`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .checkpoint import RunDirectoryError, capture_rng_state, restore_rng_state
from .config import RUNTIME_FIELDS, TrainConfig
from .distributed import Ranks
from .run_directory import RunDirectory
from .run_setup import TrainingSetup
from .training_data import RunData

__all__ = ["ResumePoint", "open_run_directory", "read_resume_point", "save_training_state", "resume_hint"]


@dataclass
class ResumePoint:
    """Where the run continues: at `step` of `epoch` (both from 0), with what came before."""

    epoch: int = 0
    step: int = 0  # > 0: in the middle of the epoch
    partial: dict[str, Any] | None = None  # the unfinished epoch's sums and training time
    rng_state: Any = None  # this rank's generators when the checkpoint was written
    elapsed: float = 0.0  # training time of earlier invocations
    history: list[dict[str, Any]] = field(default_factory=list)
    compile_error: str | None = None


def open_run_directory(config: TrainConfig, given_config: TrainConfig, ranks: Ranks,
                       command: str | None, data: RunData) -> RunDirectory:
    """The run's directory: run.json written for a new run, or checked to hold this run on a resume
    (every config field but the runtime ones must agree, and the data must be the same images).
    Rank 0 decides, then every rank fails or none.

    `given_config` is the config as given (a smoke run's unshrunk), what run.json records, with
    where the data came from and their fingerprint (`RunData.record`)."""
    run_dir = RunDirectory(config.out, config.checkpoint_dir, writer=ranks.is_main)
    if run_dir.out is None:
        return run_dir
    error = None
    if ranks.is_main:
        run = {"config": given_config.to_dict(), "command": command, "data": data.record()}
        compare = tuple(f.name for f in fields(TrainConfig) if f.name not in RUNTIME_FIELDS)
        try:
            run_dir.create_or_resume(run, resume=config.resume, overwrite=config.overwrite, compare=compare)
        except Exception as exc:  # raised below, after the other ranks have heard of it
            error = exc
    message = ranks.from_main(None if error is None else str(error))  # every rank fails, or none
    if error is not None:
        raise error
    if message is not None:
        raise RunDirectoryError(message)
    return run_dir


def read_resume_point(run_dir: RunDirectory, setup: TrainingSetup, ranks: Ranks, device: torch.device, *,
                      out: str | None, log: Callable[[str], None]) -> ResumePoint:
    """Load the checkpoint into the model, optimizer, LR scheduler and EMA, restore this rank's
    random generators, and return where the run continues (`out`: the directory as given, for the log)."""
    where = run_dir.resume(device, schedule=setup.schedule, model=setup.model, optimizer=setup.optimizer,
                           scheduler=setup.scheduler, ema=setup.ema)
    start = ResumePoint(epoch=where["epoch"], step=where["step"], partial=where["partial"],
                        elapsed=where["elapsed"], history=where["history"], compile_error=where["compile_error"])
    if len(where["rng"]) == ranks.world_size:
        start.rng_state = where["rng"][ranks.rank]
        # Restored last, after every object that draws random numbers while being built.
        restore_rng_state(start.rng_state)
    else:
        warnings.warn(f"the checkpoint was written by {len(where['rng'])} process(es), this run has "
                      f"{ranks.world_size}: random streams restart from the seed", stacklevel=2)
    if not run_dir.checkpoint.is_file():
        log(f"{out} holds no checkpoint (the run stopped before its first one): starting it from the beginning")
        return start
    at = f"epoch {start.epoch + 1} of {setup.schedule.total_epochs}"
    if start.step:
        at += f", step {start.step + 1} of {setup.steps_per_epoch}"
    log(f"resuming {out} at {at}")
    return start


def save_training_state(run_dir: RunDirectory, setup: TrainingSetup, ranks: Ranks, config: TrainConfig, *,
                        epoch: int, step: int, partial: dict[str, Any] | None, history: list[dict[str, Any]],
                        elapsed: float, compile_error: str | None) -> None:
    """Checkpoint: the run continues at (epoch, step); every rank's RNG state is gathered. At an
    epoch's end (`partial` None) history.json too."""
    if run_dir.checkpoint is None:
        return
    rng = ranks.gather(capture_rng_state())
    run_dir.save(epoch=epoch, step=step, partial=partial, model=setup.model, optimizer=setup.optimizer,
                 scheduler=setup.scheduler, ema=setup.ema, rng=rng, schedule=setup.schedule,
                 config=config.to_dict(), history=history, elapsed=elapsed, compile_error=compile_error)


def resume_hint(run_dir: RunDirectory, out: str | None, resume_command: str | None = None) -> str:
    """Where the stopped run's state is and how to continue it (the checkpoint was just saved):
    `resume_command` when the run belongs to a larger command (an experiment resumes its runs
    itself), else train's --resume."""
    if run_dir.checkpoint is None:
        return "no output directory, nothing saved"
    how = f"by running {resume_command} again" if resume_command else f"with --resume --out {out}"
    return f"checkpoint saved to {run_dir.checkpoint}; continue {how}"
