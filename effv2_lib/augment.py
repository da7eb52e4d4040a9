"""Per-stage regularization for progressive learning (Tan & Le 2021, Section 4.2).

EfficientNetV2's adaptive regularization (Section 4.2, Algorithm 1) strengthens three
regularizers together with the image size: dropout rate gamma, RandAugment magnitude epsilon
and Mixup ratio lambda. A schedule `Stage` (effv2_lib.schedule) carries one value of each;
this module turns them into

* a per-sample CPU transform, `train_transform(stage)` (crop, flip, resize to the stage size,
  RandAugment at the stage magnitude, normalization), and `eval_transform(size)`;
* `mixup_batch(images, labels, alpha, ...)`, Mixup on a batch at the stage alpha;
* `set_dropout(model, rate)`, the head dropout at the stage rate;
* `DeviceLoader`, the GPU-resident path: the whole uint8 data set on the device, crop, flip,
  resize, normalization and Mixup done batched there, with per-sample randomness.

RandAugment magnitude, paper scale -> torchvision
-------------------------------------------------
The paper's magnitudes (Table 6: 5 -> 15 for S, up to 25 for L) are levels of the TensorFlow
RandAugment of the official code, where level 10 (``_MAX_LEVEL``) is the nominal maximum and
every op's strength grows linearly with the level (rotation 3 degrees per level, shear 0.03 per
level, ...), so 15 and 25 extrapolate past it. torchvision's ``RandAugment(num_ops, magnitude,
num_magnitude_bins=31)`` indexes 31 bins whose last (bin 30) is each op's strength at TF level
10. Hence the mapping

    bin = round(3 * m_paper)         (`randaug_to_torchvision`, BINS_PER_LEVEL = 3)

which is exact for the paper's S schedule (5, 8.33, 11.67, 15 -> bins 15, 25, 35, 45).
Bins above 30 need ranges torchvision does not have, so `PaperRandAugment` subclasses
torchvision's RandAugment with its magnitude table continued linearly past level 10, as the TF
code does, up to level `MAX_PAPER_LEVEL` = 30 (91 bins). Where a continued value stops being a
valid or meaningful op it is capped (`_LEVEL_LIMITS`): colour factors 1 +- m keep m <= 0.99 so
the factor stays positive, posterize keeps at least 1 bit, the solarize threshold stops at 0,
and translation stops at half the image side. None of the caps binds at level <= 10, so there
`PaperRandAugment` is torchvision's RandAugment at ``magnitude=round(3 * m)``,
``num_magnitude_bins=31`` (the tests check this pixel for pixel). Clipping at 10 was the
alternative; it would make the paper's last two stages identical.

Magnitude 0 is an exact no-op: `train_transform` then leaves RandAugment out, because
torchvision's RandAugment at magnitude 0 still applies the magnitude-free ops (AutoContrast,
Equalize).

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
RandAugment runs per sample on the CPU (DataLoader workers); it picks different ops per image,
which does not batch on a GPU. `DeviceLoader` therefore does crop, flip, resize and Mixup only.
At CIFAR's 16-32 px the CPU path is the bottleneck long before the model is (the speed records
keep CIFAR on the GPU for this reason); the price of the device path is no RandAugment, so
use it for stages with magnitude 0 or when speed matters more than that regularizer.
"""

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from .data import CIFAR10_MEAN, CIFAR10_STD

CIFAR_SIZE = 32
TF_MAX_LEVEL = 10            # TF RandAugment's nominal maximum level (the paper's scale)
TORCHVISION_BINS = 31        # torchvision's default num_magnitude_bins; bin 30 == TF level 10
BINS_PER_LEVEL = (TORCHVISION_BINS - 1) // TF_MAX_LEVEL     # 3
MAX_PAPER_LEVEL = 30         # highest level PaperRandAugment accepts (paper-L stops at 25)
DEFAULT_PADDING = 4          # random-crop padding at 32 px, reflected (see DeviceLoader)
RANDAUG_FILL = 128           # grey, the fill value of the TF RandAugment


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value, low: float, high: float, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_image_size(image_size) -> int:
    return _check_int("image_size (px)", image_size, 8)


def _check_alpha(alpha) -> float:
    return _check_real("mixup_alpha", alpha, 0.0, math.inf, "a finite number >= 0 (0 disables Mixup)")


# --- RandAugment ------------------------------------------------------------------------------

