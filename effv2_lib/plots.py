"""Figures for progressive learning (Tan & Le 2021, Section 4) and for training runs.

Every function draws on the axes it is given (``ax`` / ``axes``) or on a new
pyplot figure, and returns the Figure. Nothing here picks a backend, so the
module works under Agg (tests, scripts) as well as inline in notebooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .schedule import ProgressiveSchedule

__all__ = ["plot_schedule", "plot_image_grid", "plot_history", "plot_time_to_accuracy", "plot_confusion_matrix"]

STAGE_BOUNDARY_GID = "stage-boundary"  # gid of the vertical lines between stages

# One panel per quantity of a Stage: attribute, title, y label (with units).
_SCHEDULE_PANELS = (
    ("image_size", "Image size $S_i$", "training image size (px)"),
    ("dropout", r"Dropout $\gamma_i$", "dropout rate"),
    ("randaug_magnitude", r"RandAugment $\epsilon_i$", "magnitude (TF RandAugment level)"),
    ("mixup_alpha", r"Mixup $\lambda_i$", r"Mixup $\alpha$ of Beta($\alpha$, $\alpha$)"),
)


def _named(items: Any, kind: type, what: str) -> dict[str, Any]:
    """Accept one item or a {label: item} mapping; return the mapping."""
    if isinstance(items, kind):
        return {getattr(items, "name", "") or what: items}
    if isinstance(items, Mapping) and items and all(isinstance(v, kind) for v in items.values()):
        return dict(items)
    raise TypeError(f"expected a {kind.__name__} or a non-empty dict of them, "
                    f"got {type(items).__name__}")


def _axes_or_new(axes: Sequence[Axes] | Axes | None, count: int, panel_size=(3.4, 2.8)
                 ) -> tuple[Figure, list[Axes]]:
    if axes is None:
        fig, new_axes = plt.subplots(1, count, figsize=(panel_size[0] * count, panel_size[1]),
                                     layout="constrained", squeeze=False)
        return fig, list(new_axes[0])
    axes = [axes] if isinstance(axes, Axes) else list(np.ravel(axes))
    if len(axes) != count:
        raise ValueError(f"axes must hold {count} Axes for this figure, got {len(axes)}")
    return axes[0].figure, axes


def _mark_boundaries(ax: Axes, xs: Sequence[float], color: Any) -> None:
    for x in xs:
        ax.axvline(x, color=color, linestyle=":", linewidth=1.0, alpha=0.7, gid=STAGE_BOUNDARY_GID)


def plot_schedule(schedules: ProgressiveSchedule | Mapping[str, ProgressiveSchedule], *,
                  axes: Sequence[Axes] | None = None) -> Figure:
    """Image size and each regularizer against epoch, one panel each, stages as steps.

    Several schedules (e.g. {"paper-s": ..., "automl-s": ...}) are overlaid in each
    panel with a legend; dotted vertical lines in the schedule's colour mark where
    its stages begin. A schedule with CutMix (the automl rule for V2-M and V2-L) adds it as
    a dashed line in the Mixup panel. axes: four Axes to draw on (image size, dropout,
    RandAugment, Mixup), or None for a new 1 x 4 figure.
    """
    named = _named(schedules, ProgressiveSchedule, "schedule")
    fig, axes = _axes_or_new(axes, len(_SCHEDULE_PANELS))
    for k, (label, schedule) in enumerate(named.items()):
        color = f"C{k}"
        # Stage i holds on [start_epoch, end_epoch): a post-step line through the
        # stage starts, closed at N with the last value repeated.
        edges = [s.start_epoch for s in schedule.stages] + [schedule.total_epochs]
        for ax, (attr, _, _) in zip(axes, _SCHEDULE_PANELS, strict=True):
            values = [getattr(s, attr) for s in schedule.stages]
            ax.plot(edges, values + values[-1:], drawstyle="steps-post", color=color,
                    linewidth=2.0, label=label)
            _mark_boundaries(ax, edges[1:-1], color)
        cutmix = [s.cutmix_alpha for s in schedule.stages]
        if any(cutmix):  # the automl rule's CutMix, on the Mixup panel (its alpha ramps the same way)
            axes[-1].plot(edges, cutmix + cutmix[-1:], drawstyle="steps-post", color=color, linewidth=1.5,
                          linestyle="--", label=f"{label}: CutMix $\\alpha$")
            axes[-1].legend(fontsize="small")
    for ax, (_, title, ylabel) in zip(axes, _SCHEDULE_PANELS, strict=True):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def _to_hwc_images(images: Any, label: str) -> np.ndarray:
    """uint8 [K, 3, H, W] (or float in [0, 1]) tensor or array -> numpy [K, H, W, 3]."""
    if hasattr(images, "detach"):  # a torch tensor, possibly on a GPU
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images for {label!r} must have shape [K, 3, H, W] (or [K, 1, H, W]), "
                         f"got {list(images.shape)}")
    if images.dtype != np.uint8:
        images = np.clip(images.astype(np.float32), 0.0, 1.0)  # float images: [0, 1] range
    return images.transpose(0, 2, 3, 1)


def plot_image_grid(images_by_stage: Mapping[str, Any], *, axes: Sequence[Axes] | None = None,
                    cell_size: float = 1.3) -> Figure:
    """One row per stage of example images (e.g. augmented at that stage's settings).

    images_by_stage maps a row label (e.g. "stage 0: 16 px, RandAug 2") to uint8
    images [K, 3, H, W] (float in [0, 1] also accepted). Each image fills its cell,
    drawn with nearest-neighbour interpolation, so a 16 px row looks as coarse
    as the network sees it. axes: rows * max(K) Axes, or None for a new figure.
    """
    if not isinstance(images_by_stage, Mapping) or not images_by_stage:
        raise TypeError(f"images_by_stage must be a non-empty dict of label -> images, "
                        f"got {type(images_by_stage).__name__}")
    rows = {label: _to_hwc_images(images, label) for label, images in images_by_stage.items()}
    num_cols = max(len(images) for images in rows.values())
    if axes is None:
        fig, grid = plt.subplots(len(rows), num_cols, squeeze=False, layout="constrained",
                                 figsize=(cell_size * num_cols + 1.5, cell_size * len(rows)))
    else:
        grid = np.asarray(axes, dtype=object).reshape(len(rows), num_cols)
        fig = grid[0, 0].figure
    for r, (label, images) in enumerate(rows.items()):
        for c in range(num_cols):
            ax = grid[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                image = images[c]
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                          cmap="gray" if image.shape[-1] == 1 else None,
                          interpolation="nearest")
            else:
                ax.axis("off")
        grid[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    return fig


def _stage_changes(records: Sequence[Mapping[str, Any]], x_key: str) -> list[float]:
    """x positions halfway between the last record of a stage and the first of the next."""
    return [(prev[x_key] + cur[x_key]) / 2 for prev, cur in pairwise(records)
            if "stage" in cur and cur["stage"] != prev.get("stage")]


def plot_history(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                 *, x: str = "epoch", axes: Sequence[Axes] | None = None) -> Figure:
    """Training curves: loss, accuracy, and throughput with the image size, against x.

    history is one run's list of per-epoch records (keys: epoch, stage, image_size,
    train_loss, train_acc, test_acc, images_per_s, wall_time; missing or None values
    are skipped) or a {run name: records} dict to compare runs, e.g. progressive vs
    fixed size. x is "epoch" or "wall_time" (seconds: time to accuracy, the paper's
    point). Dotted vertical lines mark where the stage changes.
    """
    if x not in ("epoch", "wall_time"):
        raise ValueError(f"x must be 'epoch' or 'wall_time', got {x!r}")
    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    for name, records in runs.items():
        if not records or not all(isinstance(r, Mapping) and r.get(x) is not None for r in records):
            raise ValueError(f"history {name or ''!r} must be a non-empty list of dicts that all "
                             f"have {x!r}")
    fig, axes = _axes_or_new(axes, 3, panel_size=(4.0, 3.0))
    ax_loss, ax_acc, ax_speed = axes
    ax_size = ax_speed.twinx()  # image size shares the throughput panel: they move together
    for k, (name, records) in enumerate(runs.items()):
        color, prefix = f"C{k}", f"{name}: " if name else ""

        def series(key, records=records):
            points = [(r[x], r[key]) for r in records if r.get(key) is not None]
            return tuple(zip(*points, strict=True)) if points else ((), ())

        ax_loss.plot(*series("train_loss"), color=color, label=f"{prefix}train")
        ax_acc.plot(*series("train_acc"), color=color, linestyle="--", label=f"{prefix}train")
        ax_acc.plot(*series("test_acc"), color=color, marker=".", label=f"{prefix}test")
        ax_speed.plot(*series("images_per_s"), color=color, marker=".", label=f"{prefix}images/s")
        ax_size.plot(*series("image_size"), color=color, drawstyle="steps-mid", alpha=0.4,
                     linewidth=3, label=f"{prefix}image size")
        for ax in axes:
            _mark_boundaries(ax, _stage_changes(records, x), color)
    x_label = "epoch" if x == "epoch" else "wall time (s)"
    ax_loss.set(title="Training loss", xlabel=x_label, ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel=x_label, ylabel="top-1 accuracy")
    ax_speed.set(title="Throughput and image size", xlabel=x_label, ylabel="training images / s")
    ax_size.set_ylabel("image size (px)")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize="small")
    return fig


def plot_time_to_accuracy(runs: Mapping[str, Sequence[Mapping[str, Any]]], *, target: float | None = None,
                          time_key: str = "epoch_time", time_label: str = "training time (min)",
                          ax: Axes | None = None) -> Figure:
    """Test accuracy against cumulative training time, one line per run (the paper's Figure 1(a)).

    runs maps a run's name to its per-epoch records (keys test_acc, stage and `time_key`, the
    epoch's seconds: measured ``epoch_time`` by default, or a load-independent cost); the x axis
    is their running sum in minutes (evaluation excluded), so runs of different lengths compare
    at equal cost. Dotted vertical lines in the run's colour mark its stage changes; target, if
    given, draws a horizontal line (for example the baseline's final accuracy).
    """
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError(f"runs must be a non-empty dict {{name: records}}, got {type(runs).__name__}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    fig = ax.figure
    for k, (name, records) in enumerate(runs.items()):
        if not records or not all(isinstance(r, Mapping) and time_key in r and "test_acc" in r
                                  for r in records):
            raise ValueError(f"run {name!r} must be a non-empty list of records with {time_key} and test_acc")
        minutes = np.cumsum([r[time_key] for r in records]) / 60
        timed = [{**r, "minutes": m} for r, m in zip(records, minutes, strict=True)]
        color = f"C{k}"
        ax.plot(minutes, [100 * r["test_acc"] for r in records], color=color, marker=".", label=name)
        _mark_boundaries(ax, _stage_changes(timed, "minutes"), color)
    if target is not None:
        ax.axhline(100 * target, color="0.4", linewidth=0.8, linestyle="--")
    ax.set(xlabel=time_label, ylabel="test accuracy (%)", title="Test accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return fig


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], *, normalize: bool = True,
                          ax: Axes | None = None, title: str = "Confusion matrix") -> Figure:
    """matrix[t, p] = count of true class t predicted as p, shown row-normalized by default.

    Cells are annotated with their value for up to 20 classes; class names label the
    axes up to 30 classes (CIFAR-100's 100 would be unreadable).
    """
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.float64)
    num_classes = len(class_names)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != num_classes:
        raise ValueError(f"matrix must be square [C, C] with C = len(class_names) = {num_classes}, "
                         f"got shape {list(matrix.shape)}")
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # rows sum to 1
    if ax is None:
        side = min(4 + 0.35 * num_classes, 12)
        fig, ax = plt.subplots(figsize=(side, side), layout="constrained")
    fig = ax.figure
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    if num_classes <= 30:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
    if num_classes <= 20:
        threshold = (1.0 if normalize else matrix.max()) / 2  # white text on dark cells
        for t in range(num_classes):
            for p in range(num_classes):
                value = matrix[t, p]
                ax.text(p, t, f"{value:.2f}" if normalize else f"{value:.0f}", ha="center",
                        va="center", fontsize="x-small",
                        color="white" if value > threshold else "black")
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    return fig
