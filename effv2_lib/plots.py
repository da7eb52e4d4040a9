"""Figures for progressive learning (Tan & Le 2021, Section 4) and for training runs.

Every function draws on the axes it is given (``ax`` / ``axes``) or on a new
pyplot figure, and returns the Figure. Nothing here picks a backend, so the
module works under Agg (tests, scripts) as well as inline in notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D

from ._checks import check_int, check_real
from .schedule import ProgressiveSchedule

__all__ = ["plot_schedule", "plot_image_grid", "plot_history", "plot_time_to_accuracy", "plot_confusion_matrix",
           "plot_mixup_lambda", "plot_block_probabilities", "plot_dropped_features",
           "plot_accuracy_and_size", "plot_class_examples", "plot_grouped_bars", "plot_drop_statistics",
           "plot_search"]

STAGE_BOUNDARY_GID = "stage-boundary"  # gid of the vertical lines between stages
FIGURE_LEGEND_GID = "figure-legend"  # gid of the one legend below a figure's panels
NO_MIXUP_GID = "no-mixup"  # gid of the note in a Mixup panel that has nothing to draw
GAP_LIMIT = 0.999  # plot_mixup_lambda measures the largest CDF gap below this share

# One panel per quantity of a Stage: attribute, title, y label (with units).
SCHEDULE_PANELS = (
    ("image_size", "Image size $S_i$", "size (px)"),
    ("dropout", r"Dropout rate $\gamma_i$", "rate"),
    ("randaug_magnitude", r"RandAugment magnitude $\epsilon_i$", "level"),
    # The paper writes the Mixup strength as lambda; what a stage sets is alpha of Beta(alpha, alpha).
    ("mixup_alpha", r"Mixup $\alpha_i$", r"$\alpha$ of Beta($\alpha$, $\alpha$)"),
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
    panel; dotted vertical lines in the schedule's colour mark where its stages begin. A
    schedule with CutMix (the automl rule for V2-M and V2-L) adds it as a dashed line in the
    Mixup panel. axes: four Axes to draw on (image size, dropout, RandAugment, Mixup), each
    then with its own legend, or None for a new 2 x 2 figure with one legend below the panels,
    so that no legend covers a line (a 1 x 4 strip made each panel too flat to read, and a
    legend inside a panel hid paper-s's first stage).
    """
    named = _named(schedules, ProgressiveSchedule, "schedule")
    new_figure = axes is None
    if new_figure:
        fig, grid = plt.subplots(2, 2, figsize=(9.2, 5.8), layout="constrained")
        axes = list(grid.ravel())
    else:
        fig, axes = _axes_or_new(axes, len(SCHEDULE_PANELS))
    handles = []
    for k, (label, schedule) in enumerate(named.items()):
        color = f"C{k}"
        # Stage i holds on [start_epoch, end_epoch): a post-step line through the
        # stage starts, closed at N with the last value repeated.
        edges = [s.start_epoch for s in schedule.stages] + [schedule.total_epochs]
        for ax, (attr, _, _) in zip(axes, SCHEDULE_PANELS, strict=True):
            values = [getattr(s, attr) for s in schedule.stages]
            line, = ax.plot(edges, values + values[-1:], drawstyle="steps-post", color=color,
                            linewidth=2.0, label=label)
            _mark_boundaries(ax, edges[1:-1], color)
        handles.append(line)
        cutmix = [s.cutmix_alpha for s in schedule.stages]
        if any(cutmix):  # the automl rule's CutMix, on the Mixup panel (its alpha ramps the same way)
            line, = axes[-1].plot(edges, cutmix + cutmix[-1:], drawstyle="steps-post", color=color, linewidth=1.5,
                                  linestyle="--", label=f"{label}: CutMix $\\alpha$")
            handles.append(line)
            if not new_figure:
                axes[-1].legend(fontsize=9)
    for ax, (_, title, ylabel) in zip(axes, SCHEDULE_PANELS, strict=True):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    if not any(s.mixup_alpha or s.cutmix_alpha for schedule in named.values() for s in schedule.stages):
        # the zero lines at the bottom of the panel, the note well above them
        axes[-1].set_ylim(-0.05, 1.0)
        axes[-1].text(0.5, 0.6, "no Mixup in\nthis schedule" if len(named) == 1 else "no Mixup in\nthese schedules",
                      transform=axes[-1].transAxes, ha="center", va="center", fontsize=11, color="0.4",
                      gid=NO_MIXUP_GID)
    if new_figure:
        if any(len(schedule.stages) > 1 for schedule in named.values()):
            handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=1, label="stage boundary"))
        _legend_below(fig, handles)
    else:
        axes[0].legend(fontsize=9)
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
        grid[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)  # legible when projected
    return fig


