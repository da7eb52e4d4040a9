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

Speed (at CIFAR sizes a GPU is bound by launches and data movement, not FLOPs): the data stay on the
device (`effv2_lib.augment.DeviceLoader`: crop, flip, resize, per-sample RandAugment and Mixup
batched there), bf16 autocast, channels_last, cudnn.benchmark, optional torch.compile (one
recompilation per stage size, its cost recorded), and no host-device synchronization in the
training step: loss and accuracy accumulate on the device (`_DeviceTally`) and are read every
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

import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .augment import DeviceLoader, mix_batch, set_dropout, train_transform
from .checkpoint import (
    CONFUSION_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    SUMMARY_FILE,
    RunDirectoryError,
    capture_rng_state,
    restore_rng_state,
)
from .config import RUNTIME_FIELDS, TrainConfig, resolve_schedule, smoke_config
from .data import NORMALIZATION, CifarData, CifarSplit, SampleDataWarning, hold_out, load_cifar, subset
from .distributed import Ranks, state_digest
from .evaluate import evaluate, reestimate_batchnorm
from .model import build_model
from .optim import ModelEMA, WarmupThenDecay, build_optimizer
from .report import digest_history, epoch_line, format_duration
from .run_directory import RunDirectory
from .runtime import count_parameters, derived_seed, hardware, seed_everything, synchronize
from .schedule import Stage

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError"]

# Purposes of derived seeds, so that no two random streams coincide.
_SEED_RANK, _SEED_EPOCH, _SEED_SHARD, _SEED_BN = 1, 2, 3, 4


