"""Plots: the figures carry the panels, lines, stage boundaries and labels they promise."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from effv2_lib.plots import (
    FIGURE_LEGEND_GID,
    NO_MIXUP_GID,
    NO_RESIDUAL_GID,
    STAGE_BOUNDARY_GID,
    plot_accuracy_and_size,
    plot_block_probabilities,
    plot_class_examples,
    plot_confusion_matrix,
    plot_drop_statistics,
    plot_dropped_features,
    plot_grouped_bars,
    plot_history,
    plot_image_grid,
    plot_mixup_lambda,
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


def test_schedule_plot_is_a_2_by_2_grid_with_its_legend_below_the_panels():
    """No legend inside a panel, where it hid paper-s's 128 px first stage (#19)."""
    fig = plot_schedule({"paper-m": ProgressiveSchedule.from_preset("paper-m"),
                         "automl-m": ProgressiveSchedule.from_preset("automl-m")})
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len({ax.get_position().x0 for ax in fig.axes}) == 2 == len({ax.get_position().y0 for ax in fig.axes})
    (legend,) = fig.legends
    assert legend.get_gid() == FIGURE_LEGEND_GID
    assert [t.get_text() for t in legend.get_texts()] == ["paper-m", "automl-m", "automl-m: CutMix $\\alpha$",
                                                         "stage boundary"]


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


def test_the_mixup_panel_names_alpha_and_says_when_it_is_empty():
    def notes(fig):
        return [t.get_text() for t in fig.axes[3].texts if t.get_gid() == NO_MIXUP_GID]

    fig = plot_schedule(ProgressiveSchedule.from_preset("paper-s"))  # V2-S: no Mixup at any stage
    assert notes(fig) == ["no Mixup in\nthis schedule"]
    # the note sits well above the zero lines (which it used to cross)
    bottom, top = fig.axes[3].get_ylim()
    assert (0 - bottom) / (top - bottom) < 0.1 and fig.axes[3].texts[0].get_position()[1] > 0.4
    assert "alpha" in fig.axes[3].get_title() and "lambda" not in fig.axes[3].get_title()
    assert notes(plot_schedule({"paper-s": ProgressiveSchedule.from_preset("paper-s"),
                                "automl-s": ProgressiveSchedule.from_preset("automl-s")})) == [
        "no Mixup in\nthese schedules"]
    assert notes(plot_schedule(ProgressiveSchedule.from_preset("paper-m"))) == []


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
    # progressive's stages end with epochs 1, 3 and 5, where the next begins; the fixed run has one stage
    assert sorted(boundaries(ax_loss)) == [1, 3, 5]
    test_line = curves(ax_acc)[1]
    assert list(test_line.get_xdata()) == [0, 2, 4, 6]  # epochs without a test accuracy skipped
    # one legend below the panels: a colour per run, then the line styles once
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert legend.get_gid() == FIGURE_LEGEND_GID
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[:2] == ["progressive", "fixed"] and "test accuracy" in labels and len(labels) == 7
    assert min(text.get_fontsize() for text in legend.get_texts()) >= 9


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
    fig = plot_time_to_accuracy({"progressive": progressive, "fixed": fixed}, target=0.4,
                                target_label="fixed run's final accuracy")
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "progressive", "fixed", "stage change", "fixed run's final accuracy"]
    lines = [line for line in curves(ax) if line.get_label() in ("progressive", "fixed")]
    assert list(lines[0].get_xdata()) == pytest.approx([0.5, 1.0, 2.0, 3.0])
    assert list(lines[0].get_ydata()) == pytest.approx([10, 20, 30, 40])
    assert list(lines[1].get_xdata()) == pytest.approx([1.5, 3.0])
    assert boundaries(ax) == [pytest.approx(1.0)]  # where stage 0 ends and stage 1 begins; fixed has none
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


def folded_samples(alpha, count=2_000):
    lam = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample((count,))  # [count]
    return torch.maximum(lam, 1 - lam)  # the folded Mixup ratio, in [0.5, 1]


def test_mixup_lambda_plot_draws_the_empirical_and_exact_distribution_per_alpha():
    torch.manual_seed(0)
    alphas = [0.1, 0.2, 0.4, 1.0]
    samples = {alpha: folded_samples(alpha) for alpha in alphas}
    fig = plot_mixup_lambda(samples)
    assert len(fig.axes) == len(alphas)
    for ax, alpha in zip(fig.axes, alphas, strict=True):
        empirical, exact = ax.get_lines()                      # the step curve, then the exact CDF
        assert f"= {alpha:g}:" in ax.get_title() and f"{samples[alpha].mean().item():.3f}" in ax.get_title()
        assert empirical.get_ydata()[0] == 0 and empirical.get_ydata()[-1] == 1
        assert exact.get_ydata()[0] == pytest.approx(0) and exact.get_ydata()[-1] == pytest.approx(1)
        # 2,000 exact draws: the largest gap stays below 1.36 / sqrt(N) in 95% of seeds
        gap = float(ax.get_title().split("largest gap ")[1].split()[0])
        assert gap < 1.63 / 2_000 ** 0.5                       # the 99% bound, for a fixed seed's margin
    # alpha = 1 is uniform on [0.5, 1]: the exact CDF is 2x - 1
    x, y = fig.axes[-1].get_lines()[1].get_data()
    np.testing.assert_allclose(y, 2 * x - 1, atol=1e-12)
    # small alpha keeps most samples near 1: less of the mass lies below 0.9
    below = [float(np.interp(0.9, *ax.get_lines()[1].get_data())) for ax in fig.axes]
    assert below == sorted(below)


