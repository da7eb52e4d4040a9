"""Everything a training run is built from a `TrainConfig`: speed settings, schedule, data, model,
optimizer, learning-rate schedule, EMA and loaders (`build_training`, giving a `TrainingSetup`).

The order is part of the result: the initial weights are drawn right after seeding with the
run's seed (the same on every rank), and only once everything is built is each rank's own stream
seeded for its dropout and stochastic-depth masks. A resume restores the random state after all
of this (`effv2_lib.run_state`), because building draws random numbers.

Speed defaults (at CIFAR sizes a GPU is bound by launches and data movement, not FLOPs): bf16
autocast and the host reading the loss every 50 steps on CUDA, channels_last on CUDA and CPUs,
cudnn.benchmark (sizes repeat within a stage: autotune once each), and the batched device loader
everywhere (it beats per-sample transforms on CPUs too: `effv2_lib.bench_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .augment import DeviceLoader
from .config import TrainConfig, resolve_schedule
from .data import CifarData, fit_batch_to_data
from .distributed import Ranks
from .model import build_model
from .optim import ModelEMA, WarmupThenDecay, build_optimizer
from .runtime import derived_seed, seed_everything
from .schedule import ProgressiveSchedule
from .training_data import SEED_RANK, RunData, TrainBatches, evaluation_loaders, load_run_data

__all__ = ["TrainingSetup", "build_training"]


@dataclass
class TrainingSetup:
    """What `effv2_lib.trainer.Trainer` trains with, built by `build_training`."""

    config: TrainConfig  # as trained: the batch fitted to the data when it was larger
    # speed: bf16 autocast, memory format, how often the host reads the loss, which loader
    bf16: bool
    channels_last: bool
    sync_every: int
    loader_kind: str
    schedule: ProgressiveSchedule  # Algorithm 1's stages
    data: RunData
    model: nn.Module
    eval_size: int  # px, where accuracy is measured
    optimizer: torch.optim.Optimizer
    lr_factor: WarmupThenDecay  # warm-up, then the decay, per step
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEMA | None
    batches: TrainBatches
    test_loader: DeviceLoader
    bn_loader: DeviceLoader  # BatchNorm re-estimation at eval_size, after the last epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch


def build_training(config: TrainConfig, ranks: Ranks, device: torch.device, *, data: CifarData | None = None,
                   log: Callable[[str], None] = print) -> TrainingSetup:
    """Build the run `config` describes on `device` (this rank of `ranks`), training on `data` if given."""
    cfg = config
    is_cuda = device.type == "cuda"
    bf16 = is_cuda if cfg.bf16 is None else cfg.bf16
    channels_last = device.type in ("cuda", "cpu") if cfg.channels_last is None else cfg.channels_last
    sync_every = cfg.sync_every or (50 if is_cuda else 1)
    loader_kind = "device" if cfg.loader == "auto" else cfg.loader
    if is_cuda:
        torch.backends.cudnn.benchmark = True  # sizes repeat within a stage: autotune once each
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    schedule = resolve_schedule(cfg)
    run_data = load_run_data(cfg, data, log)
    batch_size, notice = fit_batch_to_data(cfg.batch_size, len(run_data.train), ranks.world_size)
    if notice is not None:  # a batch larger than the data would give no step at all
        log(notice)
        cfg = replace(cfg, batch_size=batch_size)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, run_data.num_classes, dropout=schedule.stages[0].dropout)
    smallest = min(s.image_size for s in schedule.stages)
    if smallest < model.min_input_size:
        raise ValueError(f"model {cfg.model!r} needs images of at least {model.min_input_size} px, "
                         f"the schedule goes down to {smallest} px")
    eval_size = cfg.eval_size or model.eval_size
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.momentum)
    batches = TrainBatches(cfg, run_data, ranks, device, kind=loader_kind, channels_last=channels_last)
    test_loader, bn_loader = evaluation_loaders(cfg, run_data, ranks, device, eval_size=eval_size,
                                                rank_batch=batches.rank_batch, channels_last=channels_last)
    steps = batches.steps_per_epoch
    warmup_epochs = min(cfg.warmup_epochs, schedule.total_epochs / 5)
    lr_factor = WarmupThenDecay(round(warmup_epochs * steps), schedule.total_epochs * steps, steps, cfg.lr_schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    # Each rank draws its own dropout / stochastic-depth masks from here on.
    seed_everything(derived_seed(cfg.seed, SEED_RANK, ranks.rank))
    return TrainingSetup(cfg, bf16, channels_last, sync_every, loader_kind, schedule, run_data, model, eval_size,
                         optimizer, lr_factor, scheduler, ema, batches, test_loader, bn_loader)
