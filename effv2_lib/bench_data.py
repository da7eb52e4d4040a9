"""Input-pipeline throughput: the CPU DataLoader path against the GPU-resident DeviceLoader.

Progressive learning (Tan & Le 2021, Section 4) trains its early stages on small images, where
the model step is cheap and the input pipeline can become the limit. This benchmark measures
images per second delivered by each path at several stage sizes, without any model:

* ``cpu``: CifarSplit + `train_transform` (crop, flip, resize, RandAugment at --randaug) in a
  torch DataLoader with --workers processes, then `mixup_batch` on the collated batch and a copy
  to the device, as a training loop would do;
* ``device``: `DeviceLoader` (crop, flip, resize, normalization, Mixup batched on the device),
  without RandAugment and with `batched_rand_augment` at --randaug (per-sample ops on the device).

A second table times one RandAugment call on a batch, grouped (`batched_rand_augment`: each
(op, sign) group gathered, transformed, scattered back) against masked (every op on the whole
batch, each image keeping its own with ``torch.where``), the design choice documented in
`batched_rand_augment`; both give identical images, which is checked. On CUDA it also counts the
host-device syncs per batch (``torch.cuda.set_sync_debug_mode``), averaged over an epoch: the
loader augments chunks of batches at once, so the syncs come once per chunk.

Run::

    python -m effv2_lib.bench_data                        # sizes 16 24 32, batch 512, auto device
    python -m effv2_lib.bench_data --sizes 16 32 --batch-size 128 --cpu-images 2048 --device cpu

The data come from `load_cifar` (so ``--data`` or EFFV2_DATA, else the bundled sample); the batch
must not exceed its training images. Figures depend on the machine; nothing here asserts a speed.
"""

import argparse
import math
import os
import sys
import time
import warnings

import torch
import torchvision

from ._cli import int_at_least, one_line_errors
from .augment import DeviceLoader, mixup_batch, train_transform
from .data import NORMALIZATION, SampleDataWarning, load_cifar
from .randaugment import RANDAUG_FILL, RANDAUG_OPS, batched_rand_augment, draw_randaug_groups, randaug_op_table
from .runtime import pick_device, synchronize


def cpu_path_rate(split, image_size: int, randaug: float, mixup_alpha: float, batch_size: int,
                  workers: int, min_images: int, device: torch.device, mean, std) -> float:
    """Images/s of DataLoader(per-sample transforms) + Mixup + copy to `device`, after the first batch."""
    dataset = split.with_transform(train_transform(image_size, randaug, mean=mean, std=std))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    if len(loader) == 0:  # a loop over no batch would never end
        raise ValueError(f"batch_size={batch_size} is larger than the {len(split)} training images; "
                         "lower the batch size")
    generator = torch.Generator().manual_seed(0)
    images_done, start = 0, None
    while start is None or images_done < min_images:
        for images, labels in loader:
            images, labels = mixup_batch(images, labels, mixup_alpha, len(split.classes), generator)
            images = images.to(device, non_blocking=True)
            if start is None:                   # exclude worker start-up and the first batch
                synchronize(device)
                start = time.perf_counter()
                continue
            images_done += len(images)
            if images_done >= min_images:
                break
    synchronize(device)
    return images_done / (time.perf_counter() - start)


def device_path_rate(split, image_size: int, randaug: float, mixup_alpha: float, batch_size: int,
                     min_images: int, device: torch.device, mean, std, channels_last: bool) -> float:
    """Images/s of DeviceLoader batches on `device`, after one warm-up epoch."""
    loader = DeviceLoader(split, batch_size, device=device, image_size=image_size,
                          mixup_alpha=mixup_alpha, randaug_magnitude=randaug, mean=mean, std=std,
                          channels_last=channels_last,
                          generator=torch.Generator(device=device).manual_seed(0))
    if len(loader) == 0:  # a loop over no batch would never end
        raise ValueError(f"batch_size={batch_size} is larger than the {len(split)} training images; "
                         "lower the batch size")
    for _ in loader:                         # warm-up: allocator, kernels, caches
        pass
    synchronize(device)
    images_done, start = 0, time.perf_counter()
    while images_done < min_images:
        for images, _ in loader:
            images_done += len(images)
            if images_done >= min_images:
                break
    synchronize(device)
    return images_done / (time.perf_counter() - start)


