"""Interactive explorers for the notebooks: progressive schedules and their regularizers.

Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training", Section 4. Algorithm 1
has a handful of knobs (N epochs, M stages, the image sizes S_0 -> S_e and each regularizer's
range Phi_0 -> Phi_e); moving them and watching the stage table and the curves change is the
quickest way to see what the rule does.

Each factory returns a small object holding the ipywidgets container to display (``.widget``),
its controls by name (``.controls``) and the state they drive. The observers run synchronously
when a control's ``.value`` is set, so the explorers can be tested, and scripted in a notebook,
without a browser:

    explorer = schedule_explorer("paper-s")
    explorer.controls["image_size_end"].value = 256
    explorer.schedule.stages[-1].image_size          # 256

Plots are drawn on a matplotlib Figure that belongs to the explorer (not to pyplot, so nothing
is shown twice by the inline backend and no figure leaks) and shown as a PNG in an
``ipywidgets.Image``: this works under any matplotlib backend, Agg included.

Given training images/s measured at a few image sizes, the schedule explorer also predicts the
wall time of the schedule on that hardware (effv2_lib.timing), beside its relative FLOPs: the
FLOPs say what small images save in principle, the time what they save on the machine at hand.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from ._checks import check_choice, check_int, check_real
from .augment import mixup_batch
from .plots import SCHEDULE_PANELS, plot_image_grid, plot_schedule, plot_search
from .randaugment import MAX_PAPER_LEVEL, RANDAUGMENTS
from .schedule import MAX_RANDAUG, MIN_IMAGE_SIZE, PRESETS, RANDAUG_OP_TABLES, RULES, ProgressiveSchedule
from .search import REWARD_V, REWARD_W, Candidate, pareto_front, rank
from .timing import (
    DEFAULT_MAX_EXTRAPOLATION,
    check_images_per_s,
    format_minutes,
    measured_range,
    predicted_seconds,
    relative_flops,
    throughput_at,
)

__all__ = ["ScheduleExplorer", "schedule_explorer", "AugmentationExplorer", "augmentation_explorer",
           "RewardExplorer", "reward_explorer", "DOM_CLASS_PREFIX", "epoch_range", "size_range", "custom_label"]

DOM_CLASS_PREFIX = "effv2-"  # every explorer part carries the CSS class effv2-<name> (browser tests)
CUSTOM_NAME = "custom"  # schedule name once the controls no longer match the chosen preset
MAX_TOTAL_EPOCHS = 500  # slider range; the paper trains 350 epochs
MAX_STAGES = 10  # the paper uses 4
MAX_IMAGE_SIZE = 512  # px; V2-XL evaluates at 512
SIZE_MULTIPLES = (1, 2, 4, 8)  # all divide MIN_IMAGE_SIZE, so every slider position is a multiple
MAX_DROPOUT = 0.9  # the schedule needs dropout < 1
MAX_MIXUP_ALPHA = 1.0  # automl-l ends at 0.5; alpha = 1 is already a uniform lambda
FIGURE_SIZE = (13.0, 3.6)  # inches; at the default dpi=80 the PNG is 1040 px wide
FONT_SIZE = 12  # pt, titles and axis labels: 13 px at dpi 80, legible when projected
SMALL_FONT_SIZE = 11  # pt, tick labels and legends: 12 px at dpi 80
GHOST_COLOR = "0.55"  # the chosen preset, drawn faint and wide under the edited schedule
GHOST_GID = "preset-ghost"  # matplotlib gid of the ghost lines (tests find them by it)
_DESCRIPTION_STYLE = {"description_width": "100px"}
_SLIDER_LAYOUT = dict(width="400px")


def _dom_class(name: str) -> str:
    return DOM_CLASS_PREFIX + name.replace("_", "-")


def _tag(widget: widgets.Widget, name: str) -> widgets.Widget:
    """Give `widget` the stable CSS class effv2-<name> and return it."""
    widget.add_class(_dom_class(name))
    return widget


def _png(figure: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _check_dpi(dpi: Any) -> int:
    return check_int("dpi", dpi, 20)


def _close_tree(widget: widgets.Widget) -> None:
    """Close `widget` and every widget inside it (their front-end models go away)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def _error_html(message: str) -> str:
    return f'<span style="color: #b00020">{html.escape(message)}</span>' if message else ""


# ------------------------------------------------------------------------------ schedules

