"""The training loop behind `effv2_lib.train.train`: progressive learning, fast, resumable.

Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training", Section 4, Algorithm 1:
the run is cut into M stages (`effv2_lib.schedule.ProgressiveSchedule`); when stage i begins,
the trainer switches the training image size S_i, the head dropout rate gamma_i
(`set_dropout`), the RandAugment magnitude epsilon_i and the Mixup alpha lambda_i
(`effv2_lib.augment`; under the automl rule also the CutMix alpha, and RandAugment uses
automl's op table). After the last epoch, BatchNorm statistics are re-estimated at the test
size before the final evaluation when the last stage trained at another size (motivated by
FixRes, Touvron et al. 2019, which fine-tunes at the test size; not part of the V2 recipe;
accuracy recorded before and after). The optimizer, learning-rate schedule and EMA are in `effv2_lib.optim`.

This module holds the method; what it trains with and everything beside it lives in small parts:

    effv2_lib.run_setup       a TrainConfig built into model, optimizer, LR schedule, EMA, loaders
    effv2_lib.training_data   which images, and each epoch's batches at stage i's settings
    effv2_lib.run_state       the run directory, the resume point, saving the training state
    effv2_lib.run_report      the opening description, summary.json, the closing line
    effv2_lib.loop_machinery  host-sync cadence, stop on a signal, non-finite guard, compile fallback

Speed (at CIFAR sizes a GPU is bound by launches and data movement, not FLOPs): the data stay on the
device (`effv2_lib.augment.DeviceLoader`: crop, flip, resize, per-sample RandAugment and Mixup
batched there), bf16 autocast, channels_last, cudnn.benchmark, optional torch.compile (one
recompilation per stage size, its cost recorded), and no host-device synchronization in the
training step: loss and accuracy accumulate on the device (`DeviceTally`) and are read every
`sync_every` steps (default 50 on CUDA) and at the end of each epoch. (With RandAugment on, the
device loader waits for the GPU a few dozen times per chunk of about 8,192 images, not per step:
see `effv2_lib.augment.DeviceLoader`.)

Nothing lost: a checkpoint every epoch, written atomically (`effv2_lib.checkpoint`), holds the
model, optimizer, LR scheduler, EMA, every random generator, the schedule and the position
(epoch and step). Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves and stops; a third
signal aborts without saving. A resume continues bit for bit on the CPU: the data generators
are reseeded from (seed, epoch, rank) at every epoch, and a resume in the middle of an epoch
replays (and discards) the epoch's first batches, which leaves every generator where the
interrupted run had it. (On a GPU, cuDNN's nondeterministic kernels make runs equal up to
rounding, resumed or not.) A NaN or infinite loss stops the run, naming the epoch and step.

Distributed (`effv2_lib.distributed`): `batch_size` is the global batch; each rank takes
batch_size / N images per step from its own shard, only rank 0 writes, and at the end the ranks
compare digests of their weights (``ranks_identical`` in summary.json).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import set_dropout
from .config import TrainConfig, smoke_config
from .data import CifarData
from .distributed import Ranks, state_digest
from .evaluate import evaluate, reestimate_batchnorm
from .loop_machinery import CompiledForward, NonFiniteLossError, StepMeter, StopOnSignal
from .report import epoch_line
from .run_report import describe, describe_result, summarize, write_run_report
from .run_setup import build_training
from .run_state import ResumePoint, open_run_directory, read_resume_point, resume_hint, save_training_state
from .schedule import Stage

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError"]


@dataclass
class TrainResult:
    """What a run returns: per-epoch records, the summary, and the model as it was evaluated."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module  # the reported model (the EMA if enabled), on its device, eval mode
    out: Path | None
    status: str  # "finished", "interrupted" (signal) or "stopped" (stop_after)