def syncs_per_batch(split, batch_size: int, randaug: float, device: torch.device) -> str:
    """On CUDA, host-device syncs per DeviceLoader batch, counted by sync debugging (warn mode)."""
    if device.type != "cuda":
        return "n/a (not CUDA)"
    loader = DeviceLoader(split, batch_size, device=device, image_size=24, mixup_alpha=0.2,
                          randaug_magnitude=randaug,
                          generator=torch.Generator(device=device).manual_seed(0))
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = sum(1 for _ in loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return f"{syncs / max(batches, 1):g} (torch.cuda.set_sync_debug_mode('warn'), {batches} batches)"


def masked_rand_augment(images: torch.Tensor, level: float, num_ops: int = 2,
                        generator=None) -> torch.Tensor:
    """The alternative to `batched_rand_augment`: every (op, sign) pair on the whole batch, kept per
    image with ``torch.where``; no grouping sync, ~22x the op work. Same draws, same output."""
    table = randaug_op_table(level, *images.shape[-2:])
    groups = draw_randaug_groups(len(images), num_ops, len(table), images.device, generator)  # [N_ops, B]
    nearest = torchvision.transforms.v2.InterpolationMode.NEAREST
    for slot in range(num_ops):
        for k, (op, magnitude, signed) in enumerate(table):
            if op == "Identity":
                continue
            runs = ([(magnitude, groups[slot] == 2 * k), (-magnitude, groups[slot] == 2 * k + 1)] if signed
                    else [(magnitude, groups[slot] // 2 == k)])
            for signed_magnitude, chosen in runs:                            # chosen: bool [B]
                transformed = RANDAUG_OPS[op](images, signed_magnitude, RANDAUG_FILL, nearest)
                images = torch.where(chosen[:, None, None, None], transformed, images)
    return images


def randaug_ms_per_batch(split, image_size: int, level: float, batch_size: int, device: torch.device,
                         repeats: int) -> tuple:
    """Best-of-`repeats` milliseconds of one RandAugment call on a batch: (grouped, masked)."""
    images = split.images[:batch_size].to(device)
    images = torchvision.transforms.v2.functional.resize(images, [image_size, image_size], antialias=True)
    def seeded():
        return torch.Generator(device=device).manual_seed(0)

    if not torch.equal(batched_rand_augment(images, level, 2, seeded()),
                       masked_rand_augment(images, level, 2, seeded())):
        raise RuntimeError("grouped and masked RandAugment disagree")
    timings = []
    for augment in (batched_rand_augment, masked_rand_augment):
        generator, best = seeded(), math.inf
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            augment(images, level, 2, generator)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        timings.append(1000 * best)
    return tuple(timings)


@one_line_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effv2_lib.bench_data",
                                     description="CPU DataLoader path vs GPU-resident path, images/s.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32], help="stage sizes (px)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=512,
                        help="images per batch, at most the training images (default 512)")
    parser.add_argument("--workers", type=int_at_least(0), default=os.cpu_count() or 1, help="DataLoader workers")
    parser.add_argument("--randaug", type=float, default=5.0,
                        help="paper-scale RandAugment magnitude (CPU path and device path)")
    parser.add_argument("--mixup-alpha", type=float, default=0.2)
    parser.add_argument("--cpu-images", type=int_at_least(1), default=8192, help="images timed per CPU measurement")
    parser.add_argument("--device-images", type=int_at_least(1), default=200_000,
                        help="images timed per device measurement")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="report the best of this many runs")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--data", "--data-dir", dest="data_dir", default=None, metavar="DIR",
                        help="data directory (default: EFFV2_DATA, else torchvision copy, else sample)")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(NORMALIZATION))
    args = parser.parse_args(argv)

    device = pick_device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleDataWarning)     # the source is printed below
        data = load_cifar(args.dataset, data_dir=args.data_dir)
    if args.batch_size > len(data.train):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(data.train)} training images "
                         f"of {data.source}; give --batch-size {len(data.train)} or less")
    mean, std = NORMALIZATION[args.dataset]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({device_name}); torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads")
    print(f"data: {data.source} ({len(data.train)} training images); batch size {args.batch_size}; "
          f"DataLoader workers {args.workers}; Mixup alpha {args.mixup_alpha}; "
          f"channels_last {args.channels_last}; best of {args.repeats} runs")
    for randaug in (0.0, args.randaug):
        print(f"host-device syncs per DeviceLoader batch, RandAugment {randaug:g}: "
              f"{syncs_per_batch(data.train, args.batch_size, randaug, device)}")
    ra = f"RandAugment {args.randaug:g}"
    header = (f"{'size':>5} | {'cpu path, ' + ra:>26} | {'cpu path, no RandAugment':>24} | "
              f"{'device path, ' + ra:>29} | {'device path, no RandAugment':>27}   (images/s)")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        # best of N: throughput is only ever lowered by whatever else the machine is doing.
        # The device path goes first, so DataLoader workers winding down do not share its CPU.
        device_ra, device_plain = (max(device_path_rate(data.train, size, randaug, args.mixup_alpha,
                                                        args.batch_size, args.device_images, device,
                                                        mean, std, args.channels_last)
                                       for _ in range(args.repeats))
                                   for randaug in (args.randaug, 0.0))
        cpu_ra, cpu_plain = (max(cpu_path_rate(data.train, size, randaug, args.mixup_alpha,
                                               args.batch_size, args.workers, args.cpu_images,
                                               device, mean, std) for _ in range(args.repeats))
                             for randaug in (args.randaug, 0.0))
        print(f"{size:>5} | {cpu_ra:>26,.0f} | {cpu_plain:>24,.0f} | {device_ra:>29,.0f} | "
              f"{device_plain:>27,.0f}")
    print(f"\nRandAugment {args.randaug:g} on one batch of {args.batch_size} on {device}, "
          f"ms (best of {args.repeats}; identical outputs checked)")
    header = f"{'size':>5} | {'grouped (batched_rand_augment)':>30} | {'masked (every op, torch.where)':>30}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        grouped, masked = randaug_ms_per_batch(data.train, size, args.randaug, args.batch_size, device,
                                               args.repeats)
        print(f"{size:>5} | {grouped:>30.1f} | {masked:>30.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