def _stage_changes(records: Sequence[Mapping[str, Any]], x_key: str) -> list[float]:
    """x positions of the stage changes: the x of each stage's last record. Records sit at the end of
    their epoch (epoch number, cumulative time), so that is where the next stage starts."""
    return [prev[x_key] for prev, cur in pairwise(records) if "stage" in cur and cur["stage"] != prev.get("stage")]


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
    # One legend for the figure, below the panels: a colour per run, then each line style once
    # (a legend per panel would list every run-quantity pair and cover the data).
    handles = [Line2D([], [], color=f"C{k}", linewidth=3, label=name) for k, name in enumerate(runs) if name]
    handles += [Line2D([], [], color="0.3", label=label, **style) for label, style in _HISTORY_STYLES]
    _legend_below(fig, handles)
    return fig


# How plot_history draws each quantity (the key of its figure legend).
_HISTORY_STYLES = (
    ("train loss; images/s", {}),
    ("train accuracy", {"linestyle": "--"}),
    ("test accuracy", {"marker": "."}),
    ("image size (right axis)", {"linewidth": 3, "alpha": 0.4}),
    ("stage change", {"linestyle": ":", "linewidth": 1}),
)


def _legend_below(fig: Figure, handles: Sequence[Line2D]) -> None:
    """One figure legend under the panels, outside the data (with constrained layout, which
    makes room for it; else at the bottom edge)."""
    outside = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    legend = fig.legend(handles=handles, loc="outside lower center" if outside else "lower center", frameon=False,
                        ncols=min(len(handles), 5), fontsize=9)
    legend.set_gid(FIGURE_LEGEND_GID)


