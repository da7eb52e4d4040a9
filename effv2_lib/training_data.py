"""A run's data: which images it trains and tests on, and the batches that feed the training loop.

`load_run_data` turns a `TrainConfig` into the training and evaluation splits (the bundled sample
announced in the run's own words, held-out training images instead of the test set, per-class
subsets). `TrainBatches` yields each epoch's training batches at the current stage's settings
(Tan & Le 2021, Section 4, Algorithm 1: the image size S_i, RandAugment epsilon_i, Mixup lambda_i
change per stage), from one of two loaders:

- ``device`` (the default): `effv2_lib.augment.DeviceLoader` keeps the images on the device and
  batches crop, flip, resize, per-sample RandAugment and Mixup/CutMix there;
- ``cpu``: torch's DataLoader with per-sample transforms (`effv2_lib.augment.train_transform`),
  Mixup/CutMix per batch (`effv2_lib.augment.mix_batch`).

Either way one generator draws every random choice of the data path and is reseeded from (seed,
epoch, rank) at the start of each epoch: that is what lets a resumed run continue bit for bit
(`TrainBatches.epoch` replays and discards the batches an interrupted epoch had already taken).
`evaluation_loaders` builds the unaugmented test loader and the BatchNorm re-estimation loader.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .augment import DeviceLoader, mix_batch, train_transform
from .checkpoint import restore_rng_state
from .config import TrainConfig
from .data import NORMALIZATION, CifarData, CifarSplit, SampleDataWarning, fingerprint, hold_out, load_cifar, subset
from .distributed import Ranks
from .runtime import derived_seed
from .schedule import Stage

__all__ = ["RunData", "TrainBatches", "load_run_data", "evaluation_loaders",
           "SEED_RANK", "SEED_EPOCH", "SEED_SHARD", "SEED_BN"]

# Purposes of derived seeds, so that no two random streams coincide.
SEED_RANK, SEED_EPOCH, SEED_SHARD, SEED_BN = 1, 2, 3, 4


@dataclass
class RunData:
    """The images a run trains on (`train`) and measures accuracy on (`test`: the test set, or
    held-out training images), and where they came from."""

    train: CifarSplit
    test: CifarSplit
    evaluated_on: str  # "test", or which held-out training images
    source: str  # the data set's origin (`effv2_lib.data.CifarData.source`)
    is_sample: bool  # the bundled sample, not the full data set
    classes: list[str]
    mean: tuple[float, ...]  # the data set's normalization
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def record(self) -> dict:
        """What run.json keeps of the data, so that a resume on other images is refused: where they
        came from, how many, and a fingerprint of the images and labels trained and tested on."""
        return {"source": self.source, "sample": self.is_sample, "train_images": len(self.train),
                "test_images": len(self.test), "evaluated_on": self.evaluated_on,
                "fingerprint": fingerprint(self.train, self.test)}


def load_run_data(config: TrainConfig, data: CifarData | None, log: Callable[[str], None]) -> RunData:
    """The splits `config` asks for, from `data` if given, else loaded (`effv2_lib.data.load_cifar`)."""
    cfg = config
    if data is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SampleDataWarning)
            try:
                data = load_cifar(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, prefer_sample=cfg.sample)
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
        log(f"NOTE: training on the bundled CIFAR-10 SAMPLE ({len(data.train)} training / "
            f"{len(data.test)} test images), not the full data set; accuracies are not "
            f"CIFAR-10 figures. Use --data DIR, EFFV2_DATA or --download for the real thing.")
    train, test, evaluated_on = data.train, data.test, "test"
    if cfg.holdout_per_class:  # seed 0 always: every recipe compared on the same held-out images
        train, test = hold_out(data.train, cfg.holdout_per_class, seed=0)
        evaluated_on = f"held-out training images ({cfg.holdout_per_class} per class)"
    if cfg.subset_per_class:
        train = subset(train, cfg.subset_per_class, seed=cfg.seed)
    if cfg.test_subset_per_class:
        test = subset(test, cfg.test_subset_per_class, seed=cfg.seed)
    mean, std = NORMALIZATION[cfg.dataset]
    return RunData(train, test, evaluated_on, data.source, data.is_sample, list(data.classes), mean, std)


class TrainBatches:
    """This rank's training batches, epoch by epoch, at the current stage's settings.

    `batch_size` is the global batch: each of the N ranks takes batch_size / N images per step
    from its own shard, and an epoch drops the last, incomplete batch (`steps_per_epoch`).
    """

    def __init__(self, config: TrainConfig, data: RunData, ranks: Ranks, device: torch.device, *,
                 kind: str, channels_last: bool) -> None:
        cfg, world = config, ranks.world_size
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
        self.config, self.data, self.ranks, self.device = config, data, ranks, device
        self.kind, self.channels_last = kind, channels_last
        self.rank_batch = cfg.batch_size // world
        shard_seed = derived_seed(cfg.seed, SEED_SHARD)
        # One generator on the device draws every random choice of the data path (crop, flip,
        # RandAugment, Mixup); it is reseeded at each epoch from (seed, epoch, rank).
        self.generator = torch.Generator(device=device)
        if kind == "device":
            self.loader = DeviceLoader(ranks.shard(data.train, shard_seed, equal=True), self.rank_batch,
                                       device=device, generator=self.generator, mean=data.mean, std=data.std,
                                       channels_last=channels_last)
            self.steps_per_epoch = len(self.loader)
        else:
            self.sampler = DistributedSampler(data.train, num_replicas=world, rank=ranks.rank,
                                              shuffle=True, seed=shard_seed % 2**31, drop_last=True)
            self.num_workers = cfg.num_workers if cfg.num_workers is not None else (
                min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0)
            self.steps_per_epoch = len(self.sampler) // self.rank_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(data.train)} images over {world} process(es)) "
                             f"is smaller than one batch of {cfg.batch_size}; lower batch_size")

    def set_stage(self, stage: Stage) -> None:
        """Stage i's image size S_i, RandAugment magnitude epsilon_i and Mixup alpha lambda_i (and
        the automl rule's CutMix) for the batches to come."""
        if self.kind == "device":
            self.loader.set_stage(stage)
        else:
            self.dataset = self.data.train.with_transform(train_transform(stage, mean=self.data.mean,
                                                                          std=self.data.std))

    def epoch(self, epoch: int, stage: Stage, skip: int = 0,
              rng_state: dict | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's training batches. Resuming mid-epoch, the first `skip` are drawn and
        discarded, so every generator is where the interrupted run had it; then the global random
        state `rng_state` saved with the checkpoint is restored (what the skipped draws consumed)."""
        batches = self._epoch_batches(epoch, stage)
        if skip:
            for _ in range(skip):
                next(batches)
            if rng_state is not None:
                restore_rng_state(rng_state)
        return batches

    def _epoch_batches(self, epoch: int, stage: Stage) -> Iterator[tuple[Tensor, Tensor]]:
        """Images [B, 3, S_i, S_i] on the device, targets [B], or [B, K] when mixed."""
        epoch_seed = derived_seed(self.config.seed, SEED_EPOCH, epoch, self.ranks.rank)
        self.generator.manual_seed(epoch_seed)
        if self.kind == "device":
            yield from self.loader
            return
        self.sampler.set_epoch(epoch)
        loader = DataLoader(self.dataset, batch_size=self.rank_batch, sampler=self.sampler,
                            drop_last=True, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(epoch_seed))  # worker seeds
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(self.device, non_blocking=True)
            yield mix_batch(images, labels, stage.mixup_alpha, stage.cutmix_alpha, self.data.num_classes,
                            self.generator)


def evaluation_loaders(config: TrainConfig, data: RunData, ranks: Ranks, device: torch.device, *,
                       eval_size: int, rank_batch: int, channels_last: bool) -> tuple[DeviceLoader, DeviceLoader]:
    """The test loader (this rank's share of `data.test`, unaugmented, at `eval_size`) and the
    BatchNorm re-estimation loader: `bn_batches` batches of unaugmented training images at
    `eval_size`, the same on every rank."""
    cfg = config
    norm = dict(mean=data.mean, std=data.std, channels_last=channels_last)
    test_loader = DeviceLoader(ranks.shard(data.test, derived_seed(cfg.seed, SEED_SHARD), equal=False),
                               1024 if device.type == "cuda" else 250, device=device, image_size=eval_size,
                               train=False, generator=torch.Generator(device=device), **norm)
    count = min(len(data.train), cfg.bn_batches * rank_batch)
    rows = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(
        derived_seed(cfg.seed, SEED_BN)))[:count].sort().values
    bn_split = CifarSplit(data.train.images[rows], data.train.labels[rows], data.classes)
    bn_loader = DeviceLoader(bn_split, rank_batch, device=device, image_size=eval_size, train=False,
                             generator=torch.Generator(device=device), **norm)
    return test_loader, bn_loader
