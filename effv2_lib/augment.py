"""Per-stage regularization for progressive learning (Tan & Le 2021, Section 4.2).

EfficientNetV2's adaptive regularization (Section 4.2, Algorithm 1) strengthens three
regularizers together with the image size: dropout rate gamma, RandAugment magnitude epsilon
and Mixup ratio lambda. A schedule `Stage` (effv2_lib.schedule) carries one value of each;
this module turns them into

* a per-sample CPU transform, `train_transform(stage)` (crop, flip, resize to the stage size,
  RandAugment at the stage magnitude, normalization), and `eval_transform(size)`;
* `mixup_batch(images, labels, alpha, ...)`, Mixup on a batch at the stage alpha;
* `set_dropout(model, rate)`, the head dropout at the stage rate;
* `batched_rand_augment(images, level, ...)`, RandAugment on a batch on its device with each
  image's own ops (torchvision's RandAugment gives a whole batch the same ops);
* `DeviceLoader`, the GPU-resident path: the whole uint8 data set on the device, crop, flip,
  resize, RandAugment, normalization and Mixup done batched there, with per-sample randomness.

RandAugment magnitude, paper scale -> torchvision's ops
-------------------------------------------------------
The paper's magnitudes (Table 6: 5 -> 15 for S, up to 25 for L) are levels of the TensorFlow
RandAugment of the official code (google/automl, efficientnetv2/autoaugment.py), where level
10 (``_MAX_LEVEL``) is the nominal maximum, so 15 and 25 lie past it. This module does not
reproduce that code's ops. It uses torchvision's RandAugment ops and ranges, reading a paper
level m as torchvision bin round(3 * m) out of 31 (bin 30 = the end of torchvision's range):

    bin = round(3 * m_paper)         (`randaug_to_torchvision`, BINS_PER_LEVEL = 3)

For Rotate (3 degrees per level) and Shear (0.03 per level) torchvision's range is automl's, so
there the level means the same thing. For the others it does not: in autoaugment.py
Brightness, Color, Contrast and Sharpness use a factor 0.1 + 1.8 * level / 10 with no random
sign (level 5 is the identity), Posterize keeps int(0.4 * level) bits (milder as the level
rises), Solarize's threshold is 25.6 * level (no effect from level 10 on), Translate moves an
absolute number of pixels, and the op list has 16 entries (with Invert, Cutout and SolarizeAdd,
without Identity). torchvision's ops grow stronger with the level throughout, which is the
behaviour the paper's argument (stronger regularization for larger images) relies on.
Bins above 30 need ranges torchvision does not have, so `PaperRandAugment` subclasses
torchvision's RandAugment with its magnitude table continued linearly past bin 30 (our
extension, not the TF code's) up to level `MAX_PAPER_LEVEL` = 30 (91 bins). Where a continued value stops being a
valid or meaningful op it is capped (`_LEVEL_LIMITS`): colour factors 1 +- m keep m <= 0.99 so
the factor stays positive, posterize keeps at least 1 bit, the solarize threshold stops at 0,
and translation stops at half the image side. None of the caps binds at level <= 10, so there
`PaperRandAugment` is torchvision's RandAugment at ``magnitude=round(3 * m)``,
``num_magnitude_bins=31`` (the tests check this pixel for pixel). Clipping at 10 was the
alternative; it would make the paper's last two stages identical.

Magnitude 0 is an exact no-op: `train_transform` then leaves RandAugment out (and
`batched_rand_augment` returns its input), because torchvision's RandAugment at magnitude 0
still applies the magnitude-free ops (AutoContrast, Equalize).

Mixup: per-sample lambdas, as the official code
-----------------------------------------------
`mixup_batch` draws one lambda_i ~ Beta(alpha, alpha) per sample, folds it to
max(lambda_i, 1 - lambda_i) so each sample keeps its own label as the larger part, and mixes
sample i with sample B-1-i (the batch reversed). This is what the official EfficientNetV2
code does (google/automl, efficientnetv2/datasets.py, ``mixup``); torchvision's ``v2.MixUp``
instead draws one lambda for the whole batch, mixes with the batch rolled by one, and uses the
global random state. Per-sample lambdas cost nothing extra on the GPU path, and an explicit
``torch.Generator`` makes them reproducible. Alpha 0 is an exact no-op: images untouched,
targets stay int64 labels.

CPU path and GPU path
---------------------
Both apply the same steps in the same order: crop and flip at 32 px, resize to the stage size
(uint8), RandAugment at the stage magnitude (uint8, at the stage size), scale and normalize,
Mixup. On the CPU, `train_transform` runs per image in DataLoader workers and `mixup_batch` on
the collated batch. At CIFAR's 16-32 px that path is the bottleneck long before the model is
(the speed records keep CIFAR on the GPU for this reason), so `DeviceLoader` does every step
batched on the device. RandAugment is the one step that does not batch directly, since every
image draws its own ops: `batched_rand_augment` draws them per image, then applies each op to
the group of images that drew it (the same op table as `PaperRandAugment`), so the stage
magnitude of adaptive regularization (Section 4.2) holds on either path. Its price is host
work and, on CUDA, host-device syncs (see its docstring); ``python -m effv2_lib.bench_data``
shows both paths with and without RandAugment.
"""

