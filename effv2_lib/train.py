"""Train a CIFAR-scale EfficientNetV2 with progressive learning: fast, resumable, distributed.

Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training":

* Section 4, Algorithm 1 (progressive learning with adaptive regularization): the run is cut
  into M stages (`effv2_lib.schedule.ProgressiveSchedule`); at each stage boundary the trainer
  switches the training image size S_i, the head dropout rate gamma_i (`set_dropout`), the
  RandAugment magnitude epsilon_i and the Mixup alpha lambda_i (`effv2_lib.augment`).
* Section 5.1 (ImageNet settings): RMSProp (decay 0.9, momentum 0.9), weight decay 1e-5, a
  learning rate warmed up from 0 and then decayed by 0.97 every 2.4 epochs, an exponential
  moving average of the weights (decay 0.9999). Here SGD with Nesterov momentum and a cosine
  decay are the defaults (the usual CIFAR recipe); RMSprop and the exponential decay are options.
* Label smoothing 0.1 as in EfficientNet; no weight decay on BatchNorm parameters and biases.
* FixRes (Touvron et al. 2019): BatchNorm statistics re-estimated at the test size before the
  final evaluation, accuracy recorded before and after (`effv2_lib.evaluate`).

Speed (what makes small-image training fast on a GPU, DESIGN.md section 5): the data stay on the
GPU (`effv2_lib.augment.DeviceLoader`: crop, flip, resize, per-sample RandAugment and Mixup batched
there), bf16 autocast, channels_last, cudnn.benchmark, optional torch.compile (one recompilation
per stage size, its cost recorded per stage), and no host-device synchronization in the training
step: losses and accuracies accumulate on the device and are read every `sync_every` steps
(default 50 on CUDA) and at the end of each epoch. (Batched RandAugment itself reads its group
sizes once per batch; see `effv2_lib.augment.batched_rand_augment`.)

Nothing lost: a checkpoint every epoch, written atomically (`effv2_lib.checkpoint`), holding the
model, optimizer, LR scheduler, EMA, every global random generator, the schedule and the position
(epoch and step). Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves and stops; a third
signal aborts without saving. Resuming (``--resume``) continues bit for bit on the CPU: the data
generators are reseeded from (seed, epoch, rank) at every epoch, and a resume in the middle of an
epoch replays (and discards) the epoch's first batches, which leaves every data generator exactly
where the interrupted run had it. (On a GPU, cuDNN's nondeterministic kernels make runs equal up
to rounding, resumed or not.) A NaN or infinite loss stops the run, naming the epoch and step.

Distributed: under ``torchrun --nproc_per_node=N`` the same code trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs). `batch_size` is the global batch; each rank
takes batch_size / N images per step from its own shard of the training set, only rank 0 writes
files, and at the end the ranks compare digests of their weights (``ranks_identical`` in
summary.json).

Python::

    from effv2_lib.train import TrainConfig, train
    result = train(TrainConfig(model="cifar-tiny", epochs=8, sample=True, out=None))
    result.history[-1]["test_acc"], result.summary["final_test_acc"]

Command line: ``python -m effv2_lib.train --help``; ``make train`` runs ``--auto``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .augment import DeviceLoader, mixup_batch, set_dropout, train_transform
from .checkpoint import (CHECKPOINT_FILE, CONFUSION_FILE, CURVES_FILE, HISTORY_FILE, SUMMARY_FILE,
                         WEIGHTS_FILE, RunDirectoryError, atomic_write_json, capture_rng_state,
                         load_checkpoint, prepare_run_dir, read_json, restore_rng_state,
                         save_checkpoint, save_weights)
from .data import NORMALIZATION, CifarData, CifarSplit, SampleDataWarning, load_cifar, subset
from .evaluate import evaluate, reestimate_batchnorm
from .model import build_model
from .runtime import count_parameters, hardware, is_smoke, pick_device, seed_everything
from .schedule import PRESETS, ProgressiveSchedule, Stage

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "ModelEMA", "WarmupThenDecay",
           "parameter_groups", "resolve_schedule", "auto_config", "train", "build_parser", "main"]

MODELS = ("cifar", "cifar-tiny", "s", "m", "l", "xl")
OPTIMIZERS = ("sgd", "rmsprop")
LR_SCHEDULES = ("cosine", "exponential")
LOADERS = ("auto", "device", "cpu")
# Largest file the GPU machines send back (16 MiB), less room for the container.
WEIGHT_SHARD_BYTES = 15 * 2**20


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means "the default for this device / optimizer".

    The schedule is `preset` (see `effv2_lib.schedule.PRESETS`) with `epochs` epochs, or the
    explicit `schedule` (a ProgressiveSchedule or its dict); `fixed_size` turns either into
    fixed-size training at that size with the final stage's regularization (the baseline that
    progressive learning is compared with).
    """

    # what to train
    model: str = "cifar"
    dataset: str = "cifar10"
    preset: str = "cifar10"
    epochs: int | None = None  # None: the preset's
    fixed_size: int | None = None  # px; one stage at this size
    schedule: ProgressiveSchedule | dict | None = None  # overrides preset / epochs
    # data
    data_dir: str | None = None  # else $EFFV2_DATA, torchvision's copy in data/, the sample
    download: bool = False  # let torchvision download the data set into data/
    sample: bool = False  # train on the bundled 2,500-image CIFAR-10 sample
    full_data_only: bool = False  # refuse the sample (for runs whose figures must be CIFAR's)
    subset_per_class: int | None = None  # train on this many images per class
    test_subset_per_class: int | None = None  # test on this many images per class
    loader: str = "auto"  # device (= auto): DeviceLoader, batched; cpu: DataLoader, per-sample transforms
    num_workers: int | None = None  # DataLoader workers of the cpu loader
    # optimization
    batch_size: int = 256  # global batch (all ranks together)
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.1 per 128 images (SGD), 0.016 per 256 (RMSprop)
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 (SGD), 1e-5 (RMSprop); never on BN / biases
    lr_schedule: str = "cosine"
    warmup_epochs: float = 2.0  # linear warm-up, at most a fifth of the run
    label_smoothing: float = 0.1
    ema: bool = False
    ema_decay: float = 0.999  # per step
    bn_reestimate: bool = True  # FixRes: BatchNorm statistics at the eval size before the final eval
    bn_batches: int = 20
    eval_size: int | None = None  # None: the model's eval_size (32 for the CIFAR models)
    seed: int = 0
    # speed
    device: str | None = None
    bf16: bool | None = None  # None: on for CUDA
    channels_last: bool | None = None  # None: on for CUDA and CPU (faster on both)
    compile: bool = False
    compile_mode: str = "default"
    sync_every: int | None = None  # steps between host reads; None: 50 on CUDA, 1 elsewhere
    # run directory
    out: str | None = None  # None: nothing is written (an in-process run)
    checkpoint_dir: str | None = None  # None: out
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (resumably) once this many epochs are done
    save_weights: bool = False  # also write the final weights alone as model.pt (or shards)
    smoke: bool = False  # shrink everything to seconds (pipeline check); see SMOKE

    def __post_init__(self) -> None:
        if isinstance(self.schedule, ProgressiveSchedule):
            self.schedule = self.schedule.to_dict()
        choices = {"model": MODELS, "dataset": tuple(NORMALIZATION), "optimizer": OPTIMIZERS,
                   "lr_schedule": LR_SCHEDULES, "loader": LOADERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name, low in (("epochs", 1), ("fixed_size", 8), ("subset_per_class", 1),
                          ("test_subset_per_class", 1), ("num_workers", 0), ("eval_size", 8),
                          ("sync_every", 1), ("stop_after", 1)):
            _check_int(name, getattr(self, name), low, optional=True)
        for name, low in (("batch_size", 1), ("bn_batches", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), low)
        for name, low, high in (("lr", 0, math.inf), ("weight_decay", 0, math.inf),
                                ("momentum", 0, 1), ("warmup_epochs", 0, math.inf),
                                ("label_smoothing", 0, 1), ("ema_decay", 0, 1)):
            value = getattr(self, name)
            if value is None and name in ("lr", "weight_decay"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                    or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a number in [{low}, {high}]{' and > 0' * (name == 'lr')}, "
                                 f"got {value!r}")
        if self.schedule is None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.sample and (self.data_dir is not None or self.download):
            raise ValueError("sample=True trains on the bundled sample; do not also pass data_dir or download")
        if self.sample and self.full_data_only:
            raise ValueError("sample=True and full_data_only=True contradict each other")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if (self.resume or self.overwrite or self.save_weights or self.checkpoint_dir) and self.out is None:
            raise ValueError("resume, overwrite, save_weights and checkpoint_dir need an output directory (out)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Settings that change how a run executes but not what it computes (up to rounding): a resumed
# run may change them. Everything else must match the directory's run.json.
RUNTIME_FIELDS = frozenset({"out", "checkpoint_dir", "resume", "overwrite", "device", "bf16",
                            "channels_last", "compile", "compile_mode", "num_workers", "sync_every",
                            "stop_after", "save_weights"})
# --smoke / EFFV2_SMOKE=1: every stage for one epoch on 10 images per class.
SMOKE = dict(subset_per_class=10, test_subset_per_class=10, batch_size=20, bn_batches=2, warmup_epochs=0.5)


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{' or None' * optional}, got {value!r}")


@dataclass
class TrainResult:
    """What `train` returns: per-epoch records, the summary, and the model as it was evaluated."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module  # the reported model (the EMA if enabled), on its device, eval mode
    out: Path | None
    status: str  # "finished", "interrupted" (signal) or "stopped" (stop_after)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class ModelEMA:
    """Exponential moving average of a model's weights and BatchNorm buffers.

    ema <- d * ema + (1 - d) * model after every step, with d = min(decay, (1 + t) / (10 + t))
    so the average does not remember the random initialization for thousands of steps (the
    warm-up the official TF code and timm use). Hand-rolled rather than
    torch.optim.swa_utils.AveragedModel because AveragedModel keeps its step counter on the
    device and reads it twice per update (two host synchronizations per step); here the counter
    is a Python int and the floating-point tensors are updated by one fused foreach lerp.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        floats, integers = ([], []), ([], [])
        for ema_t, model_t in zip(self._tensors(self.module), self._tensors(model), strict=True):
            group = floats if ema_t.is_floating_point() else integers
            group[0].append(ema_t)
            group[1].append(model_t)
        torch._foreach_lerp_(floats[0], floats[1], 1 - decay)
        for ema_t, model_t in zip(*integers):  # BatchNorm's num_batches_tracked: copied
            ema_t.copy_(model_t)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])