def _nice_ceil(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= x (a round slider end)."""
    power = 1
    while True:
        for factor in (1, 2, 5):
            if factor * power >= x:
                return factor * power
        power *= 10


def epoch_range(total_epochs: int) -> tuple[int, int]:
    """Range of the N slider for a preset of `total_epochs` epochs: 1 to about 2.5 N.

    Rounded up to 1, 2 or 5 times a power of ten and capped at MAX_TOTAL_EPOCHS (but never
    below N itself): 40 epochs give 1-100, 350 give 1-500.
    """
    n = check_int("total_epochs", total_epochs, 1)
    return 1, max(n, min(MAX_TOTAL_EPOCHS, _nice_ceil(2.5 * n)))


def size_range(image_size: tuple[int, int]) -> tuple[int, int]:
    """Range of the S_0 and S_e sliders for a preset's (S_0, S_e): S_0 / 2 to 2 S_e.

    The low end is a multiple of 8 (so every size step in SIZE_MULTIPLES lands on multiples),
    at least MIN_IMAGE_SIZE; the high end is capped at MAX_IMAGE_SIZE (never below S_e):
    16 -> 32 px gives 8-64, 128 -> 300 px gives 64-512.
    """
    start = check_int("image_size[0] (px)", image_size[0], MIN_IMAGE_SIZE)
    end = check_int("image_size[1] (px)", image_size[1], MIN_IMAGE_SIZE)
    low = max(MIN_IMAGE_SIZE, 8 * (start // 2 // 8))
    return low, max(end, min(MAX_IMAGE_SIZE, 2 * end))


def _schedule_table_html(schedule: ProgressiveSchedule, stage_times: Sequence[float | None] | None = None) -> str:
    """The stage table as HTML, with each stage's cost relative to an epoch at S_e.

    The cost of a training step grows about as S^2 (FLOPs of a convolutional network
    are proportional to the number of pixels), which is where progressive learning's speed-up
    comes from. stage_times, when given, adds each stage's predicted time (None: unknown).
    """
    s_end = schedule.image_size[1]
    rows = []
    for k, stage in enumerate(schedule.stages):
        relative_cost = (stage.image_size / s_end) ** 2  # cost of one epoch vs one at S_e
        cells = [stage.index, f"{stage.start_epoch}&ndash;{stage.end_epoch - 1}", stage.num_epochs,
                 stage.image_size, f"{stage.dropout:.3f}", f"{stage.randaug_magnitude:.2f}",
                 f"{stage.mixup_alpha:.3f}", f"{relative_cost:.2f}"]
        if stage_times is not None:
            cells.append("&ndash;" if stage_times[k] is None else html.escape(format_minutes(stage_times[k])))
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    header = ["stage <i>i</i>", "epochs", "<i>n</i>", "size <i>S<sub>i</sub></i> (px)",
              "dropout <i>&gamma;<sub>i</sub></i>", "RandAug <i>&epsilon;<sub>i</sub></i>",
              "Mixup <i>&alpha;<sub>i</sub></i>", "FLOPs / epoch"]
    if stage_times is not None:
        header.append("predicted time")
    title = (f"{html.escape(schedule.name or 'schedule')}: {schedule.total_epochs} epochs in "
             f"{schedule.num_stages} stage{'s' if schedule.num_stages > 1 else ''} "
             f"(rule: {schedule.rule}), {schedule.randaug_ops} RandAugment ops")
    return (
        '<table style="border-collapse: collapse; text-align: right">'
        f'<caption style="text-align: left; font-weight: bold">{title}</caption>'
        "<thead><tr>" + "".join(f'<th style="padding: 0 0.6em">{h}</th>' for h in header)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _is_preset(schedule: ProgressiveSchedule, preset: str) -> bool:
    """True when `schedule` is the preset, with any number of epochs N."""
    try:
        return schedule == ProgressiveSchedule.from_preset(preset, schedule.total_epochs)
    except ValueError:  # the preset's M stages do not fit into this N
        return False


def custom_label(preset: str) -> str:
    """The dropdown's label once the controls no longer match `preset`."""
    return f"{CUSTOM_NAME} (edited from {preset})"


class _ExplorerBox(widgets.VBox):
    """A VBox whose plain-text form says what it is.

    A notebook saved with its outputs keeps this text beside the widget view; a viewer that
    cannot show widgets (or a notebook saved without widget state) shows the text instead of
    the default "VBox(children=(...))".
    """

    def __init__(self, children: Sequence[widgets.Widget], text: str) -> None:
        super().__init__(children)
        self._plain_text = text

    def __repr__(self) -> str:
        return self._plain_text


class _Explorer:
    """What every explorer shares: it displays as its widget (``widget``), and closes with it."""

    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):  # the explorer displays as its widget (text/plain: PLAIN_TEXT)
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Close every widget of the explorer: an explorer driven from code and no longer needed
        then leaves nothing behind in the notebook's saved widget state."""
        _close_tree(self.widget)

    def _follow(self, controls: Sequence[widgets.Widget]) -> None:
        """Draw now (the subclass's ``_update``), and again whenever one of `controls` changes."""
        self._update()
        for control in controls:
            control.observe(lambda change: self._update(), names="value")


