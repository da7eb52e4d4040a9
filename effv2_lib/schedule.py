"""Progressive learning with adaptive regularization.

Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training", Section 4
("Progressive Learning"), Algorithm 1. Training runs for N epochs split into M
stages. Stage i (i = 0 .. M-1) trains at image size S_i with regularization
magnitudes Phi_i = {phi_i^k}, and both grow linearly from a start value to an
end value:

    S_i   = S_0   + (S_e   - S_0)   * i / (M - 1)
    Phi_i = Phi_0 + (Phi_e - Phi_0) * i / (M - 1)

The regularizers are the head's dropout rate (gamma), the RandAugment magnitude
(epsilon) and the Mixup ratio (lambda, used here as the Beta(alpha, alpha)
parameter). Small images early train fast and need little regularization; the
final stage trains at the largest size with the strongest regularization. The
paper (Section 5.1) trains N = 350 epochs in M = 4 stages, about 87 epochs each.

Two rules are implemented:

``rule="paper"`` is Algorithm 1's interpolation, counted in whole epochs: the
first stage is at S_0, the last at S_e. The paper counts stages in training
steps; here stage lengths differ by at most one epoch and, when M does not
divide N, the extra epochs go to the *first* stages (N = 10, M = 4 gives 3, 3,
2, 2 epochs), which are the cheapest because their images are smallest. That
placement is our choice, not the paper's.

``rule="automl"`` is what the official TensorFlow code (google/automl,
efficientnetv2) does, which departs from the paper in three places:

* stage i trains at ``int(S_0 + (S_e - S_0) * (i + 1) / M)`` (``main.py``): S_0
  (the code's ``data.ibase``, 128 on ImageNet) is never used, so V2-S trains at
  171, 214, 257, 300 px instead of 128, 185, 243, 300;
* stage boundaries are at epoch ``int(i / M * N)`` as ``main_tf2.py`` cuts them,
  so the longer stages are spread out instead of coming first (``main.py`` cuts
  in training steps, at ``int((i + 1) / M * steps)``, which at epoch granularity
  is the same rule);
* the dropout ramp ``linspace(0, rate, M)`` is computed in ``main.py`` and then
  deleted: the model keeps its configured rate throughout. So this rule holds
  dropout at the final value gamma_e in every stage, whatever gamma_0 says.

Two more differences are not in the stage rule itself, so they are schedule
fields whose defaults follow the rule:

* ``cutmix``: the configs of V2-M and V2-L set ``cutmix_alpha`` equal to
  ``mixup_alpha`` (V2-S has neither), main.py ramps it over the stages exactly
  like Mixup, and datasets.py (``mixing``) then gives the first half of each
  batch Mixup and the second half CutMix. Under ``rule="automl"`` the CutMix pair
  defaults to the Mixup pair; under the paper's rule to (0, 0), since the paper
  does not mention CutMix.
* ``randaug_ops``: which RandAugment op table the magnitude drives, "automl"
  (autoaugment.py's 16 ops and formulas) under the automl rule, "torchvision"
  (torchvision's ops on the paper's level scale) otherwise; see effv2_lib.randaugment.

The official code's endpoints also differ from Table 6: RandAugment ends at 10 / 15 / 20
for S / M / L instead of 15 / 20 / 25 and dropout is the model's 0.2 / 0.3 / 0.4 instead
of 0.3 / 0.4 / 0.5 (users have asked about both, automl issue 1175); V2-L's Mixup ends at
0.5 instead of 0.4 (``hparams.py``); and V2-M and V2-L train up to 384 px instead of 380
(``effnetv2_configs.py``). The ``automl-*`` presets use the code's values.

Which RandAugment op table reads the magnitudes: Table 6's magnitudes are levels of the
official code's RandAugment (autoaugment.py), so the ``paper-*`` presets read them with that
table (``randaug_ops="automl"``), like the ``automl-*`` presets. torchvision's table stretched
past level 10 (our extension) caps its colour factors 1 +- m at m = 0.99, where Brightness and
Contrast with the negative sign turn an image black or flat grey: with it, paper-s's stages 2
and 3 (levels 11.7 and 15) made 9.7% of the bundled sample's 2,500 images flat (pixel standard
deviation below 2 grey levels), against at most 1.2% flat black or grey with automl's table at
any paper-* stage. automl's table does whiten some images, as the official code does: its
Brightness factor is 3.7 at level 20 and 4.6 at level 25, and after SolarizeAdd's +275 it
turns any image white; at paper-l's last stage (level 25) 1.4% of the sample came out flat
white. (``test_no_stage_of_the_paper_or_cifar_presets_makes_flat_images`` measures this.) The
CIFAR presets stay at levels 2 to 8, inside torchvision's own range, and use torchvision's
table (the rule's default). ``ProgressiveSchedule.table`` names the table in its title.

With M = 1 both rules give ordinary fixed-size training at S_e with the final
regularization. (The official code trains without stages when ``train.stages`` is
0; with 1 stage its ``linspace(5, max, 1)`` would pick the *start* magnitude, a
corner case not reproduced here.)

RandAugment magnitudes are on the paper's scale, the TensorFlow RandAugment
level where 10 is the nominal maximum distortion (so the paper's 15 is 1.5x
that); ``effv2_lib.randaugment`` reads it with either op table.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ._checks import check_choice, check_int, check_real

__all__ = ["Stage", "ProgressiveSchedule", "PRESETS", "RULES"]

RULES = ("paper", "automl")
RANDAUG_OP_TABLES = ("torchvision", "automl")  # effv2_lib.randaugment implements each
MIN_IMAGE_SIZE = 8  # px; smaller inputs leave nothing for a stride-8 network to see
MAX_RANDAUG = 30.0  # the range RandAugment's own magnitude sweep covers (paper scale)


@dataclass(frozen=True)
class Stage:
    """One stage of a progressive schedule: epochs [start_epoch, end_epoch)."""

    index: int  # i, 0 .. M-1
    start_epoch: int  # first epoch of the stage
    end_epoch: int  # one past the last epoch of the stage (exclusive)
    image_size: int  # S_i, side of the square training image in px
    dropout: float  # gamma_i, dropout rate before the classifier
    randaug_magnitude: float  # epsilon_i, RandAugment magnitude (paper / TF scale)
    mixup_alpha: float  # lambda_i, Mixup Beta(alpha, alpha) parameter; 0 = off
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha) parameter (automl's M and L); 0 = off
    randaug_ops: str = "torchvision"  # RandAugment op table, one of RANDAUG_OP_TABLES

    @property
    def num_epochs(self) -> int:
        return self.end_epoch - self.start_epoch


# Presets as data: keyword arguments of ProgressiveSchedule, total_epochs included.
PRESETS: dict[str, dict[str, Any]] = {
    # Paper Table 6 (min -> max per model), M = 4 stages, N = 350 epochs (Section 5.1). The
    # RandAugment magnitudes are levels of the official code's RandAugment, so they are read
    # with its op table (module docstring).
    "paper-s": dict(total_epochs=350, num_stages=4, image_size=(128, 300),
                    dropout=(0.1, 0.3), randaug=(5, 15), mixup=(0, 0), randaug_ops="automl"),
    "paper-m": dict(total_epochs=350, num_stages=4, image_size=(128, 380),
                    dropout=(0.1, 0.4), randaug=(5, 20), mixup=(0, 0.2), randaug_ops="automl"),
    "paper-l": dict(total_epochs=350, num_stages=4, image_size=(128, 380),
                    dropout=(0.1, 0.5), randaug=(5, 25), mixup=(0, 0.4), randaug_ops="automl"),
    # Official code (google/automl efficientnetv2: effnetv2_configs.py, hparams.py,
    # main.py): train sizes 300 / 384 / 384 from ibase 128, RandAugment
    # linspace(5, 10 / 15 / 20, M), Mixup linspace(0, 0 / 0.2 / 0.5, M), dropout
    # held at the model's 0.2 / 0.3 / 0.4 (its ramp is computed, then deleted; the
    # rule itself holds it, these pairs only say so). The rule also gives them
    # CutMix = Mixup and automl's RandAugment op table (see the module docstring).
    "automl-s": dict(total_epochs=350, num_stages=4, image_size=(128, 300),
                     dropout=(0.2, 0.2), randaug=(5, 10), mixup=(0, 0), rule="automl"),
    "automl-m": dict(total_epochs=350, num_stages=4, image_size=(128, 384),
                     dropout=(0.3, 0.3), randaug=(5, 15), mixup=(0, 0.2), rule="automl"),
    "automl-l": dict(total_epochs=350, num_stages=4, image_size=(128, 384),
                     dropout=(0.4, 0.4), randaug=(5, 20), mixup=(0, 0.5), rule="automl"),
    # CIFAR (32 px). Not from the paper: our own scaling of Table 6, to be checked
    # against the fixed-size baselines below.
    # * Sizes 16 -> 32 px in multiples of 4 (16, 20, 28, 32). The ratio S_0/S_e = 0.5
    #   is close to the paper's 128/300 = 0.43 and an epoch of the first stage costs
    #   about a quarter of a 32 px epoch; 16 px is still recognisable, below it the
    #   objects are a few pixels wide.
    # * Milder regularization than ImageNet. A 32 px image carries far less
    #   information than a 300 px one, and a network of a few million parameters on
    #   50k images for tens of epochs underfits before it overfits; RandAugment's own
    #   study found the best magnitude grows with model and dataset size. So
    #   RandAugment ends at 6 (V2-S: 15), Mixup at a gentle 0.1 (V2-S uses none,
    #   V2-M 0.2) and head dropout at 0.2 (V2-S: 0.3), each starting low as in
    #   Table 6.
    # * CIFAR-100 has other images of the same size and number, in 100 classes of
    #   500 training images instead of 10 of 5,000, so models overfit it sooner:
    #   each regularizer ends a step higher (RandAugment 8, Mixup 0.2, dropout 0.3).
    # * 40 epochs: a budget for a GPU (not yet measured on one); the paper's 350 is
    #   for ImageNet. Pass total_epochs to change it.
    "cifar10": dict(total_epochs=40, num_stages=4, image_size=(16, 32), size_multiple=4,
                    dropout=(0.0, 0.2), randaug=(2, 6), mixup=(0, 0.1)),
    "cifar100": dict(total_epochs=40, num_stages=4, image_size=(16, 32), size_multiple=4,
                     dropout=(0.1, 0.3), randaug=(2, 8), mixup=(0, 0.2)),
}
# Fixed-size baselines: one stage at 32 px with the final regularization of the
# progressive preset, i.e. what the progressive run is compared against.
PRESETS["cifar10-fixed"] = dict(PRESETS["cifar10"], num_stages=1)
PRESETS["cifar100-fixed"] = dict(PRESETS["cifar100"], num_stages=1)


def _check_pair(name: str, value: Any) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list)):
        raise TypeError(
            f"{name} must be a pair (start, end), got {type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair (start, end), got {len(value)} values: {value!r}")
    return value[0], value[1]


def _check_real_pair(name: str, value: Any, low: float, high: float, allowed: str) -> tuple[float, float]:
    """A (start, end) pair of finite numbers in [low, high] (described by allowed)."""
    start, end = _check_pair(name, value)
    return (check_real(f"{name}[0]", start, low, high, allowed=allowed),
            check_real(f"{name}[1]", end, low, high, allowed=allowed))


def _round_to_multiple(x: float, multiple: int) -> int:
    # Half-up rounding: Python's round() rounds halves to even, so with multiple 4
    # both 22 px and 26 px would become 24 px, which is surprising in a table.
    return multiple * math.floor(x / multiple + 0.5)


def _interpolate(start: float, end: float, i: int, num_stages: int) -> float:
    """Phi_i = Phi_0 + (Phi_e - Phi_0) * i / (M - 1), with both endpoints exact."""
    if num_stages == 1 or i == num_stages - 1:  # M = 1: train at the final values
        return end
    return start + (end - start) * i / (num_stages - 1)


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Algorithm 1: N = total_epochs in M = num_stages stages.

    image_size, dropout, randaug and mixup are (start, end) pairs: (S_0, S_e),
    (gamma_0, gamma_e), (epsilon_0, epsilon_e), (alpha_0, alpha_e). Sizes are
    rounded to the nearest multiple of size_multiple (S_0 and S_e must be
    multiples themselves, so the endpoints stay exact); regularizers stay
    unrounded floats. M = 1 is ordinary fixed-size training at S_e with the final
    regularization. rule is "paper" (Algorithm 1) or "automl" (the official
    code's variant, see the module docstring). name labels tables and plots.
    cutmix and randaug_ops default to what the rule implies: (0, 0) and
    "torchvision" for the paper, the Mixup pair and "automl" for automl.
    """

    total_epochs: int  # N
    num_stages: int  # M
    image_size: tuple[int, int]  # (S_0, S_e), px
    dropout: tuple[float, float] = (0.0, 0.0)  # (gamma_0, gamma_e), in [0, 1)
    randaug: tuple[float, float] = (0.0, 0.0)  # (epsilon_0, epsilon_e), in [0, 30]
    mixup: tuple[float, float] = (0.0, 0.0)  # (alpha_0, alpha_e), >= 0
    size_multiple: int = 1
    rule: str = "paper"
    name: str = ""
    cutmix: tuple[float, float] | None = None  # CutMix (alpha_0, alpha_e); None: the rule's default
    randaug_ops: str | None = None  # "torchvision" or "automl"; None: the rule's default
    stages: tuple[Stage, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = check_int("total_epochs", self.total_epochs, 1)
        m = check_int("num_stages", self.num_stages, 1)
        if n < m:
            raise ValueError(
                f"total_epochs must be >= num_stages (every stage needs at least one epoch), "
                f"got total_epochs={n}, num_stages={m}")
        multiple = check_int("size_multiple", self.size_multiple, 1)
        start_size, end_size = _check_pair("image_size", self.image_size)
        sizes = (check_int("image_size[0] (px)", start_size, MIN_IMAGE_SIZE),
                 check_int("image_size[1] (px)", end_size, MIN_IMAGE_SIZE))
        if any(s % multiple for s in sizes):
            raise ValueError(
                f"image_size endpoints must be multiples of size_multiple={multiple}, "
                f"got {self.image_size!r}")
        # [0, largest float below 1] is [0, 1): check_real takes a closed interval.
        dropout = _check_real_pair("dropout", self.dropout, 0.0, math.nextafter(1.0, 0.0), "in [0, 1)")
        randaug = _check_real_pair("randaug", self.randaug, 0.0, MAX_RANDAUG, f"in [0, {MAX_RANDAUG:g}]")
        mixup = _check_real_pair("mixup", self.mixup, 0.0, math.inf, "a finite number >= 0")
        check_choice("rule", self.rule, RULES)
        automl = self.rule == "automl"
        cutmix = _check_real_pair("cutmix", self.cutmix if self.cutmix is not None else
                                  (mixup if automl else (0.0, 0.0)), 0.0, math.inf, "a finite number >= 0")
        randaug_ops = check_choice("randaug_ops", self.randaug_ops if self.randaug_ops is not None else
                                   ("automl" if automl else "torchvision"), RANDAUG_OP_TABLES)
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__} {self.name!r}")

        # Store the normalized values (plain ints / floats, tuples) so that equality
        # and the JSON round trip do not depend on how the arguments were spelled.
        set_field = object.__setattr__  # frozen dataclass: fields are set once, here
        for key, value in dict(total_epochs=n, num_stages=m, size_multiple=multiple,
                               image_size=sizes,
                               dropout=dropout, randaug=randaug, mixup=mixup, cutmix=cutmix,
                               randaug_ops=randaug_ops).items():
            set_field(self, key, value)
        set_field(self, "stages", self._build_stages())

    def _build_stages(self) -> tuple[Stage, ...]:
        n, m = self.total_epochs, self.num_stages
        (s0, se), step = self.image_size, self.size_multiple
        if self.rule == "paper":
            # Stage lengths floor(N/M) or floor(N/M) + 1, the longer ones first.
            base, extra = divmod(n, m)
            starts = [i * base + min(i, extra) for i in range(m + 1)]
            sizes = [_round_to_multiple(_interpolate(s0, se, i, m), step) for i in range(m)]
        else:
            # Official code: boundaries int(i / M * N) (computed exactly here), and
            # S_i = int(ibase + (S_e - ibase) * (i + 1) / M) with ibase = S_0.
            starts = [i * n // m for i in range(m + 1)]
            sizes = [_round_to_multiple(int(s0 + (se - s0) * float(i + 1) / float(m)), step)
                     for i in range(m)]
        # automl: the dropout ramp is computed, then never applied (main.py): gamma_e throughout
        dropout_start = self.dropout[0] if self.rule == "paper" else self.dropout[1]
        return tuple(
            Stage(index=i, start_epoch=starts[i], end_epoch=starts[i + 1], image_size=sizes[i],
                  dropout=_interpolate(dropout_start, self.dropout[1], i, m),
                  randaug_magnitude=_interpolate(*self.randaug, i, m),
                  mixup_alpha=_interpolate(*self.mixup, i, m),
                  cutmix_alpha=_interpolate(*self.cutmix, i, m), randaug_ops=self.randaug_ops)
            for i in range(m))

    # ----------------------------------------------------------------------------- queries
    def at(self, epoch: int) -> Stage:
        """The stage that trains epoch `epoch` (0-based, 0 <= epoch < total_epochs)."""
        epoch = check_int("epoch", epoch, 0)
        if epoch >= self.total_epochs:
            raise ValueError(
                f"epoch must be in [0, {self.total_epochs}) for this {self.total_epochs}-epoch "
                f"schedule, got {epoch}")
        starts = [stage.start_epoch for stage in self.stages]
        return self.stages[bisect.bisect_right(starts, epoch) - 1]

    def table(self) -> str:
        """The stages as a plain-text table (regularizers rounded for display only)."""
        title = f"{self.name or 'schedule'}: {self.total_epochs} epochs in {self.num_stages} " \
                f"stage{'s' if self.num_stages > 1 else ''} (rule: {self.rule})"
        title += f", {self.randaug_ops} RandAugment ops"  # which table reads the magnitudes
        with_cutmix = any(s.cutmix_alpha for s in self.stages)  # a column only when it is on
        header = ("stage", "epochs", "n", "size px", "dropout", "RandAug", "Mixup a") + (
            ("CutMix a",) if with_cutmix else ())
        rows = [(str(s.index), f"{s.start_epoch}-{s.end_epoch - 1}", str(s.num_epochs),
                 str(s.image_size), f"{s.dropout:.3f}", f"{s.randaug_magnitude:.2f}",
                 f"{s.mixup_alpha:.3f}") + ((f"{s.cutmix_alpha:.3f}",) if with_cutmix else ())
                for s in self.stages]
        widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
                 for row in [header, *rows]]
        return "\n".join([title, *lines])

    # --------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments plus the derived stages (for logs); JSON-ready."""
        params = {key: getattr(self, key) for key in _PARAM_NAMES}
        for key in _PAIR_NAMES:
            params[key] = list(params[key])
        params["stages"] = [asdict(stage) for stage in self.stages]
        return params

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgressiveSchedule:
        """Inverse of to_dict. A "stages" entry, if present, must match the recomputed stages."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        unknown = set(data) - set(_PARAM_NAMES) - {"stages"}
        if unknown:
            raise ValueError(
                f"unknown schedule keys {sorted(unknown)}; "
                f"allowed: {list(_PARAM_NAMES)} + ['stages']")
        params = {key: value for key, value in data.items() if key != "stages"}
        for key in _PAIR_NAMES:
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        if "stages" in data and "cutmix" not in data:
            # written before CutMix and the op tables were fields: it trained without CutMix and
            # with torchvision's ops, whatever the rule's defaults are now
            params.update(cutmix=(0.0, 0.0), randaug_ops="torchvision")
        schedule = cls(**params)
        stored = [{**_STAGE_ADDITIONS, **stage} if isinstance(stage, dict) else stage
                  for stage in data.get("stages", [])]
        if "stages" in data and stored != [asdict(s) for s in schedule.stages]:
            raise ValueError(
                "the stored stages differ from those the parameters give; the data was edited "
                "or written by a different version of this rule")
        return schedule

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ProgressiveSchedule:
        return cls.from_dict(json.loads(text))

    # -------------------------------------------------------------------- constructors
    @classmethod
    def from_preset(cls, name: str, total_epochs: int | None = None) -> ProgressiveSchedule:
        """A named schedule from PRESETS, optionally with another number of epochs."""
        if name not in PRESETS:
            raise ValueError(f"unknown schedule preset {name!r}; known presets: {sorted(PRESETS)}")
        params = dict(PRESETS[name], name=name)
        if total_epochs is not None:
            params["total_epochs"] = total_epochs
        return cls(**params)

    @classmethod
    def fixed(cls, total_epochs: int, image_size: int, dropout: float = 0.0,
              randaug: float = 0.0, mixup: float = 0.0, name: str = "", *, cutmix: float = 0.0,
              randaug_ops: str = "torchvision") -> ProgressiveSchedule:
        """Ordinary training: one stage at a fixed size and fixed regularization (M = 1)."""
        return cls(total_epochs=total_epochs, num_stages=1, image_size=(image_size, image_size),
                   dropout=(dropout, dropout), randaug=(randaug, randaug), mixup=(mixup, mixup),
                   name=name, cutmix=(cutmix, cutmix), randaug_ops=randaug_ops)


_PARAM_NAMES = ("total_epochs", "num_stages", "image_size", "dropout", "randaug", "mixup",
                "size_multiple", "rule", "name", "cutmix", "randaug_ops")
_PAIR_NAMES = ("image_size", "dropout", "randaug", "mixup", "cutmix")
# Stage fields added after schedules were first stored, with the values those schedules trained with
_STAGE_ADDITIONS = {"cutmix_alpha": 0.0, "randaug_ops": "torchvision"}