def test_folded_beta_cdf_matches_a_numerical_integral_of_the_density():
    from effv2_lib.plots import _folded_beta_cdf
    for alpha in (0.3, 2.0):                                   # densities finite at 1 (2.0) and not (0.3)
        t = np.linspace(0.5, 0.95, 200_001)
        log_beta = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)
        density = 2 * np.exp((alpha - 1) * (np.log(t) + np.log1p(-t)) - log_beta)
        integral = np.sum((density[1:] + density[:-1]) / 2 * np.diff(t))
        assert _folded_beta_cdf(alpha, np.array([0.95]))[0] == pytest.approx(integral, rel=1e-6)


def test_mixup_lambda_plot_rejects_bad_input():
    good = folded_samples(0.2)
    with pytest.raises(ValueError, match="alpha = 0 is no Mixup"):
        plot_mixup_lambda({0.0: good})
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        plot_mixup_lambda({0.2: 1 - good})  # not folded
    with pytest.raises(ValueError, match="1-D"):
        plot_mixup_lambda({0.2: []})
    with pytest.raises(TypeError):
        plot_mixup_lambda([good])
    with pytest.raises(ValueError, match="2 Axes"):
        plot_mixup_lambda({0.2: good, 0.4: good}, axes=plt.subplots(1, 3)[1])


def test_block_probabilities_leave_blocks_without_a_residual_undrawn():
    p = [0.0, 0.1, None, 0.3, float("nan"), 0.5]
    measured = [0.01, 0.09, None, 0.31, None, 0.52]
    fig = plot_block_probabilities({"set": p, "measured": measured}, ylabel="drop probability", title="V2")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["set", "measured"]
    for line in lines:
        assert line.get_linestyle() == "None"  # markers only, never a line through the gaps
        assert list(line.get_xdata()) == [0, 1, 3, 5]
    assert list(lines[0].get_ydata()) == [0.0, 0.1, 0.3, 0.5]
    bands = [patch for patch in ax.patches if patch.get_gid() == NO_RESIDUAL_GID]
    assert len(bands) == 2  # blocks 2 and 4
    assert sum(label.startswith("no residual") for label in ax.get_legend_handles_labels()[1]) == 1
    assert ax.get_title() == "V2" and ax.get_ylabel() == "drop probability"