@dataclass
class TrainResult:
    """What a run returns: per-epoch records, the summary, and the model as it was evaluated."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module  # the reported model (the EMA if enabled), on its device, eval mode
    out: Path | None
    status: str  # "finished", "interrupted" (signal) or "stopped" (stop_after)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class Trainer:
    """One run of `effv2_lib.train.train`.

    Read `run` (Algorithm 1) and `train_epoch` (the epoch loop) first: they are the method. The
    machinery that makes the loop robust and fast sits in small helpers beside it: `_StepMeter`
    (the loss and accuracy summed on the device, when the host reads them, the stop vote and the
    non-finite guard at those reads, timing and the progress bar), `_StopOnSignal` (Ctrl-C), the
    compiling step, and `RunDirectory` (every file of the run, and what a checkpoint holds).
    """

    def __init__(self, config: TrainConfig, *, data: CifarData | None = None, progress: bool = True,
                 on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
                 command: str | None = None) -> None:
        self.given_config = config  # what run.json records and a resume is compared with (smoke unshrunk)
        self.config = smoke_config(config) if config.smoke else config
        self.given_data = data
        self.progress = progress
        self.on_epoch = on_epoch
        self.on_step = on_step
        self.command = command
        self.ranks, self.device = Ranks.from_environment(self.config.device)
        self.history: list[dict[str, Any]] = []
        self.compile_error: str | None = None

    def log(self, message: str) -> None:
        if self.ranks.is_main:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    # ------------------------------------------------------------------------- Algorithm 1
    def run(self) -> TrainResult:
        """Algorithm 1: for each stage i, set the image size S_i and the regularization (gamma_i,
        epsilon_i, lambda_i), then train the stage's epochs; evaluate and checkpoint every epoch."""
        self.setup()                                            # model, data, optimizer, resume point
        self.log(self.describe())
        status = "finished"
        with _StopOnSignal(self.log) as stop:                   # Ctrl-C: finish the step, save, stop
            for epoch in range(self.start_epoch, self.schedule.total_epochs):
                stage = self.schedule.at(epoch)                 # stage i trains epochs [start, end)
                if epoch in (stage.start_epoch, self.start_epoch):
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
        if self.loader_kind == "device":
            self.train_loader.set_stage(stage)
        else:
            self.train_dataset = self.train_split.with_transform(train_transform(stage, mean=self.mean, std=self.std))
        new_size = self.config.compile and stage.image_size not in self.compiled_sizes
        self.step = self.compiling_step if new_size else self.train_step  # torch.compile recompiles per size
        if announce:
            self.log(f"stage {stage.index}: {stage.image_size} px, dropout {stage.dropout:.3f}, "
                     f"RandAugment {stage.randaug_magnitude:.2f}, Mixup alpha {stage.mixup_alpha:.3f}"
                     + (f", CutMix alpha {stage.cutmix_alpha:.3f}" if stage.cutmix_alpha else ""))

    def train_epoch(self, epoch: int, stage: Stage, stop: _StopOnSignal) -> dict[str, Any] | None:
        """One epoch of SGD at stage i's settings: its statistics, or None when a stop came in the
        middle (the state at that step is then saved)."""
        self.model.train()
        first = self.start_step if epoch == self.start_epoch else 0     # > 0: resuming mid-epoch
        batches = self.batches(epoch, stage, skip=first)
        with _StepMeter(self, epoch, stage, first, stop) as meter:
            for step in range(first, self.steps_per_epoch):
                images, targets = next(batches)                 # [B, 3, S_i, S_i]; [B], or [B, K] mixed
                logits, loss = self.step(images, targets)       # train_step, or compiling_step at a new size
                meter.add(step, loss, logits, targets)          # summed on the device: no waiting
                if meter.must_stop(step):                       # the host reads here, every sync_every steps
                    return self.stop_mid_epoch(epoch, step + 1, meter)
        return meter.stats()

    def train_step(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """One SGD step: forward in bf16 autocast, cross-entropy (soft targets when mixed), backward,
        update, learning-rate step, EMA. Returns logits [B, K] and the loss, still on the device."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(images)  # [B, K]
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return logits.detach(), loss.detach()

    def batches(self, epoch: int, stage: Stage, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's training batches. Resuming mid-epoch, the first `skip` are drawn and
        discarded, so every generator is where the interrupted run had it."""
        batches = self.epoch_batches(epoch, stage)
        if skip:
            for _ in range(skip):
                next(batches)
            if self.rng_state is not None:
                restore_rng_state(self.rng_state)  # what the skipped data draws consumed
        return batches

    def epoch_batches(self, epoch: int, stage: Stage) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's training batches: images [B, 3, S_i, S_i] on the device, targets [B] or [B, K]."""
        epoch_seed = derived_seed(self.config.seed, _SEED_EPOCH, epoch, self.ranks.rank)
        self.data_generator.manual_seed(epoch_seed)
        if self.loader_kind == "device":
            yield from self.train_loader
            return
        self.sampler.set_epoch(epoch)
        loader = DataLoader(self.train_dataset, batch_size=self.rank_batch, sampler=self.sampler,
                            drop_last=True, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(epoch_seed))  # worker seeds
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(self.device, non_blocking=True)
            yield mix_batch(images, labels, stage.mixup_alpha, stage.cutmix_alpha, self.num_classes,
                            self.data_generator)

    def averaged_models(self) -> list[nn.Module]:
        return [self.model] + ([self.ema.module] if self.ema is not None else [])

    def epoch_record(self, epoch: int, stage: Stage, stats: dict) -> dict[str, Any]:
        """The epoch's record for history.json, with the test accuracy of the model as it is now."""
        self.ranks.broadcast_buffers(*self.averaged_models())  # distributed: every rank tests rank 0's statistics
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

    def raise_non_finite(self, epoch: int, step: int, value: float | None) -> None:
        value = "not finite" if value is None or math.isfinite(value) else value  # finite: another rank's
        last = self.history[-1]["epoch"] if self.history else None
        where = (f"the last good checkpoint is {self.run_dir.checkpoint} (after epoch {last})"
                 if self.run_dir.checkpoint is not None and last is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {epoch + 1}/{self.schedule.total_epochs}, step {step + 1}/"
            f"{self.steps_per_epoch} (learning rate {self.scheduler.get_last_lr()[0]:.3g}); stopping. {where}. "
            f"Try a lower --lr or a longer --warmup-epochs.")

    @property
    def reported_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def test(self, model: nn.Module):
        return evaluate(model, self.test_loader, self.num_classes, bf16=self.bf16, all_reduce=self.ranks.enabled)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.run_started

    # ----------------------------------------------------------- beside the loop: robustness
    def compiling_step(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The first step at a new image size with torch.compile on: it compiles. Timed (see
        `take_compile_time`); a compiler failure falls back to eager training instead of ending the run."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            logits, loss = self.train_step(images, targets)
        except Exception as exc:  # a compiler failure must not cost the run: train eagerly
            if self.forward is self.train_module:
                raise
            self.compile_error = f"{type(exc).__name__}: {exc}"
            self.log(f"WARNING: torch.compile failed ({self.compile_error[:300]}); training eagerly")
            self.forward = self.train_module
            logits, loss = self.train_step(images, targets)
        synchronize(self.device)
        self.compiled_sizes.add(images.shape[-1])
        self.compile_time = time.perf_counter() - start
        self.step = self.train_step
        return logits, loss

    def take_compile_time(self) -> float | None:
        """The compiling step's time in this epoch (None if none compiled), once."""
        compile_time, self.compile_time = self.compile_time, None
        return compile_time

    def stop_mid_epoch(self, epoch: int, step: int, meter: _StepMeter) -> None:
        """Save the state at `step` of `epoch` (where a resume continues) and say so."""
        self.save_training_state(epoch, step, meter.partial())
        self.log(f"stopped at epoch {epoch + 1}, step {step}/{self.steps_per_epoch}; {self.resume_hint()}")

    def stop_requested(self, epoch: int, stop: _StopOnSignal) -> str | None:
        """After an epoch: "interrupted" if any rank got Ctrl-C or SIGTERM, "stopped" at
        `stop_after`, None to go on."""
        cfg = self.config
        if self.ranks.any(stop.requested, self.device):
            self.log(f"stopped after epoch {epoch + 1}; {self.resume_hint()}")
            return "interrupted"
        if cfg.stop_after is not None and cfg.stop_after <= epoch + 1 < self.schedule.total_epochs:
            self.log(f"stopped after epoch {epoch + 1} as asked (stop_after={cfg.stop_after}); {self.resume_hint()}")
            return "stopped"
        return None

    def resume_hint(self) -> str:
        """Where the stopped run's state is and how to continue it (the checkpoint was just saved)."""
        if self.run_dir.checkpoint is None:
            return "no output directory, nothing saved"
        return f"checkpoint saved to {self.run_dir.checkpoint}; continue with --resume --out {self.config.out}"

    # ------------------------------------------------------------------ run directory, resume
    def prepare_out_dir(self) -> None:
        """run.json for a new run, or the check that the directory holds this run (rank 0, then
        every rank fails or none)."""
        if self.run_dir.out is None:
            return
        error = None
        if self.ranks.is_main:
            run = {"config": self.given_config.to_dict(), "command": self.command}
            compare = tuple(f.name for f in fields(TrainConfig) if f.name not in RUNTIME_FIELDS)
            try:
                self.run_dir.create_or_resume(run, resume=self.config.resume, overwrite=self.config.overwrite,
                                              compare=compare)
            except Exception as exc:  # raised below, after the other ranks have heard of it
                error = exc
        message = self.ranks.from_main(None if error is None else str(error))  # every rank fails, or none
        if error is not None:
            raise error
        if message is not None:
            raise RunDirectoryError(message)

    def load_training_state(self) -> None:
        where = self.run_dir.resume(self.device, schedule=self.schedule, model=self.model,
                                    optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema)
        self.history = where["history"]
        self.start_epoch, self.start_step, self.partial = where["epoch"], where["step"], where["partial"]
        self.elapsed_before, self.compile_error = where["elapsed"], where["compile_error"]
        if len(where["rng"]) == self.ranks.world_size:
            self.rng_state = where["rng"][self.ranks.rank]
            # Restored last, after every object that draws random numbers while being built.
            restore_rng_state(self.rng_state)
        else:
            warnings.warn(f"the checkpoint was written by {len(where['rng'])} process(es), this run has "
                          f"{self.ranks.world_size}: random streams restart from the seed", stacklevel=2)
        at = f"epoch {self.start_epoch + 1} of {self.schedule.total_epochs}"
        if self.start_step:
            at += f", step {self.start_step + 1} of {self.steps_per_epoch}"
        self.log(f"resuming {self.config.out} at {at}")

    def save_training_state(self, epoch: int, step: int, partial: dict | None) -> None:
        """Checkpoint: the run continues at (epoch, step); every rank's RNG state is gathered."""
        if self.run_dir.checkpoint is None:
            return
        rng = self.ranks.gather(capture_rng_state())
        self.run_dir.save(epoch=epoch, step=step, partial=partial, model=self.model, optimizer=self.optimizer,
                          scheduler=self.scheduler, ema=self.ema, rng=rng, schedule=self.schedule,
                          config=self.config.to_dict(), history=self.history, elapsed=self.elapsed(),
                          compile_error=self.compile_error)

    def save_epoch(self, epoch: int) -> None:
        """After epoch `epoch`: the checkpoint (the run continues at the next one), history.json,
        then the on_epoch callback."""
        self.save_training_state(epoch + 1, 0, None)
        if self.ranks.is_main and self.on_epoch is not None:
            self.on_epoch(self.history[-1])

    # -------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, device = self.config, self.device
        started = time.perf_counter()
        is_cuda = device.type == "cuda"
        self.bf16 = is_cuda if cfg.bf16 is None else cfg.bf16
        self.channels_last = device.type in ("cuda", "cpu") if cfg.channels_last is None else cfg.channels_last
        self.sync_every = cfg.sync_every or (50 if is_cuda else 1)
        # The batched device path beats per-sample transforms on CPUs too (effv2_lib.bench_data).
        self.loader_kind = "device" if cfg.loader == "auto" else cfg.loader
        if is_cuda:
            torch.backends.cudnn.benchmark = True  # sizes repeat within a stage: autotune once each
            torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
        self.schedule = resolve_schedule(cfg)
        self.load_data()

        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(cfg.model, self.num_classes, dropout=self.schedule.stages[0].dropout)
        smallest = min(s.image_size for s in self.schedule.stages)
        if smallest < self.model.min_input_size:
            raise ValueError(f"model {cfg.model!r} needs images of at least {self.model.min_input_size} px, "
                             f"the schedule goes down to {smallest} px")
        self.eval_size = cfg.eval_size or self.model.eval_size
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.batch_size, cfg.lr, cfg.weight_decay,
                                         cfg.momentum)
        self.build_loaders()
        warmup_epochs = min(cfg.warmup_epochs, self.schedule.total_epochs / 5)
        self.lr_factor = WarmupThenDecay(round(warmup_epochs * self.steps_per_epoch),
                                         self.schedule.total_epochs * self.steps_per_epoch,
                                         self.steps_per_epoch, cfg.lr_schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        # Each rank draws its own dropout / stochastic-depth masks from here on.
        seed_everything(derived_seed(cfg.seed, _SEED_RANK, self.ranks.rank))

        self.start_epoch, self.start_step, self.partial, self.rng_state = 0, 0, None, None
        self.elapsed_before = 0.0  # training time of earlier invocations (resume)
        self.run_dir = RunDirectory(cfg.out, cfg.checkpoint_dir, writer=self.ranks.is_main)
        self.prepare_out_dir()
        if cfg.resume:
            self.load_training_state()

        self.train_module = self.ranks.wrap(self.model, device)
        # dynamic=False: one static graph per stage size. By default a second size makes dynamo
        # switch to a shape-generic graph, whose kernels are slower than size-specialized ones.
        self.forward = (torch.compile(self.train_module, mode=cfg.compile_mode, dynamic=False) if cfg.compile
                        else self.train_module)
        self.compiled_sizes: set[int] = set()
        self.compile_time: float | None = None  # the compiling step's, until the epoch's statistics take it
        self.setup_time = time.perf_counter() - started
        self.run_started = time.perf_counter()

    def load_data(self) -> None:
        cfg = self.config
        if self.given_data is not None:
            data = self.given_data
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SampleDataWarning)
                try:
                    data = load_cifar(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                                      prefer_sample=cfg.sample)
                except RuntimeError as exc:  # a failed download: say what to do instead, no traceback
                    raise FileNotFoundError(str(exc)) from exc
            for warning in caught:  # the sample is announced below, in the run's own words
                if not issubclass(warning.category, SampleDataWarning):
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if data.is_sample and cfg.full_data_only:
            raise FileNotFoundError(
                f"this run needs the full {cfg.dataset} data set and only the bundled sample was found. "
                f"Pass --data DIR (or set EFFV2_DATA=DIR) for a directory with train.npz and test.npz, or "
                f"--download to fetch it with torchvision into the project's data/ folder.")
        if data.is_sample and not cfg.sample:
            self.log(f"NOTE: training on the bundled CIFAR-10 SAMPLE ({len(data.train)} training / "
                     f"{len(data.test)} test images), not the full data set; accuracies are not "
                     f"CIFAR-10 figures. Use --data DIR, EFFV2_DATA or --download for the real thing.")
        self.train_split, self.test_split = data.train, data.test
        self.evaluated_on = "test"
        if cfg.holdout_per_class:  # seed 0 always: every recipe compared on the same held-out images
            self.train_split, self.test_split = hold_out(data.train, cfg.holdout_per_class, seed=0)
            self.evaluated_on = f"held-out training images ({cfg.holdout_per_class} per class)"
        if cfg.subset_per_class:
            self.train_split = subset(self.train_split, cfg.subset_per_class, seed=cfg.seed)
        if cfg.test_subset_per_class:
            self.test_split = subset(self.test_split, cfg.test_subset_per_class, seed=cfg.seed)
        self.data = data
        self.classes = list(data.classes)
        self.num_classes = len(self.classes)
        self.mean, self.std = NORMALIZATION[cfg.dataset]

    def build_loaders(self) -> None:
        cfg, device, world = self.config, self.device, self.ranks.world_size
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
        self.rank_batch = cfg.batch_size // world
        shard_seed = derived_seed(cfg.seed, _SEED_SHARD)
        # One generator on the device draws every random choice of the data path (crop, flip,
        # RandAugment, Mixup); it is reseeded at each epoch from (seed, epoch, rank).
        self.data_generator = torch.Generator(device=device)
        norm = dict(mean=self.mean, std=self.std, channels_last=self.channels_last)
        if self.loader_kind == "device":
            self.train_loader = DeviceLoader(self.ranks.shard(self.train_split, shard_seed, equal=True),
                                             self.rank_batch, device=device, generator=self.data_generator, **norm)
            self.steps_per_epoch = len(self.train_loader)
        else:
            self.sampler = DistributedSampler(self.train_split, num_replicas=world, rank=self.ranks.rank,
                                              shuffle=True, seed=shard_seed % 2**31, drop_last=True)
            self.num_workers = cfg.num_workers if cfg.num_workers is not None else (
                min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0)
            self.steps_per_epoch = len(self.sampler) // self.rank_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_split)} images over {world} process(es)) "
                             f"is smaller than one batch of {cfg.batch_size}; lower batch_size")
        self.test_loader = DeviceLoader(self.ranks.shard(self.test_split, shard_seed, equal=False),
                                        1024 if device.type == "cuda" else 250, device=device,
                                        image_size=self.eval_size, train=False,
                                        generator=torch.Generator(device=device), **norm)
        # BatchNorm re-estimation: bn_batches batches of unaugmented training images, the same on every rank.
        count = min(len(self.train_split), cfg.bn_batches * self.rank_batch)
        rows = torch.randperm(len(self.train_split), generator=torch.Generator().manual_seed(
            derived_seed(cfg.seed, _SEED_BN)))[:count].sort().values
        bn_split = CifarSplit(self.train_split.images[rows], self.train_split.labels[rows], self.classes)
        self.bn_loader = DeviceLoader(bn_split, self.rank_batch, device=device, image_size=self.eval_size,
                                      train=False, generator=torch.Generator(device=device), **norm)

    # ------------------------------------------------------------------------------- finish
    def finish(self, status: str) -> dict[str, Any]:
        cfg, model = self.config, self.reported_model
        summary = self.summary(status)
        if status == "finished":
            final = before = self.test(model)
            last_size = self.schedule.stages[-1].image_size
            reestimate = last_size != self.eval_size if cfg.bn_reestimate is None else cfg.bn_reestimate
            record = {"applied": reestimate, "eval_size": self.eval_size, "last_train_size": last_size,
                      "batches": 0, "images": 0}
            if reestimate:
                record["batches"] = reestimate_batchnorm(model, self.bn_loader, bf16=self.bf16)
                record["images"] = len(self.bn_loader.labels)
                self.ranks.broadcast_buffers(model)  # the ranks computed the same statistics, up to GPU rounding
                final = self.test(model)
                self.log(f"BatchNorm statistics re-estimated at {self.eval_size} px on {record['batches']} batches: "
                         f"test accuracy {before.accuracy:.4f} -> {final.accuracy:.4f}")
            summary["bn_reestimation"] = {**record, "test_acc_before": before.accuracy,
                                          "test_acc_after": final.accuracy, "change": final.accuracy - before.accuracy}
            summary.update(final_test_acc=final.accuracy, test_images=final.num_images,
                           confusion_matrix=final.confusion.tolist(), wall_time_s=self.elapsed())
            if self.ranks.enabled:
                summary["ranks_identical"] = len(set(self.ranks.gather(state_digest(model)))) == 1
                if not summary["ranks_identical"]:
                    warnings.warn("the ranks ended with different weights", RuntimeWarning, stacklevel=2)
        data = "the CIFAR-10 sample" if self.data.is_sample else cfg.dataset
        weights = model.state_dict() if status == "finished" and cfg.save_weights else None
        self.run_dir.finish(summary, self.history, classes=self.classes, weights=weights,
                            title=f"{self.model.name} on {data} ({len(self.train_split)} training images), "
                                  f"schedule {self.schedule.name or 'custom'}")
        if status == "finished":
            self.log(self.describe_result(summary))
        return summary

    def summary(self, status: str) -> dict[str, Any]:
        cfg = self.config
        return {
            "status": status,
            "command": self.command,
            "model_name": cfg.model,
            "model": self.model.name,
            "params": count_parameters(self.model),
            "dataset": cfg.dataset,
            "data": {"source": self.data.source, "is_sample": self.data.is_sample,
                     "train_images": len(self.train_split), "test_images": len(self.test_split),
                     "evaluated_on": self.evaluated_on},
            "schedule": self.schedule.to_dict(),
            "eval_size": self.eval_size,
            **digest_history(self.history),
            "setup_time_s": self.setup_time,
            "compile_error": self.compile_error,
            "optimizer": {"name": cfg.optimizer, "lr": self.optimizer.defaults["lr"],
                          "weight_decay": self.optimizer.defaults["weight_decay"], "momentum": cfg.momentum,
                          "lr_schedule": cfg.lr_schedule, "warmup_steps": self.lr_factor.warmup_steps,
                          "steps_per_epoch": self.steps_per_epoch, "batch_size": cfg.batch_size,
                          "label_smoothing": cfg.label_smoothing, "ema": cfg.ema,
                          "ema_decay": cfg.ema_decay if cfg.ema else None},
            "speed": {"loader": self.loader_kind, "bf16": self.bf16, "channels_last": self.channels_last,
                      "compile": cfg.compile, "compile_mode": cfg.compile_mode if cfg.compile else None,
                      "world_size": self.ranks.world_size},
            "hardware": {**hardware(self.device), "world_size": self.ranks.world_size},
            "config": cfg.to_dict(),
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    # ------------------------------------------------------------------------------ messages
    def describe(self) -> str:
        cfg = self.config
        loader = (" (crop, flip, resize, RandAugment, Mixup/CutMix batched on the device)"
                  if self.loader_kind == "device"
                  else " (DataLoader, per-sample crop, flip, resize, RandAugment; Mixup/CutMix per batch)")
        lines = [
            f"model {self.model.name} ({count_parameters(self.model) / 1e6:.2f}M parameters), "
            f"{self.num_classes} classes, on {self.device}"
            + (f" x {self.ranks.world_size} processes" if self.ranks.enabled else ""),
            f"data: {len(self.train_split)} training / {len(self.test_split)} test images from {self.data.source}"
            + (" (THE BUNDLED SAMPLE)" if self.data.is_sample else ""),
            f"loader: {self.loader_kind}{loader}; batch {cfg.batch_size}, {self.steps_per_epoch} steps per epoch; "
            f"eval at {self.eval_size} px",
            f"optimizer {cfg.optimizer} lr {self.optimizer.defaults['lr']:.3g} wd "
            f"{self.optimizer.defaults['weight_decay']:g}, {cfg.lr_schedule} after {self.lr_factor.warmup_steps} "
            f"warm-up steps, label smoothing {cfg.label_smoothing}" + (f", EMA {cfg.ema_decay}" if cfg.ema else "")
            + f"; bf16 {self.bf16}, channels_last {self.channels_last}, compile {cfg.compile}",
            self.schedule.table(),
        ]
        if cfg.out is not None:
            where = f" (checkpoints in {cfg.checkpoint_dir})" if cfg.checkpoint_dir else ""
            lines.append(f"writing to {cfg.out}{where}")
        return "\n".join(lines)

    def describe_result(self, summary: dict[str, Any]) -> str:
        text = (f"done: test accuracy {summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
                f"{summary['best_epoch']}) after {summary['epochs_done']} epochs, training "
                f"{format_duration(summary['train_time_s'])}, wall {format_duration(summary['wall_time_s'])}")
        if self.config.out is not None:
            text += f"\nresults in {self.config.out}: {SUMMARY_FILE}, {HISTORY_FILE}, {CURVES_FILE}, {CONFUSION_FILE}"
        return text


# -------------------------------------------------------------------------------------- helpers beside the loop

class _StepMeter:
    """An epoch's bookkeeping beside the training step, kept out of its way.

    The loss and accuracy are summed on the device (`_DeviceTally`); the host reads them only at
    every sync_every-th step, at the epoch's last step, and at once after a stop request when there
    is one process. At those reads (and nowhere else) the ranks vote on stopping and the first
    non-finite loss raises NonFiniteLossError (one collective for both); the progress bar shows
    loss, accuracy and images/s. It also times the epoch (with the GPU synchronized at both ends),
    less what compiling took.
    """

    def __init__(self, trainer: Trainer, epoch: int, stage: Stage, first_step: int, stop: _StopOnSignal) -> None:
        self.trainer, self.epoch, self.stage, self.stop = trainer, epoch, stage, stop
        resuming = first_step > 0
        self.tally = _DeviceTally(trainer.device, trainer.partial if resuming else None)
        self.time_before = trainer.partial["train_time"] if resuming else 0.0  # earlier invocations
        trainer.partial = None
        self.first_step = self.last_step = first_step
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=first_step, dynamic_ncols=True, unit="step",
                        desc=f"epoch {epoch + 1}/{trainer.schedule.total_epochs} stage {stage.index} "
                             f"{stage.image_size}px",
                        disable=not (trainer.progress and trainer.ranks.is_main))

    def __enter__(self) -> _StepMeter:
        self.bar.__enter__()
        synchronize(self.trainer.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def add(self, step: int, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        self.tally.add(step, loss, logits, targets)
        self.last_step = step
        self.bar.update(1)
        if self.trainer.on_step is not None:
            self.trainer.on_step(self.epoch, step)

    def must_stop(self, step: int) -> bool:
        """Whether the run stops after `step` (never at the epoch's last step: the epoch ends)."""
        trainer, steps = self.trainer, self.trainer.steps_per_epoch
        # Under DDP the ranks must meet at the same steps, so a stop request waits for the next meeting.
        alone_stopping = self.stop.requested and not trainer.ranks.enabled
        if (step + 1) % trainer.sync_every and step + 1 < steps and not alone_stopping:
            return False
        first_bad, stop_now = trainer.ranks.max(torch.stack(
            [-self.tally.first_bad, torch.tensor(int(self.stop.requested), device=trainer.device)])).tolist()
        if -first_bad != self.tally.NEVER:
            trainer.raise_non_finite(self.epoch, -first_bad,
                                     float(self.tally.bad_loss) if trainer.ranks.is_main else None)
        so_far = self.tally.read()
        rate = so_far["seen"] * trainer.ranks.world_size / (self.time_before + time.perf_counter() - self.started)
        self.bar.set_postfix(loss=f"{so_far['loss_sum'] / so_far['seen']:.3f}",
                             acc=f"{so_far['correct'] / so_far['seen']:.3f}", img_s=f"{rate:.0f}",
                             stage=self.stage.index, refresh=False)
        return bool(stop_now) and step + 1 < steps

    def partial(self) -> dict[str, Any]:
        """The unfinished epoch's sums and training time, for a checkpoint."""
        synchronize(self.trainer.device)
        return {**self.tally.read(), "train_time": self.time_before + time.perf_counter() - self.started}

    def stats(self) -> dict[str, Any]:
        """The finished epoch: this rank's sums, the times (less compiling), and the sums over the
        ranks ("global")."""
        trainer, compile_time = self.trainer, self.trainer.take_compile_time()
        synchronize(trainer.device)
        loop_time = time.perf_counter() - self.started  # this invocation's share of the epoch
        train_time = self.time_before + loop_time
        steady_time = train_time  # the time throughput is measured on: without compiling
        done = self.last_step + 1 - self.first_step
        if compile_time is not None and done > 1:
            # compile time = the compiling step's time less a usual step's (measured on the others)
            compile_time = max(0.0, compile_time - (loop_time - compile_time) / (done - 1))
            steady_time -= compile_time
        stats = {**self.tally.read(), "train_time": train_time, "steady_time": steady_time,
                 "step": self.last_step + 1, "compile_time": compile_time}
        totals = trainer.ranks.sum(torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]],
                                                dtype=self.tally.loss_sum.dtype, device=trainer.device))
        stats["global"] = totals.tolist()
        return stats


