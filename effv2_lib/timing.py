"""Predicted training time of a progressive schedule from measured throughput.

Relative FLOPs say what a schedule costs on paper: an epoch at size S costs about (S / S_e)^2 of
an epoch at the final size S_e (Tan & Le 2021, Section 4: smaller images train faster). Whether
the *time* follows depends on the hardware: on a GPU a 16 px batch may leave the device idle.
So the prediction here starts from training images/s measured per image size (for example with
`effv2_lib.runtime.train_throughput`) and sums, over the stages,

    seconds = sum_i  n_i * images_per_epoch / images_per_s(S_i)

where n_i is the number of epochs of stage i. Between measured sizes, images/s is interpolated
linearly in log(size) -> log(images/s), i.e. as a power law S^-k between neighbours (on a
CPU k is close to 2, the FLOPs' exponent). A size a little outside the measured range
follows the power law of the nearest pair of sizes; a size further out (by more than
`max_extrapolation`, a ratio) raises ValueError instead of inventing a number.

This times the network alone (forward, backward, optimizer step); data loading, augmentation and
evaluation come on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._checks import check_int, check_real
from .schedule import ProgressiveSchedule

__all__ = ["check_images_per_s", "throughput_at", "stage_seconds", "predicted_seconds",
           "measured_range", "relative_flops", "format_minutes", "DEFAULT_MAX_EXTRAPOLATION"]

DEFAULT_MAX_EXTRAPOLATION = 1.25  # sizes up to 25 % beyond the measured range follow the nearest power law


def check_images_per_s(images_per_s: Any) -> dict[int, float]:
    """`images_per_s` as {image size (px): training images/s}, sorted by size.

    Raises TypeError when it is not a mapping of int sizes to numbers, ValueError when it is
    empty or a size is < 1 or a rate is not a finite number > 0.
    """
    if not isinstance(images_per_s, Mapping):
        raise TypeError(f"images_per_s must be a dict {{image size (px): images/s}}, "
                        f"got {type(images_per_s).__name__}")
    if not images_per_s:
        raise ValueError("images_per_s must hold at least one measured image size, got an empty dict")
    table = {}
    for size, rate in images_per_s.items():
        size = check_int("images_per_s key (image size, px)", size, 1)
        table[size] = check_real(f"images_per_s[{size}] (images/s)", rate, 0.0, math.inf,
                                 allowed="a finite number > 0")
        if table[size] <= 0:
            raise ValueError(f"images_per_s[{size}] (images/s) must be a finite number > 0, got {rate!r}")
    return dict(sorted(table.items()))


def measured_range(images_per_s: Mapping[int, float]) -> tuple[int, int]:
    """(smallest, largest) measured image size in px."""
    table = check_images_per_s(images_per_s)
    return min(table), max(table)


def _power_law(size: float, a: tuple[int, float], b: tuple[int, float]) -> float:
    """images/s at `size` on the line through a and b in log-log coordinates."""
    (s0, r0), (s1, r1) = a, b
    slope = math.log(r1 / r0) / math.log(s1 / s0)
    return r0 * (size / s0) ** slope


def throughput_at(image_size: float, images_per_s: Mapping[int, float], *,
                  max_extrapolation: float = DEFAULT_MAX_EXTRAPOLATION) -> float:
    """Training images/s at `image_size` px, from the measured {size: images/s}.

    A measured size returns its own rate; between two measured sizes the rate is interpolated
    in log-log (a power law through the two neighbours). Outside the measured range by a ratio
    of at most `max_extrapolation` (1.25: up to 25 % larger than the largest size or smaller
    than the smallest) the nearest pair's power law is extended; with a single measured size
    there is no slope, so only that size is answered. Further out raises ValueError: measure
    there instead.
    """
    table = check_images_per_s(images_per_s)
    size = check_real("image_size (px)", image_size, 0.0, math.inf, allowed="a finite number > 0")
    if size <= 0:
        raise ValueError(f"image_size (px) must be a finite number > 0, got {image_size!r}")
    limit = check_real("max_extrapolation", max_extrapolation, 1.0, math.inf, allowed="a finite ratio >= 1")
    if size in table:
        return table[size]
    sizes = list(table)
    low, high = sizes[0], sizes[-1]
    if low < size < high:
        upper = next(k for k, s in enumerate(sizes) if s > size)
        return _power_law(size, (sizes[upper - 1], table[sizes[upper - 1]]), (sizes[upper], table[sizes[upper]]))
    if len(sizes) == 1 or size > high * limit or size < low / limit:
        measured = f"{low} px" if low == high else f"{low}-{high} px"
        raise ValueError(
            f"no throughput for {size:g} px: images/s was measured at {measured} only, and "
            f"{size:g} px is {'more' if size > high else 'less'} than that range allows for "
            f"(extrapolation up to {limit:g}x); measure images/s at {size:g} px instead of guessing")
    pair = sizes[-2:] if size > high else sizes[:2]
    return _power_law(size, (pair[0], table[pair[0]]), (pair[1], table[pair[1]]))


def _check_schedule(schedule: Any) -> ProgressiveSchedule:
    if not isinstance(schedule, ProgressiveSchedule):
        raise TypeError(f"schedule must be a ProgressiveSchedule, got {type(schedule).__name__}")
    return schedule


def stage_seconds(schedule: ProgressiveSchedule, images_per_s: Mapping[int, float], images_per_epoch: int,
                  *, max_extrapolation: float = DEFAULT_MAX_EXTRAPOLATION) -> list[float]:
    """Predicted training seconds of each stage: n_i * images_per_epoch / images_per_s(S_i)."""
    schedule = _check_schedule(schedule)
    images = check_int("images_per_epoch", images_per_epoch, 1)
    return [stage.num_epochs * images / throughput_at(stage.image_size, images_per_s,
                                                      max_extrapolation=max_extrapolation)
            for stage in schedule.stages]


def predicted_seconds(schedule: ProgressiveSchedule, images_per_s: Mapping[int, float], images_per_epoch: int,
                      *, max_extrapolation: float = DEFAULT_MAX_EXTRAPOLATION) -> float:
    """Predicted training seconds of the whole schedule (network time only).

    The sum over stages of n_i * images_per_epoch / images_per_s(S_i), with images/s from
    `throughput_at` (log-log interpolation between measured sizes). Raises ValueError when a
    stage's size lies too far outside the measured sizes.
    """
    return sum(stage_seconds(schedule, images_per_s, images_per_epoch, max_extrapolation=max_extrapolation))


def format_minutes(seconds: float) -> str:
    """A duration for a reader: "45 s", "12.3 min" or "3.4 h"."""
    seconds = check_real("seconds", seconds, 0.0, allowed="a finite number >= 0")
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def relative_flops(schedule: ProgressiveSchedule) -> float:
    """Training FLOPs of the schedule relative to all its epochs at the final size S_e.

    sum_i n_i (S_i / S_e)^2 / N: the FLOPs of a convolutional network grow with the number of
    pixels, S^2.
    """
    schedule = _check_schedule(schedule)
    s_end = schedule.image_size[1]
    return sum(s.num_epochs * (s.image_size / s_end) ** 2 for s in schedule.stages) / schedule.total_epochs