import math
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ._checks import check_int, check_real
from .data import CIFAR10_MEAN, CIFAR10_STD

CIFAR_SIZE = 32
TF_MAX_LEVEL = 10            # TF RandAugment's nominal maximum level (the paper's scale)
TORCHVISION_BINS = 31        # torchvision's default num_magnitude_bins; bin 30 == TF level 10
BINS_PER_LEVEL = (TORCHVISION_BINS - 1) // TF_MAX_LEVEL     # 3
MAX_PAPER_LEVEL = 30         # highest level PaperRandAugment accepts (paper-L stops at 25)
DEFAULT_PADDING = 4          # random-crop padding at 32 px, reflected (see DeviceLoader)
RANDAUG_FILL = 128           # grey, the fill value of the TF RandAugment


def _check_image_size(image_size) -> int:
    return check_int("image_size (px)", image_size, 8)


def _check_alpha(alpha) -> float:
    return check_real("mixup_alpha", alpha, 0.0, allowed="a finite number >= 0 (0 disables Mixup)")


# --- RandAugment ------------------------------------------------------------------------------

def randaug_to_torchvision(m_paper: float) -> int:
    """torchvision magnitude bin for a paper (TF) RandAugment level: round(3 * m_paper).

    For m_paper <= 10 use it with ``v2.RandAugment(magnitude=bin, num_magnitude_bins=31)``;
    above 10 only `PaperRandAugment` has bins that far.
    """
    m_paper = check_real("randaug_magnitude", m_paper, 0.0, MAX_PAPER_LEVEL,
                         allowed=f"in [0, {MAX_PAPER_LEVEL}] on the paper's scale (TF levels, "
                                 f"nominal max {TF_MAX_LEVEL})")
    return round(BINS_PER_LEVEL * m_paper)


# Valid range of each op's magnitude once continued past TF level 10; f(height, width) -> (low, high).
_LEVEL_LIMITS = {
    "TranslateX": lambda h, w: (0.0, w / 2),   # past half the side, little of the object is left
    "TranslateY": lambda h, w: (0.0, h / 2),
    "Brightness": lambda h, w: (0.0, 0.99),    # factor 1 - m must stay positive
    "Color": lambda h, w: (0.0, 0.99),
    "Contrast": lambda h, w: (0.0, 0.99),
    "Sharpness": lambda h, w: (0.0, 0.99),
    "Posterize": lambda h, w: (1, 8),          # bits kept; 0 bits is a black image
    "Solarize": lambda h, w: (0.0, 1.0),       # threshold as a fraction of 255
}


def _continued(op: str, torchvision_range):
    """Magnitudes for `num_bins` bins: torchvision's 31-bin range for `op`, continued linearly."""
    def magnitudes(num_bins: int, height: int, width: int) -> torch.Tensor | None:
        nominal = torchvision_range(TORCHVISION_BINS, height, width)   # level 0 .. 10
        if nominal is None:                                            # a magnitude-free op
            return None
        start, stop = float(nominal[0]), float(nominal[-1])
        values = start + (stop - start) * torch.arange(num_bins) / (TORCHVISION_BINS - 1)
        if op in _LEVEL_LIMITS:
            low, high = _LEVEL_LIMITS[op](height, width)
            values = values.clamp(low, high)
        return values if nominal.is_floating_point() else values.round().to(nominal.dtype)
    return magnitudes