@dataclass
class WarmupThenDecay:
    """Learning-rate factor for step t: linear warm-up, then cosine to 0 or exponential decay.

    Used with torch.optim.lr_scheduler.LambdaLR (a callable object, so the scheduler's
    state_dict keeps its settings). "exponential" is the paper's staircase decay: x decay_rate
    every decay_epochs epochs (0.97 every 2.4 epochs in Section 5.1).
    """

    warmup_steps: int
    total_steps: int
    steps_per_epoch: int
    kind: str = "cosine"
    decay_rate: float = 0.97
    decay_epochs: float = 2.4

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # 1/W .. 1: the first step is not taken at lr 0
        after = step - self.warmup_steps
        if self.kind == "cosine":
            progress = min(1.0, after / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return self.decay_rate ** math.floor(after / (self.decay_epochs * self.steps_per_epoch))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: conv and linear weights decay, BatchNorm parameters and biases do not.

    Weight decay pulls weights towards 0. A BatchNorm scale or shift and a bias are not weights
    whose size measures complexity; decaying BN scales only fights the normalization.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv [O, I, k, k], linear [O, I]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN gamma / beta, biases [C]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_schedule(config: TrainConfig) -> ProgressiveSchedule:
    """The ProgressiveSchedule a config trains with (preset / explicit schedule, then fixed_size)."""
    if config.schedule is not None:
        schedule = ProgressiveSchedule.from_dict(dict(config.schedule))
        if config.epochs is not None and config.epochs != schedule.total_epochs:
            raise ValueError(f"epochs={config.epochs} disagrees with the explicit schedule's "
                             f"{schedule.total_epochs} epochs; give one of them")
    else:
        schedule = ProgressiveSchedule.from_preset(config.preset, config.epochs)
    if config.fixed_size is not None:
        last = schedule.stages[-1]
        schedule = ProgressiveSchedule.fixed(
            schedule.total_epochs, config.fixed_size, dropout=last.dropout,
            randaug=last.randaug_magnitude, mixup=last.mixup_alpha,
            name=f"{schedule.name or 'schedule'} fixed at {config.fixed_size} px")
    return schedule


def _smoke(config: TrainConfig) -> TrainConfig:
    """The config shrunk for a pipeline check: one epoch per stage on 10 images per class."""
    schedule = resolve_schedule(replace(config, fixed_size=None))
    shrunk = replace(schedule, total_epochs=schedule.num_stages).to_dict()
    shrunk.pop("stages")
    return replace(config, schedule=shrunk, epochs=None, smoke=False, **SMOKE)


def _derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (seed, purpose, epoch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# Purposes of derived seeds, so that no two random streams coincide.
_SEED_RANK, _SEED_EPOCH, _SEED_SHARD, _SEED_BN = 1, 2, 3, 4


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_preference: str | None) -> tuple[_Distributed, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*)."""
    if dist.is_available() and dist.is_initialized():
        ctx = _Distributed(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns_group=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device_preference is None or device_preference.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        ctx = _Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
    else:
        return _Distributed(), pick_device(device_preference)
    device = pick_device(device_preference)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


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

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class _Trainer:
    """One run of `train`; see the module docstring. Methods run in the order they appear."""

    def __init__(self, config: TrainConfig, *, data: CifarData | None, progress: bool,
                 on_epoch: Callable[[dict], None] | None, on_step: Callable[[int, int], None] | None,
                 command: str | None) -> None:
        self.config = _smoke(config) if config.smoke else config
        self.given_data = data
        self.progress = progress
        self.on_epoch = on_epoch
        self.on_step = on_step
        self.command = command
        self.dist, self.device = _setup_distributed(self.config.device)
        self.history: list[dict[str, Any]] = []
        self.compile_error: str | None = None

    # ------------------------------------------------------------------------------- output
    def log(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    # -------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, device = self.config, self.device
        self.setup_started = time.perf_counter()
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
        first = self.schedule.stages[0]
        self.model = build_model(cfg.model, self.num_classes, dropout=first.dropout)
        if min(s.image_size for s in self.schedule.stages) < self.model.min_input_size:
            raise ValueError(f"model {cfg.model!r} needs images of at least {self.model.min_input_size} px, "
                             f"the schedule goes down to {min(s.image_size for s in self.schedule.stages)} px")
        self.eval_size = cfg.eval_size or self.model.eval_size
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.optimizer = self.build_optimizer()
        self.build_loaders()
        total_steps = self.schedule.total_epochs * self.steps_per_epoch
        warmup_epochs = min(cfg.warmup_epochs, self.schedule.total_epochs / 5)
        self.lr_factor = WarmupThenDecay(round(warmup_epochs * self.steps_per_epoch), total_steps,
                                         self.steps_per_epoch, cfg.lr_schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        # Each rank draws its own dropout / stochastic-depth masks from here on.
        seed_everything(_derived_seed(cfg.seed, _SEED_RANK, self.dist.rank))

        self.start_epoch, self.start_step, self.partial, self.rng_state = 0, 0, None, None
        self.elapsed_before = 0.0  # training time of earlier invocations (resume)
        self.prepare_out_dir()
        if cfg.resume:
            self.load_training_state()

        self.train_module: nn.Module = self.model
        if self.dist.enabled:
            self.train_module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(self.train_module, mode=cfg.compile_mode) if cfg.compile else self.train_module
        self.setup_time = time.perf_counter() - self.setup_started

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
            for warning in caught:
                if not issubclass(warning.category, SampleDataWarning):
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if data.is_sample and cfg.full_data_only:
            raise FileNotFoundError(
                f"this run needs the full {cfg.dataset} data set and only the bundled sample was found. "
                f"Pass --data DIR (or set EFFV2_DATA=DIR) for a directory with train.npz and test.npz, or "
                f"--download to fetch it with torchvision into the project's data/ folder.")
        if data.is_sample and not cfg.sample and self.dist.is_main:
            self.log(f"NOTE: training on the bundled CIFAR-10 SAMPLE ({len(data.train)} training / "
                     f"{len(data.test)} test images), not the full data set; accuracies are not "
                     f"CIFAR-10 figures. Use --data DIR, EFFV2_DATA or --download for the real thing.")
        train_split, test_split = data.train, data.test
        if cfg.subset_per_class:
            train_split = subset(train_split, cfg.subset_per_class, seed=cfg.seed)
        if cfg.test_subset_per_class:
            test_split = subset(test_split, cfg.test_subset_per_class, seed=cfg.seed)
        self.data, self.train_split, self.test_split = data, train_split, test_split
        self.classes = list(data.classes)
        self.num_classes = len(self.classes)
        self.mean, self.std = NORMALIZATION[cfg.dataset]

    def build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        sgd = cfg.optimizer == "sgd"
        lr = cfg.lr if cfg.lr is not None else (0.1 * cfg.batch_size / 128 if sgd else 0.016 * cfg.batch_size / 256)
        weight_decay = cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if sgd else 1e-5)
        self.base_lr, self.weight_decay = lr, weight_decay
        groups = parameter_groups(self.model, weight_decay)
        if sgd:
            return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
        # Paper: RMSProp with decay 0.9 and momentum 0.9 (TF). TF adds epsilon (1e-3) under the
        # square root, PyTorch after it: sqrt(1e-3) after the root gives the same floor on the
        # denominator. TF also starts the squared average at 1, PyTorch at 0; the warm-up keeps
        # the resulting large first steps small.
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=math.sqrt(1e-3), momentum=cfg.momentum)

    def _shard(self, split: CifarSplit, equal: bool) -> CifarSplit:
        """This rank's share of a split: a fixed random partition (equal sizes when `equal`)."""
        if not self.dist.enabled:
            return split
        n, world = len(split), self.dist.world_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            _derived_seed(self.config.seed, _SEED_SHARD)))
        if equal:  # every rank must take the same number of steps
            order = order[: n - n % world]
        rows = order[self.dist.rank::world].sort().values
        return CifarSplit(split.images[rows], split.labels[rows], split.classes, None, split.source)

    def build_loaders(self) -> None:
        cfg, device = self.config, self.device
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
        self.rank_batch = cfg.batch_size // world
        # One generator on the device draws every random choice of the data path (crop, flip,
        # Mixup); it is reseeded at each epoch from (seed, epoch, rank).
        self.data_generator = torch.Generator(device=device)
        norm = dict(mean=self.mean, std=self.std)
        if self.loader_kind == "device":
            self.train_loader = DeviceLoader(self._shard(self.train_split, equal=True), self.rank_batch,
                                             device=device, channels_last=self.channels_last,
                                             generator=self.data_generator, **norm)
            self.steps_per_epoch = len(self.train_loader)
        else:
            self.sampler = DistributedSampler(self.train_split, num_replicas=world, rank=self.dist.rank,
                                              shuffle=True, seed=_derived_seed(cfg.seed, _SEED_SHARD) % 2**31,
                                              drop_last=True)
            self.num_workers = cfg.num_workers if cfg.num_workers is not None else (
                min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0)
            self.steps_per_epoch = len(self.sampler) // self.rank_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.train_split)} images over {world} process(es)) "
                             f"is smaller than one batch of {cfg.batch_size}; lower batch_size")
        eval_batch = 1024 if device.type == "cuda" else 250
        self.test_loader = DeviceLoader(self._shard(self.test_split, equal=False), eval_batch, device=device,
                                        image_size=self.eval_size, train=False, channels_last=self.channels_last,
                                        generator=torch.Generator(device=device), **norm)
        # FixRes: bn_batches batches of unaugmented training images, the same on every rank.
        count = min(len(self.train_split), cfg.bn_batches * self.rank_batch)
        rows = torch.randperm(len(self.train_split), generator=torch.Generator().manual_seed(
            _derived_seed(cfg.seed, _SEED_BN)))[:count].sort().values
        bn_split = CifarSplit(self.train_split.images[rows], self.train_split.labels[rows], self.classes)
        self.bn_loader = DeviceLoader(bn_split, self.rank_batch, device=device, image_size=self.eval_size,
                                      train=False, channels_last=self.channels_last,
                                      generator=torch.Generator(device=device), **norm)

    # ------------------------------------------------------------------ run directory, resume
    @property
    def checkpoint_path(self) -> Path | None:
        cfg = self.config
        if cfg.out is None:
            return None
        return Path(cfg.checkpoint_dir or cfg.out) / CHECKPOINT_FILE

    def prepare_out_dir(self) -> None:
        cfg = self.config
        if cfg.out is None:
            return
        error = None
        if self.dist.is_main:
            run = {"config": cfg.to_dict(), "command": self.command}
            compare = tuple(f.name for f in fields(TrainConfig) if f.name not in RUNTIME_FIELDS)
            try:
                prepare_run_dir(cfg.out, run, resume=cfg.resume, overwrite=cfg.overwrite, compare=compare,
                                checkpoint=self.checkpoint_path)
            except (RunDirectoryError, ValueError) as exc:
                error = exc
        if self.dist.enabled:  # every rank must fail, or none
            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                error = RunDirectoryError(box[0][1])
        if error is not None:
            raise error

    def load_training_state(self) -> None:
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        saved_schedule = ProgressiveSchedule.from_dict(state["schedule"])
        if saved_schedule != self.schedule:
            raise RunDirectoryError(f"the checkpoint's schedule differs from this run's:\n"
                                    f"{saved_schedule.table()}\nvs\n{self.schedule.table()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise RunDirectoryError("the checkpoint holds no EMA weights; resume without --ema")
            self.ema.load_state_dict(state["ema"])
        self.history = list(state["history"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step"])
        self.partial = state.get("partial")
        self.elapsed_before = float(state["elapsed"])
        self.compile_error = state.get("compile_error")
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            self.rng_state = rng[self.dist.rank]
        else:
            warnings.warn(f"the checkpoint was written by {len(rng)} process(es), this run has "
                          f"{self.dist.world_size}: random streams restart from the seed", stacklevel=2)
            self.rng_state = None
        # Restored last, after every object that draws random numbers while being built.
        if self.rng_state is not None:
            restore_rng_state(self.rng_state)
        where = f"epoch {self.start_epoch + 1}" + (f", step {self.start_step + 1}" if self.start_step else "")
        self.log(f"resuming {self.config.out} at {where} of {self.schedule.total_epochs}")

    def save_training_state(self, epoch: int, step: int, partial: dict | None, elapsed: float) -> None:
        """Checkpoint: the run continues at (epoch, step); every rank's RNG state is gathered."""
        if self.checkpoint_path is None:
            return
        rng = capture_rng_state()
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if not self.dist.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "schedule": self.schedule.to_dict(),
            "config": self.config.to_dict(),
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "history": self.history,
            "elapsed": elapsed,
            "compile_error": self.compile_error,
        }
        save_checkpoint(state, self.checkpoint_path)

    # ----------------------------------------------------------------------------- training
    def enter_stage(self, stage: Stage) -> None:
        """Apply stage i's image size S_i and regularization (gamma_i, epsilon_i, lambda_i)."""
        set_dropout(self.model, stage.dropout)
        if self.ema is not None:
            set_dropout(self.ema.module, stage.dropout)
        if self.loader_kind == "device":
            self.train_loader.set_stage(stage.image_size, stage.mixup_alpha, stage.randaug_magnitude)
        else:
            self.train_dataset = self.train_split.with_transform(
                train_transform(stage.image_size, stage.randaug_magnitude, mean=self.mean, std=self.std))

    def batches(self, epoch: int, stage: Stage):
        """This epoch's training batches (images [B, 3, S_i, S_i] on the device, targets)."""
        epoch_seed = _derived_seed(self.config.seed, _SEED_EPOCH, epoch, self.dist.rank)
        self.data_generator.manual_seed(epoch_seed)
        if self.loader_kind == "device":
            yield from self.train_loader
            return
        self.sampler.set_epoch(epoch)
        loader = DataLoader(self.train_dataset, batch_size=self.rank_batch, sampler=self.sampler,
                            drop_last=True, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(epoch_seed))  # worker seeds
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(self.device, non_blocking=True)
            yield mixup_batch(images, labels, stage.mixup_alpha, self.num_classes, self.data_generator)

    def train_step(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
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

    def first_step_of_size(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, float]:
        """A step that may compile (new image size): timed with synchronization, eager fallback."""
        self._synchronize()
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
        self._synchronize()
        return logits, loss, time.perf_counter() - start

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_epoch(self, epoch: int, stage: Stage, stop: _StopOnSignal) -> tuple[dict, str | None]:
        """Train one epoch (from self.start_step); returns its statistics and "interrupted" or None."""
        cfg, device = self.config, self.device
        steps = self.steps_per_epoch
        start_step = self.start_step if epoch == self.start_epoch else 0
        batches = self.batches(epoch, stage)
        if start_step:  # resume mid-epoch: replay the first batches so every generator advances
            for _ in range(start_step):
                next(batches)
            if self.rng_state is not None:
                restore_rng_state(self.rng_state)  # what the skipped data draws consumed
        partial = self.partial if start_step else None
        self.partial = None
        loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device, dtype=torch.float64)
        correct = torch.tensor(partial["correct"] if partial else 0, device=device, dtype=torch.int64)
        seen = partial["seen"] if partial else 0
        train_time = partial["train_time"] if partial else 0.0
        never = torch.iinfo(torch.int64).max
        first_bad = torch.full((), never, device=device, dtype=torch.int64)  # first non-finite step
        bad_loss = torch.zeros((), device=device)
        compile_time = None
        bar = tqdm(total=steps, initial=start_step, leave=True, dynamic_ncols=True, unit="step",
                   desc=f"epoch {epoch + 1}/{self.schedule.total_epochs} stage {stage.index} "
                        f"{stage.image_size}px", disable=not (self.progress and self.dist.is_main))
        status = None
        step = start_step
        self._synchronize()
        started = time.perf_counter()
        try:
            for step in range(start_step, steps):
                images, targets = next(batches)
                if cfg.compile and stage.image_size not in self.compiled_sizes:
                    logits, loss, first_time = self.first_step_of_size(images, targets)
                    self.compiled_sizes.add(stage.image_size)
                    compile_time = first_time
                else:
                    logits, loss = self.train_step(images, targets)
                # Bookkeeping on the device: nothing here waits for the GPU.
                batch = len(images)
                hard_targets = targets if targets.ndim == 1 else targets.argmax(1)
                loss_sum += loss * batch
                correct += (logits.argmax(1) == hard_targets).sum()
                bad = (first_bad == never) & ~torch.isfinite(loss)
                first_bad = torch.where(bad, step, first_bad)
                bad_loss = torch.where(bad, loss, bad_loss)
                seen += batch
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(epoch, step)
                # (Under DDP the ranks must meet at the same steps, so a signal waits for the next one.)
                if (step + 1) % self.sync_every == 0 or step + 1 == steps or (
                        stop.requested and not self.dist.enabled):
                    # One host read every sync_every steps: non-finite loss, stop request, progress.
                    flags = torch.stack([-first_bad, torch.tensor(int(stop.requested), device=device)])
                    if self.dist.enabled:
                        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                    neg_first_bad, stop_now = flags.tolist()
                    if -neg_first_bad != never:
                        self.raise_non_finite(epoch, -neg_first_bad, float(bad_loss) if self.dist.is_main else None)
                    rate = seen * self.dist.world_size / (train_time + time.perf_counter() - started)
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                    img_s=f"{rate:.0f}", stage=stage.index, refresh=False)
                    if stop_now and step + 1 < steps:
                        status = "interrupted"
                        break
        finally:
            bar.close()
        self._synchronize()
        train_time += time.perf_counter() - started
        if compile_time is not None and step + 1 > start_step + 1:
            # compile time = the first step's time less an ordinary step's
            compile_time = max(0.0, compile_time - train_time / (step + 1 - start_step))
        stats = {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen, "train_time": train_time,
                 "step": step + 1, "compile_time": compile_time}
        if self.dist.enabled:
            totals = torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]], dtype=torch.float64,
                                  device=device)
            dist.all_reduce(totals)
            stats["global"] = totals.tolist()
        else:
            stats["global"] = [stats["loss_sum"], stats["correct"], stats["seen"]]
        return stats, status

    def raise_non_finite(self, epoch: int, step: int, value: float | None) -> None:
        value = "not finite" if value is None or math.isfinite(value) else value  # finite: another rank's
        last = self.history[-1]["epoch"] if self.history else None
        where = (f"the last good checkpoint is {self.checkpoint_path} (after epoch {last})"
                 if self.checkpoint_path is not None and last is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {epoch + 1}/{self.schedule.total_epochs}, step {step + 1}/"
            f"{self.steps_per_epoch} (learning rate {self.scheduler.get_last_lr()[0]:.3g}); stopping. {where}. "
            f"Try a lower --lr or a longer --warmup-epochs.")

    def sync_buffers(self) -> None:
        """BatchNorm statistics from rank 0 on every rank (DDP broadcasts them only before a forward)."""
        if not self.dist.enabled:
            return
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def agree(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any (ranks must take the same branches)."""
        if not self.dist.enabled:
            return flag
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value)

    @property
    def reported_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def test(self, model: nn.Module):
        return evaluate(model, self.test_loader, self.num_classes, bf16=self.bf16, all_reduce=self.dist.enabled)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.run_started

    def run(self) -> TrainResult:
        self.setup()
        cfg, schedule = self.config, self.schedule
        self.compiled_sizes: set[int] = set()
        self.log(self.describe())
        status = "finished"
        self.run_started = time.perf_counter()
        stage = None
        with _StopOnSignal(self.log) as stop:
            epoch = self.start_epoch
            while epoch < schedule.total_epochs:
                if stage is None or schedule.at(epoch) != stage:
                    stage = schedule.at(epoch)
                    self.enter_stage(stage)
                    if stage.start_epoch == epoch and epoch > 0:
                        self.log(f"stage {stage.index}: {stage.image_size} px, dropout {stage.dropout:.3f}, "
                                 f"RandAugment {stage.randaug_magnitude:.2f}, Mixup alpha {stage.mixup_alpha:.3f}")
                self.model.train()
                stats, interrupted = self.train_epoch(epoch, stage, stop)
                if interrupted:
                    self.save_training_state(epoch, stats["step"], {k: stats[k] for k in (
                        "loss_sum", "correct", "seen", "train_time")}, self.elapsed())
                    status = "interrupted"
                    self.log(f"stopped at epoch {epoch + 1}, step {stats['step']}/{self.steps_per_epoch}; "
                             + (f"checkpoint saved to {self.checkpoint_path}; continue with --resume --out {cfg.out}"
                                if self.checkpoint_path else "no output directory, nothing saved"))
                    break
                self.sync_buffers()
                record = self.epoch_record(epoch, stage, stats)
                self.history.append(record)
                self.save_training_state(epoch + 1, 0, None, self.elapsed())
                if self.dist.is_main and cfg.out is not None:
                    atomic_write_json(Path(cfg.out) / HISTORY_FILE, self.history)
                if self.dist.is_main and self.on_epoch is not None:
                    self.on_epoch(record)
                epoch += 1
                if self.agree(stop.requested):
                    status = "interrupted"
                    self.log(f"stopped after epoch {epoch}; continue with --resume --out {cfg.out}")
                    break
                if cfg.stop_after is not None and epoch >= cfg.stop_after and epoch < schedule.total_epochs:
                    status = "stopped"
                    self.log(f"stopped after epoch {epoch} as asked (stop_after={cfg.stop_after}); "
                             f"continue with --resume --out {cfg.out}")
                    break
        summary = self.finish(status)
        return TrainResult(self.history, summary, self.reported_model.eval(),
                           Path(cfg.out) if cfg.out is not None else None, status)

    def epoch_record(self, epoch: int, stage: Stage, stats: dict) -> dict[str, Any]:
        loss_sum, correct, seen = stats["global"]
        result = self.test(self.reported_model)
        record = {
            "epoch": epoch + 1,
            "stage": stage.index,
            "image_size": stage.image_size,
            "dropout": stage.dropout,
            "randaug_magnitude": stage.randaug_magnitude,
            "randaug_applied": stage.randaug_magnitude > 0,  # both loaders apply it
            "mixup_alpha": stage.mixup_alpha,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,  # against the larger Mixup partner when mixing
            "test_acc": result.accuracy,
            "images_per_s": seen / stats["train_time"],
            "epoch_time": stats["train_time"],
            "wall_time": self.elapsed(),
            "lr": self.scheduler.get_last_lr()[0],
            "compile_time": stats["compile_time"],
        }
        if self.ema is not None:
            record["test_acc_raw"] = self.test(self.model).accuracy
        self.log(f"epoch {epoch + 1}/{self.schedule.total_epochs}: stage {stage.index} {stage.image_size} px, "
                 f"loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}, test acc "
                 f"{record['test_acc']:.4f}, {record['images_per_s']:.0f} img/s, {_fmt_time(record['wall_time'])}"
                 + (f", compile {record['compile_time']:.1f} s" if record["compile_time"] is not None else ""))
        return record

    # ------------------------------------------------------------------------------- finish
    def finish(self, status: str) -> dict[str, Any]:
        cfg = self.config
        model = self.reported_model
        summary = self.base_summary(status)
        if status == "finished":
            before = self.test(model)
            final = before
            if cfg.bn_reestimate:
                batches = reestimate_batchnorm(model, self.bn_loader, bf16=self.bf16)
                self.sync_buffers()  # the ranks computed the same statistics, up to GPU rounding
                final = self.test(model)
                summary["bn_reestimation"] = {
                    "eval_size": self.eval_size, "batches": batches, "images": len(self.bn_loader.labels),
                    "test_acc_before": before.accuracy, "test_acc_after": final.accuracy,
                    "change": final.accuracy - before.accuracy}
                self.log(f"BatchNorm statistics re-estimated at {self.eval_size} px on {batches} batches: "
                         f"test accuracy {before.accuracy:.4f} -> {final.accuracy:.4f}")
            summary.update(final_test_acc=final.accuracy, test_images=final.num_images,
                           confusion_matrix=final.confusion.tolist(), wall_time_s=self.elapsed())
            if self.dist.enabled:
                digests: list[Any] = [None] * self.dist.world_size
                dist.all_gather_object(digests, _state_digest(model))
                summary["ranks_identical"] = len(set(digests)) == 1
                if not summary["ranks_identical"]:
                    warnings.warn("the ranks ended with different weights", RuntimeWarning, stacklevel=2)
            if self.dist.is_main and cfg.out is not None and cfg.save_weights:
                files = save_weights(model.state_dict(), Path(cfg.out) / WEIGHTS_FILE, WEIGHT_SHARD_BYTES)
                summary["weights"] = [f.name for f in files]
        if self.dist.is_main and cfg.out is not None:
            atomic_write_json(Path(cfg.out) / SUMMARY_FILE, summary)
            if self.history:
                self.write_plots(summary)
        if status == "finished":
            self.log(self.describe_result(summary))
        return summary

    def base_summary(self, status: str) -> dict[str, Any]:
        cfg, history = self.config, self.history
        best = max(history, key=lambda r: r["test_acc"]) if history else None
        reached = {}
        for target in (0.90, 0.94, 0.96):
            hit = next((r for r in history if r["test_acc"] >= target), None)
            reached[f"{target:.2f}"] = None if hit is None else {"epoch": hit["epoch"], "wall_time": hit["wall_time"]}
        compile_times = [r["compile_time"] for r in history if r.get("compile_time") is not None]
        return {
            "status": status,
            "command": self.command,
            "model_name": cfg.model,
            "model": self.model.spec.name,
            "params": count_parameters(self.model),
            "dataset": cfg.dataset,
            "data": {"source": self.data.source, "is_sample": self.data.is_sample,
                     "train_images": len(self.train_split), "test_images": len(self.test_split)},
            "schedule": self.schedule.to_dict(),
            "eval_size": self.eval_size,
            "epochs_done": len(history),
            "final_test_acc": history[-1]["test_acc"] if history else None,
            "best_test_acc": best["test_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "reached": reached,
            "train_time_s": sum(r["epoch_time"] for r in history),
            "wall_time_s": history[-1]["wall_time"] if history else None,
            "setup_time_s": self.setup_time,
            "compile_time_s": sum(compile_times) if cfg.compile else None,
            "compile_error": self.compile_error,
            "mean_images_per_s": (sum(r["images_per_s"] * r["epoch_time"] for r in history)
                                  / max(1e-9, sum(r["epoch_time"] for r in history))) if history else None,
            "optimizer": {"name": cfg.optimizer, "lr": self.base_lr, "weight_decay": self.weight_decay,
                          "momentum": cfg.momentum, "lr_schedule": cfg.lr_schedule,
                          "warmup_steps": self.lr_factor.warmup_steps, "steps_per_epoch": self.steps_per_epoch,
                          "batch_size": cfg.batch_size, "label_smoothing": cfg.label_smoothing,
                          "ema": cfg.ema, "ema_decay": cfg.ema_decay if cfg.ema else None},
            "speed": {"loader": self.loader_kind, "bf16": self.bf16, "channels_last": self.channels_last,
                      "compile": cfg.compile, "compile_mode": cfg.compile_mode if cfg.compile else None,
                      "world_size": self.dist.world_size},
            "hardware": {**hardware(self.device), "world_size": self.dist.world_size},
            "config": cfg.to_dict(),
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    def write_plots(self, summary: dict[str, Any]) -> None:
        import matplotlib.pyplot as plt

        from .plots import plot_confusion_matrix, plot_history

        out = Path(self.config.out)
        fig = plot_history(self.history)
        data = "the CIFAR-10 sample" if self.data.is_sample else self.config.dataset
        fig.suptitle(f"{self.model.spec.name} on {data} ({len(self.train_split)} training images), "
                     f"schedule {self.schedule.name or 'custom'}")
        fig.savefig(out / CURVES_FILE, dpi=90)
        plt.close(fig)
        if "confusion_matrix" in summary:
            fig = plot_confusion_matrix(summary["confusion_matrix"], self.classes,
                                        title=f"Confusion matrix (test accuracy {summary['final_test_acc']:.3f})")
            fig.savefig(out / CONFUSION_FILE, dpi=90)
            plt.close(fig)

    # ------------------------------------------------------------------------------ messages
    def describe(self) -> str:
        cfg = self.config
        lines = [
            f"model {self.model.spec.name} ({count_parameters(self.model) / 1e6:.2f}M parameters), "
            f"{self.num_classes} classes, on {self.device}"
            + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""),
            f"data: {len(self.train_split)} training / {len(self.test_split)} test images from {self.data.source}"
            + (" (THE BUNDLED SAMPLE)" if self.data.is_sample else ""),
            f"loader: {self.loader_kind}"
            + (" (crop, flip, resize, RandAugment, Mixup batched on the device)" if self.loader_kind == "device"
               else " (DataLoader, per-sample crop, flip, resize, RandAugment; Mixup per batch)")
            + f"; batch {cfg.batch_size}, {self.steps_per_epoch} steps per epoch; eval at {self.eval_size} px",
            f"optimizer {cfg.optimizer} lr {self.base_lr:.3g} wd {self.weight_decay:g}, {cfg.lr_schedule} after "
            f"{self.lr_factor.warmup_steps} warm-up steps, label smoothing {cfg.label_smoothing}"
            + (f", EMA {cfg.ema_decay}" if cfg.ema else "")
            + f"; bf16 {self.bf16}, channels_last {self.channels_last}, compile {cfg.compile}",
            self.schedule.table(),
        ]
        if cfg.out is not None:
            lines.append(f"writing to {cfg.out}"
                         + (f" (checkpoints in {cfg.checkpoint_dir})" if cfg.checkpoint_dir else ""))
        return "\n".join(lines)

    def describe_result(self, summary: dict[str, Any]) -> str:
        text = (f"done: test accuracy {summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
                f"{summary['best_epoch']}) after {summary['epochs_done']} epochs, training "
                f"{_fmt_time(summary['train_time_s'])}, wall {_fmt_time(summary['wall_time_s'])}")
        if self.config.out is not None:
            text += f"\nresults in {self.config.out}: {SUMMARY_FILE}, {HISTORY_FILE}, {CURVES_FILE}, {CONFUSION_FILE}"
        return text


def train(config: TrainConfig, progress: bool = True, *, data: CifarData | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_step: Callable[[int, int], None] | None = None, command: str | None = None) -> TrainResult:
    """Run the training `config` describes; see the module docstring.

    Args:
        config: a TrainConfig.
        progress: show tqdm bars (one per epoch) and messages.
        data: train on this CifarData instead of loading `config`'s (subsets still apply).
        on_epoch: called with each epoch's history record (e.g. to plot live in a notebook).
        on_step: called as on_step(epoch, step) (0-based) after every optimizer step.
        command: the command line, recorded in run.json and summary.json.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        RunDirectoryError: `config.out` holds another run (see effv2_lib.checkpoint).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    trainer = _Trainer(config, data=data, progress=progress, on_epoch=on_epoch, on_step=on_step,
                       command=command if command is not None else "effv2_lib.train.train(TrainConfig(...))")
    try:
        return trainer.run()
    finally:
        if trainer.dist.owns_group:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------- --auto
def _full_data_available(dataset: str, data_dir: str | None) -> bool:
    from .data import DATA_DIR, DATA_ENV_VAR

    if data_dir or os.environ.get(DATA_ENV_VAR):
        return True
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    return (DATA_DIR / folder).is_dir()


def auto_config(device: str | None = None, data_dir: str | None = None) -> tuple[TrainConfig, str]:
    """The `make train` default for this machine, and a sentence saying what it is.

    GPU: full CIFAR-10, the cifar10 progressive preset (40 epochs, 16 -> 32 px), batch 512,
    data from data_dir / EFFV2_DATA / torchvision's copy in data/, downloaded when missing, never
    the sample. CPU: a classroom run of about 5 minutes on 2 cores: cifar-tiny, 16 -> 28 px in 4
    stages over 40 epochs while dropout (0 -> 0.1), RandAugment (0 -> 4) and Mixup (0 -> 0.1)
    grow, evaluated at 32 px (so the BatchNorm re-estimation has work to do), on the bundled
    sample, or on 250 images per class of the full data when it is at hand.
    """
    target = pick_device(device)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if target.type == "cuda":
        config = TrainConfig(model="cifar", preset="cifar10", batch_size=512, device=device, data_dir=data_dir,
                             download=not _full_data_available("cifar10", data_dir), full_data_only=True,
                             out=f"runs/auto-gpu-{stamp}")
        return config, ("GPU run: full CIFAR-10, EfficientNetV2-CIFAR, progressive preset cifar10 "
                        "(40 epochs, 16 -> 32 px), data on the GPU, bf16, channels_last")
    full = _full_data_available("cifar10", data_dir)
    schedule = ProgressiveSchedule(total_epochs=40, num_stages=4, image_size=(16, 28), size_multiple=4,
                                   dropout=(0.0, 0.1), randaug=(0, 4), mixup=(0.0, 0.1),
                                   name="cpu-classroom")
    config = TrainConfig(model="cifar-tiny", schedule=schedule, batch_size=64, lr=0.1, warmup_epochs=1,
                         loader="device", device=device, data_dir=data_dir, sample=not full,
                         subset_per_class=250 if full else None, test_subset_per_class=100,
                         bn_batches=10, out=f"runs/auto-cpu-{stamp}")
    data_text = ("250 images per class of the full CIFAR-10" if full
                 else "the bundled CIFAR-10 sample (2,500 training images)")
    return config, (f"CPU classroom run (about 5 minutes on 2 cores): EfficientNetV2-CIFAR-tiny on {data_text}, "
                    f"1,000 test images, progressive 16 -> 28 px in 4 stages over 40 epochs (dropout 0 -> 0.1, "
                    f"RandAugment 0 -> 4, Mixup 0 -> 0.1), evaluated at 32 px. "
                    f"A GPU run (make train on a machine with CUDA) trains the full model on all of CIFAR-10.")


# ------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.train",
        description="Train EfficientNetV2 on CIFAR with progressive learning (Tan & Le 2021, Algorithm 1): "
                    "image size, dropout, RandAugment and Mixup grow stage by stage. Writes run.json, "
                    "checkpoint.pt (every epoch), history.json, summary.json and plots to --out.",
        epilog="examples:\n"
               "  python -m effv2_lib.train --auto                      # what `make train` runs\n"
               "  python -m effv2_lib.train --model cifar --preset cifar10 --epochs 40 --data DIR --out runs/prog\n"
               "  python -m effv2_lib.train --preset cifar10 --fixed-size 32 --data DIR --out runs/fixed\n"
               "  python -m effv2_lib.train --out runs/prog --resume     # continue after Ctrl-C\n"
               "  torchrun --nproc_per_node=2 -m effv2_lib.train --data DIR --out runs/ddp\n"
               "Ctrl-C saves a checkpoint and stops (three times: abort without saving).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS)  # only options given on the command line override

    def default(name: str) -> str:
        return f" (default: {getattr(d, name)})"

    g = parser.add_argument_group("run")
    g.add_argument("--auto", action="store_true",
                   help="sensible defaults for this machine: on a GPU the full CIFAR-10 progressive run, "
                        "on a CPU a ~5 minute classroom run; options given as well override them")
    g.add_argument("--smoke", action="store_true",
                   help="pipeline check in seconds: one epoch per stage on 10 images per class (also EFFV2_SMOKE=1)")
    g.add_argument("--out", help="run directory for checkpoint, history, summary, plots (default: runs/<model>-<time>)")
    g.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="keep checkpoint.pt here instead of in --out")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                                                         "(its settings are reused; given ones must agree)")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--stop-after", dest="stop_after", type=int, metavar="N",
                   help="stop (resumably) once N epochs are done")
    g.add_argument("--save-weights", dest="save_weights", action="store_true",
                   help="also write the final weights as model.pt (shards of <= 15 MiB) for evaluate.py")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    g = parser.add_argument_group("model and schedule")
    g.add_argument("--model", choices=MODELS, help="network" + default("model"))
    g.add_argument("--dataset", choices=tuple(NORMALIZATION), help="data set" + default("dataset"))
    g.add_argument("--preset", help="progressive schedule preset (effv2_lib.schedule.PRESETS: cifar10, cifar100, "
                                    "cifar10-fixed, paper-s, ...)" + default("preset"))
    g.add_argument("--epochs", type=int, help="total epochs N (default: the preset's; cifar10: 40)")
    g.add_argument("--fixed-size", dest="fixed_size", type=int, metavar="PX",
                   help="no progressive learning: train every epoch at PX with the final stage's regularization")
    g.add_argument("--eval-size", dest="eval_size", type=int, metavar="PX",
                   help="test image size (default: the model's, 32)")

    g = parser.add_argument_group("data")
    g.add_argument("--data", dest="data_dir", metavar="DIR",
                   help="directory with train.npz/test.npz or train/<class>/, test/<class>/ (default: $EFFV2_DATA, "
                        "then torchvision's copy in data/, then the bundled sample, announced)")
    g.add_argument("--download", action="store_true", help="download the data set with torchvision into data/")
    g.add_argument("--sample", action="store_true", help="train on the bundled 2,500-image CIFAR-10 sample")
    g.add_argument("--full-data-only", dest="full_data_only", action="store_true",
                   help="fail instead of falling back to the sample")
    g.add_argument("--subset-per-class", dest="subset_per_class", type=int, metavar="K",
                   help="train on K images per class")
    g.add_argument("--test-subset-per-class", dest="test_subset_per_class", type=int, metavar="K",
                   help="test on K images per class")
    g.add_argument("--loader", choices=LOADERS,
                   help="device (auto): the data set on the device, crop/flip/resize/RandAugment/Mixup batched "
                        "there; cpu: a DataLoader with per-sample transforms (the classic path, slower)")
    g.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers of --loader cpu "
                                                                   "(default: 0 on CPU, up to 8 with CUDA)")

    g = parser.add_argument_group("optimization")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size" + default("batch_size"))
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="SGD with Nesterov momentum, or RMSprop as in the paper"
                   + default("optimizer"))
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.1 x batch/128 for SGD, 0.016 x batch/256 "
                                            "for RMSprop)")
    g.add_argument("--momentum", type=float, help="momentum" + default("momentum"))
    g.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help="on conv/linear weights only (default: 5e-4 SGD, 1e-5 RMSprop)")
    g.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES,
                   help="after warm-up: cosine to 0, or x0.97 every 2.4 epochs (paper)" + default("lr_schedule"))
    g.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                   help="linear warm-up, at most a fifth of the run" + default("warmup_epochs"))
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float,
                   help="cross-entropy label smoothing" + default("label_smoothing"))
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, help="exponential moving average of the weights "
                   "(evaluated and reported instead of the raw weights)")
    g.add_argument("--ema-decay", dest="ema_decay", type=float, help="per step" + default("ema_decay"))
    g.add_argument("--bn-reestimate", dest="bn_reestimate", action=argparse.BooleanOptionalAction,
                   help="re-estimate BatchNorm statistics at the eval size before the final evaluation (FixRes)"
                        + default("bn_reestimate"))
    g.add_argument("--bn-batches", dest="bn_batches", type=int,
                   help="training batches for the re-estimation" + default("bn_batches"))
    g.add_argument("--seed", type=int, help="seed of the initial weights, data order and augmentation"
                   + default("seed"))

    g = parser.add_argument_group("speed")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: CUDA if available)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on for CUDA)")
    g.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default: on for CUDA and CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (one compilation per image size)")
    g.add_argument("--compile-mode", dest="compile_mode", help="torch.compile mode" + default("compile_mode"))
    g.add_argument("--sync-every", dest="sync_every", type=int, metavar="STEPS",
                   help="read the loss back every STEPS steps (default: 50 on CUDA, 1 elsewhere)")
    return parser


def _config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, str | None]:
    given = vars(args)
    progress = given.pop("progress", True)
    auto = given.pop("auto", False)
    smoke = given.pop("smoke", False) or is_smoke()
    note = None
    if given.get("resume"):
        if "out" not in given:
            raise ValueError("--resume needs --out (the run directory to continue)")
        run_file = Path(given["out"]) / "run.json"
        base = read_json(run_file)["config"] if run_file.is_file() else {}
    elif auto:
        auto_cfg, note = auto_config(given.get("device"), given.get("data_dir"))
        base = auto_cfg.to_dict()
    else:
        base = {}
    options = {**base, **given}
    if smoke:
        options["smoke"] = True
    if "out" not in options:
        options["out"] = f"runs/{options.get('model', 'cifar')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig(**options), progress, note


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, progress, note = _config_from_args(args)
    except (ValueError, TypeError, OSError) as exc:
        parser.error(str(exc))
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")  # files only; no window
    if note:
        print(note)
    try:
        result = train(config, progress=progress, command=shlex.join(["python", "-m", "effv2_lib.train", *argv]))
    except (NonFiniteLossError, RunDirectoryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 130 if result.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
