"""Explorer widgets: driven by setting control values, as the browser does through the comm.

ipywidgets observers fire synchronously on `.value = ...`, so every assertion here sees the
state right after the change. Rendering a PNG costs about half a second on 2 CPU cores, so
most tests replace it with a cheap fingerprint of the drawn lines (the plotting itself still
runs); `test_plot_is_a_png_that_follows_the_schedule` renders for real.
"""

import html

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from effv2_lib import timing, widgets  # noqa: E402
from effv2_lib.randaugment import AutomlRandAugment  # noqa: E402
from effv2_lib.schedule import PRESETS, ProgressiveSchedule  # noqa: E402
from effv2_lib.search import REFERENCE, sample_candidates  # noqa: E402
from effv2_lib.widgets import augmentation_explorer, reward_explorer, schedule_explorer  # noqa: E402


def _lines_fingerprint(figure, dpi):
    """Stand-in for the PNG: the data of every line drawn, so a redraw with new data differs."""
    return repr([(list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
                 for ax in figure.axes for line in ax.get_lines()]).encode()


@pytest.fixture
def fast_png(monkeypatch):
    monkeypatch.setattr(widgets, "_png", _lines_fingerprint)


def sizes(schedule):
    return [stage.image_size for stage in schedule.stages]


# --------------------------------------------------------------------------- schedule

def test_starts_at_the_preset_with_every_control_labelled_and_tagged(fast_png):
    explorer = schedule_explorer("paper-s")
    assert explorer.schedule == ProgressiveSchedule.from_preset("paper-s")
    assert explorer.error.value == ""
    expected = {"preset", "rule", "randaug_ops", "size_multiple", "total_epochs", "num_stages", "image_size_start",
                "image_size_end", "dropout", "randaug", "mixup"}
    assert set(explorer.controls) == expected
    for name, control in explorer.controls.items():
        assert control.description, name
        assert "effv2-" + name.replace("_", "-") in control._dom_classes
    assert "effv2-stage-table" in explorer.table._dom_classes
    assert "effv2-summary" in explorer.summary._dom_classes
    assert "effv2-schedule-explorer" in explorer.widget._dom_classes
    # the table: one header row and M stage rows, the preset's sizes; the compute estimate below
    assert explorer.table.value.count("<tr>") == 1 + 4
    for size in (128, 185, 243, 300):
        assert f"<td>{size}</td>" in explorer.table.value
    # sum_i n_i (S_i / S_e)^2 / N = (88 (128^2 + 185^2) + 87 (243^2 + 300^2)) / 300^2 / 350
    assert "55% of 350 epochs at 300 px" in explorer.summary.value
    # without measured images/s there is no time to predict, and no time column
    assert explorer.predicted_seconds is None and "predicted time" not in explorer.table.value


def test_moving_s_e_changes_the_schedule_table_and_plot(fast_png):
    explorer = schedule_explorer("paper-s")
    table, plot = explorer.table.value, explorer.plot.value
    explorer.controls["image_size_end"].value = 256
    assert sizes(explorer.schedule) == [128, 171, 213, 256]
    assert explorer.schedule.name == "custom"
    assert explorer.table.value != table and "<td>256</td>" in explorer.table.value
    assert "<td>300</td>" not in explorer.table.value
    assert explorer.plot.value != plot


def test_regularizer_range_sliders_set_phi_0_and_phi_e(fast_png):
    explorer = schedule_explorer("paper-s")
    explorer.controls["mixup"].value = (0.0, 0.3)
    explorer.controls["randaug"].value = (2.0, 8.0)
    explorer.controls["dropout"].value = (0.0, 0.6)
    explorer.controls["num_stages"].value = 3
    stages = explorer.schedule.stages
    assert [s.mixup_alpha for s in stages] == pytest.approx([0.0, 0.15, 0.3])
    assert [s.randaug_magnitude for s in stages] == pytest.approx([2.0, 5.0, 8.0])
    assert [s.dropout for s in stages] == pytest.approx([0.0, 0.3, 0.6])


def test_preset_sets_every_control_and_redraws_once(fast_png):
    explorer = schedule_explorer("paper-s")
    redraws = []
    explorer.table.observe(lambda change: redraws.append(change["new"]), names="value")
    explorer.plot.observe(lambda change: redraws.append("plot"), names="value")
    explorer.controls["preset"].value = "cifar10"
    assert len(redraws) == 2  # one table, one plot: not one per control
    c = {name: control.value for name, control in explorer.controls.items()}
    assert (c["total_epochs"], c["num_stages"], c["image_size_start"], c["image_size_end"],
            c["size_multiple"], c["rule"]) == (40, 4, 16, 32, 4, "paper")
    assert (c["dropout"], c["randaug"], c["mixup"]) == ((0.0, 0.2), (2.0, 6.0), (0.0, 0.1))
    assert explorer.controls["image_size_end"].step == 4  # the slider moves in the preset's steps
    assert explorer.schedule == ProgressiveSchedule.from_preset("cifar10")
    explorer.controls["preset"].value = "automl-m"
    assert explorer.controls["rule"].value == "automl"
    assert explorer.schedule == ProgressiveSchedule.from_preset("automl-m")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_fits_the_sliders(preset, fast_png):
    """No preset value is clamped by a slider's range or step."""
    explorer = schedule_explorer("paper-s")
    explorer.controls["preset"].value = preset
    assert explorer.schedule == ProgressiveSchedule.from_preset(preset)
    assert explorer.error.value == ""


def test_total_epochs_argument_keeps_the_preset_name(fast_png):
    explorer = schedule_explorer("cifar10", total_epochs=8)
    assert explorer.schedule == ProgressiveSchedule.from_preset("cifar10", total_epochs=8)
    assert explorer.controls["total_epochs"].value == 8


def test_invalid_settings_show_an_error_and_keep_the_last_valid_schedule(fast_png):
    explorer = schedule_explorer("cifar10")
    explorer.controls["total_epochs"].value = 10
    valid, table, plot = explorer.schedule, explorer.table.value, explorer.plot.value
    explorer.controls["total_epochs"].value = 3  # 3 epochs cannot fill 4 stages
    assert "total_epochs must be >= num_stages" in html.unescape(explorer.error.value)
    assert explorer.schedule is valid
    assert (explorer.table.value, explorer.plot.value) == (table, plot)
    explorer.controls["num_stages"].value = 3  # valid again: the error goes away
    assert explorer.error.value == ""
    assert (explorer.schedule.total_epochs, explorer.schedule.num_stages) == (3, 3)


def test_size_off_the_multiple_is_an_error_not_an_exception(fast_png):
    explorer = schedule_explorer("cifar10")  # sizes in steps of 4
    explorer.controls["image_size_start"].value = 18
    assert "multiples of size_multiple=4" in explorer.error.value
    assert explorer.schedule == ProgressiveSchedule.from_preset("cifar10")


def test_rule_toggle_switches_to_the_automl_sizes_and_back(fast_png):
    explorer = schedule_explorer("paper-s")
    explorer.controls["rule"].value = "automl"
    assert sizes(explorer.schedule) == [171, 214, 257, 300]  # S_0 = 128 is never used
    assert explorer.schedule.rule == "automl" and "rule: automl" in explorer.table.value
    explorer.controls["rule"].value = "paper"
    assert sizes(explorer.schedule) == [128, 185, 243, 300]
    assert explorer.schedule.name == "paper-s"  # back on the preset


def test_size_multiple_snaps_s_0_and_s_e_to_the_new_step(fast_png):
    explorer = schedule_explorer("paper-s")
    explorer.controls["image_size_start"].value = 130
    explorer.controls["size_multiple"].value = 8
    assert explorer.controls["image_size_start"].value == 128
    assert explorer.controls["image_size_end"].step == 8
    assert explorer.error.value == ""
    assert all(size % 8 == 0 for size in sizes(explorer.schedule))


def test_no_setting_of_any_control_raises(fast_png):
    explorer = schedule_explorer("paper-s")
    generator = torch.Generator().manual_seed(0)
    sliders = [name for name in explorer.controls if name not in ("preset", "rule", "randaug_ops", "size_multiple")]
    for _ in range(40):
        name = sliders[int(torch.randint(len(sliders), (1,), generator=generator))]
        control = explorer.controls[name]
        u, v = torch.rand(2, generator=generator).tolist()
        if isinstance(control.value, tuple):
            low, high = sorted(control.min + (control.max - control.min) * x for x in (u, v))
            control.value = (low, high)
        else:
            control.value = int(control.min + (control.max - control.min) * u)
        if explorer.error.value == "":
            assert explorer.schedule.num_stages == explorer.controls["num_stages"].value
            assert explorer.schedule.total_epochs == explorer.controls["total_epochs"].value
        else:
            assert explorer.controls["total_epochs"].value < explorer.controls["num_stages"].value \
                or "size_multiple" in explorer.error.value


def test_arguments_that_make_no_schedule_raise(fast_png):
    with pytest.raises(ValueError, match="preset must be one of"):
        schedule_explorer("paper-xs")
    with pytest.raises(ValueError, match="total_epochs must be >= num_stages"):
        schedule_explorer("cifar10", total_epochs=2)
    with pytest.raises(ValueError, match="dpi"):
        schedule_explorer(dpi=0)
    # an N beyond the slider's range widens the slider instead of being clamped
    assert schedule_explorer("cifar10", total_epochs=1000).schedule.total_epochs == 1000


def test_the_explorer_displays_as_its_widget_and_says_what_it_is_as_text(fast_png):
    explorer = schedule_explorer()
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    # what a saved notebook shows where widgets cannot be drawn, instead of "VBox(children=...)"
    assert bundle["text/plain"] == "Schedule explorer (interactive; run the notebook to use it)"
    assert explorer.widget._repr_mimebundle_()["text/plain"] == bundle["text/plain"]


def test_plot_is_a_png_that_follows_the_schedule():
    explorer = schedule_explorer("cifar10", dpi=40)
    png = bytes(explorer.plot.value)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image_size_axis = explorer.figure.axes[0]
    assert image_size_axis.get_lines()[0].get_ydata()[-1] == 32
    explorer.controls["image_size_end"].value = 40
    assert image_size_axis.get_lines()[0].get_ydata()[-1] == 40
    assert bytes(explorer.plot.value) != png and bytes(explorer.plot.value).startswith(b"\x89PNG")


# ------------------------------------------------------------------ slider ranges, ghost, text

@pytest.mark.parametrize("preset, epochs, sizes", [("cifar10", (1, 100), (8, 64)),
                                                   ("paper-s", (1, 500), (64, 512))])
def test_slider_ranges_follow_the_chosen_preset(preset, epochs, sizes, fast_png):
    explorer = schedule_explorer("paper-s" if preset == "cifar10" else "cifar10")
    explorer.controls["preset"].value = preset
    c = explorer.controls
    assert (c["total_epochs"].min, c["total_epochs"].max) == epochs
    for name in ("image_size_start", "image_size_end"):
        assert (c[name].min, c[name].max) == sizes
    assert explorer.schedule == ProgressiveSchedule.from_preset(preset)  # nothing clamped on the way


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_preset_handle_sits_at_the_far_left(preset, fast_png):
    explorer = schedule_explorer(preset)
    for name in ("total_epochs", "image_size_start", "image_size_end"):
        control = explorer.controls[name]
        position = (control.value - control.min) / (control.max - control.min)
        assert 0.05 <= position <= 1.0, (name, control.value, control.min, control.max)
        assert (control.value - control.min) % control.step == 0  # reachable by the slider's steps


def test_range_helpers_reject_bad_input():
    assert widgets.epoch_range(40) == (1, 100) and widgets.epoch_range(1000) == (1, 1000)
    assert widgets.size_range((16, 32)) == (8, 64) and widgets.size_range((128, 300)) == (64, 512)
    with pytest.raises(ValueError, match="total_epochs"):
        widgets.epoch_range(0)
    with pytest.raises(TypeError, match="total_epochs"):
        widgets.epoch_range(2.5)
    with pytest.raises(ValueError, match="image_size"):
        widgets.size_range((4, 32))


def _ghost_lines(explorer):
    return [[line for line in ax.get_lines() if line.get_gid() == widgets.GHOST_GID]
            for ax in explorer.figure.axes]


def test_the_chosen_preset_is_drawn_as_a_ghost_in_every_panel(fast_png):
    explorer = schedule_explorer("cifar10")
    explorer.controls["num_stages"].value = 2
    preset = ProgressiveSchedule.from_preset("cifar10")
    ghosts = _ghost_lines(explorer)
    assert [len(lines) for lines in ghosts] == [1, 1, 1, 1]  # one ghost per panel
    # the ghost keeps the preset's four stages while the edited schedule has two
    assert list(ghosts[0][0].get_ydata()[:-1]) == [s.image_size for s in preset.stages]
    schedule_line = explorer.figure.axes[0].get_lines()[0]
    assert list(schedule_line.get_ydata()[:-1]) == [s.image_size for s in explorer.schedule.stages]
    assert ghosts[0][0].get_alpha() < 1 and ghosts[0][0].get_linewidth() > schedule_line.get_linewidth()
    legend = [text.get_text() for text in explorer.figure.axes[0].get_legend().get_texts()]
    assert legend == ["custom", "preset cifar10"]
    explorer.controls["preset"].value = "paper-m"  # the ghost follows the chosen preset
    ghosts = _ghost_lines(explorer)
    assert list(ghosts[0][0].get_ydata()[:-1]) == [s.image_size for s in ProgressiveSchedule.from_preset(
        "paper-m").stages]
    assert "preset paper-m" in [t.get_text() for t in explorer.figure.axes[0].get_legend().get_texts()]


def test_every_text_in_the_plot_is_at_least_11_pt(fast_png):
    from matplotlib.text import Text

    explorer = schedule_explorer("automl-m")  # CutMix adds a second legend in the Mixup panel
    explorer.figure.draw_without_rendering()  # tick labels are made when drawn
    texts = [t for t in explorer.figure.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 30  # titles, labels, tick labels, legends
    assert min(t.get_fontsize() for t in texts) >= 11
    assert tuple(explorer.figure.get_size_inches()) == widgets.FIGURE_SIZE


def test_the_dropdown_says_custom_after_an_edit_and_the_preset_again_when_it_matches(fast_png):
    explorer = schedule_explorer("cifar10")
    dropdown = explorer.controls["preset"]
    assert (dropdown.value, dropdown.label) == ("cifar10", "cifar10")
    explorer.controls["image_size_end"].value = 40
    assert (dropdown.value, dropdown.label) == ("custom", "custom (edited from cifar10)")
    assert explorer.schedule.name == "custom" and explorer.preset == "cifar10"
    explorer.controls["image_size_end"].value = 32  # back on the preset
    assert (dropdown.value, explorer.schedule.name) == ("cifar10", "cifar10")
    explorer.controls["total_epochs"].value = 3  # 3 epochs cannot make 4 stages: an edit too
    assert explorer.error.value and dropdown.value == "custom"
    explorer.controls["preset"].value = "paper-s"  # a new preset relabels the custom entry
    explorer.controls["mixup"].value = (0.0, 0.5)
    assert (dropdown.value, dropdown.label) == ("custom", "custom (edited from paper-s)")
    assert [label for label, _ in dropdown.options].count("custom (edited from paper-s)") == 1
    explorer.controls["mixup"].value = (0.0, 0.0)
    dropdown.value = "custom"  # chosen by hand while nothing is edited: it shows the preset
    assert dropdown.value == "paper-s" and explorer.schedule == ProgressiveSchedule.from_preset("paper-s")


# ------------------------------------------------------------------ predicted training time

RATES = {16: 1000.0, 20: 700.0, 28: 400.0, 32: 300.0}  # images/s at the cifar10 preset's sizes


def test_predicted_seconds_is_the_sum_over_stages_of_epochs_times_images_over_rate():
    schedule = ProgressiveSchedule.from_preset("cifar10")  # 10 epochs at each of 16, 20, 28, 32 px
    expected = sum(s.num_epochs * 50_000 / RATES[s.image_size] for s in schedule.stages)
    assert timing.predicted_seconds(schedule, RATES, 50_000) == pytest.approx(expected, rel=1e-12)
    assert timing.stage_seconds(schedule, RATES, 50_000) == pytest.approx(
        [s.num_epochs * 50_000 / RATES[s.image_size] for s in schedule.stages])
    fixed = ProgressiveSchedule.from_preset("cifar10-fixed")
    assert timing.predicted_seconds(fixed, RATES, 1_000) == pytest.approx(40 * 1_000 / RATES[32])


def test_throughput_is_interpolated_in_log_log_between_measured_sizes():
    power_law = {size: 3e6 * size ** -1.7 for size in (16, 24, 32)}  # exactly S^-1.7
    for size in (18, 20, 27, 31.5):  # between measured sizes: on the power law
        assert timing.throughput_at(size, power_law) == pytest.approx(3e6 * size ** -1.7, rel=1e-12)
    # two measured points: the geometric mean of the sizes gets the geometric mean of the rates
    pair = {16: 1000.0, 64: 100.0}
    assert timing.throughput_at(32, pair) == pytest.approx((1000.0 * 100.0) ** 0.5)
    # a little outside (up to 1.25x) the nearest pair's power law goes on; further out is refused
    assert timing.throughput_at(36, power_law) == pytest.approx(3e6 * 36 ** -1.7)
    assert timing.throughput_at(13, power_law) == pytest.approx(3e6 * 13 ** -1.7)
    with pytest.raises(ValueError, match="measure images/s at 48 px"):
        timing.throughput_at(48, power_law)
    with pytest.raises(ValueError, match="measured at 16-32 px"):
        timing.throughput_at(8, power_law)
    with pytest.raises(ValueError, match="measured at 16-32 px"):
        timing.predicted_seconds(ProgressiveSchedule.from_preset("paper-s"), power_law, 1000)
    assert timing.throughput_at(48, power_law, max_extrapolation=2.0) == pytest.approx(3e6 * 48 ** -1.7)
    with pytest.raises(ValueError, match="measured at 32 px"):  # one size: no slope to extend
        timing.throughput_at(33, {32: 300.0})
    assert timing.throughput_at(32, {32: 300.0}) == 300.0


def test_timing_rejects_bad_input():
    schedule = ProgressiveSchedule.from_preset("cifar10")
    with pytest.raises(TypeError, match="images_per_s must be a dict"):
        timing.predicted_seconds(schedule, [(16, 1000.0)], 50_000)
    with pytest.raises(ValueError, match="at least one"):
        timing.throughput_at(16, {})
    with pytest.raises(ValueError, match=r"images_per_s\[16\]"):
        timing.throughput_at(16, {16: 0.0, 32: 300.0})
    with pytest.raises(ValueError, match=r"images_per_s\[16\]"):
        timing.throughput_at(16, {16: float("nan"), 32: 300.0})
    with pytest.raises(TypeError, match="image size"):
        timing.throughput_at(16, {"16": 1000.0})
    with pytest.raises(ValueError, match="image_size"):
        timing.throughput_at(0, RATES)
    with pytest.raises(ValueError, match="max_extrapolation"):
        timing.throughput_at(20, RATES, max_extrapolation=0.5)
    with pytest.raises(TypeError, match="ProgressiveSchedule"):
        timing.predicted_seconds(schedule.to_dict(), RATES, 50_000)
    with pytest.raises(ValueError, match="images_per_epoch"):
        timing.predicted_seconds(schedule, RATES, 0)
    with pytest.raises(TypeError, match="ProgressiveSchedule"):
        timing.relative_flops("cifar10")


def test_relative_flops_and_durations():
    paper_s = ProgressiveSchedule.from_preset("paper-s")
    expected = sum(s.num_epochs * (s.image_size / 300) ** 2 for s in paper_s.stages) / 350
    assert timing.relative_flops(paper_s) == pytest.approx(expected)
    assert timing.relative_flops(ProgressiveSchedule.from_preset("cifar10-fixed")) == 1.0
    assert [timing.format_minutes(x) for x in (42, 600, 9000)] == ["42 s", "10.0 min", "2.5 h"]


def test_explorer_predicts_the_training_time_from_images_per_s(fast_png):
    explorer = schedule_explorer("cifar10", images_per_s=RATES, images_per_epoch=50_000,
                                 hardware="a test machine")
    expected = timing.predicted_seconds(explorer.schedule, RATES, 50_000)
    assert explorer.predicted_seconds == pytest.approx(expected)
    assert f"{timing.format_minutes(expected)} on a test machine" in explorer.summary.value
    assert "60% of 40 epochs at 32 px" in explorer.summary.value  # the FLOPs beside the time
    assert explorer.table.value.count("min</td>") == 4  # one predicted time per stage
    explorer.controls["num_stages"].value = 2  # 16 and 32 px: other sizes, another time
    two_stages = timing.predicted_seconds(explorer.schedule, RATES, 50_000)
    assert explorer.predicted_seconds == pytest.approx(two_stages) and two_stages != expected
    assert f"preset cifar10: {timing.format_minutes(expected)}" in explorer.summary.value
    explorer.controls["image_size_end"].value = 64  # far beyond the measured 16-32 px: no guess
    assert explorer.predicted_seconds is None
    assert "not available" in explorer.summary.value and "64 px" in explorer.summary.value
    explorer.controls["image_size_end"].value = 36  # a little beyond: extrapolated, and said so
    assert explorer.predicted_seconds == pytest.approx(timing.predicted_seconds(explorer.schedule, RATES, 50_000))
    assert "extrapolated" in explorer.summary.value


def test_explorer_prediction_arguments_are_checked():
    with pytest.raises(ValueError, match="images_per_epoch is needed"):
        schedule_explorer("cifar10", images_per_s=RATES)
    with pytest.raises(ValueError, match="without images_per_s"):
        schedule_explorer("cifar10", images_per_epoch=50_000)
    with pytest.raises(TypeError, match="images_per_s must be a dict"):
        schedule_explorer("cifar10", images_per_s=[1000.0, 300.0], images_per_epoch=50_000)
    with pytest.raises(ValueError, match="images_per_epoch"):
        schedule_explorer("cifar10", images_per_s=RATES, images_per_epoch=0)
    with pytest.raises(TypeError, match="hardware"):
        schedule_explorer("cifar10", images_per_s=RATES, images_per_epoch=50_000, hardware=None)


# ----------------------------------------------------------------------- augmentation

@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)


CLASSES = ["airplane", "automobile", "bird", "cat"]


def test_augmentation_explorer_magnitude_zero_leaves_images_alone(images, fast_png):
    explorer = augmentation_explorer(images, [0, 1, 2, 3], CLASSES, magnitude=0.0, mixup_alpha=0.0)
    assert torch.equal(explorer.augmented, images)
    assert torch.equal(explorer.targets, torch.tensor([0, 1, 2, 3]))  # alpha 0: hard labels
    assert torch.allclose(explorer.mixed, images.float() / 255)
    explorer.controls["magnitude"].value = 10.0
    assert not torch.equal(explorer.augmented, images)


def test_augmentation_explorer_is_repeatable_and_leaves_the_global_rng_alone(images, fast_png):
    state = torch.get_rng_state()
    first = augmentation_explorer(images, [0, 1, 2, 3], CLASSES, magnitude=12.0, seed=3)
    second = augmentation_explorer(images, [0, 1, 2, 3], CLASSES, magnitude=12.0, seed=3)
    assert torch.equal(first.augmented, second.augmented)
    assert torch.equal(first.targets, second.targets)
    assert torch.equal(torch.get_rng_state(), state)
    first.controls["seed"].value = 4
    assert not torch.equal(first.augmented, second.augmented)


def test_augmentation_explorer_mixup_and_image_size(images, fast_png):
    explorer = augmentation_explorer(images, [0, 1, 2, 3], CLASSES, mixup_alpha=0.0)
    explorer.controls["mixup_alpha"].value = 0.4
    targets = explorer.targets
    assert targets.shape == (4, len(CLASSES))
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    # each image keeps its own label as the larger part, the rest goes to its partner K-1-i
    assert torch.all(targets[torch.arange(4), torch.tensor([0, 1, 2, 3])] >= 0.5)
    explorer.controls["image_size"].value = 16
    assert explorer.augmented.shape == (4, 3, 16, 16)
    assert explorer.mixed.shape == (4, 3, 16, 16)


def test_augmentation_explorer_switches_between_the_op_tables(images, fast_png):
    explorer = augmentation_explorer(images, [0, 1, 2, 3], CLASSES, magnitude=10.0, seed=2)
    torchvision_images = explorer.augmented
    explorer.controls["randaug_ops"].value = "automl"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        augment = AutomlRandAugment(10.0, num_ops=2)
        expected = torch.stack([augment(image) for image in images])
    assert torch.equal(explorer.augmented, expected) and not torch.equal(expected, torchvision_images)
    with pytest.raises(ValueError, match="randaug_ops"):
        augmentation_explorer(images, [0, 1, 2, 3], CLASSES, randaug_ops="kornia")


def test_augmentation_explorer_rejects_bad_input(images):
    with pytest.raises(ValueError, match="uint8"):
        augmentation_explorer(images.float(), [0, 1, 2, 3], CLASSES)
    with pytest.raises(ValueError, match="2 to 12 images"):
        augmentation_explorer(images[:1], [0], CLASSES)
    with pytest.raises(ValueError, match="one label per image"):
        augmentation_explorer(images, [0, 1], CLASSES)
    with pytest.raises(ValueError, match="labels must lie in"):
        augmentation_explorer(images, [0, 1, 2, 7], CLASSES)
    with pytest.raises(TypeError, match="torch.Tensor"):
        augmentation_explorer(images.numpy(), [0, 1, 2, 3], CLASSES)


def test_augmentation_explorer_says_what_it_is_as_text(images, fast_png):
    explorer = augmentation_explorer(images, [0, 1, 2, 3], CLASSES)
    bundle = explorer._repr_mimebundle_()
    assert bundle["text/plain"] == "Augmentation explorer (interactive; run the notebook to use it)"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


def test_close_closes_every_widget_of_both_explorers(images, fast_png):
    for explorer in (schedule_explorer("cifar10"), augmentation_explorer(images, [0, 1, 2, 3], CLASSES)):
        parts = [explorer.widget, explorer.plot, *explorer.controls.values()]
        assert all(part.comm is not None for part in parts)
        explorer.close()
        assert all(part.comm is None for part in parts)


def test_a_preset_sets_the_op_table_and_the_table_control_changes_it(fast_png):
    """paper-* read Table 6 with automl's op table, cifar10 with torchvision's (#19)."""
    explorer = schedule_explorer("paper-s")
    assert explorer.controls["randaug_ops"].value == "automl" == explorer.schedule.randaug_ops
    explorer.controls["preset"].value = "cifar10"
    assert explorer.controls["randaug_ops"].value == "torchvision" == explorer.schedule.randaug_ops
    explorer.controls["randaug_ops"].value = "automl"
    assert explorer.schedule.randaug_ops == "automl" and explorer.schedule.name == "custom"
    assert "automl RandAugment ops" in explorer.table.value


# ------------------------------------------------------------------------------ reward explorer
def _a_search() -> dict:
    """cifar-tiny, a fast and slightly worse network, a slow, large and better one."""
    fast, big = (c.name for c in sample_candidates(2, seed=0))
    return {"reference": {"name": REFERENCE.name, "accuracy": 0.40, "step_time_s": 0.2, "params": 800_000},
            "candidates": [{"name": fast, "accuracy": 0.38, "step_time_s": 0.1, "params": 800_000},
                           {"name": big, "accuracy": 0.45, "step_time_s": 0.4, "params": 4_000_000}]}


def test_the_reward_explorer_reranks_as_the_exponents_move():
    search = _a_search()
    fast, big = (c["name"] for c in search["candidates"])
    explorer = reward_explorer(search, w=0.0, v=0.0)
    assert explorer.winner == big  # accuracy alone
    png = explorer.plot.value
    explorer.controls["w"].value = -0.5  # 0.38 * 0.5^-0.5 = 0.54 beats 0.40 and 0.45 * 2^-0.5 = 0.32
    assert explorer.winner == fast and explorer.ranked[-1]["name"] == big
    assert explorer.plot.value != png and explorer.plot.value[:4] == b"\x89PNG"
    assert "cifar-tiny ranks 2 of 3" in explorer.table.value and f"<code>{fast}</code>" in explorer.table.value
    explorer.controls["w"].value, explorer.controls["v"].value = -0.07, -0.05  # the paper's: cifar-tiny
    assert explorer.winner == REFERENCE.name and "it is cifar-tiny" in explorer.table.value
    explorer.close()


def test_the_reward_explorer_refuses_an_unfinished_search():
    with pytest.raises(ValueError, match="a reference and at least one candidate"):
        reward_explorer({"reference": None, "candidates": []})
    with pytest.raises(ValueError, match="w"):
        reward_explorer(_a_search(), w=0.5)
