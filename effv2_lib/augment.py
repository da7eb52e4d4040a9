"""Per-stage regularization for progressive learning (Tan & Le 2021, Section 4.2).

EfficientNetV2's adaptive regularization (Section 4.2, Algorithm 1) strengthens three
regularizers together with the image size: dropout rate gamma, RandAugment magnitude epsilon
and Mixup ratio lambda (the official code adds CutMix for V2-M and V2-L). A schedule `Stage`
(effv2_lib.schedule) carries one value of each; this module turns them into

* a per-sample CPU transform, `train_transform(stage)` (crop, flip, resize to the stage size,
  RandAugment at the stage magnitude, normalization), and `eval_transform(size)`;
* `mix_batch(images, labels, mixup_alpha, cutmix_alpha, ...)`, Mixup and CutMix on a batch
  at the stage alphas (`mixup_batch`, `cutmix_batch` for one of them);
* `set_dropout(model, rate)`, the head dropout at the stage rate;
* `DeviceLoader`, the GPU-resident path: the whole uint8 data set on the device, crop, flip,
  resize, RandAugment, normalization and mixing done batched there, with per-sample randomness.

RandAugment, its two op tables (torchvision's ops on the paper's scale, and automl's) and its
batched version live in effv2_lib.randaugment; a stage's ``randaug_ops`` picks the table, on
either path.

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

CutMix, and both at once, as the official code
----------------------------------------------
`cutmix_batch` (Yun et al. 2019) pastes into each image a box of its partner (again the batch
reversed): area ratio lambda_i ~ Beta(alpha, alpha), box sides int(sqrt(1 - lambda_i) * side)
around a uniform centre, clipped to the image (automl's ``cutmix_mask``). The label weight is
the area actually pasted, after clipping. Here automl differs: its ``cutmix`` divides the sum
of all the half batch's masks by their size, so every image there gets the batch's mean area
as its weight; we give each image its own box's area, as CutMix defines it. When a stage has
both alphas, `mix_batch` gives the first B // 2 images Mixup and the rest CutMix, each half
mixed within itself (automl's ``mixing``).

CPU path and GPU path
---------------------
Both apply the same steps in the same order: crop and flip at 32 px, resize to the stage size
(uint8), RandAugment at the stage magnitude (uint8, at the stage size), scale and normalize,
Mixup/CutMix. On the CPU, `train_transform` runs per image in DataLoader workers and
`mix_batch` on the collated batch. At CIFAR's 16-32 px that path is the bottleneck long before the model is
(the speed records keep CIFAR on the GPU for this reason), so `DeviceLoader` does every step
batched on the device. RandAugment is the one step that does not batch directly, since every
image draws its own ops: `batched_rand_augment` draws them per image, then applies each op to
the group of images that drew it (the same op table as the per-image transform), so the stage
magnitude of adaptive regularization (Section 4.2) holds on either path. Its price is host
work and, on CUDA, host-device syncs (see its docstring); ``python -m effv2_lib.bench_data``
shows both paths with and without RandAugment.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ._checks import check_choice, check_int, check_real
from .data import CIFAR10_MEAN, CIFAR10_STD
from .randaugment import RANDAUG_OP_TABLES, RANDAUGMENTS, batched_rand_augment, check_level

CIFAR_SIZE = 32
DEFAULT_PADDING = 4          # random-crop padding at 32 px, reflected (see DeviceLoader)


def _check_image_size(image_size) -> int:
    return check_int("image_size (px)", image_size, 8)


def _check_alpha(alpha, name: str = "mixup_alpha") -> float:
    return check_real(name, alpha, 0.0, allowed="a finite number >= 0 (0 disables it)")


# --- per-sample CPU transforms ----------------------------------------------------------------

def train_transform(image_size, randaug_magnitude: float | None = None, *, randaug_ops: str | None = None,
                    num_ops: int = 2, padding: int = DEFAULT_PADDING,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, normalize: bool = True) -> v2.Compose:
    """Training transform for one stage: uint8 [3, 32, 32] -> float [3, S, S], normalized.

    Random crop at 32 px with `padding` px reflected borders, horizontal flip, resize to the
    stage size S (antialiased when shrinking), RandAugment at the stage magnitude (left out at
    0), then scale to [0, 1] and normalize.

    Args:
        image_size: the stage size S in px, or a schedule Stage (anything with ``.image_size``
            and ``.randaug_magnitude``), whose magnitude and op table are then the defaults.
        randaug_magnitude: RandAugment level on the paper's scale, 0 to 30.
        randaug_ops: the op table, "torchvision" (`TorchvisionRandAugment`, the default) or
            "automl" (`AutomlRandAugment`); see effv2_lib.randaugment.
        normalize: False stops before the float conversion and yields uint8 [3, S, S], for
            looking at the augmented images (e.g. with ``plots.plot_image_grid``).
    """
    if hasattr(image_size, "image_size"):
        stage = image_size
        image_size = stage.image_size
        if randaug_magnitude is None:
            randaug_magnitude = stage.randaug_magnitude
        if randaug_ops is None:
            randaug_ops = getattr(stage, "randaug_ops", None)
    image_size = _check_image_size(image_size)
    randaug_magnitude = check_level(0.0 if randaug_magnitude is None else randaug_magnitude)
    randaug = RANDAUGMENTS[check_choice("randaug_ops", randaug_ops or "torchvision", RANDAUG_OP_TABLES)]
    padding = check_int("padding", padding, 0)

    steps = []
    if padding:
        steps.append(v2.RandomCrop(CIFAR_SIZE, padding=padding, padding_mode="reflect"))
    steps.append(v2.RandomHorizontalFlip())
    if image_size != CIFAR_SIZE:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if randaug_magnitude > 0:
        steps.append(randaug(randaug_magnitude, num_ops=num_ops))
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


# --- Mixup, CutMix and dropout -----------------------------------------------------------------

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
    lam = _beta(alpha, len(labels), images.device, generator)
    lam = torch.maximum(lam, 1 - lam)                                              # [B], in [0.5, 1]
    lam_images = lam.to(images.dtype).view(-1, *[1] * (images.ndim - 1))          # [B, 1, 1, 1]
    mixed = images * lam_images + images.flip(0) * (1 - lam_images)
    return mixed, _mixed_targets(labels, lam, num_classes, images.dtype)


def cutmix_batch(images: torch.Tensor, labels: torch.Tensor, alpha: float, num_classes: int,
                 generator: torch.Generator | None = None):
    """CutMix with one box per sample, partner = the batch reversed (module docstring).

    Sample i draws lambda_i ~ Beta(alpha, alpha) and a centre (c_y, c_x) uniform over the image;
    rows [c_y - h // 2, c_y + h // 2) and columns [c_x - w // 2, c_x + w // 2), clipped to the
    image, with h = int(sqrt(1 - lambda_i) H) and w = int(sqrt(1 - lambda_i) W), come from
    sample B-1-i. Its target gives the partner's label the box's area over H W.

    Args and returns as `mixup_batch` (images may be uint8 or float [B, C, H, W]).
    """
    if _check_alpha(alpha, "cutmix_alpha") == 0:
        return images, labels
    batch, height, width = len(labels), images.shape[-2], images.shape[-1]
    lam = _beta(alpha, batch, images.device, generator)                            # [B]
    side = torch.sqrt(1 - lam)                                                     # [B], box side / image side
    centre_y = torch.randint(height, (batch,), device=images.device, generator=generator)   # [B]
    centre_x = torch.randint(width, (batch,), device=images.device, generator=generator)    # [B]
    half_h, half_w = (side * height).long() // 2, (side * width).long() // 2       # [B], truncated as TF
    y1, y2 = (centre_y - half_h).clamp(0, height), (centre_y + half_h).clamp(max=height)
    x1, x2 = (centre_x - half_w).clamp(0, width), (centre_x + half_w).clamp(max=width)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    box = ((rows >= y1.view(-1, 1, 1)) & (rows < y2.view(-1, 1, 1))
           & (cols >= x1.view(-1, 1, 1)) & (cols < x2.view(-1, 1, 1)))           # [B, H, W]
    mixed = torch.where(box.unsqueeze(1), images.flip(0), images)
    pasted = ((y2 - y1) * (x2 - x1)).to(torch.float32) / (height * width)         # [B], area actually pasted
    return mixed, _mixed_targets(labels, 1 - pasted, num_classes, images.dtype if images.is_floating_point()
                                 else torch.float32)


def mix_batch(images: torch.Tensor, labels: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              num_classes: int, generator: torch.Generator | None = None):
    """A stage's mixing, as automl's ``mixing``: Mixup at `mixup_alpha`, CutMix at
    `cutmix_alpha`, and with both on, Mixup on the first B // 2 samples and CutMix on the rest
    (each half mixed within itself). With CutMix off this is exactly `mixup_batch`."""
    cutmix_alpha = _check_alpha(cutmix_alpha, "cutmix_alpha")
    if cutmix_alpha == 0:
        return mixup_batch(images, labels, mixup_alpha, num_classes, generator)
    if _check_alpha(mixup_alpha) == 0:
        return cutmix_batch(images, labels, cutmix_alpha, num_classes, generator)
    half = len(labels) // 2
    mixed_up, mixup_targets = mixup_batch(images[:half], labels[:half], mixup_alpha, num_classes, generator)
    cut, cutmix_targets = cutmix_batch(images[half:], labels[half:], cutmix_alpha, num_classes, generator)
    return torch.cat([mixed_up, cut]), torch.cat([mixup_targets, cutmix_targets])


def _beta(alpha: float, count: int, device, generator: torch.Generator | None) -> Tensor:
    """`count` draws of Beta(alpha, alpha), as G1 / (G1 + G2) with G ~ Gamma(alpha):
    torch.distributions.Beta takes no generator, standard_gamma does."""
    concentration = torch.full((2, count), float(alpha), device=device)
    gammas = standard_gamma(concentration, generator)                              # [2, B]
    return gammas[0] / (gammas[0] + gammas[1]).clamp_min(torch.finfo(gammas.dtype).tiny)


def _mixed_targets(labels: Tensor, own_weight: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Soft targets [B, K]: w_i for sample i's label, 1 - w_i for its partner's (sample B-1-i)."""
    one_hot = F.one_hot(labels, num_classes).to(dtype)                             # [B, K]
    return one_hot * own_weight[:, None].to(dtype) + one_hot.flip(0) * (1 - own_weight[:, None]).to(dtype)


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
    then converted to float, normalized and mixed by `mix_batch` at the stage alphas: the
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
        image_size: stage size S in px, or a schedule Stage (then also its Mixup and CutMix
            alphas, RandAugment magnitude and op table, unless given).
        mixup_alpha: stage Mixup alpha; 0 yields int64 labels, > 0 float soft labels [B, K].
        cutmix_alpha: stage CutMix alpha (0, the default without a Stage, is off); with both,
            half of each batch gets each (`mix_batch`).
        randaug_ops: RandAugment op table, "torchvision" (default) or "automl".
        randaug_magnitude: stage RandAugment level on the paper's scale (0 to 30); 0, the
            default without a Stage, leaves RandAugment out.
        randaug_num_ops: ops per image (N of RandAugment).
        train: False gives an evaluation loader: no shuffle, crop, flip, RandAugment or mixing.
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
                 cutmix_alpha: float | None = None, randaug_ops: str | None = None,
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
        self.cutmix_alpha, self.randaug_ops = 0.0, "torchvision"
        self.set_stage(image_size, mixup_alpha, randaug_magnitude, cutmix_alpha=cutmix_alpha,
                       randaug_ops=randaug_ops)

    def set_stage(self, image_size, mixup_alpha: float | None = None, randaug_magnitude: float | None = None,
                  *, cutmix_alpha: float | None = None, randaug_ops: str | None = None) -> None:
        """Switch to a stage: image size, Mixup and CutMix alphas, RandAugment magnitude and table.

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
            if cutmix_alpha is None:
                cutmix_alpha = getattr(stage, "cutmix_alpha", None)
            if randaug_ops is None:
                randaug_ops = getattr(stage, "randaug_ops", None)
        image_size = _check_image_size(image_size)
        mixup_alpha = _check_alpha(0.0 if mixup_alpha is None else mixup_alpha)
        cutmix_alpha = _check_alpha(0.0 if cutmix_alpha is None else cutmix_alpha, "cutmix_alpha")
        randaug_magnitude = check_level(0.0 if randaug_magnitude is None else randaug_magnitude)
        randaug_ops = check_choice("randaug_ops", randaug_ops or "torchvision", RANDAUG_OP_TABLES)
        self.image_size, self.mixup_alpha, self.cutmix_alpha = image_size, mixup_alpha, cutmix_alpha
        self.randaug_magnitude, self.randaug_ops = float(randaug_magnitude), randaug_ops

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
            images = batched_rand_augment(images, self.randaug_magnitude, self.randaug_num_ops, self.generator,
                                          ops=self.randaug_ops)
        return images

    def _batch(self, images: torch.Tensor, index: torch.Tensor):
        """Float, normalized and mixed: images uint8 [B, 3, S, S] of the samples `index` [B]."""
        images = images.to(self.dtype) * self.scale + self.shift           # normalized [B, 3, S, S]
        labels = self.labels[index]                                        # int64 [B]
        if self.train:
            images, labels = mix_batch(images, labels, self.mixup_alpha, self.cutmix_alpha, self.num_classes,
                                       self.generator)
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