def plot_time_to_accuracy(runs: Mapping[str, Sequence[Mapping[str, Any]]], *, target: float | None = None,
                          target_label: str = "target", time_key: str = "epoch_time",
                          time_label: str = "training time (min)", ax: Axes | None = None) -> Figure:
    """Test accuracy against cumulative training time, one line per run (the paper's Figure 1(a)).

    runs maps a run's name to its per-epoch records (keys test_acc, stage and `time_key`, the
    epoch's seconds: measured ``epoch_time`` by default, or a load-independent cost); the x axis
    is their running sum in minutes (evaluation excluded), so runs of different lengths compare
    at equal cost. Dotted vertical lines in the run's colour mark its stage changes, at the end of
    each stage's last epoch; target, if given, draws a horizontal line named `target_label` (for
    example the baseline's final accuracy). The legend sits below the axes, outside the data.
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
    handles = [line for line in ax.get_lines() if line.get_gid() != STAGE_BOUNDARY_GID]  # a line per run
    handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=1, label="stage change"))
    if target is not None:
        ax.axhline(100 * target, color="0.4", linewidth=0.8, linestyle="--")
        handles.append(Line2D([], [], color="0.4", linewidth=0.8, linestyle="--", label=target_label))
    ax.set(xlabel=time_label, ylabel="test accuracy (%)", title="Test accuracy against training time")
    ax.grid(alpha=0.3)
    _legend_below(fig, handles)
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
                        va="center", fontsize=9 if num_classes <= 12 else "x-small",
                        color="white" if value > threshold else "black")
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    return fig


# Figures of notebooks 00-02: the paper's comparisons, CIFAR examples, costs, stochastic depth.

def plot_accuracy_and_size(models: Mapping[str, tuple[float, float]], *, highlight: str | None = None,
                           title: str = "ImageNet top-1 accuracy and size", ax: Axes | None = None) -> Figure:
    """One bar per model, as tall as its parameter count, labelled with its top-1 accuracy.

    The comparison of the paper's Figure 1(b) (Tan & Le 2021): models of similar accuracy set side
    by side by size. models maps a label to (top-1 accuracy in %, parameters in millions); the bar
    of `highlight` (one of the labels) is drawn in colour, the others in grey.
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict {{label: (accuracy %, parameters M)}}, "
                        f"got {type(models).__name__}")
    for label, pair in models.items():
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"models[{label!r}] must be a pair (accuracy %, parameters M), got {pair!r}")
        check_real(f"accuracy of {label!r} (%)", pair[0], 0.0, 100.0)
        check_real(f"parameters of {label!r} (millions)", pair[1], 0.0, allowed="a finite number > 0")
        if pair[1] <= 0:
            raise ValueError(f"parameters of {label!r} (millions) must be > 0, got {pair[1]!r}")
    if highlight is not None and highlight not in models:
        raise ValueError(f"highlight must be one of the labels {list(models)}, got {highlight!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(models)), 3.6), layout="constrained")
    labels = list(models)
    params = [models[label][1] for label in labels]
    colors = ["tab:green" if label == highlight else "0.6" for label in labels]
    bars = ax.bar(labels, params, color=colors)
    for bar, label in zip(bars, labels, strict=True):
        ax.annotate(f"{models[label][0]:.1f} % top-1", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=10)
    ax.set_ylim(0, max(params) * 1.2)  # room for the labels above the tallest bar
    ax.set(ylabel="parameters (millions)", title=title)
    return ax.figure


def plot_class_examples(images: Any, labels: Any, class_names: Sequence[str], *, per_class: int = 2,
                        title: str | None = None) -> Figure:
    """The first `per_class` images of every class, one column per class headed by its name.

    images: uint8 [N, 3, H, W] tensor or array (float in [0, 1] also accepted), drawn without
    interpolation at their true pixels; labels: [N] class indices into class_names. A class with
    fewer than `per_class` images leaves its remaining cells empty.
    """
    per_class = check_int("per_class", per_class, 1)
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise TypeError(f"class_names must be a non-empty list of names, got {type(class_names).__name__}")
    pictures = _to_hwc_images(images, "images")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.shape != (len(pictures),):
        raise ValueError(f"labels must have one entry per image, shape [{len(pictures)}], got {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names) - 1}] (one per class name), "
                         f"got values from {labels.min()} to {labels.max()}")
    fig, grid = plt.subplots(per_class, len(class_names), squeeze=False, layout="constrained",
                             figsize=(1.2 * len(class_names), 1.25 * per_class + 0.5))
    for c, name in enumerate(class_names):
        rows = np.flatnonzero(labels == c)[:per_class]
        grid[0, c].set_title(name, fontsize=9)
        for r in range(per_class):
            ax = grid[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(rows):
                ax.imshow(pictures[rows[r]], interpolation="nearest")
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def plot_grouped_bars(series: Mapping[str, Mapping[str, float]] | Mapping[str, float], *, ylabel: str,
                      title: str = "", value_format: str | None = "{:,.1f}", ax: Axes | None = None) -> Figure:
    """Bars grouped by category, one bar per series in each group, each labelled with its value.

    For setting measured figures beside published ones (e.g. parameters: ours vs paper Table 7).
    series maps a series label (the legend entry) to {category: value}; the categories (x axis)
    come in order of first appearance, and a series without a value for a category leaves its slot
    empty. A plain {category: value} dict is one series: each category then gets its own colour and
    there is no legend. value_format formats the number written above each bar (None: no numbers).
    """
    if not isinstance(series, Mapping) or not series:
        raise TypeError(f"series must be a non-empty dict {{label: {{category: value}}}}, got {type(series).__name__}")
    if not any(isinstance(values, Mapping) for values in series.values()):
        series = {"": series}  # one unnamed series of {category: value}
    categories: list[str] = []
    for label, values in series.items():
        if not isinstance(values, Mapping) or not values:
            raise TypeError(f"series[{label!r}] must be a non-empty dict {{category: value}}, "
                            f"got {type(values).__name__}")
        for category, value in values.items():
            check_real(f"series[{label!r}][{category!r}]", value)
            if category not in categories:
                categories.append(category)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(categories) * len(series) + 1.5), 3.6),
                             layout="constrained")
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        xs = [categories.index(c) + offset for c in values]
        colors = [f"C{categories.index(c)}" for c in values] if len(series) == 1 else f"C{k}"
        bars = ax.bar(xs, list(values.values()), width, color=colors, label=label)
        if value_format is not None:
            ax.bar_label(bars, labels=[value_format.format(v) for v in values.values()], padding=2, fontsize=9)
    ax.set_xticks(range(len(categories)), categories)
    top = max(value for values in series.values() for value in values.values())
    if top > 0:  # room above the tallest bar for its number and, with several series, the legend
        ax.set_ylim(top=top * (1.45 if len(series) > 1 else 1.15))
    ax.set(ylabel=ylabel, title=title)
    if len(series) > 1:
        ax.legend(fontsize=9, loc="upper left")
    return ax.figure