class PaperRandAugment(v2.RandAugment):
    """torchvision's RandAugment ops, driven by a level on the paper's (TF) scale, 0 to 30.

    For levels <= 10 it equals ``v2.RandAugment(num_ops, round(3 * level), 31)``; above, each
    op's magnitude continues torchvision's range linearly (our extension), capped where the op
    stops being valid. The ops are torchvision's, not the official TF code's (module docstring).
    Works per sample on uint8 [3, H, W] tensors; the random choices come from torch's global
    generator, as in every torchvision transform.

    Args:
        level: magnitude on the paper's scale (Table 6 uses 5 to 25).
        num_ops: ops applied in sequence per image (N in RandAugment; the official code uses 2).
        fill: pixel value for areas uncovered by geometric ops (TF uses grey 128).
    """

    # The same ops and signs as torchvision's, each range continued past bin 30.
    _AUGMENTATION_SPACE = {op: (_continued(op, op_range), signed)
                           for op, (op_range, signed) in v2.RandAugment._AUGMENTATION_SPACE.items()}

    def __init__(self, level: float, num_ops: int = 2, fill=RANDAUG_FILL,
                 interpolation=v2.InterpolationMode.NEAREST) -> None:
        super().__init__(num_ops=num_ops, magnitude=randaug_to_torchvision(level),
                         num_magnitude_bins=BINS_PER_LEVEL * MAX_PAPER_LEVEL + 1,
                         interpolation=interpolation, fill=fill)
        self.level = float(level)


# --- RandAugment batched on the device -------------------------------------------------------

# How torchvision's RandAugment applies each op at a signed magnitude m to a uint8 tensor, written
# out with the public functional API so that it runs on a batch [B, C, H, W] (v2.RandAugment
# itself would give the whole batch one op). The test suite checks each entry pixel for pixel
# against PaperRandAugment applied per image.
RANDAUG_OPS = {
    "Identity": lambda x, m, fill, mode: x,
    # TF shears by the matrix entry m; torchvision takes the shear angle, atan(m) in degrees
    "ShearX": lambda x, m, fill, mode: TF.affine(
        x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(m)), 0.0],
        interpolation=mode, fill=fill, center=[0, 0]),
    "ShearY": lambda x, m, fill, mode: TF.affine(
        x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(m))],
        interpolation=mode, fill=fill, center=[0, 0]),
    "TranslateX": lambda x, m, fill, mode: TF.affine(
        x, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0], interpolation=mode, fill=fill),
    "TranslateY": lambda x, m, fill, mode: TF.affine(
        x, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0], interpolation=mode, fill=fill),
    "Rotate": lambda x, m, fill, mode: TF.rotate(x, angle=m, interpolation=mode, fill=fill),
    "Brightness": lambda x, m, fill, mode: TF.adjust_brightness(x, 1.0 + m),
    "Color": lambda x, m, fill, mode: TF.adjust_saturation(x, 1.0 + m),
    "Contrast": lambda x, m, fill, mode: TF.adjust_contrast(x, 1.0 + m),
    "Sharpness": lambda x, m, fill, mode: TF.adjust_sharpness(x, 1.0 + m),
    "Posterize": lambda x, m, fill, mode: TF.posterize(x, bits=int(m)),
    "Solarize": lambda x, m, fill, mode: TF.solarize(x, threshold=255 * m),   # m: fraction of uint8 max
    "AutoContrast": lambda x, m, fill, mode: TF.autocontrast(x),
    "Equalize": lambda x, m, fill, mode: TF.equalize(x),
}


def randaug_op_table(level: float, height: int, width: int) -> list:
    """The ops `PaperRandAugment` draws from at `level` for H x W images: [(op, magnitude, signed)].

    Read from ``PaperRandAugment._AUGMENTATION_SPACE`` at call time, in its order, so the CPU
    and device paths share one table (same ops, level mapping and caps). Magnitude-free ops
    (Identity, AutoContrast, Equalize) get 0.
    """
    bin_ = randaug_to_torchvision(level)
    table = []
    for op, (magnitudes_fn, signed) in PaperRandAugment._AUGMENTATION_SPACE.items():
        if op not in RANDAUG_OPS:
            raise ValueError(f"RandAugment op {op!r} has no batched version; known: {sorted(RANDAUG_OPS)}")
        magnitudes = magnitudes_fn(BINS_PER_LEVEL * MAX_PAPER_LEVEL + 1, height, width)
        table.append((op, 0.0 if magnitudes is None else float(magnitudes[bin_]), signed))
    return table