def test_block_probabilities_reject_bad_input():
    with pytest.raises(ValueError, match="one value per block"):
        plot_block_probabilities({"a": [0.1, 0.2], "b": [0.1]})
    with pytest.raises(ValueError, match="disagree"):
        plot_block_probabilities({"a": [0.1, None], "b": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        plot_block_probabilities({"a": [0.1, 1.5]})
    with pytest.raises(TypeError):
        plot_block_probabilities([0.1, 0.2])


def test_dropped_features_mask_the_zeroed_entries():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(12, generator=generator) + 0.1  # [12], no zeros
    dropped = {rate: features * torch.bernoulli(torch.full((12,), 1 - rate), generator=generator) / (1 - rate)
               for rate in (0.0, 0.25, 0.5)}
    fig = plot_dropped_features(dropped, (3, 4))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3 and len(fig.axes) == 4  # three panels and the shared colorbar
    for ax, (rate, values) in zip(panels, dropped.items(), strict=True):
        picture = ax.get_images()[0].get_array()
        assert picture.shape == (3, 4)
        assert int(np.ma.getmaskarray(picture).sum()) == int((values == 0).sum())
        assert f"= {rate:.3g}: {(values == 0).float().mean().item():.0%} zeroed" in ax.get_title()
    limits = {ax.get_images()[0].get_clim() for ax in panels}
    assert len(limits) == 1  # one colour scale for every rate


def test_dropped_features_reject_bad_input():
    with pytest.raises(ValueError, match="holds 12 values"):
        plot_dropped_features({0.2: torch.ones(10)}, (3, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        plot_dropped_features({1.0: torch.ones(12)}, (3, 4))
    with pytest.raises(ValueError, match="shape"):
        plot_dropped_features({0.2: torch.ones(12)}, (12,))
    with pytest.raises(TypeError):
        plot_dropped_features({}, (3, 4))


# Figures of notebooks 00-02: bars, texts and images follow the data given.

def test_accuracy_and_size_draws_one_bar_per_model_labelled_with_its_accuracy():
    models = {"A": (84.3, 43.0), "B": (84.0, 164.0), "V2": (83.9, 24.0)}
    ax = plot_accuracy_and_size(models, highlight="V2").axes[0]
    bars = ax.patches
    assert [bar.get_height() for bar in bars] == [43.0, 164.0, 24.0]
    assert [t.get_text() for t in ax.texts] == ["84.3 % top-1", "84.0 % top-1", "83.9 % top-1"]
    assert bars[0].get_facecolor() == bars[1].get_facecolor() != bars[2].get_facecolor()
    assert ax.get_ylim()[1] > 164  # the label above the tallest bar stays inside
    with pytest.raises(ValueError, match="highlight"):
        plot_accuracy_and_size(models, highlight="C")
    with pytest.raises(ValueError, match="accuracy"):
        plot_accuracy_and_size({"A": (184.3, 43.0)})
    with pytest.raises(ValueError, match="parameters"):
        plot_accuracy_and_size({"A": (84.3, 0)})
    with pytest.raises(TypeError):
        plot_accuracy_and_size([("A", 84.3, 43.0)])


def test_class_examples_shows_the_first_images_of_each_class_under_its_name():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([1, 0, 1, 0, 2])  # class 2 has a single image
    fig = plot_class_examples(images, labels, ["cat", "dog", "frog"], per_class=2, title="examples")
    grid = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in grid[0]] == ["cat", "dog", "frog"]
    for column, rows in enumerate([[1, 3], [0, 2], [4]]):
        for r, index in enumerate(rows):
            np.testing.assert_array_equal(grid[r, column].get_images()[0].get_array(),
                                          images[index].permute(1, 2, 0).numpy())
    assert not grid[1, 2].get_images() and not grid[1, 2].axison  # nothing to show: an empty cell
    assert fig.get_suptitle() == "examples"
    with pytest.raises(ValueError, match="one entry per image"):
        plot_class_examples(images, labels[:4], ["cat", "dog", "frog"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_class_examples(images, labels, ["cat", "dog"])
    with pytest.raises(ValueError, match="per_class"):
        plot_class_examples(images, labels, ["cat", "dog", "frog"], per_class=0)


def test_grouped_bars_put_one_bar_per_value_and_write_the_values():
    series = {"ours": {"S": 21.46, "M": 54.14, "XL": 208.12}, "paper": {"S": 22.0, "M": 54.0}}
    ax = plot_grouped_bars(series, ylabel="parameters (millions)", title="Parameters").axes[0]
    assert len(ax.patches) == 5  # the paper has no XL: its slot stays empty
    assert [t.get_text() for t in ax.get_xticklabels()] == ["S", "M", "XL"]
    assert [t.get_text() for t in ax.texts] == ["21.5", "54.1", "208.1", "22.0", "54.0"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours", "paper"]
    ours_s, paper_s = ax.patches[0], ax.patches[3]
    assert ours_s.get_x() + ours_s.get_width() == pytest.approx(paper_s.get_x())  # side by side at "S"
    assert ax.get_ylabel() == "parameters (millions)"
    single = plot_grouped_bars({"MBConv": 9.5, "Fused-MBConv": 25.3}, ylabel="k", value_format=None).axes[0]
    assert single.patches[0].get_facecolor() != single.patches[1].get_facecolor()
    assert single.get_legend() is None and not single.texts
    with pytest.raises(ValueError):
        plot_grouped_bars({"ours": {"S": float("nan")}}, ylabel="x")
    with pytest.raises(TypeError):
        plot_grouped_bars({"ours": {"S": 21.46}, "paper": [22.0]}, ylabel="x")
    with pytest.raises(TypeError):
        plot_grouped_bars({"S": "21.46"}, ylabel="x")
    with pytest.raises(TypeError):
        plot_grouped_bars({}, ylabel="x")


def test_drop_statistics_set_the_measurements_beside_their_expectation():
    p, fractions, means = [0.0, 0.2, 0.5], [0.0, 0.21, 0.49], [1.0, 0.99, 1.03]
    fig = plot_drop_statistics(p, fractions, means, 400)
    ax_drop, ax_mean = fig.axes
    measured, expected = ax_drop.get_lines()
    assert list(measured.get_ydata()) == fractions and list(expected.get_ydata()) == p
    assert list(ax_mean.get_lines()[0].get_ydata()) == means
    band = ax_mean.collections[0].get_paths()[0].vertices
    half_width = 2 * (0.5 / (0.5 * 400)) ** 0.5  # 2 standard errors of the mean at p = 0.5
    assert band[:, 1].max() == pytest.approx(1 + half_width)
    assert band[:, 1].min() == pytest.approx(1 - half_width)
    assert "400" in ax_drop.get_title()
    with pytest.raises(ValueError, match="one value per probability"):
        plot_drop_statistics(p, fractions[:2], means, 400)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        plot_drop_statistics([0.0, 1.0], [0.0, 1.0], [1.0, 1.0], 400)
    with pytest.raises(ValueError, match="2 Axes"):
        plot_drop_statistics(p, fractions, means, 400, axes=plt.subplots(1, 3)[1])