class Trainer:
    """One run of `effv2_lib.train.train`.

    Read `run` (Algorithm 1), `train_epoch` (the epoch loop) and `train_step`: they are the method.
    What they train with is built from the config elsewhere (`effv2_lib.run_setup`: model,
    optimizer, learning-rate schedule, EMA; `effv2_lib.training_data`: the data and the batches of
    each stage); the run directory and resume point are `effv2_lib.run_state`'s, the printed and
    written report `effv2_lib.run_report`'s, and the machinery that keeps the loop fast and safe
    (host-sync cadence, stop on a signal, non-finite guard, compile fallback) `effv2_lib.loop_machinery`'s.
    """

    def __init__(self, config: TrainConfig, *, data: CifarData | None = None, progress: bool = True,
                 on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
                 command: str | None = None, resume_command: str | None = None) -> None:
        self.given_config = config  # what run.json records and a resume is compared with (smoke unshrunk)
        self.config = smoke_config(config) if config.smoke else config
        self.given_data = data
        self.progress = progress
        self.on_epoch = on_epoch
        self.on_step = on_step
        self.command = command
        self.resume_command = resume_command  # how a stopped run continues, when not train --resume
        self.ranks, self.device = Ranks.from_environment(self.config.device)

    def log(self, message: str) -> None:
        if self.ranks.is_main:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    # ------------------------------------------------------------------------- Algorithm 1
    def run(self) -> TrainResult:
        """Algorithm 1: for each stage i, set the image size S_i and the regularization (gamma_i,
        epsilon_i, lambda_i), then train the stage's epochs; evaluate and checkpoint every epoch."""
        self.prepare()                                          # model, data, optimizer, resume point
        self.log(describe(self.config, self.setup, self.ranks, self.device))
        status = "finished"
        with StopOnSignal(self.log) as stop:                    # Ctrl-C: finish the step, save, stop
            for epoch in range(self.start.epoch, self.schedule.total_epochs):
                stage = self.schedule.at(epoch)                 # stage i trains epochs [start, end)
                if epoch in (stage.start_epoch, self.start.epoch):
                    self.enter_stage(stage, announce=epoch == stage.start_epoch > 0)
                stats = self.train_epoch(epoch, stage, stop)    # None: stopped mid-epoch, state saved
                if stats is None:
                    status = "interrupted"
                    break
                self.history.append(self.epoch_record(epoch, stage, stats))  # test accuracy, timings
                self.save_epoch(epoch)                          # checkpoint and history.json
                stopped = self.stop_requested(epoch, stop)      # Ctrl-C during the epoch, or stop_after
                if stopped is not None:
                    status = stopped
                    break
        summary = self.finish(status)                           # final test, summary.json, figures
        return TrainResult(self.history, summary, self.reported_model.eval(), self.run_dir.out, status)

    def enter_stage(self, stage: Stage, announce: bool = False) -> None:
        """Stage i's image size S_i and regularization: dropout gamma_i on the model, RandAugment
        epsilon_i and Mixup lambda_i (and the automl rule's CutMix) on the training data."""
        set_dropout(self.model, stage.dropout)
        if self.ema is not None:
            set_dropout(self.ema.module, stage.dropout)
        self.batches.set_stage(stage)
        self.step = self.forward.step_at(stage.image_size, self.train_step)  # torch.compile: once per size
        if announce:
            self.log(f"stage {stage.index}: {stage.image_size} px, dropout {stage.dropout:.3f}, "
                     f"RandAugment {stage.randaug_magnitude:.2f}, Mixup alpha {stage.mixup_alpha:.3f}"
                     + (f", CutMix alpha {stage.cutmix_alpha:.3f}" if stage.cutmix_alpha else ""))

    def train_epoch(self, epoch: int, stage: Stage, stop: StopOnSignal) -> dict[str, Any] | None:
        """One epoch of SGD at stage i's settings: its statistics, or None when a stop came in the
        middle (the state at that step is then saved)."""
        self.model.train()
        first = self.start.step if epoch == self.start.epoch else 0     # > 0: resuming mid-epoch
        batches = self.batches.epoch(epoch, stage, skip=first, rng_state=self.start.rng_state)
        with StepMeter(self, epoch, stage, first, stop) as meter:
            for step in range(first, self.steps_per_epoch):
                images, targets = next(batches)                 # [B, 3, S_i, S_i]; [B], or [B, K] mixed
                logits, loss = self.step(images, targets)       # one SGD step: train_step below
                meter.add(step, loss, logits, targets)          # summed on the device: no waiting
                if meter.must_stop(step):                       # asked to stop (Ctrl-C)? save and return
                    return self.stop_mid_epoch(epoch, step + 1, meter)
        return meter.stats()

    def train_step(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """One SGD step: forward in bf16 autocast, cross-entropy (soft targets when mixed), backward,
        update, learning-rate step, EMA. Returns logits [B, K] and the loss, still on the device."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.setup.bf16):
            logits = self.forward(images)  # [B, K]
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return logits.detach(), loss.detach()

    def epoch_record(self, epoch: int, stage: Stage, stats: dict) -> dict[str, Any]:
        """The epoch's record for history.json, with the test accuracy of the model as it is now."""
        averaged = [self.model] + ([self.ema.module] if self.ema is not None else [])
        self.ranks.broadcast_buffers(*averaged)  # distributed: every rank tests rank 0's statistics
        loss_sum, correct, seen = stats["global"]
        record = {
            "epoch": epoch + 1,
            "stage": stage.index,
            "image_size": stage.image_size,
            "dropout": stage.dropout,
            "randaug_magnitude": stage.randaug_magnitude,
            "randaug_applied": stage.randaug_magnitude > 0,  # both loaders apply it
            "mixup_alpha": stage.mixup_alpha,
            "cutmix_alpha": stage.cutmix_alpha,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,  # against the larger Mixup partner when mixing
            "test_acc": self.test(self.reported_model).accuracy,
            "images_per_s": seen / stats["steady_time"],  # compiling excluded
            "epoch_time": stats["train_time"],
            "wall_time": self.elapsed(),
            "lr": self.scheduler.get_last_lr()[0],
            "compile_time": stats["compile_time"],
        }
        if self.ema is not None:
            record["test_acc_raw"] = self.test(self.model).accuracy
        self.log(epoch_line(record, self.schedule.total_epochs))
        return record

    def finish(self, status: str) -> dict[str, Any]:
        """The summary; after the last epoch, the final test at the test size (BatchNorm statistics
        re-estimated there first when the last stage trained at another size: motivated by FixRes,
        not part of the V2 recipe, accuracy recorded before and after); then the run's files."""
        cfg, model = self.config, self.reported_model
        summary = summarize(status, cfg, self.setup, self.ranks, self.device, history=self.history,
                            command=self.command, setup_time=self.setup_time, compile_error=self.forward.error)
        if status == "finished":
            final = before = self.test(model)
            eval_size, last_size = self.setup.eval_size, self.schedule.stages[-1].image_size
            reestimate = last_size != eval_size if cfg.bn_reestimate is None else cfg.bn_reestimate
            record = {"applied": reestimate, "eval_size": eval_size, "last_train_size": last_size,
                      "batches": 0, "images": 0}
            if reestimate:
                bn_loader = self.setup.bn_loader
                record["batches"] = reestimate_batchnorm(model, bn_loader, bf16=self.setup.bf16)
                record["images"] = len(bn_loader.labels)
                self.ranks.broadcast_buffers(model)  # the ranks computed the same statistics, up to GPU rounding
                final = self.test(model)
                self.log(f"BatchNorm statistics re-estimated at {eval_size} px on {record['batches']} batches: "
                         f"test accuracy {before.accuracy:.4f} -> {final.accuracy:.4f}")
            summary["bn_reestimation"] = {**record, "test_acc_before": before.accuracy,
                                          "test_acc_after": final.accuracy, "change": final.accuracy - before.accuracy}
            summary.update(final_test_acc=final.accuracy, test_images=final.num_images,
                           confusion_matrix=final.confusion.tolist(), wall_time_s=self.elapsed())
            if self.ranks.enabled:
                summary["ranks_identical"] = len(set(self.ranks.gather(state_digest(model)))) == 1
                if not summary["ranks_identical"]:
                    warnings.warn("the ranks ended with different weights", RuntimeWarning, stacklevel=2)
        weights = model.state_dict() if status == "finished" and cfg.save_weights else None
        write_run_report(self.run_dir, summary, self.history, cfg, self.setup, weights)
        if status == "finished":
            self.log(describe_result(summary, cfg.out))
        return summary

    # ------------------------------------------------------ what the method trains with, and where
    def prepare(self) -> None:
        """Build everything from the config (`effv2_lib.run_setup`), open the run directory and find
        where the run starts (`effv2_lib.run_state`: the beginning, or the checkpoint's resume point)."""
        started = time.perf_counter()
        self.setup = build_training(self.config, self.ranks, self.device, data=self.given_data, log=self.log)
        # What Algorithm 1 and the step use, by name.
        self.schedule, self.batches, self.model = self.setup.schedule, self.setup.batches, self.setup.model
        self.optimizer, self.scheduler, self.ema = self.setup.optimizer, self.setup.scheduler, self.setup.ema
        self.steps_per_epoch = self.setup.steps_per_epoch
        self.config = self.setup.config  # as trained: a batch larger than the data is fitted to it
        self.run_dir = open_run_directory(self.config, self.given_config, self.ranks, self.command, self.setup.data)
        self.start = (read_resume_point(self.run_dir, self.setup, self.ranks, self.device, out=self.config.out,
                                        log=self.log) if self.config.resume else ResumePoint())
        self.history = self.start.history
        self.forward = CompiledForward(self.ranks.wrap(self.model, self.device), enabled=self.config.compile,
                                       mode=self.config.compile_mode, device=self.device, log=self.log,
                                       error=self.start.compile_error)
        self.setup_time = time.perf_counter() - started
        self.run_started = time.perf_counter()

    @property
    def reported_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def test(self, model: nn.Module):
        return evaluate(model, self.setup.test_loader, self.setup.data.num_classes, bf16=self.setup.bf16,
                        all_reduce=self.ranks.enabled)

    def elapsed(self) -> float:
        return self.start.elapsed + time.perf_counter() - self.run_started

    # ----------------------------------------------------------------- saving, stopping
    def save(self, epoch: int, step: int, partial: dict | None = None) -> None:
        """Checkpoint: the run continues at (epoch, step) (`effv2_lib.run_state`)."""
        save_training_state(self.run_dir, self.setup, self.ranks, self.config, epoch=epoch, step=step,
                            partial=partial, history=self.history, elapsed=self.elapsed(),
                            compile_error=self.forward.error)

    def save_epoch(self, epoch: int) -> None:
        """After epoch `epoch`: the checkpoint (the run continues at the next one), history.json,
        then the on_epoch callback."""
        self.save(epoch + 1, 0)
        if self.ranks.is_main and self.on_epoch is not None:
            self.on_epoch(self.history[-1])

    def stop_mid_epoch(self, epoch: int, step: int, meter: StepMeter) -> None:
        """Save the state at `step` of `epoch` (where a resume continues) and say so."""
        self.save(epoch, step, meter.partial())
        self.log(f"stopped at epoch {epoch + 1}, step {step}/{self.steps_per_epoch}; "
                 f"{resume_hint(self.run_dir, self.config.out, self.resume_command)}")

    def stop_requested(self, epoch: int, stop: StopOnSignal) -> str | None:
        """After an epoch: "interrupted" if any rank got Ctrl-C or SIGTERM, "stopped" at
        `stop_after`, None to go on."""
        cfg, hint = self.config, resume_hint(self.run_dir, self.config.out, self.resume_command)
        if self.ranks.any(stop.requested, self.device):
            self.log(f"stopped after epoch {epoch + 1}; {hint}")
            return "interrupted"
        if cfg.stop_after is not None and cfg.stop_after <= epoch + 1 < self.schedule.total_epochs:
            self.log(f"stopped after epoch {epoch + 1} as asked (stop_after={cfg.stop_after}); {hint}")
            return "stopped"
        return None