class ScheduleExplorer(_Explorer):
    """Sliders for Algorithm 1's knobs, a presets dropdown, a live stage table and plot.

    Build it with `schedule_explorer`. Attributes:

    * ``widget``: the container to display (``display(explorer)`` or ``display(explorer.widget)``);
      its plain-text form is ``PLAIN_TEXT``, which is what a viewer without widgets shows.
    * ``controls``: name -> control. ``preset`` (Dropdown of PRESETS plus a "custom (edited
      from <preset>)" entry, selected while the controls differ from the preset), ``rule``
      (ToggleButtons, "paper" or "automl"), ``randaug_ops`` (ToggleButtons, the RandAugment op
      table, "torchvision" or "automl"; a preset sets it), ``size_multiple`` (Dropdown), ``total_epochs`` (N)
      and ``num_stages`` (M) IntSliders, ``image_size_start`` (S_0) and ``image_size_end``
      (S_e) IntSliders, and the regularizer ranges ``dropout`` (gamma_0, gamma_e), ``randaug``
      (epsilon_0, epsilon_e) and ``mixup`` (alpha_0, alpha_e), FloatRangeSliders. Each control
      carries the CSS class ``effv2-<name>`` with "_" written "-" (e.g. effv2-image-size-end).
      Choosing a preset also sets the N and size sliders' ranges around it (`epoch_range`,
      `size_range`), so its values sit mid-slider.
    * ``preset``: the preset the controls were last set from; ``preset_schedule`` is that
      preset at the current N (or at its own N when the current N cannot hold its stages),
      drawn as a faint grey "ghost" line in every panel.
    * ``schedule``: the ProgressiveSchedule the controls describe, or the last valid one
      while they describe none (``error`` then says why). Its name is the preset's while the
      controls match the preset (with any N, as ``from_preset(name, total_epochs)``), else
      "custom".
    * ``table``: HTML widget with the stage table (CSS class effv2-stage-table).
    * ``summary``: HTML widget (effv2-summary) with the relative FLOPs and, when the explorer
      was given measured ``images_per_s``, the predicted training time on that hardware
      (effv2_lib.timing.predicted_seconds); ``predicted_seconds`` holds it (None when there
      is no measurement or a stage size lies too far outside the measured sizes).
    * ``plot``: Image widget with `plot_schedule` of the schedule as PNG (effv2-schedule-plot);
      ``figure`` is the matplotlib Figure behind it.
    * ``error``: HTML widget, empty while the controls are valid, else the reason they are
      not (e.g. fewer epochs than stages). Invalid settings never raise.

    Choosing a preset sets every control and redraws once. Sliders report on release
    (continuous_update=False), so dragging one redraws once, not at every pixel.
    """

    PLAIN_TEXT = "Schedule explorer (interactive; run the notebook to use it)"

    def __init__(self, preset: str = "paper-s", *, total_epochs: int | None = None, dpi: int = 80,
                 images_per_s: Mapping[int, float] | None = None, images_per_epoch: int | None = None,
                 hardware: str = "this machine",
                 max_extrapolation: float = DEFAULT_MAX_EXTRAPOLATION) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        # Arguments that make no schedule raise here; only settings made through the controls
        # are shown as errors instead.
        initial = ProgressiveSchedule.from_preset(preset, total_epochs)
        self.dpi = _check_dpi(dpi)
        self.images_per_s = None if images_per_s is None else check_images_per_s(images_per_s)
        if self.images_per_s is not None and images_per_epoch is None:
            raise ValueError("images_per_epoch is needed with images_per_s (e.g. 50_000 for CIFAR-10's "
                             "training set): the time of an epoch is images_per_epoch / images_per_s")
        if self.images_per_s is None and images_per_epoch is not None:
            raise ValueError("images_per_epoch was given without images_per_s: the prediction needs "
                             "the measured images/s per image size")
        self.images_per_epoch = check_int("images_per_epoch", images_per_epoch, 1, optional=True)
        if not isinstance(hardware, str) or not hardware:
            raise TypeError(f"hardware must be a non-empty str naming where images_per_s was measured, "
                            f"got {type(hardware).__name__} {hardware!r}")
        self.hardware = hardware
        self.max_extrapolation = check_real("max_extrapolation", max_extrapolation, 1.0,
                                            allowed="a finite ratio >= 1")
        slider = dict(continuous_update=False, style=_DESCRIPTION_STYLE, layout=_SLIDER_LAYOUT)
        self.controls: dict[str, widgets.Widget] = {
            "preset": widgets.Dropdown(options=self._preset_options(preset), value=preset,
                                       description="preset", style=_DESCRIPTION_STYLE,
                                       layout=dict(width="340px")),
            # display flex: the label and the buttons on one line (the default stacks them)
            "rule": widgets.ToggleButtons(options=list(RULES), description="rule",
                                          style={"description_width": "50px",
                                                 "button_width": "80px"},
                                          layout=dict(display="flex"),
                                          tooltips=["Algorithm 1 of the paper",
                                                    "the official code (google/automl)"]),
            # which op table reads the RandAugment magnitudes (effv2_lib.randaugment): a preset sets it
            "randaug_ops": widgets.ToggleButtons(options=list(RANDAUG_OP_TABLES), description="RandAug ops",
                                                 style={"description_width": "90px", "button_width": "90px"},
                                                 layout=dict(display="flex"),
                                                 tooltips=["torchvision's ops on the paper's level scale",
                                                           "the official code's op table (autoaugment.py)"]),
            "size_multiple": widgets.Dropdown(options=list(SIZE_MULTIPLES),
                                              description="sizes in steps of",
                                              style={"description_width": "initial"},
                                              layout=dict(width="200px")),
            "total_epochs": widgets.IntSlider(min=1, max=max(MAX_TOTAL_EPOCHS, initial.total_epochs),
                                              description="N (epochs)", **slider),
            "num_stages": widgets.IntSlider(min=1, max=MAX_STAGES, description="M (stages)", **slider),
            "image_size_start": widgets.IntSlider(min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                                                  description="S\u2080 (px)", **slider),
            "image_size_end": widgets.IntSlider(min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE,
                                                description="S\u2091 (px)", **slider),
            "dropout": widgets.FloatRangeSlider(min=0.0, max=MAX_DROPOUT, step=0.01,
                                                description="dropout \u03b3", **slider),
            "randaug": widgets.FloatRangeSlider(min=0.0, max=MAX_RANDAUG, step=0.5,
                                                readout_format=".1f", description="RandAug \u03b5",
                                                **slider),
            "mixup": widgets.FloatRangeSlider(min=0.0, max=MAX_MIXUP_ALPHA, step=0.01,
                                              description="Mixup \u03b1", **slider),
        }
        for name, control in self.controls.items():
            _tag(control, name)
        self.error = _tag(widgets.HTML(), "error")
        self.table = _tag(widgets.HTML(), "stage-table")
        self.summary = _tag(widgets.HTML(), "summary")
        self.plot = _tag(widgets.Image(format="png"), "schedule-plot")
        self.figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
        self._axes = list(self.figure.subplots(1, 4))
        self._holding = 0  # > 0 while several controls are set at once (calls may nest)
        self._syncing = 0  # > 0 while the code (not the reader) moves the preset dropdown
        self._schedule: ProgressiveSchedule | None = None
        self.preset = preset
        self.predicted_seconds: float | None = None

        c = self.controls
        self.widget = _tag(_ExplorerBox([
            widgets.HBox([c["preset"], c["rule"], c["randaug_ops"], c["size_multiple"]]),
            widgets.HBox([
                widgets.VBox([c["total_epochs"], c["num_stages"], c["image_size_start"],
                              c["image_size_end"]]),
                widgets.VBox([c["dropout"], c["randaug"], c["mixup"]]),
            ]),
            self.error, self.table, self.summary, self.plot,
        ], self.PLAIN_TEXT), "schedule-explorer")

        self._apply_preset(preset, initial.total_epochs)
        c["preset"].observe(self._on_preset, names="value")
        c["size_multiple"].observe(lambda change: self._snap_sizes(change["new"]), names="value")
        for name, control in c.items():
            if name not in ("preset", "size_multiple"):
                control.observe(lambda change: self._update(), names="value")

    @property
    def schedule(self) -> ProgressiveSchedule:
        return self._schedule

    @property
    def preset_schedule(self) -> ProgressiveSchedule:
        """The chosen preset at the current N (at its own N when the current N is too small)."""
        try:
            return ProgressiveSchedule.from_preset(self.preset, self.controls["total_epochs"].value)
        except ValueError:
            return ProgressiveSchedule.from_preset(self.preset)

    # -------------------------------------------------------------------- the dropdown
    @staticmethod
    def _preset_options(preset: str) -> list[tuple[str, str]]:
        return [(name, name) for name in PRESETS] + [(custom_label(preset), CUSTOM_NAME)]

    def _show_in_dropdown(self, value: str, relabel: bool = False) -> None:
        """Select `value` in the preset dropdown without applying it (it describes the controls)."""
        dropdown = self.controls["preset"]
        self._syncing += 1
        try:
            if relabel:  # new options reset the selection, which is set right after
                dropdown.options = self._preset_options(self.preset)
            dropdown.value = value
        finally:
            self._syncing -= 1

    def _on_preset(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        if change["new"] == CUSTOM_NAME:  # "custom" chosen by hand: it says whether the controls match
            self._show_in_dropdown(CUSTOM_NAME if self._schedule is None or self._schedule.name == CUSTOM_NAME
                                   else self.preset)
            return
        self._apply_preset(change["new"])

    # -------------------------------------------------------------------- observers
    def _set_many(self, values: dict[str, Any], ranges: dict[str, tuple[int, int]] | None = None) -> None:
        """Set several controls (and slider ranges), then recompute once (not once per control)."""
        self._holding += 1
        try:
            for name, value in values.items():
                control = self.controls[name]
                if ranges and name in ranges:
                    # Range and value together: a value outside the old range is not clamped first.
                    with control.hold_trait_notifications():
                        control.min, control.max = ranges[name]
                        control.value = value
                else:
                    control.value = value
        finally:
            self._holding -= 1
        self._update()

    def _apply_preset(self, name: str, total_epochs: int | None = None) -> None:
        params = PRESETS[name]
        multiple = params.get("size_multiple", 1)
        n = params["total_epochs"] if total_epochs is None else total_epochs
        sizes = size_range(params["image_size"])
        self.preset = name
        self._holding += 1
        try:
            self._show_in_dropdown(name, relabel=True)
            self._set_step(multiple)
            self._set_many({
                "rule": params.get("rule", "paper"),
                "randaug_ops": params.get("randaug_ops", "automl" if params.get("rule") == "automl" else "torchvision"),
                "size_multiple": multiple,
                "total_epochs": n,
                "num_stages": params["num_stages"],
                "image_size_start": params["image_size"][0],
                "image_size_end": params["image_size"][1],
                "dropout": params.get("dropout", (0.0, 0.0)),
                "randaug": params.get("randaug", (0.0, 0.0)),
                "mixup": params.get("mixup", (0.0, 0.0)),
            }, ranges={"total_epochs": epoch_range(n), "image_size_start": sizes, "image_size_end": sizes})
        finally:
            self._holding -= 1
        self._update()

    def _set_step(self, multiple: int) -> None:
        for name in ("image_size_start", "image_size_end"):
            self.controls[name].step = multiple

    def _snap_sizes(self, multiple: int) -> None:
        """A new size multiple: slider steps follow it and S_0, S_e move to the nearest multiple."""
        self._set_step(multiple)
        self._set_many({name: max(MIN_IMAGE_SIZE, multiple * round(self.controls[name].value / multiple))
                        for name in ("image_size_start", "image_size_end")})

    def _params(self) -> dict[str, Any]:
        c = self.controls
        return dict(total_epochs=c["total_epochs"].value, num_stages=c["num_stages"].value,
                    image_size=(c["image_size_start"].value, c["image_size_end"].value),
                    dropout=tuple(c["dropout"].value), randaug=tuple(c["randaug"].value),
                    mixup=tuple(c["mixup"].value), size_multiple=c["size_multiple"].value,
                    rule=c["rule"].value, randaug_ops=c["randaug_ops"].value)

    def _update(self) -> None:
        """Rebuild the schedule from the controls; on invalid settings show why and keep the last."""
        if self._holding:
            return
        try:
            schedule = ProgressiveSchedule(**self._params(), name=self.preset)
        except (TypeError, ValueError) as error:
            self.error.value = _error_html(
                f"Not a valid schedule: {error}. Showing the last valid one.")
            self._show_in_dropdown(CUSTOM_NAME)
            return
        if not _is_preset(schedule, self.preset):
            schedule = ProgressiveSchedule(**self._params(), name=CUSTOM_NAME)
        self._show_in_dropdown(schedule.name)
        self.error.value = ""
        if schedule == self._schedule:
            return
        self._schedule = schedule
        stage_times = self._stage_times(schedule)
        self.table.value = _schedule_table_html(schedule, stage_times)
        self.summary.value = self._summary_html(schedule, stage_times)
        self._draw(schedule)
        self.plot.value = _png(self.figure, self.dpi)

    # -------------------------------------------------------------------- prediction
    def _stage_times(self, schedule: ProgressiveSchedule) -> list[float | None] | None:
        """Predicted seconds per stage (None for a stage out of the measured range), or None."""
        if self.images_per_s is None:
            return None
        times = []
        for stage in schedule.stages:
            try:
                rate = throughput_at(stage.image_size, self.images_per_s,
                                     max_extrapolation=self.max_extrapolation)
            except ValueError:
                times.append(None)
            else:
                times.append(stage.num_epochs * self.images_per_epoch / rate)
        return times

    def _seconds(self, schedule: ProgressiveSchedule) -> float:
        return predicted_seconds(schedule, self.images_per_s, self.images_per_epoch,
                                 max_extrapolation=self.max_extrapolation)

    def _summary_html(self, schedule: ProgressiveSchedule, stage_times: list[float | None] | None) -> str:
        n, s_end = schedule.total_epochs, schedule.image_size[1]
        flops = relative_flops(schedule)
        lines = [f"<b>Relative FLOPs</b>: {flops:.0%} of {n} epochs at {s_end} px (an epoch at "
                 f"<i>S<sub>i</sub></i> costs (<i>S<sub>i</sub></i> / <i>S<sub>e</sub></i>)&sup2; "
                 f"of one at <i>S<sub>e</sub></i>)."]
        self.predicted_seconds = None
        if stage_times is None:
            return "".join(f"<div>{line}</div>" for line in lines)
        low, high = measured_range(self.images_per_s)
        where = html.escape(self.hardware)
        if any(t is None for t in stage_times):
            outside = sorted({s.image_size for s, t in zip(schedule.stages, stage_times, strict=True) if t is None})
            lines.append(
                f"<b>Predicted training time</b>: not available: images/s was measured at {low}&ndash;{high} px "
                f"on {where}, and {', '.join(map(str, outside))} px lie too far outside that range to "
                f"extrapolate (measure there to predict).")
        else:
            self.predicted_seconds = sum(stage_times)
            fixed = n * self.images_per_epoch / throughput_at(s_end, self.images_per_s,
                                                              max_extrapolation=self.max_extrapolation)
            extrapolated = any(not low <= s.image_size <= high for s in schedule.stages)
            text = (f"<b>Predicted training time: {html.escape(format_minutes(self.predicted_seconds))} "
                    f"on {where}</b> ({self.images_per_epoch:,} images per epoch, network only; "
                    f"{self.predicted_seconds / fixed:.0%} of the {html.escape(format_minutes(fixed))} "
                    f"that {n} epochs at {s_end} px would take)")
            preset = self.preset_schedule
            if schedule.name == CUSTOM_NAME:
                try:
                    text += f"; preset {html.escape(self.preset)}: {html.escape(format_minutes(self._seconds(preset)))}"
                except ValueError:
                    pass
            text += "."
            if extrapolated:
                text += (f" Includes sizes outside the measured {low}&ndash;{high} px, extrapolated "
                         f"along the nearest measured sizes' trend.")
            lines.append(text)
        return "".join(f"<div>{line}</div>" for line in lines)

    # -------------------------------------------------------------------- the figure
    def _draw(self, schedule: ProgressiveSchedule) -> None:
        """plot_schedule of the schedule, the preset as a faint ghost line, legible fonts."""
        for ax in self._axes:
            ax.clear()
        plot_schedule({schedule.name: schedule}, axes=self._axes)
        ghost = self.preset_schedule
        edges = [s.start_epoch for s in ghost.stages] + [ghost.total_epochs]
        for ax, (attr, _, _) in zip(self._axes, SCHEDULE_PANELS, strict=True):
            values = [getattr(s, attr) for s in ghost.stages]
            ax.plot(edges, values + values[-1:], drawstyle="steps-post", color=GHOST_COLOR, alpha=0.5,
                    linewidth=6.0, solid_capstyle="butt", zorder=1.5, label=f"preset {self.preset}",
                    gid=GHOST_GID)
        for ax in self._axes:
            ax.title.set_fontsize(FONT_SIZE)
            ax.xaxis.label.set_fontsize(FONT_SIZE)
            ax.yaxis.label.set_fontsize(FONT_SIZE)
            ax.tick_params(labelsize=SMALL_FONT_SIZE)
            ax.yaxis.get_offset_text().set_fontsize(SMALL_FONT_SIZE)
            ax.xaxis.get_offset_text().set_fontsize(SMALL_FONT_SIZE)
            if ax.get_legend() is not None and ax is not self._axes[0]:  # the CutMix legend
                ax.legend(fontsize=SMALL_FONT_SIZE)
        self._axes[0].legend(fontsize=SMALL_FONT_SIZE, loc="lower right")  # sizes grow: empty there


def schedule_explorer(preset: str = "paper-s", *, total_epochs: int | None = None, dpi: int = 80,
                      images_per_s: Mapping[int, float] | None = None, images_per_epoch: int | None = None,
                      hardware: str = "this machine",
                      max_extrapolation: float = DEFAULT_MAX_EXTRAPOLATION) -> ScheduleExplorer:
    """An interactive progressive-learning schedule (Algorithm 1), starting from `preset`.

    preset is a name from effv2_lib.schedule.PRESETS (e.g. "paper-s", "automl-s", "cifar10");
    total_epochs overrides its N; dpi sets the plot's resolution. With images_per_s (training
    images/s measured per image size, {size_px: images/s}) and images_per_epoch, the explorer
    also predicts the training time of the schedule on the hardware named by `hardware`
    (see effv2_lib.timing.predicted_seconds; sizes more than max_extrapolation times outside
    the measured ones get no prediction). In a notebook:

        explorer = schedule_explorer("cifar10", images_per_s={16: 1000.0, 32: 290.0},
                                     images_per_epoch=50_000, hardware="my laptop")
        display(explorer)

    See ScheduleExplorer for the controls and state.
    """
    return ScheduleExplorer(preset, total_epochs=total_epochs, dpi=dpi, images_per_s=images_per_s,
                            images_per_epoch=images_per_epoch, hardware=hardware,
                            max_extrapolation=max_extrapolation)


# -------------------------------------------------------------------------- augmentation

def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 torch.Tensor [K, 3, H, W], got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [K, 3, H, W], got {images.dtype} {list(images.shape)}")
    if not 2 <= len(images) <= 12:
        raise ValueError(f"images must hold 2 to 12 images (Mixup pairs them up, more do not fit "
                         f"a row), got {len(images)}")
    if min(images.shape[-2:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"images must be at least {MIN_IMAGE_SIZE} px on each side, got "
                         f"{list(images.shape[-2:])}")
    return images.cpu()


class AugmentationExplorer(_Explorer):
    """RandAugment magnitude, Mixup alpha and image size applied to a few real images.

    Build it with `augmentation_explorer`. Three rows of the same K images: the originals,
    after resizing to the stage size and RandAugment at magnitude epsilon (paper scale, with
    torchvision's or automl's op table: effv2_lib.randaugment.TorchvisionRandAugment or
    AutomlRandAugment; 0 leaves RandAugment out, as train_transform does),
    and after Mixup at alpha (effv2_lib.augment.mixup_batch: image i mixed with image K-1-i,
    one lambda per image), titled with the soft label's two largest parts. A fixed seed
    (control ``seed``) keeps the ops and lambdas fixed while a slider moves, so what changes
    is the strength alone.

    Attributes: ``widget`` (to display), ``controls`` (``magnitude``, ``randaug_ops``, ``num_ops``,
    ``mixup_alpha``, ``image_size``, ``seed``; CSS classes effv2-<name>), ``augmented``
    (uint8 [K, 3, S, S] after RandAugment), ``mixed`` (float [K, 3, S, S] in [0, 1]),
    ``targets`` (int64 labels [K] when alpha is 0, else soft labels [K, num_classes]),
    ``plot`` (Image widget, effv2-augmentation-plot) and ``figure``. The widget's plain-text
    form is ``PLAIN_TEXT`` (what a viewer without widgets shows).
    """

    PLAIN_TEXT = "Augmentation explorer (interactive; run the notebook to use it)"

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                 classes: Sequence[str] | None = None, *, magnitude: float = 5.0,
                 mixup_alpha: float = 0.2, num_ops: int = 2, seed: int = 0, dpi: int = 80,
                 randaug_ops: str = "torchvision") -> None:
        self.images = _check_images(images)  # uint8 [K, 3, H, W]
        check_choice("randaug_ops", randaug_ops, RANDAUG_OP_TABLES)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must hold one label per image ({len(self.images)}), "
                             f"got shape {list(self.labels.shape)}")
        num_classes = len(classes) if classes is not None else int(self.labels.max()) + 1
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")
        self.classes = list(classes) if classes is not None else [str(k) for k in range(num_classes)]
        self.dpi = _check_dpi(dpi)
        height = min(self.images.shape[-2:])
        slider = dict(continuous_update=False, style=_DESCRIPTION_STYLE, layout=_SLIDER_LAYOUT)
        self.controls: dict[str, widgets.Widget] = {
            "magnitude": widgets.FloatSlider(value=magnitude, min=0.0, max=float(MAX_PAPER_LEVEL),
                                             step=0.5, readout_format=".1f",
                                             description="RandAug \u03b5", **slider),
            "randaug_ops": widgets.ToggleButtons(options=list(RANDAUG_OP_TABLES), value=randaug_ops,
                                                 description="op table", style=_DESCRIPTION_STYLE),
            "num_ops": widgets.IntSlider(value=num_ops, min=1, max=4, description="ops / image",
                                         **slider),
            "mixup_alpha": widgets.FloatSlider(value=mixup_alpha, min=0.0, max=MAX_MIXUP_ALPHA,
                                               step=0.05, description="Mixup \u03b1", **slider),
            "image_size": widgets.IntSlider(value=height, min=MIN_IMAGE_SIZE, max=height,
                                            description="size (px)", **slider),
            "seed": widgets.IntSlider(value=seed, min=0, max=99, description="seed", **slider),
        }
        for name, control in self.controls.items():
            _tag(control, name)
        self.plot = _tag(widgets.Image(format="png"), "augmentation-plot")
        k = len(self.images)
        self.figure = Figure(figsize=(1.4 * k + 1.8, 4.6), layout="constrained")
        self._axes = self.figure.subplots(3, k, squeeze=False)
        self.widget = _tag(_ExplorerBox([
            widgets.HBox([widgets.VBox([self.controls[n] for n in ("magnitude", "randaug_ops", "num_ops", "seed")]),
                          widgets.VBox([self.controls[n] for n in ("mixup_alpha", "image_size")])]),
            self.plot,
        ], self.PLAIN_TEXT), "augmentation-explorer")
        self._follow(list(self.controls.values()))

    def _update(self) -> None:
        c = {name: control.value for name, control in self.controls.items()}
        size = c["image_size"]
        images = self.images
        if size != min(images.shape[-2:]) or images.shape[-2] != images.shape[-1]:
            images = torch.nn.functional.interpolate(
                images.float(), size=(size, size), mode="bilinear", antialias=True,
                align_corners=False).round().clamp(0, 255).to(torch.uint8)  # [K, 3, S, S]
        with torch.random.fork_rng(devices=[]):  # RandAugment draws from the global generator
            torch.manual_seed(c["seed"])
            if c["magnitude"] > 0:
                augment = RANDAUGMENTS[c["randaug_ops"]](c["magnitude"], num_ops=c["num_ops"])
                images = torch.stack([augment(image) for image in images])
        self.augmented = images  # uint8 [K, 3, S, S]
        generator = torch.Generator().manual_seed(c["seed"])
        self.mixed, self.targets = mixup_batch(images.float() / 255, self.labels, c["mixup_alpha"],
                                               len(self.classes), generator=generator)
        randaug_label = (f"RandAugment ({c['randaug_ops']})\n\u03b5 = {c['magnitude']:g}, {c['num_ops']} ops"
                         if c["magnitude"] > 0 else "no RandAugment\n(\u03b5 = 0)")
        mixup_label = f"+ Mixup\n\u03b1 = {c['mixup_alpha']:g}" if c["mixup_alpha"] > 0 \
            else "no Mixup\n(\u03b1 = 0)"
        for ax in self._axes.flat:
            ax.clear()
        plot_image_grid({"original": self.images, f"{size} px,\n{randaug_label}": self.augmented,
                         mixup_label: self.mixed}, axes=self._axes)
        for column in range(len(self.images)):
            self._axes[0, column].set_title(self.classes[int(self.labels[column])], fontsize=10)
            self._axes[2, column].set_title(self._soft_label(column), fontsize=9)
        self.plot.value = _png(self.figure, self.dpi)

    def _soft_label(self, index: int) -> str:
        if self.targets.ndim == 1:  # alpha = 0: hard labels
            return self.classes[int(self.targets[index])]
        weights = self.targets[index]
        top = torch.topk(weights, k=min(2, len(weights)))
        return "\n".join(f"{float(w):.2f} {self.classes[int(i)]}"
                         for w, i in zip(top.values, top.indices, strict=True) if float(w) >= 0.005)


