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

from effv2_lib import widgets  # noqa: E402
from effv2_lib.randaugment import AutomlRandAugment  # noqa: E402
from effv2_lib.schedule import PRESETS, ProgressiveSchedule  # noqa: E402
from effv2_lib.widgets import augmentation_explorer, schedule_explorer  # noqa: E402


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
    expected = {"preset", "rule", "size_multiple", "total_epochs", "num_stages", "image_size_start",
                "image_size_end", "dropout", "randaug", "mixup"}
    assert set(explorer.controls) == expected
    for name, control in explorer.controls.items():
        assert control.description, name
        assert "effv2-" + name.replace("_", "-") in control._dom_classes
    assert "effv2-stage-table" in explorer.table._dom_classes
    assert "effv2-schedule-explorer" in explorer.widget._dom_classes
    # the table: one header row and M stage rows, the preset's sizes, the compute estimate
    assert explorer.table.value.count("<tr>") == 1 + 4
    for size in (128, 185, 243, 300):
        assert f"<td>{size}</td>" in explorer.table.value
    # sum_i n_i (S_i / S_e)^2 / N = (88 (128^2 + 185^2) + 87 (243^2 + 300^2)) / 300^2 / 350
    assert "55% of 350 epochs at 300 px" in explorer.table.value


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
    sliders = [name for name in explorer.controls if name not in ("preset", "rule", "size_multiple")]
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


def test_the_explorer_displays_as_its_widget(fast_png):
    explorer = schedule_explorer()
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


def test_plot_is_a_png_that_follows_the_schedule():
    explorer = schedule_explorer("cifar10", dpi=40)
    png = bytes(explorer.plot.value)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image_size_axis = explorer.figure.axes[0]
    assert image_size_axis.get_lines()[0].get_ydata()[-1] == 32
    explorer.controls["image_size_end"].value = 40
    assert image_size_axis.get_lines()[0].get_ydata()[-1] == 40
    assert bytes(explorer.plot.value) != png and bytes(explorer.plot.value).startswith(b"\x89PNG")


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
