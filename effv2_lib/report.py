"""What a training run tells a person: per-epoch lines, the history's digest, the plots.

The trainer appends one record per epoch to ``history.json`` (keys below) and ends with
``summary.json``; this module turns records into text and figures, so that a notebook reading
an old run directory shows the same things the run printed.

History record keys: epoch (1-based), stage, image_size, dropout, randaug_magnitude,
randaug_applied, mixup_alpha, cutmix_alpha, train_loss, train_acc, test_acc (and test_acc_raw with EMA),
images_per_s (training throughput, compiling excluded), epoch_time (including compiling), wall_time,
lr, compile_time (seconds the first step at a new size took beyond a usual step; None when
nothing compiled).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import CONFUSION_FILE, CURVES_FILE

__all__ = ["ACCURACY_TARGETS", "format_duration", "epoch_line", "digest_history", "write_plots"]

# Test accuracies whose first epoch and wall time the summary records: 94% and 96% are the
# targets the GPU runs are measured against (within 3 and 20 minutes).
ACCURACY_TARGETS = (0.90, 0.94, 0.96)


def format_duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def epoch_line(record: dict[str, Any], total_epochs: int) -> str:
    """One printed line per epoch: where in the schedule, loss, accuracies, speed, time."""
    line = (f"epoch {record['epoch']}/{total_epochs}: stage {record['stage']} {record['image_size']} px, "
            f"loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}, test acc "
            f"{record['test_acc']:.4f}, {record['images_per_s']:.0f} img/s, {format_duration(record['wall_time'])}")
    if record.get("compile_time") is not None:
        line += f", compile {record['compile_time']:.1f} s"
    return line


def digest_history(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary's view of the history: final and best accuracy, when each target was reached,
    training and wall time, mean throughput (images over time, compiling excluded), and the
    compile time the history records (None when no epoch compiled)."""
    if not history:
        return {"epochs_done": 0, "final_test_acc": None, "best_test_acc": None, "best_epoch": None,
                "reached": {f"{t:.2f}": None for t in ACCURACY_TARGETS}, "train_time_s": 0.0,
                "wall_time_s": None, "mean_images_per_s": None, "compile_time_s": None}
    best = max(history, key=lambda r: r["test_acc"])
    reached = {}
    for target in ACCURACY_TARGETS:
        hit = next((r for r in history if r["test_acc"] >= target), None)
        reached[f"{target:.2f}"] = None if hit is None else {"epoch": hit["epoch"], "wall_time": hit["wall_time"]}
    train_time = sum(r["epoch_time"] for r in history)
    steady_times = [r["epoch_time"] - (r.get("compile_time") or 0.0) for r in history]  # what images_per_s is over
    compile_times = [r["compile_time"] for r in history if r.get("compile_time") is not None]
    return {
        "epochs_done": len(history),
        "final_test_acc": history[-1]["test_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "reached": reached,
        "train_time_s": train_time,
        "wall_time_s": history[-1]["wall_time"],
        "mean_images_per_s": (sum(r["images_per_s"] * t for r, t in zip(history, steady_times, strict=True))
                              / max(1e-9, sum(steady_times))),
        "compile_time_s": sum(compile_times) if compile_times else None,
    }


def write_plots(out: str | Path, history: Sequence[dict[str, Any]], title: str,
                confusion: Sequence[Sequence[int]] | None = None, class_names: Sequence[str] = (),
                accuracy: float | None = None, dpi: int = 90) -> list[Path]:
    """Training curves with stage boundaries (curves.png) and, when given, the confusion matrix
    (confusion_matrix.png) in `out`; returns the files written."""
    import matplotlib.pyplot as plt

    from .plots import plot_confusion_matrix, plot_history

    out = Path(out)
    written = [out / CURVES_FILE]
    figure = plot_history(list(history))
    figure.suptitle(title)
    figure.savefig(written[0], dpi=dpi)
    plt.close(figure)
    if confusion is not None:
        label = "" if accuracy is None else f" (test accuracy {accuracy:.3f})"
        figure = plot_confusion_matrix(confusion, list(class_names), title=f"Confusion matrix{label}")
        written.append(out / CONFUSION_FILE)
        figure.savefig(written[1], dpi=dpi)
        plt.close(figure)
    return written