def plot_drop_statistics(probabilities: Sequence[float], fractions: Sequence[float], means: Sequence[float],
                         n_samples: int, *, axes: Sequence[Axes] | None = None) -> Figure:
    """Stochastic depth ("row" mode, Huang et al. 2016) measured against its expectation: two panels.

    For each drop probability p: the measured fraction of samples whose branch was dropped, beside
    the expected line y = p; and the mean output for an all-ones branch, beside its expected value
    1 with a band of +-2 standard errors, sqrt(p / ((1 - p) n)) for n samples per point.
    axes: two Axes, or None for a new 1 x 2 figure.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    p = [check_real("each probability", v, 0.0, 1.0, allowed="a number in [0, 1)") for v in probabilities]
    if not p or max(p) >= 1.0:
        raise ValueError(f"probabilities must be a non-empty list of numbers in [0, 1), got {list(probabilities)}")
    for name, measured in (("fractions", fractions), ("means", means)):
        if len(measured) != len(p):
            raise ValueError(f"{name} must hold one value per probability ({len(p)}), got {len(measured)}")
    fig, (ax_drop, ax_mean) = _axes_or_new(axes, 2, panel_size=(5.0, 3.6))
    ax_drop.plot(p, list(fractions), "o-", label="measured")
    ax_drop.plot(p, p, "--", color="0.5", label="expected: p")
    ax_drop.set(title=f"Samples dropped ({n_samples:,} per point)", xlabel="drop probability p",
                ylabel="fraction of samples dropped")
    error = [(v / ((1 - v) * n_samples)) ** 0.5 for v in p]
    ax_mean.fill_between(p, [1 - 2 * e for e in error], [1 + 2 * e for e in error], color="0.88",
                         label="±2 standard errors")
    ax_mean.plot(p, list(means), "o-", label="measured")
    ax_mean.axhline(1.0, ls="--", color="0.5", label="expected: 1")
    ax_mean.set(title="Mean output (input all ones)", xlabel="drop probability p", ylabel="mean of output")
    ax_mean.set_ylim(min(0.9, min(means) - 0.02), max(1.1, max(means) + 0.02))
    for ax in (ax_drop, ax_mean):
        ax.legend(fontsize=9)
    return fig


# Figures of notebook 05: the Mixup ratio, stochastic depth per block, dropout on features.

NO_RESIDUAL_GID = "no-residual"  # gid of the bands that mark blocks without a residual
_SERIES_MARKERS = ("o", "x", "s", "^", "D", "v")


def _samples_1d(values: Any, what: str) -> np.ndarray:
    """A tensor, array or sequence of numbers -> a non-empty 1-D float64 array."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence of numbers, got shape {list(array.shape)}")
    return array