def draw_randaug_groups(batch: int, num_ops: int, num_choices: int, device=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample and op slot, an op k uniform in [0, num_choices) and a sign; int64 [num_ops, B].

    The value is the (op, sign) group 2k + s, s = 1 for a negated magnitude (probability 1/2,
    as in torchvision's RandAugment; unsigned ops ignore s). Draws on `device`, no host sync.
    """
    op_index = torch.randint(num_choices, (num_ops, batch), device=device, generator=generator)
    negative = torch.rand((num_ops, batch), device=device, generator=generator) < 0.5
    return 2 * op_index + negative


def batched_rand_augment(images: torch.Tensor, level: float, num_ops: int = 2,
                         generator: torch.Generator | None = None, *, fill=RANDAUG_FILL,
                         interpolation=v2.InterpolationMode.NEAREST) -> torch.Tensor:
    """RandAugment with its own ops and signs per image, batched on the images' device.

    The per-sample semantics of `PaperRandAugment` (the CPU path): for each of `num_ops` slots,
    every image draws one op uniformly from the same table (`randaug_op_table`: same ops,
    magnitude mapping and caps) and, for signed ops, a sign; the magnitude is the table's at
    `level`. The batch is then processed by (op, sign) group: for each slot, the images are
    sorted by group, and each non-empty group is gathered (``index_select``), transformed with
    the torchvision functional op at its magnitude (`RANDAUG_OPS`) and scattered back
    (``index_copy_``). Same fill and nearest interpolation as the CPU path.

    Why groups, not masks: applying every (op, sign) pair to the whole batch and keeping each
    image's own result with ``torch.where`` needs no sync of its own but does 22x the op work
    per slot (23 groups, one of them Identity). Grouping needs the group sizes on the host: one
    sync per call (a single ``.tolist()`` of all slots' counts, not a ``nonzero`` per group;
    `DeviceLoader` makes one call per chunk of batches).
    And the masked design would not be sync-free on CUDA anyway: torchvision's affine and
    rotate build their matrix, grid scale and fill tensors from Python lists
    (``torch.tensor(..., device=...)``, a blocking copy that waits for the stream: 3 per call)
    and adjust_sharpness its kernel (1), so a batch with 2 ops makes 64 such copies when all
    groups are present, the masked version always. Grouping therefore adds 1 sync to 64 and
    saves 21/22 of the op work. On a GPU at CIFAR sizes both should be bound by the same host
    work (~44 op calls per batch) and cost about the same (reasoned: not yet timed on a GPU);
    on the CPU grouping wins outright: on 2 CPU cores (shared, so noisy), batch 512, level 5, at 16 / 24 / 32 px the
    quietest run gave grouped 19 / 26 / 32 ms and masked 143 / 397 / 726 ms per batch, and
    every run had masked 4-23x slower (``python -m effv2_lib.bench_data --device cpu`` prints
    this comparison; on CUDA it also counts the syncs per batch).

    Args:
        images: uint8 [B, C, H, W] on any device (C = 1 or 3).
        level: magnitude on the paper's scale, 0 to 30. 0 returns `images` itself: an exact
            no-op (torchvision's magnitude 0 would still AutoContrast and Equalize).
        num_ops: ops per image, applied in sequence (N of RandAugment); 0 is a no-op.
        generator: a torch.Generator on the images' device, for reproducible choices.
        fill, interpolation: as `PaperRandAugment` (grey 128, nearest).

    Returns:
        uint8 [B, C, H, W], a new tensor unless nothing was to be done.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor [B, C, H, W], got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [B, C, H, W] with C = 1 or 3, got {list(images.shape)}")
    num_ops = check_int("num_ops", num_ops, 0)
    table = randaug_op_table(level, *images.shape[-2:])              # validates `level`
    batch = len(images)
    if level == 0 or num_ops == 0 or batch == 0:
        return images
    groups = draw_randaug_groups(batch, num_ops, len(table), images.device, generator)   # [N_ops, B]
    order = groups.argsort(dim=1, stable=True)                       # [N_ops, B], sorted by group
    counts = torch.zeros(num_ops, 2 * len(table), dtype=torch.long, device=images.device)
    counts.scatter_add_(1, groups, torch.ones_like(groups))          # [N_ops, 2K] images per group
    edges = [[0, *accumulate(row)] for row in counts.tolist()]       # the one host sync per call
    out = images.clone()
    for slot in range(num_ops):
        for k, (op, magnitude, signed) in enumerate(table):          # group g: order[slot, e[g]:e[g + 1]]
            plus, minus, end = edges[slot][2 * k], edges[slot][2 * k + 1], edges[slot][2 * k + 2]
            runs = [(magnitude, plus, minus), (-magnitude, minus, end)] if signed else [(magnitude, plus, end)]
            for signed_magnitude, begin, stop in runs:
                if op != "Identity" and stop > begin:
                    index = order[slot, begin:stop]                  # [G], the images of this group
                    chosen = out.index_select(0, index)              # uint8 [G, C, H, W]
                    out.index_copy_(0, index, RANDAUG_OPS[op](chosen, signed_magnitude, fill, interpolation))
    return out


# --- per-sample CPU transforms ----------------------------------------------------------------

def train_transform(image_size, randaug_magnitude: float | None = None, *,
                    num_ops: int = 2, padding: int = DEFAULT_PADDING,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, normalize: bool = True) -> v2.Compose:
    """Training transform for one stage: uint8 [3, 32, 32] -> float [3, S, S], normalized.

    Random crop at 32 px with `padding` px reflected borders, horizontal flip, resize to the
    stage size S (antialiased when shrinking), RandAugment at the stage magnitude (left out at
    0), then scale to [0, 1] and normalize.

    Args:
        image_size: the stage size S in px, or a schedule Stage (anything with ``.image_size``
            and ``.randaug_magnitude``), whose magnitude is then the default.
        randaug_magnitude: RandAugment level on the paper's scale (see `randaug_to_torchvision`).
        normalize: False stops before the float conversion and yields uint8 [3, S, S], for
            looking at the augmented images (e.g. with ``plots.plot_image_grid``).
    """
    if hasattr(image_size, "image_size"):
        stage = image_size
        image_size = stage.image_size
        if randaug_magnitude is None:
            randaug_magnitude = stage.randaug_magnitude
    image_size = _check_image_size(image_size)
    randaug_magnitude = 0.0 if randaug_magnitude is None else randaug_magnitude
    randaug_to_torchvision(randaug_magnitude)                     # validates the range
    padding = check_int("padding", padding, 0)

    steps = []
    if padding:
        steps.append(v2.RandomCrop(CIFAR_SIZE, padding=padding, padding_mode="reflect"))
    steps.append(v2.RandomHorizontalFlip())
    if image_size != CIFAR_SIZE:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if randaug_magnitude > 0:
        steps.append(PaperRandAugment(randaug_magnitude, num_ops=num_ops))
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(image_size: int = CIFAR_SIZE, *, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> v2.Compose:
    """Evaluation transform: resize to `image_size` (when it is not 32), scale, normalize."""
    image_size = _check_image_size(image_size)
    steps = [] if image_size == CIFAR_SIZE else [v2.Resize((image_size, image_size), antialias=True)]
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def denormalize(images: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """Undo the normalization: float [..., 3, H, W] -> float in [0, 1], for display."""
    mean = torch.tensor(mean, device=images.device, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


# --- Mixup and dropout ------------------------------------------------------------------------

def mixup_batch(images: torch.Tensor, labels: torch.Tensor, alpha: float, num_classes: int,
                generator: torch.Generator | None = None):
    """Mixup with one lambda per sample, partner = the batch reversed (official EfficientNetV2).

    Args:
        images: float [B, C, H, W].
        labels: int64 [B].
        alpha: Beta(alpha, alpha) concentration; 0 returns `images` and `labels` unchanged.
        num_classes: width of the soft targets.
        generator: a torch.Generator on the images' device, for reproducible lambdas.

    Returns:
        (images, targets): targets are int64 labels [B] when alpha == 0, otherwise float soft
        labels [B, num_classes]; both work with ``F.cross_entropy(logits, targets, label_smoothing=...)``.
    """
    if _check_alpha(alpha) == 0:
        return images, labels
    # lambda ~ Beta(alpha, alpha) as G1 / (G1 + G2), G ~ Gamma(alpha). torch.distributions.Beta
    # takes no generator; standard_gamma does.
    concentration = torch.full((2, len(labels)), float(alpha), device=images.device)
    gammas = standard_gamma(concentration, generator)                              # [2, B]
    lam = gammas[0] / (gammas[0] + gammas[1]).clamp_min(torch.finfo(gammas.dtype).tiny)
    lam = torch.maximum(lam, 1 - lam)                                              # [B], in [0.5, 1]
    one_hot = F.one_hot(labels, num_classes).to(images.dtype)                      # [B, K]
    lam_images = lam.to(images.dtype).view(-1, *[1] * (images.ndim - 1))          # [B, 1, 1, 1]
    mixed = images * lam_images + images.flip(0) * (1 - lam_images)
    targets = one_hot * lam[:, None].to(images.dtype) + one_hot.flip(0) * (1 - lam[:, None]).to(images.dtype)
    return mixed, targets


def standard_gamma(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gamma(concentration, 1) draws that take a `generator` (torch.distributions.Gamma does not).

    torch's own sampler, ``torch._standard_gamma``, is private: if a torch release drops it or its
    ``generator`` argument, the draws fall back to Marsaglia & Tsang's (2000) rejection method
    (other numbers, the same distribution; tests/test_augment.py checks both).
    """
    sampler = getattr(torch, "_standard_gamma", None)
    if sampler is not None:
        try:
            return sampler(concentration, generator=generator)
        except TypeError:  # the private signature changed
            pass
    return marsaglia_tsang_gamma(concentration, generator)


def marsaglia_tsang_gamma(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gamma(a, 1) by Marsaglia & Tsang (2000): for a >= 1, with d = a - 1/3 and c = 1 / sqrt(9d),
    draw x ~ N(0, 1), v = (1 + c x)^3 and keep d v when log u < x^2 / 2 + d - d v + d log v; for
    a < 1, draw for a + 1 and multiply by u^(1/a). Rejection repeats for the rejected entries only."""
    a = concentration.float()
    boost = a < 1
    d = torch.where(boost, a + 1, a) - 1 / 3
    c = 1 / torch.sqrt(9 * d)
    result = torch.zeros_like(a)
    pending = torch.ones_like(a, dtype=torch.bool)
    while bool(pending.any()):  # each round accepts at least 95% of the entries
        x = torch.randn(a.shape, generator=generator, device=a.device)
        u = torch.rand(a.shape, generator=generator, device=a.device)
        v = (1 + c * x) ** 3
        accept = pending & (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        result = torch.where(accept, d * v, result)
        pending &= ~accept
    u = torch.rand(a.shape, generator=generator, device=a.device)
    result = torch.where(boost, result * u ** (1 / a), result)
    return result.to(concentration.dtype)


def set_dropout(model: nn.Module, rate: float) -> int:
    """Set the drop probability of every nn.Dropout in `model` (the head dropout of EfficientNetV2).

    Stochastic depth is not an nn.Dropout and keeps its rate: the paper adapts dropout,
    RandAugment and Mixup only. Returns the number of modules changed.
    """
    rate = check_real("rate", rate, 0.0, 1.0, allowed="a dropout rate in [0, 1)")
    if rate == 1.0:
        raise ValueError("rate must be a dropout rate in [0, 1), got 1.0 (drops everything)")
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout module to set")
    for module in dropouts:
        module.p = float(rate)
    return len(dropouts)


# --- GPU-resident path ------------------------------------------------------------------------

class DeviceLoader:
    """Batches of a whole CIFAR split kept on one device, augmented there (airbench style).

    The uint8 images [N, 3, 32, 32] move to `device` once. Each epoch draws a permutation and
    walks it in chunks of about `augment_chunk` images (whole batches). A chunk gathers its
    images with a per-sample random crop (a `padding`-px window shift with reflected borders,
    so no black frame, which at 16 px would be an eighth of the image) and a per-sample
    horizontal flip in a single indexing operation, resizes them to the stage size (uint8,
    bilinear, antialiased when shrinking, as `train_transform`) and applies
    `batched_rand_augment` at the stage magnitude (per-sample ops). Each batch of the chunk is
    then converted to float, normalized and mixed by `mixup_batch` at the stage alpha: the
    order of `train_transform`. All randomness comes from `generator` on the device.

    Why chunks: at RandAugment magnitude 0 nothing reads a device value back to the host, so
    iteration never synchronizes. With RandAugment on CUDA it does: grouping by op reads the
    group sizes, and torchvision's geometric ops copy small tensors from the host (see
    `batched_rand_augment`), each a wait for everything queued, training steps included. Done
    per chunk, these waits come once per augment_chunk / batch_size steps instead of at every
    step, and the steps in between queue up freely. (Reasoned, not yet timed on a GPU;
    ``python -m effv2_lib.bench_data`` counts the syncs there. The chunk size is a memory
    trade: 8,192 images at 32 px are 25 MB of uint8.)

    Args:
        split: a CifarSplit, or anything with ``.images`` uint8 [N, 3, 32, 32], ``.labels`` [N]
            and ``.classes``.
        batch_size: images per batch.
        device: where the data and the batches live (default: CUDA if available, else CPU).
        image_size: stage size S in px, or a schedule Stage (then also its Mixup alpha and
            RandAugment magnitude, unless given).
        mixup_alpha: stage Mixup alpha; 0 yields int64 labels, > 0 float soft labels [B, K].
        randaug_magnitude: stage RandAugment level on the paper's scale (0 to 30); 0, the
            default without a Stage, leaves RandAugment out.
        randaug_num_ops: ops per image (N of RandAugment).
        train: False gives an evaluation loader: no shuffle, crop, flip, RandAugment or Mixup.
        shuffle, drop_last: default to `train`.
        padding: crop padding in px at 32 px (0: no crop).
        mean, std: per-channel normalization.
        channels_last: yield images in channels_last memory format.
        dtype: float dtype of the yielded images.
        generator: a torch.Generator on `device`; by default one seeded from torch's global
            generator, so ``torch.manual_seed`` makes runs repeatable.
        augment_chunk: images cropped, flipped, resized and RandAugmented together (rounded
            down to whole batches, at least one).
    """

    def __init__(self, split, batch_size: int, *, device=None, image_size=CIFAR_SIZE,
                 mixup_alpha: float | None = None, train: bool = True,
                 shuffle: bool | None = None, drop_last: bool | None = None,
                 padding: int = DEFAULT_PADDING, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None,
                 randaug_magnitude: float | None = None, randaug_num_ops: int = 2,
                 augment_chunk: int = 8192) -> None:
        batch_size = check_int("batch_size", batch_size, 1)
        self.augment_chunk = check_int("augment_chunk", augment_chunk, 1)
        self.randaug_num_ops = check_int("randaug_num_ops", randaug_num_ops, 0)
        if check_int("padding", padding, 0) >= CIFAR_SIZE:
            raise ValueError(f"padding must be < {CIFAR_SIZE} px, got {padding!r}")
        images = split.images
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1:] != (3, CIFAR_SIZE, CIFAR_SIZE):
            raise ValueError(f"split.images must be uint8 [N, 3, 32, 32], got {images.dtype} {list(images.shape)}")
        self.device = torch.device(device if device is not None else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        if generator is None:
            seed = int(torch.randint(0, 2**62, ()))          # from the global (CPU) generator
            generator = torch.Generator(device=self.device).manual_seed(seed)
        if generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, the loader on {self.device}; "
                             "pass torch.Generator(device=...) for the same device")
        self.images = images.to(self.device)                 # uint8 [N, 3, 32, 32], moved once
        self.labels = split.labels.to(self.device).long()    # int64 [N]
        self.num_classes = len(split.classes)
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.padding = padding if train else 0
        self.channels_last = channels_last
        self.dtype = dtype
        self.generator = generator
        # normalize((x / 255 - mean) / std) folded into one affine map of the uint8 values
        mean = torch.tensor(mean, device=self.device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(std, device=self.device, dtype=dtype).view(1, 3, 1, 1)
        self.scale, self.shift = 1 / (255 * std), -mean / std
        self.image_size, self.mixup_alpha, self.randaug_magnitude = CIFAR_SIZE, 0.0, 0.0
        self.set_stage(image_size, mixup_alpha, randaug_magnitude)

    def set_stage(self, image_size, mixup_alpha: float | None = None,
                  randaug_magnitude: float | None = None) -> None:
        """Switch to a stage: image size, Mixup alpha and RandAugment magnitude.

        `image_size` may be a schedule Stage, which gives all three (an explicit argument
        overrides it). With a plain size, an omitted regularizer is 0 (off). Nothing changes
        when an argument is rejected.
        """
        if hasattr(image_size, "image_size"):
            stage = image_size
            image_size = stage.image_size
            if mixup_alpha is None:
                mixup_alpha = stage.mixup_alpha
            if randaug_magnitude is None:        # a stage-like object without one: RandAugment off
                randaug_magnitude = getattr(stage, "randaug_magnitude", None)
        image_size = _check_image_size(image_size)
        mixup_alpha = _check_alpha(0.0 if mixup_alpha is None else mixup_alpha)
        randaug_magnitude = 0.0 if randaug_magnitude is None else randaug_magnitude
        randaug_to_torchvision(randaug_magnitude)                     # validates the range
        self.image_size, self.mixup_alpha = image_size, mixup_alpha
        self.randaug_magnitude = float(randaug_magnitude)

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = len(self.labels), self.batch_size
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.device))
        batches, chunk_batches = len(self), max(1, self.augment_chunk // b)
        for first in range(0, batches, chunk_batches):
            last = min(batches, first + chunk_batches)
            index = order[first * b:last * b]                               # [C], the chunk's images
            images = self._augment(index)                                   # uint8 [C, 3, S, S]
            for start in range(0, len(index), b):
                yield self._batch(images[start:start + b], index[start:start + b])

    def _augment(self, index: torch.Tensor) -> torch.Tensor:
        """Crop, flip, resize to S and RandAugment the images `index` [C]: uint8 [C, 3, S, S]."""
        images = self._crop_and_flip(index)                              # uint8 [C, 3, 32, 32]
        if self.image_size != CIFAR_SIZE:                                  # uint8 [C, 3, S, S]
            images = TF.resize(images, [self.image_size, self.image_size], antialias=True)
        if self.train:                                                     # per-sample ops at S, as on the CPU
            images = batched_rand_augment(images, self.randaug_magnitude, self.randaug_num_ops, self.generator)
        return images

    def _batch(self, images: torch.Tensor, index: torch.Tensor):
        """Float, normalized and mixed: images uint8 [B, 3, S, S] of the samples `index` [B]."""
        images = images.to(self.dtype) * self.scale + self.shift           # normalized [B, 3, S, S]
        labels = self.labels[index]                                        # int64 [B]
        if self.train:
            images, labels = mixup_batch(images, labels, self.mixup_alpha, self.num_classes, self.generator)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels                                              # [B, 3, S, S], [B] or [B, K]

    def _crop_and_flip(self, index: torch.Tensor) -> torch.Tensor:
        """Per-sample crop offsets and flips as one gather: out[b, c, y, x] = img[b, c, rows[b, y], cols[b, x]]."""
        batch, size, pad = len(index), CIFAR_SIZE, self.padding
        positions = torch.arange(size, device=self.device)                 # [32]
        rows = positions.expand(batch, size)                               # [B, 32]
        cols = rows
        if self.train:
            shifts = torch.randint(-pad, pad + 1, (2, batch, 1), device=self.device, generator=self.generator)
            rows = _reflect(rows + shifts[0], size)                        # window moved by dy_b
            cols = _reflect(cols + shifts[1], size)                        # and by dx_b
            flip = torch.rand(batch, 1, device=self.device, generator=self.generator) < 0.5
            cols = torch.where(flip, cols.flip(1), cols)                   # mirror the window
        return self.images[index[:, None, None, None],                     # [B, 1, 1, 1]
                           torch.arange(3, device=self.device)[None, :, None, None],   # [1, 3, 1, 1]
                           rows[:, None, :, None],                         # [B, 1, 32, 1]
                           cols[:, None, None, :]]                         # [B, 1, 1, 32] -> [B, 3, 32, 32]


def _reflect(position: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions just outside [0, size) back inside by mirroring at the border pixel."""
    position = position.abs()                                  # -1 -> 1, -2 -> 2 (reflect at 0)
    return torch.where(position >= size, 2 * (size - 1) - position, position)
