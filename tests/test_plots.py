"""Plots: the figures carry the panels, lines, stage boundaries and labels they promise."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from effv2_lib.plots import (
    STAGE_BOUNDARY_GID,
    plot_confusion_matrix,
    plot_history,
    plot_image_grid,
    plot_schedule,
    plot_time_to_accuracy,
)
from effv2_lib.schedule import ProgressiveSchedule

pytestmark = pytest.mark.usefixtures("close_figures")


def boundaries(ax):
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == STAGE_BOUNDARY_GID]


def curves(ax):
    return [line for line in ax.get_lines() if line.get_gid() != STAGE_BOUNDARY_GID]


def test_schedule_plot_overlays_paper_and_automl_with_their_stage_boundaries():
    paper = ProgressiveSchedule.from_preset("paper-s")
    automl = ProgressiveSchedule.from_preset("automl-s")
    fig = plot_schedule({"paper-s": paper, "automl-s": automl})
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert [line.get_label() for line in curves(ax)] == ["paper-s", "automl-s"]
        # three inner boundaries per schedule, at each one's stage starts
        assert sorted(boundaries(ax)) == sorted([88, 176, 263] + [87, 175, 262])
    size_line = curves(fig.axes[0])[0]
    assert list(size_line.get_xdata()) == [0, 88, 176, 263, 350]
    assert list(size_line.get_ydata()) == [128, 185, 243, 300, 300]
    assert "px" in fig.axes[0].get_ylabel()


def test_schedule_plot_draws_on_given_axes_and_checks_their_number():
    fig, axes = plt.subplots(2, 2)
    assert plot_schedule(ProgressiveSchedule.from_preset("cifar10"), axes=axes) is fig
    assert len(curves(axes[1, 1])) == 1
    with pytest.raises(ValueError, match="4 Axes"):
        plot_schedule(ProgressiveSchedule.from_preset("cifar10"), axes=axes[0])
    with pytest.raises(TypeError, match="ProgressiveSchedule"):
        plot_schedule([ProgressiveSchedule.from_preset("cifar10")])


def test_schedule_plot_adds_cutmix_to_the_mixup_panel_when_a_schedule_has_it():
    fig = plot_schedule({"paper-m": ProgressiveSchedule.from_preset("paper-m"),
                         "automl-m": ProgressiveSchedule.from_preset("automl-m")})
    mixup_panel = curves(fig.axes[3])
    assert [line.get_label() for line in mixup_panel] == ["paper-m", "automl-m", "automl-m: CutMix $\\alpha$"]
    mixup, cutmix = mixup_panel[1], mixup_panel[2]
    assert cutmix.get_linestyle() == "--" and list(cutmix.get_ydata()) == list(mixup.get_ydata())
    assert all(len(curves(ax)) == 2 for ax in fig.axes[:3])


def test_single_stage_schedule_has_no_boundaries():
    fig = plot_schedule(ProgressiveSchedule.from_preset("cifar10-fixed"))
    assert all(boundaries(ax) == [] for ax in fig.axes)


def test_image_grid_has_a_labelled_row_per_stage():
    generator = torch.Generator().manual_seed(0)
    images = {
        "stage 0: 16 px": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=generator),
        "stage 3: 32 px": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=generator),
    }
    fig = plot_image_grid(images)
    assert len(fig.axes) == 2 * 4
    rows = np.array(fig.axes).reshape(2, 4)
    assert [row[0].get_ylabel() for row in rows] == list(images)
    shown = [ax.get_images()[0].get_array().shape for ax in fig.axes if ax.get_images()]
    assert shown == [(16, 16, 3)] * 4 + [(32, 32, 3)] * 3  # the row with 3 leaves a cell empty
    np.testing.assert_array_equal(rows[0, 1].get_images()[0].get_array(),
                                  images["stage 0: 16 px"][1].permute(1, 2, 0).numpy())


def test_image_grid_rejects_images_that_are_not_nchw():
    with pytest.raises(ValueError, match=r"\[K, 3, H, W\]"):
        plot_image_grid({"stage 0": torch.zeros(4, 16, 16, 3, dtype=torch.uint8)})


def make_history(stage_sizes, epochs_per_stage=2):
    records, wall = [], 0.0
    for stage, size in enumerate(stage_sizes):
        for _ in range(epochs_per_stage):
            epoch = len(records)
            wall += size / 10
            records.append(dict(epoch=epoch, stage=stage, image_size=size,
                                train_loss=2.0 / (epoch + 1), train_acc=0.1 * epoch,
                                test_acc=None if epoch % 2 else 0.1 * epoch,
                                images_per_s=1e5 / size ** 2, wall_time=wall))
    return records


def test_history_plot_compares_runs_and_marks_stage_changes():
    runs = {"progressive": make_history([16, 20, 28, 32]), "fixed": make_history([32] * 1, 8)}
    fig = plot_history(runs)
    ax_loss, ax_acc, ax_speed, ax_size = fig.axes
    assert all(ax.get_title() and ax.get_xlabel() == "epoch" for ax in (ax_loss, ax_acc, ax_speed))
    assert ax_size.get_ylabel() == "image size (px)"
    assert [line.get_label() for line in curves(ax_loss)] == ["progressive: train", "fixed: train"]
    # progressive changes stage between epochs 1|2, 3|4, 5|6; the fixed run never does
    assert sorted(boundaries(ax_loss)) == [1.5, 3.5, 5.5]
    test_line = curves(ax_acc)[1]
    assert list(test_line.get_xdata()) == [0, 2, 4, 6]  # epochs without a test accuracy skipped


def test_history_plot_against_wall_time():
    records = make_history([16, 32])
    fig = plot_history(records, x="wall_time")
    assert fig.axes[0].get_xlabel() == "wall time (s)"
    assert list(curves(fig.axes[0])[0].get_xdata()) == [r["wall_time"] for r in records]
    with pytest.raises(ValueError, match="'epoch' or 'wall_time'"):
        plot_history(records, x="step")


def test_time_to_accuracy_puts_runs_on_cumulative_training_minutes():
    progressive = [{"epoch": i + 1, "stage": i // 2, "epoch_time": 30.0 * (i // 2 + 1), "test_acc": 0.1 * (i + 1)}
                   for i in range(4)]  # 30, 30, 60, 60 s
    fixed = [{"epoch": i + 1, "stage": 0, "epoch_time": 90.0, "test_acc": 0.2 * (i + 1)} for i in range(2)]
    fig = plot_time_to_accuracy({"progressive": progressive, "fixed": fixed}, target=0.4)
    ax = fig.axes[0]
    lines = [line for line in curves(ax) if line.get_label() in ("progressive", "fixed")]
    assert list(lines[0].get_xdata()) == pytest.approx([0.5, 1.0, 2.0, 3.0])
    assert list(lines[0].get_ydata()) == pytest.approx([10, 20, 30, 40])
    assert list(lines[1].get_xdata()) == pytest.approx([1.5, 3.0])
    assert boundaries(ax) == [pytest.approx(1.5)]  # between 1.0 and 2.0 min; the fixed run has none
    assert any(line.get_ydata()[0] == pytest.approx(40) for line in ax.get_lines()
               if line.get_label().startswith("_"))  # the target line
    with pytest.raises(ValueError, match="epoch_time"):
        plot_time_to_accuracy({"broken": [{"test_acc": 0.5}]})
    with pytest.raises(TypeError):
        plot_time_to_accuracy([])


def test_confusion_matrix_is_row_normalized_and_labelled():
    matrix = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    fig = plot_confusion_matrix(matrix, ["cat", "dog", "frog"])
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0], [0.1, 0.9, 0], [0, 0, 0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "frog"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "0.80" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="len\\(class_names\\) = 2"):
        plot_confusion_matrix(matrix, ["cat", "dog"])