class _StopOnSignal:
    """SIGINT / SIGTERM request a clean stop (finish the step, save, exit); a third one aborts."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.count = 0
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count >= 3:
            raise KeyboardInterrupt(f"signal {signum} received 3 times: aborting without saving")
        if self.count == 1:
            self.log(f"\n{signal.Signals(signum).name} received: finishing this step, saving a checkpoint, "
                     "stopping (twice more to abort without saving)")

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _DeviceTally:
    """Loss sum, correct count and the first non-finite step, kept on the device.

    `add` queues a few tensor operations and never waits for the GPU; only `read` copies to the
    host, which the loop does every sync_every steps.
    """

    NEVER = torch.iinfo(torch.int64).max

    def __init__(self, device: torch.device, partial: dict[str, Any] | None) -> None:
        partial = partial or {}
        exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.loss_sum = torch.tensor(partial.get("loss_sum", 0.0), device=device, dtype=exact)
        self.correct = torch.tensor(partial.get("correct", 0), device=device, dtype=torch.int64)
        self.seen = int(partial.get("seen", 0))  # a Python int: batch sizes are known on the host
        self.first_bad = torch.full((), self.NEVER, device=device, dtype=torch.int64)
        self.bad_loss = torch.zeros((), device=device)

    def add(self, step: int, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        hard_targets = targets if targets.ndim == 1 else targets.argmax(1)  # Mixup: the larger partner
        self.loss_sum += loss * len(logits)
        self.correct += (logits.argmax(1) == hard_targets).sum()
        bad = (self.first_bad == self.NEVER) & ~torch.isfinite(loss)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.bad_loss = torch.where(bad, loss, self.bad_loss)
        self.seen += len(logits)

    def read(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen}