def _folded_beta_cdf(alpha: float, x: np.ndarray) -> np.ndarray:
    """P(max(lambda, 1 - lambda) <= x) for lambda ~ Beta(alpha, alpha), x in [0.5, 1].

    By symmetry it is 1 - 2 I_{1-x}(alpha, alpha), with I the regularized incomplete Beta
    function, summed as its power series I_y(a, b) = y^a / B(a, b) * sum_n (1 - b)_n / n! * y^n / (a + n),
    which converges like 0.5^n for y = 1 - x <= 0.5 (80 terms: below double precision).
    """
    y = np.clip(1.0 - np.asarray(x, dtype=np.float64), 0.0, 0.5)
    log_beta = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)  # log B(alpha, alpha)
    total, coefficient = np.zeros_like(y), 1.0  # coefficient: (1 - b)_n / n!
    for n in range(80):
        total += coefficient * y ** n / (alpha + n)
        coefficient *= (n + 1 - alpha) / (n + 1)
    tail = 2.0 * np.exp(alpha * np.log(np.where(y > 0, y, 1.0)) - log_beta) * total * (y > 0)  # 2 I_y
    return np.clip(1.0 - tail, 0.0, 1.0)


def plot_mixup_lambda(folded_by_alpha: Mapping[float, Any], *, axes: Sequence[Axes] | None = None) -> Figure:
    """The folded Mixup ratio max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha): one panel per alpha.

    Mixup (Zhang et al. 2018) draws lambda from Beta(alpha, alpha); the official EfficientNetV2 code
    folds it so that every sample keeps the larger share of itself. folded_by_alpha maps each
    alpha > 0 to samples of the folded ratio (1-D, values in [0.5, 1]). Each panel draws the
    samples' empirical cumulative distribution and, dashed, the exact one (`_folded_beta_cdf`).
    Cumulative, not a density histogram: for alpha < 1 the density diverges at 1, so the last bin
    of a histogram towers over any curve drawn through bin centres, while the two distribution
    functions lie on top of each other when the samples follow Beta. The title gives alpha, the
    sample mean and the largest gap D between the two curves, measured below `GAP_LIMIT` (the
    Kolmogorov-Smirnov statistic), beside 1.36 / sqrt(N), the gap that N exact draws stay below 95%
    of the time.
    axes: one Axes per alpha, or None for a new 1 x K figure.
    """
    if not isinstance(folded_by_alpha, Mapping) or not folded_by_alpha:
        raise TypeError(f"folded_by_alpha must be a non-empty dict {{alpha: samples}}, "
                        f"got {type(folded_by_alpha).__name__}")
    samples = {}
    for alpha, values in folded_by_alpha.items():
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
            raise ValueError(f"every alpha must be a number > 0 (alpha = 0 is no Mixup: lambda = 1), got {alpha!r}")
        array = _samples_1d(values, f"the samples for alpha = {alpha:g}")
        if not np.all((array >= 0.5) & (array <= 1.0)):
            raise ValueError(f"folded ratios lie in [0.5, 1]; the samples for alpha = {alpha:g} span "
                             f"[{array.min():.3g}, {array.max():.3g}]")
        samples[float(alpha)] = np.sort(array)
    fig, axes = _axes_or_new(axes, len(samples), panel_size=(3.9, 3.3))
    grid = np.linspace(0.5, 1.0, 400)
    for k, (ax, (alpha, array)) in enumerate(zip(axes, samples.items(), strict=True)):
        color = f"C{k}"
        n = array.size
        # D over the distinct values below GAP_LIMIT: the empirical CDF after each value u against
        # F(u), and before it against F(u). Above, float32 draws cannot follow Beta: for alpha = 0.1
        # a fifth of its mass lies within float32's last step below 1
        values = np.unique(array[array < GAP_LIMIT])
        exact = _folded_beta_cdf(alpha, values)
        after = np.searchsorted(array, values, side="right") / n    # share <= u
        before = np.searchsorted(array, values, side="left") / n    # share < u
        gap = float(np.max(np.maximum(np.abs(after - exact), np.abs(before - exact)), initial=0.0))
        ax.step(np.concatenate([[0.5], array, [1.0]]), np.concatenate([[0.0], np.arange(1, n + 1) / n, [1.0]]),
                where="post", color=color, alpha=0.5, linewidth=4, label=f"{n:,} draws")
        ax.plot(grid, _folded_beta_cdf(alpha, grid), color="0.1", linewidth=1.2, linestyle="--",
                label="exact (Beta)")
        ax.set_title(rf"$\alpha$ = {alpha:g}: mean $\lambda$ = {array.mean():.3f}" "\n"
                     rf"largest gap {gap:.4f} (95%: < {1.36 / math.sqrt(n):.4f})", fontsize=10)
        ax.set(xlim=(0.5, 1.0), ylim=(0, 1.02), xlabel=r"own share $\max(\lambda, 1-\lambda)$",
               ylabel=r"share of samples $\leq$ x" if k == 0 else None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
    return fig


def plot_block_probabilities(series: Mapping[str, Sequence[float | None]], *, ylabel: str = "probability",
                             title: str | None = None, ax: Axes | None = None) -> Figure:
    """One marker per block for a per-block probability, such as stochastic depth's (Huang et al. 2016).

    EfficientNetV2 drops block i's residual branch with probability p_i = 0.2 i / n (Tan & Le 2021,
    official code); a block without a residual (stride or width changes) has no branch to drop, so
    it has no p_i. series maps a label to one value in [0, 1] per block in network order, None or
    NaN for a block without a residual; every series must leave out the same blocks. Each series is
    drawn as markers only, never joined by a line (a line would run through the blocks that have
    no value); each block without a residual gets a grey band (gid NO_RESIDUAL_GID), named once in
    the legend.
    """
    if not isinstance(series, Mapping) or not series:
        raise TypeError(f"series must be a non-empty dict {{label: values}}, got {type(series).__name__}")
    arrays = {}
    for label, values in series.items():
        values = [np.nan if v is None else v for v in values]
        arrays[label] = _samples_1d(values, f"series {label!r}")
    first_label, first = next(iter(arrays.items()))
    missing = np.isnan(first)
    for label, array in arrays.items():
        if array.shape != first.shape:
            raise ValueError(f"every series needs one value per block: {label!r} has {array.size}, "
                             f"{first_label!r} has {first.size}")
        if not np.array_equal(np.isnan(array), missing):
            raise ValueError(f"series {label!r} and {first_label!r} disagree on which blocks have no residual "
                             "(None or NaN)")
        if np.any((array[~missing] < 0) | (array[~missing] > 1)):
            raise ValueError(f"series {label!r} holds values outside [0, 1]")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.2 * first.size + 2), 3.4), layout="constrained")
    blocks = np.arange(first.size)
    for n, i in enumerate(blocks[missing]):
        ax.axvspan(i - 0.4, i + 0.4, color="0.85", gid=NO_RESIDUAL_GID,
                   label="no residual: nothing to drop" if n == 0 else None)
    for k, (label, array) in enumerate(arrays.items()):
        marker = _SERIES_MARKERS[k % len(_SERIES_MARKERS)]
        ax.plot(blocks[~missing], array[~missing], linestyle="none", marker=marker, color=f"C{k}", label=label)
    ax.set(xlabel="block index i (network order)", ylabel=ylabel, xlim=(-1, first.size))
    if title is not None:
        ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)  # block indices are whole numbers
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax.figure