def augmentation_explorer(images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                          classes: Sequence[str] | None = None, *, magnitude: float = 5.0,
                          mixup_alpha: float = 0.2, num_ops: int = 2, seed: int = 0,
                          dpi: int = 80, randaug_ops: str = "torchvision") -> AugmentationExplorer:
    """RandAugment and Mixup on 2 to 12 real images, with sliders (see AugmentationExplorer).

    images: uint8 [K, 3, H, W] (e.g. ``data.train.images[:8]``); labels: [K] class indices;
    classes: the class names. In a notebook:

        explorer = augmentation_explorer(data.train.images[:8], data.train.labels[:8], data.classes)
        display(explorer.widget)
    """
    return AugmentationExplorer(images, labels, classes, magnitude=magnitude, mixup_alpha=mixup_alpha,
                                num_ops=num_ops, seed=seed, dpi=dpi, randaug_ops=randaug_ops)


# ------------------------------------------------------------------------------ search reward

MAX_REWARD_EXPONENT = 1.0  # |w|, |v| up to 1: the paper's 0.07 and 0.05 are near the left end


class RewardExplorer(_Explorer):
    """The search's reward A * S^w * P^v (Section 3.3) with w and v on sliders, over a finished
    search (`effv2_lib.search`): the ranking is redone from the stored A, S and P at every move.

    Build it with `reward_explorer`. The figure shows every network as a point (step time against
    accuracy), the front no network beats on both, cifar-tiny, and the current winner; the table
    lists the best five with their stage codes, and the line under it says where cifar-tiny
    ranks and what the winner changes in each stage. w = v = 0 ranks by accuracy alone; the more
    negative w, the more a fast network is worth.

    Attributes: ``widget`` (to display), ``controls`` (``w``, ``v``; CSS classes effv2-<name>),
    ``ranked`` (the records, best reward first, each with its ``reward``), ``winner`` (its name),
    ``plot`` (Image widget, effv2-reward-plot), ``table`` (HTML widget, effv2-reward-table) and
    ``figure``. Plain text: ``PLAIN_TEXT``.
    """

    PLAIN_TEXT = "Reward explorer (interactive; run the notebook to use it)"

    def __init__(self, search: Mapping[str, Any], *, w: float = REWARD_W, v: float = REWARD_V, top: int = 5,
                 dpi: int = 80) -> None:
        if not isinstance(search, Mapping) or not search.get("reference") or not search.get("candidates"):
            raise ValueError("search must be a finished search (effv2_lib.search.load_search): a reference and "
                             "at least one candidate")
        self.search, self.top, self.dpi = search, check_int("top", top, 1), _check_dpi(dpi)
        self.front = pareto_front([search["reference"], *search["candidates"]])  # does not depend on w, v
        slider = dict(min=-MAX_REWARD_EXPONENT, max=0.0, step=0.01, readout_format=".2f", continuous_update=False,
                      style=_DESCRIPTION_STYLE, layout=_SLIDER_LAYOUT)
        self.controls: dict[str, widgets.Widget] = {
            "w": widgets.FloatSlider(value=check_real("w", w, -MAX_REWARD_EXPONENT, 0.0),
                                     description="w (time)", **slider),
            "v": widgets.FloatSlider(value=check_real("v", v, -MAX_REWARD_EXPONENT, 0.0),
                                     description="v (size)", **slider),
        }
        for name, control in self.controls.items():
            _tag(control, name)
        self.plot = _tag(widgets.Image(format="png"), "reward-plot")
        self.table = _tag(widgets.HTML(), "reward-table")
        self.figure = Figure(figsize=(7.5, 4.6), layout="constrained")
        self._ax = self.figure.subplots()
        self.widget = _tag(_ExplorerBox([widgets.VBox(list(self.controls.values())), self.table, self.plot],
                                        self.PLAIN_TEXT), "reward-explorer")
        self._follow(list(self.controls.values()))

    def _update(self) -> None:
        w, v = self.controls["w"].value, self.controls["v"].value
        self.ranked = rank(self.search, w=w, v=v)
        self.winner = self.ranked[0]["name"]
        reference = self.search["reference"]["name"]
        self._ax.clear()
        for legend in self.figure.legends:
            legend.remove()
        plot_search(self.ranked, front=self.front, reference=reference, winner=self.winner, ax=self._ax,
                    title=f"Best reward at w = {w:.2f}, v = {v:.2f}")
        self.plot.value = _png(self.figure, self.dpi)
        self.table.value = self._table_html(reference)

    def _table_html(self, reference: str) -> str:
        rows = "".join(
            f"<tr><td>{place}</td><td><code>{html.escape(r['name'])}</code>"
            f"{' (cifar-tiny)' if r['name'] == reference else ''}"
            f"</td><td>{r['accuracy']:.1%}</td><td>{1000 * r['step_time_s']:.0f}</td>"
            f"<td>{r['params'] / 1e6:.2f}</td><td>{r['reward']:.4f}</td></tr>"
            for place, r in enumerate(self.ranked[:self.top], 1))
        place = next(i for i, r in enumerate(self.ranked, 1) if r["name"] == reference)
        changes = [f"stage {i}: {ours.code} → {theirs.code}" for i, (ours, theirs) in enumerate(zip(
            Candidate.from_name(reference).stages, Candidate.from_name(self.winner).stages, strict=True), 1)
            if ours != theirs]
        against = "; ".join(changes) if changes else "it is cifar-tiny"
        return ("<table><tr><th>rank</th><th>network</th><th>A</th><th>S (ms)</th><th>P (M)</th><th>reward</th></tr>"
                f"{rows}</table><p>cifar-tiny ranks {place} of {len(self.ranked)}. The winner against cifar-tiny: "
                f"{html.escape(against)}.</p>")


def reward_explorer(search: Mapping[str, Any], *, w: float = REWARD_W, v: float = REWARD_V, top: int = 5,
                    dpi: int = 80) -> RewardExplorer:
    """Sliders for the reward's exponents over a finished search (see RewardExplorer). In a notebook:

        explorer = reward_explorer(load_search("results/cpu-cifar10-search"))
        display(explorer.widget)
    """
    return RewardExplorer(search, w=w, v=v, top=top, dpi=dpi)
