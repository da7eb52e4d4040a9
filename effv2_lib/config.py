"""What a training run depends on: `TrainConfig`, the schedule it resolves to, `make train`'s default.

A config is plain data (a dataclass of numbers, strings and the schedule's dict), so it is
written to ``run.json`` when a run starts and compared field by field when it is resumed
(`RUNTIME_FIELDS` may differ; every other field must agree). The trainer itself lives in
`effv2_lib.trainer`, its command line in `effv2_lib.train`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from ._checks import check_choice, check_int, check_real
from .data import DATA_ENV_VAR, NORMALIZATION, torchvision_folder
from .model import check_model_name
from .optim import LR_SCHEDULES, OPTIMIZERS
from .runtime import pick_device
from .schedule import PRESETS, ProgressiveSchedule

__all__ = ["LOADERS", "RUNTIME_FIELDS", "SMOKE", "TrainConfig",
           "resolve_schedule", "smoke_config", "auto_config"]

LOADERS = ("auto", "device", "cpu")


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
    holdout_per_class: int | None = None  # evaluate on this many training images per class, held out, not the test set
    loader: str = "auto"  # device (= auto): DeviceLoader, batched; cpu: DataLoader, per-sample transforms
    num_workers: int | None = None  # DataLoader workers of the cpu loader
    # optimization
    batch_size: int = 256  # global batch (all ranks together)
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.1 per 128 images (SGD), 0.016 per 256 (RMSprop)
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 (SGD), 1e-5 (RMSprop); never on BN / biases
    lr_schedule: str = "cosine"
    warmup_epochs: float = 2.0  # linear warm-up, at most a fifth of the run (automl: 5 epochs, lr_warmup_epoch)
    label_smoothing: float = 0.1
    ema: bool = False
    ema_decay: float = 0.999  # per step: averages ~1/(1 - d) = 1,000 steps, 5 CIFAR epochs at batch 256;
    # automl uses 0.9999 (hparams.py ema_decay), 10,000 steps, for ImageNet's many more steps per run
    bn_reestimate: bool | None = None  # BatchNorm statistics at the eval size before the final eval; None: only
    # when the last stage trained at another size (at the same size they are already the right ones)
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
        check_model_name(self.model)
        for name, allowed in (("dataset", tuple(NORMALIZATION)), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("loader", LOADERS)):
            check_choice(name, getattr(self, name), allowed)
        # Checked values are stored as plain int / float: numpy scalars would not go into run.json.
        for name, low in (("epochs", 1), ("fixed_size", 8), ("subset_per_class", 1), ("test_subset_per_class", 1),
                          ("holdout_per_class", 1), ("num_workers", 0), ("eval_size", 8), ("sync_every", 1),
                          ("stop_after", 1)):
            setattr(self, name, check_int(name, getattr(self, name), low, optional=True))
        for name, low in (("batch_size", 1), ("bn_batches", 1), ("seed", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low))
        self.lr = check_real("lr", self.lr, 0, math.inf, allowed="a number > 0", optional=True)
        if self.lr == 0:
            raise ValueError("lr must be a number > 0, got 0")
        self.weight_decay = check_real("weight_decay", self.weight_decay, 0, math.inf, allowed="a number >= 0",
                                       optional=True)
        self.warmup_epochs = check_real("warmup_epochs", self.warmup_epochs, 0, math.inf, allowed="a number >= 0")
        for name in ("momentum", "label_smoothing", "ema_decay"):
            setattr(self, name, check_real(name, getattr(self, name), 0, 1))
        if self.schedule is None:
            check_choice("preset", self.preset, PRESETS)
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
# --smoke / EFFV2_QUICK=1: 10 images per class, one epoch per stage unless epochs are given.
SMOKE = dict(subset_per_class=10, test_subset_per_class=10, batch_size=20, bn_batches=2, warmup_epochs=0.5)


def resolve_schedule(config: TrainConfig) -> ProgressiveSchedule:
    """The ProgressiveSchedule a config trains with (preset / explicit schedule, then fixed_size)."""
    if config.schedule is not None:
        schedule = ProgressiveSchedule.from_dict(dict(config.schedule))
        if config.fixed_size is None and config.epochs is not None and config.epochs != schedule.total_epochs:
            raise ValueError(f"epochs={config.epochs} disagrees with the explicit schedule's "
                             f"{schedule.total_epochs} epochs; give one of them")
    elif config.fixed_size is not None:
        # Only the preset's final stage is used, so its default length keeps every stage non-empty
        # whatever `epochs` the fixed run has (even fewer than the preset has stages).
        schedule = ProgressiveSchedule.from_preset(config.preset)
    else:
        schedule = ProgressiveSchedule.from_preset(config.preset, config.epochs)
    if config.fixed_size is not None:
        last = schedule.stages[-1]
        epochs = config.epochs if config.epochs is not None else schedule.total_epochs
        schedule = ProgressiveSchedule.fixed(
            epochs, config.fixed_size, dropout=last.dropout,
            randaug=last.randaug_magnitude, mixup=last.mixup_alpha, cutmix=last.cutmix_alpha,
            randaug_ops=last.randaug_ops, name=f"{schedule.name or 'schedule'} fixed at {config.fixed_size} px")
    return schedule


def smoke_config(config: TrainConfig) -> TrainConfig:
    """The config shrunk for a pipeline check on 10 images per class: one epoch per stage, or
    `config.epochs` when they were given (on 10 images per class they take seconds too)."""
    if config.fixed_size is None:
        schedule = resolve_schedule(config)
        epochs = config.epochs if config.epochs is not None else schedule.num_stages
    else:  # the one fixed stage takes any number of epochs, by default one per stage it replaces
        schedule = resolve_schedule(replace(config, epochs=None))
        epochs = (config.epochs if config.epochs is not None
                  else resolve_schedule(replace(config, fixed_size=None, epochs=None)).num_stages)
    shrunk = replace(schedule, total_epochs=epochs).to_dict()
    shrunk.pop("stages")
    return replace(config, schedule=shrunk, fixed_size=None, epochs=None, smoke=False, **SMOKE)


def _full_data_available(dataset: str, data_dir: str | None) -> bool:
    if data_dir or os.environ.get(DATA_ENV_VAR):
        return True
    return torchvision_folder(dataset).is_dir()


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
    note = (f"CPU classroom run (about 5 minutes on 2 cores): EfficientNetV2-CIFAR-tiny on {data_text}, "
            f"1,000 test images, progressive 16 -> 28 px in 4 stages over 40 epochs (dropout 0 -> 0.1, "
            f"RandAugment 0 -> 4, Mixup 0 -> 0.1), evaluated at 32 px. "
            f"A GPU run (make train on a machine with CUDA) trains the full model on all of CIFAR-10.")
    if full:
        note += f" {CPU_EXPERIMENT_NOTE}"
    return config, note


# What `make train` on a CPU says when the full data set is at hand (figures: results/cpu-cifar10).
CPU_EXPERIMENT_NOTE = (
    "With the full CIFAR-10 at hand, the real CPU experiment trains cifar-tiny on all 50,000 images: progressive "
    "against fixed-size training, the regularization ablation and time-matched baselines, five runs of 20-35 "
    "minutes of training each on a quiet 2-core x86-64 CPU, about 2.2 hours in all with evaluation (an estimate from "
    "each run's measured cost; results/cpu-cifar10). Start it with "
    "`make experiment DATA=DIR` or `python -m effv2_lib.experiments cpu-cifar10 --data DIR --out "
    "results/cpu-cifar10`; it resumes where it stopped when run again. The recipe tuned on held-out images "
    "(16 epochs, lighter regularization; results/cpu-cifar10-tuned) reached 88.60% test accuracy after 29 minutes "
    "of training: `make experiment-tuned DATA=DIR` runs the same five runs on it.")