def plot_dropped_features(features_by_rate: Mapping[float, Any], shape: tuple[int, int], *,
                          axes: Sequence[Axes] | None = None) -> Figure:
    """Feature vectors after dropout (Srivastava et al. 2014) drawn as pictures, zeroed entries white.

    features_by_rate maps a dropout rate gamma in [0, 1) to one feature vector after dropout at that
    rate (e.g. the 1280 pooled head features that EfficientNetV2's classifier drops), drawn as an
    image of `shape` (rows, columns; rows * columns = its length). Entries that are exactly zero are
    masked and drawn white; the panels share one colour scale and a colorbar, so the survivors'
    scaling by 1 / (1 - gamma) shows as brighter colours. Each title gives the rate and the fraction
    zeroed. axes: one Axes per rate, or None for a new 1 x K figure.
    """
    if not isinstance(features_by_rate, Mapping) or not features_by_rate:
        raise TypeError(f"features_by_rate must be a non-empty dict {{rate: features}}, "
                        f"got {type(features_by_rate).__name__}")
    if (not isinstance(shape, tuple) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (rows, columns) of positive ints, got {shape!r}")
    pictures = {}
    for rate, values in features_by_rate.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"every dropout rate must lie in [0, 1), got {rate!r}")
        array = _samples_1d(values, f"the features at rate {rate:g}")
        if array.size != shape[0] * shape[1]:
            raise ValueError(f"shape {shape} holds {shape[0] * shape[1]} values, the features at rate "
                             f"{rate:g} have {array.size}")
        pictures[float(rate)] = np.ma.masked_equal(array.reshape(shape), 0.0)
    fig, axes = _axes_or_new(axes, len(pictures), panel_size=(2.6, 2.6 * shape[0] / shape[1] + 0.6))
    low = min((float(p.min()) for p in pictures.values() if p.count()), default=0.0)
    high = max((float(p.max()) for p in pictures.values() if p.count()), default=1.0)
    colormap = plt.get_cmap("viridis").with_extremes(bad="white")  # masked (zeroed) entries
    for ax, (rate, picture) in zip(axes, pictures.items(), strict=True):
        image = ax.imshow(picture, cmap=colormap, vmin=low, vmax=high, interpolation="nearest")
        zeroed = 1 - picture.count() / picture.size
        ax.set(title=rf"$\gamma$ = {rate:.3g}: {zeroed:.0%} zeroed", xticks=[], yticks=[])
    fig.colorbar(image, ax=axes, shrink=0.8, label="feature value")
    return fig