def randaug_to_torchvision(m_paper: float) -> int:
    """torchvision magnitude bin for a paper (TF) RandAugment level: round(3 * m_paper).

    For m_paper <= 10 use it with ``v2.RandAugment(magnitude=bin, num_magnitude_bins=31)``;
    above 10 only `PaperRandAugment` has bins that far.
    """
    m_paper = _check_real("randaug_magnitude", m_paper, 0.0, MAX_PAPER_LEVEL,
                          f"in [0, {MAX_PAPER_LEVEL}] on the paper's scale (TF levels, "
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
    def magnitudes(num_bins: int, height: int, width: int) -> Optional[torch.Tensor]:
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
    """torchvision's RandAugment driven by a level on the paper's (TF) scale, 0 to 30.

    For levels <= 10 it equals ``v2.RandAugment(num_ops, round(3 * level), 31)``; above, each
    op's magnitude continues linearly as in the TF code, capped where the op stops being valid
    (module docstring). Works per sample on uint8 [3, H, W] tensors; the random choices come
    from torch's global generator, as in every torchvision transform.

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


# --- per-sample CPU transforms ----------------------------------------------------------------

def train_transform(image_size, randaug_magnitude: Optional[float] = None, *,
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
    padding = _check_int("padding", padding, 0)

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
                generator: Optional[torch.Generator] = None):
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
    # takes no generator; torch._standard_gamma, the sampler it is built on, does.
    concentration = torch.full((2, len(labels)), float(alpha), device=images.device)
    gammas = torch._standard_gamma(concentration, generator=generator)           # [2, B]
    lam = gammas[0] / (gammas[0] + gammas[1]).clamp_min(torch.finfo(gammas.dtype).tiny)
    lam = torch.maximum(lam, 1 - lam)                                              # [B], in [0.5, 1]
    one_hot = F.one_hot(labels, num_classes).to(images.dtype)                      # [B, K]
    lam_images = lam.to(images.dtype).view(-1, *[1] * (images.ndim - 1))          # [B, 1, 1, 1]
    mixed = images * lam_images + images.flip(0) * (1 - lam_images)
    targets = one_hot * lam[:, None].to(images.dtype) + one_hot.flip(0) * (1 - lam[:, None]).to(images.dtype)
    return mixed, targets


def set_dropout(model: nn.Module, rate: float) -> int:
    """Set the drop probability of every nn.Dropout in `model` (the head dropout of EfficientNetV2).

    Stochastic depth is not an nn.Dropout and keeps its rate: the paper adapts dropout,
    RandAugment and Mixup only. Returns the number of modules changed.
    """
    rate = _check_real("rate", rate, 0.0, 1.0, "a dropout rate in [0, 1)")
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

    The uint8 images [N, 3, 32, 32] move to `device` once. Each epoch draws a permutation;
    each batch gathers its images with a per-sample random crop (a `padding`-px window shift
    with reflected borders, so no black frame, which at 16 px would be an eighth of the image)
    and a per-sample horizontal flip in a single indexing operation, converts to float,
    resizes to the stage size (bilinear, antialiased when shrinking), normalizes and applies
    `mixup_batch` at the stage alpha. All randomness comes from `generator` on the device and
    nothing reads a device value back to the host, so iteration does not synchronize.
    RandAugment is not done here (see the module docstring).

    Args:
        split: a CifarSplit, or anything with ``.images`` uint8 [N, 3, 32, 32], ``.labels`` [N]
            and ``.classes``.
        batch_size: images per batch.
        device: where the data and the batches live (default: CUDA if available, else CPU).
        image_size: stage size S in px, or a schedule Stage (then also its mixup alpha).
        mixup_alpha: stage Mixup alpha; 0 yields int64 labels, > 0 float soft labels [B, K].
        train: False gives an evaluation loader: no shuffle, crop, flip or Mixup.
        shuffle, drop_last: default to `train`.
        padding: crop padding in px at 32 px (0: no crop).
        mean, std: per-channel normalization.
        channels_last: yield images in channels_last memory format.
        dtype: float dtype of the yielded images.
        generator: a torch.Generator on `device`; by default one seeded from torch's global
            generator, so ``torch.manual_seed`` makes runs repeatable.
    """

    def __init__(self, split, batch_size: int, *, device=None, image_size=CIFAR_SIZE,
                 mixup_alpha: Optional[float] = None, train: bool = True,
                 shuffle: Optional[bool] = None, drop_last: Optional[bool] = None,
                 padding: int = DEFAULT_PADDING, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 generator: Optional[torch.Generator] = None) -> None:
        batch_size = _check_int("batch_size", batch_size, 1)
        if _check_int("padding", padding, 0) >= CIFAR_SIZE:
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
        self.image_size, self.mixup_alpha = CIFAR_SIZE, 0.0
        self.set_stage(image_size, mixup_alpha)

    def set_stage(self, image_size, mixup_alpha: Optional[float] = None) -> None:
        """Switch to a stage: its image size and Mixup alpha (a schedule Stage gives both)."""
        if hasattr(image_size, "image_size"):
            stage = image_size
            image_size = stage.image_size
            if mixup_alpha is None:
                mixup_alpha = stage.mixup_alpha
        self.image_size = _check_image_size(image_size)
        self.mixup_alpha = _check_alpha(0.0 if mixup_alpha is None else mixup_alpha)

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]     # [B]
            yield self._batch(index)

    def _batch(self, index: torch.Tensor):
        images = self._crop_and_flip(index)                              # uint8 [B, 3, 32, 32]
        images = images.to(self.dtype) * self.scale + self.shift           # normalized [B, 3, 32, 32]
        if self.image_size != CIFAR_SIZE:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=self.image_size < CIFAR_SIZE)
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