def plot_search(records: Sequence[Mapping[str, Any]], *, front: Sequence[str] = (), reference: str | None = None,
                winner: str | None = None, ax: Axes | None = None,
                title: str = "Searched networks: accuracy against training step time") -> Figure:
    """The searched networks (`effv2_lib.search`) as points: training step time (ms) against proxy
    accuracy, the accuracy/step-time front as a line through its networks, `reference` (cifar-tiny)
    and the reward's `winner` marked. The legend sits below the axes."""
    if not records or not all(isinstance(r, Mapping) and {"name", "accuracy", "step_time_s"} <= r.keys()
                              for r in records):
        raise ValueError("records must be a non-empty list of search records (name, accuracy, step_time_s)")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 4.4), layout="constrained")
    fig = ax.figure
    by_name = {r["name"]: r for r in records}
    unknown = [n for n in (*front, reference, winner) if n is not None and n not in by_name]
    if unknown:
        raise ValueError(f"{unknown} are not among the records")

    def xy(names: Sequence[str]) -> tuple[list[float], list[float]]:
        return ([1000 * by_name[n]["step_time_s"] for n in names], [100 * by_name[n]["accuracy"] for n in names])

    handles = [ax.scatter(*xy(list(by_name)), s=18, color="0.6", label="candidate")]
    if front:
        handles += ax.plot(*xy(front), color="C0", marker="o", markersize=4, label="front: none faster and better")
    if reference is not None:
        handles.append(ax.scatter(*xy([reference]), s=120, marker="*", color="C3", zorder=3, label="cifar-tiny"))
    if winner is not None:
        handles.append(ax.scatter(*xy([winner]), s=90, facecolors="none", edgecolors="C2", linewidths=2, zorder=3,
                                  label="best reward"))
    ax.set(xlabel="training step time (ms per batch)", ylabel="proxy accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    _legend_below(fig, handles)
    return fig
