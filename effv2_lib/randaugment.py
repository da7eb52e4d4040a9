"""RandAugment on the paper's magnitude scale, with two op tables (Tan & Le 2021, Section 4.2).

EfficientNetV2 strengthens RandAugment (Cubuk et al. 2020) with the image size: Table 6 gives
magnitudes 5 -> 15 for V2-S, up to 25 for V2-L. Those magnitudes are levels of the TensorFlow
RandAugment of the official code (google/automl, efficientnetv2/autoaugment.py), where level 10
(``_MAX_LEVEL``) is the nominal maximum, so 15 and 25 lie past it. What a level does depends on
the op table that reads it, and this module offers two (``randaug_ops`` in a schedule):

``"torchvision"`` (the kit's default, `TorchvisionRandAugment`)
    torchvision's 14 ops and ranges, reading a paper level m as torchvision bin round(3 * m) out
    of 31 (bin 30 = the end of torchvision's range), continued linearly past level 10:

        bin = round(3 * m_paper)         (`randaug_to_torchvision`, BINS_PER_LEVEL = 3)

    Every op grows stronger with the level, which is the behaviour the paper's argument
    (stronger regularization for larger images) relies on. For Rotate (3 degrees per level)
    and Shear (0.03 per level) torchvision's range is automl's, so there a level means the same
    thing in both tables; for the other ops it does not (see below). Bins above 30 need ranges
    torchvision does not have, so `TorchvisionRandAugment` subclasses torchvision's RandAugment
    with its magnitude table continued linearly past bin 30 (our extension, not the TF code's)
    up to level `MAX_PAPER_LEVEL` = 30 (91 bins). Where a continued value stops being a valid or
    meaningful op it is capped (`_LEVEL_LIMITS`): colour factors 1 +- m keep m <= 0.99 so the
    factor stays positive, posterize keeps at least 1 bit, the solarize threshold stops at 0,
    and translation stops at half the image side. None of the caps binds at level <= 10, so
    there `TorchvisionRandAugment` is torchvision's RandAugment at ``magnitude=round(3 * m)``,
    ``num_magnitude_bins=31`` (the tests check this pixel for pixel).

``"automl"`` (the ``automl-*`` and ``paper-*`` presets, `AutomlRandAugment`)
    the official code's table: 16 ops (with Invert, Cutout and SolarizeAdd, without Identity),
    each reading the level with autoaugment.py's formula (``level_to_arg``), level / 10 = l, as
    TensorFlow executes it:

    ============================  ===========================  ===============================
    op                            argument                     level 5 / 10 / 15 / 20 / 25
    ============================  ===========================  ===============================
    Rotate                        30 l degrees, random sign    15 / 30 / 45 / 60 / 75 degrees
    ShearX, ShearY                0.3 l, random sign           0.15 / 0.3 / 0.45 / 0.6 / 0.75
    TranslateX, TranslateY        100 l px (ImageNet), sign    50 / 100 / 112 (cap) px at 224 px
    Brightness, Color,            factor 1.8 l + 0.1, no sign  1.0 (identity) / 1.9 / 2.8 / 3.7
    Contrast, Sharpness                                        / 4.6
    Posterize                     int(4 l) bits, TF: 1 to 8    2 / 4 / 6 / 8 / 1 bits kept
    Solarize                      int(256 l) modulo 256        128 / 0 / 128 / 0 / 128
    SolarizeAdd                   + int(110 l) below 128       55 / 110 / 165 / 220 / 275
    Cutout                        square of side 2 int(40 l)   40 / 80 / 120 / 160 / 200 px at 224
    AutoContrast, Equalize,       none                         -
    Invert
    ============================  ===========================  ===============================

    Two rows are what TensorFlow makes of the code, not what the code meant. Solarize: the
    code compares a uint8 image with the Python int int(256 l), meaning a threshold that rises
    with the level, so that Solarize acts on fewer pixels and stops at level 10 (AutoAugment's
    PIL convention). TensorFlow converts the int to uint8, which wraps modulo 256: at level 10
    (automl-s's last stage) and 20 (automl-l's) the threshold is 0 and every pixel is inverted,
    at 15 and 25 it is 128 again (`tf_solarize_threshold`; public since google-research/big_vision
    issue 110). Posterize: ``right_shift(image, 8 - bits)`` converts the shift to uint8 and the
    kernel clamps it to [0, 7], so below level 2.5 (0 bits asked) and from level 22.5 (9 or 10
    bits asked, a negative shift) one bit is kept (`tf_posterize_bits`). The table follows
    TensorFlow: the official models were trained that way.

    Translate and Cutout are absolute pixel counts in automl (``translate_const=100``,
    ``cutout_const=40``), the same at every training size. Ours are scaled to the image: the
    constants are read as pixels of a 224 px image (`AUTOML_REFERENCE_SIZE`, the ImageNet size
    the TF AutoAugment/RandAugment code was written for; our choice) and multiplied by
    side / 224, so at CIFAR's 32 px level 10 translates 14.3 px and cuts out a 10 px square.
    Translations are capped at half the side (ours; `_automl_translate` says why).

    Checked against TensorFlow itself (``scripts/compare_tf_randaugment.py``, TensorFlow 2.21.0
    CPU, google/automl 6a54c87, tensorflow_addons' three image ops replaced by stand-ins on
    TF's own ImageProjectiveTransformV3 kernel; 64 CIFAR-10 test images at 32 px and, upscaled,
    at 224 px; levels 2, 5, 10, 15, 20, 25, both signs; run 2026-12-03 with ``python
    scripts/compare_tf_randaugment.py --autoaugment automl/efficientnetv2/autoaugment.py
    --tf-python /tmp/tfvenv/bin/python --data cifar10/test.npz``). Max / mean absolute
    difference in grey levels, and the share of pixel values that differ, over all six levels:

    ==================================  =============================================================
    op                                  difference from TensorFlow (32 px and 224 px)
    ==================================  =============================================================
    Rotate, Equalize, Invert,           none (Rotate at 224 px: a few pixels at exact half-pixel
    Posterize, Solarize, SolarizeAdd,   ties, 0.0% of values)
    Brightness, Translate, Cutout
    AutoContrast                        at most 1, on 1.5% of values (rounding)
    Color, Sharpness                    at most 4 (level 25), mean below 1.3 (rounding, grows with
                                        the factor)
    ShearX, ShearY                      mean 0.2-1.5 on 1.4-7.7% of values at 32 px, 0.02-0.2 on
                                        0.1-1.0% at 224 px, none at level 20: only at pixels whose
                                        source lies exactly halfway between two pixels (TF rounds
                                        those up, torch's grid_sample to even)
    Contrast                            mean 63-113 at 32 px, 41-69 at 224 px (0 at level 5, the
                                        identity): the departure below
    Translate, Cutout with automl's     mean 28-53 (Translate) and 10-51 (Cutout) at 32 px: the
    absolute px at 32 px                scaling to the image and the cap, departures by design
    ==================================  =============================================================

    The comparison also found, and the table now follows, that TensorFlow shears about the first
    pixel's centre (3.6 grey levels of mean difference at level 20, 32 px, when we sheared about
    its corner) and that automl's +m translate moves the content left / up (the sign is random,
    so the distribution was the same). Departures that remain: Contrast blends towards the
    image's mean grey (PIL's and torchvision's definition), where autoaugment.py's ``contrast``
    divides the histogram's pixel count by 256 and so blends towards a constant H * W / 256 grey
    (4 at 32 px, 196 at 224 px): the large Contrast row above; Translate and Cutout scale with
    the image, Translate is capped; shear ties round differently; the ops are torchvision's
    functional ops (nearest interpolation, grey 128 fill, as TF), not ports of the TF kernels.

Magnitude 0 is an exact no-op in both tables: `effv2_lib.augment.train_transform` then leaves
RandAugment out and `batched_rand_augment` returns its input (torchvision's RandAugment at
magnitude 0 would still apply the magnitude-free ops; automl's at level 0 would too, and its
Brightness would darken to 10%, its Color, Contrast and Sharpness would use factor 0.1, its
Posterize keep 1 bit and its Solarize invert every pixel).

Per image, on the CPU and batched on a device
---------------------------------------------
`TorchvisionRandAugment` and `AutomlRandAugment` work on one image (CPU DataLoader workers),
drawing from torch's global generator as torchvision's transforms do. `batched_rand_augment`
gives every image of a batch its own ops on the batch's device, with the same table and the
same op functions (`RANDAUG_OPS`, `AUTOML_OPS`): see its docstring for how it groups images by
op and why.
"""

import math
from itertools import accumulate

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ._checks import check_choice, check_int, check_real
from .schedule import RANDAUG_OP_TABLES

__all__ = ["TorchvisionRandAugment", "AutomlRandAugment", "RANDAUGMENTS", "RANDAUG_OP_TABLES", "batched_rand_augment",
           "randaug_op_table", "automl_op_table", "randaug_to_torchvision", "draw_randaug_groups",
           "RANDAUG_OPS", "AUTOML_OPS", "MAX_PAPER_LEVEL", "RANDAUG_FILL", "cutout_at",
           "tf_solarize_threshold", "tf_posterize_bits"]

TF_MAX_LEVEL = 10            # TF RandAugment's nominal maximum level (the paper's scale)
TORCHVISION_BINS = 31        # torchvision's default num_magnitude_bins; bin 30 == TF level 10
BINS_PER_LEVEL = (TORCHVISION_BINS - 1) // TF_MAX_LEVEL     # 3
MAX_PAPER_LEVEL = 30         # highest level either table accepts (paper-L stops at 25)
RANDAUG_FILL = 128           # grey, the fill value of the TF RandAugment (``replace``)
# automl's pixel constants (distort_image_with_randaugment) and the side they are read against
AUTOML_TRANSLATE_CONST = 100
AUTOML_CUTOUT_CONST = 40
AUTOML_REFERENCE_SIZE = 224
TF_PIXEL_CENTRE = 0.5        # TF's transforms put pixel k's centre at k, torchvision's at k + 0.5


def check_level(level) -> float:
    """A RandAugment level on the paper's scale, 0 to `MAX_PAPER_LEVEL`."""
    return check_real("randaug_magnitude", level, 0.0, MAX_PAPER_LEVEL,
                      allowed=f"in [0, {MAX_PAPER_LEVEL}] on the paper's scale (TF levels, "
                              f"nominal max {TF_MAX_LEVEL})")


# --- torchvision's ops on the paper's scale -----------------------------------------------------

def randaug_to_torchvision(m_paper: float) -> int:
    """torchvision magnitude bin for a paper (TF) RandAugment level: round(3 * m_paper).

    For m_paper <= 10 use it with ``v2.RandAugment(magnitude=bin, num_magnitude_bins=31)``;
    above 10 only `TorchvisionRandAugment` has bins that far.
    """
    return round(BINS_PER_LEVEL * check_level(m_paper))


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


class TorchvisionRandAugment(v2.RandAugment):
    """torchvision's RandAugment ops, driven by a level on the paper's (TF) scale, 0 to 30.

    For levels <= 10 it equals ``v2.RandAugment(num_ops, round(3 * level), 31)``; above, each
    op's magnitude continues torchvision's range linearly (our extension), capped where the op
    stops being valid. The ops are torchvision's, not the official TF code's (`AutomlRandAugment`
    has those; module docstring).
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


def _shear(images: torch.Tensor, m: float, axis: int, fill, mode, centre: float = 0.0) -> torch.Tensor:
    """Shear by the matrix entry m; torchvision takes the angle atan(m).

    The shear is about the point (centre, centre) in torchvision's pixel coordinates, where
    pixel k spans [k, k + 1]: torchvision's RandAugment shears about 0, the corner of the first
    pixel; TensorFlow's transform (tensorflow_addons, used by automl) about its centre, 0.5.
    """
    angle = math.degrees(math.atan(m))
    return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                     shear=[angle, 0.0] if axis == 0 else [0.0, angle],
                     interpolation=mode, fill=fill, center=[centre, centre])


# How torchvision's RandAugment applies each op at a signed magnitude m to a uint8 tensor, written
# out with the public functional API so that it runs on a batch [B, C, H, W] (v2.RandAugment
# itself would give the whole batch one op). The test suite checks each entry pixel for pixel
# against TorchvisionRandAugment applied per image.
RANDAUG_OPS = {
    "Identity": lambda x, m, fill, mode: x,
    "ShearX": lambda x, m, fill, mode: _shear(x, m, 0, fill, mode),
    "ShearY": lambda x, m, fill, mode: _shear(x, m, 1, fill, mode),
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
    """The ops `TorchvisionRandAugment` draws from at `level` for H x W images: [(op, magnitude, signed)].

    Read from ``TorchvisionRandAugment._AUGMENTATION_SPACE`` at call time, in its order, so the CPU
    and device paths share one table (same ops, level mapping and caps). Magnitude-free ops
    (Identity, AutoContrast, Equalize) get 0.
    """
    bin_ = randaug_to_torchvision(level)
    table = []
    for op, (magnitudes_fn, signed) in TorchvisionRandAugment._AUGMENTATION_SPACE.items():
        if op not in RANDAUG_OPS:
            raise ValueError(f"RandAugment op {op!r} has no batched version; known: {sorted(RANDAUG_OPS)}")
        magnitudes = magnitudes_fn(BINS_PER_LEVEL * MAX_PAPER_LEVEL + 1, height, width)
        table.append((op, 0.0 if magnitudes is None else float(magnitudes[bin_]), signed))
    return table


# --- automl's ops ---------------------------------------------------------------------------------

def tf_solarize_threshold(threshold: int) -> int:
    """The threshold autoaugment.py's ``solarize`` really compares with: int(256 l) modulo 256.

    ``tf.where(image < threshold, image, 255 - image)`` compares a uint8 image with a Python
    int, and TensorFlow converts the int to the image's dtype, uint8, which wraps modulo 256
    (TF 2.21: ``uint8 image < 256`` is False everywhere). So 256 (level 10) and 512 (level 20)
    become 0 and invert every pixel, 384 (level 15) and 640 (level 25) become 128.
    """
    return int(threshold) % 256


def tf_posterize_bits(bits: int) -> int:
    """The bits autoaugment.py's ``posterize`` really keeps when asked for `bits`: 1 to 8.

    ``right_shift(image, 8 - bits)`` converts the shift to uint8 (so -1 becomes 255) and
    TensorFlow's shift kernels clamp it to [0, 7] (the width of uint8 minus one). Asking for
    0 bits (levels below 2.5) or for 9 or 10 (levels from 22.5) therefore keeps 1 bit.
    """
    shift = (8 - int(bits)) % 256                                    # the uint8 the kernel gets
    return 8 - min(shift, 7)


def _automl_translate(fraction: float, side: int) -> float:
    """automl's translate_const read at 224 px, scaled to `side`, capped at half the side.

    The cap is ours. Uncapped, the 224 px reading moves the content 112% of the side at level 25
    (paper-l's last stage), out of the image, leaving a flat grey one. The official code moves an
    absolute 100 l px at its own training sizes: at 300 px (V2-S) and 384 px (V2-M, V2-L) that is
    33% and 26% of the side at level 10, 52% at most (V2-L's level 20 at 384 px), so half the
    side keeps ours within its range.
    """
    return min(fraction * AUTOML_TRANSLATE_CONST * side / AUTOML_REFERENCE_SIZE, side / 2)


def automl_op_table(level: float, height: int, width: int) -> list[tuple[str, float, bool]]:
    """automl's RandAugment ops at `level` for H x W images: [(op, argument, signed)], in the
    order of autoaugment.py's ``available_ops``. Arguments follow ``level_to_arg`` with l =
    level / 10, as TensorFlow executes them: Solarize's threshold wraps modulo 256 and
    Posterize keeps 1 to 8 bits (`tf_solarize_threshold`, `tf_posterize_bits`). Translate and
    Cutout are scaled from 224 px to the image (module docstring). A signed op gets a random
    sign per application."""
    level = check_level(level)
    fraction = level / TF_MAX_LEVEL                                  # automl: level / _MAX_LEVEL
    enhance = fraction * 1.8 + 0.1
    return [
        ("AutoContrast", 0.0, False),
        ("Equalize", 0.0, False),
        ("Invert", 0.0, False),
        ("Rotate", fraction * 30.0, True),                                          # degrees
        ("Posterize", float(tf_posterize_bits(int(fraction * 4))), False),          # bits kept
        ("Solarize", float(tf_solarize_threshold(int(fraction * 256))), False),     # threshold
        ("Color", enhance, False),
        ("Contrast", enhance, False),
        ("Brightness", enhance, False),
        ("Sharpness", enhance, False),
        ("ShearX", fraction * 0.3, True),
        ("ShearY", fraction * 0.3, True),
        ("TranslateX", _automl_translate(fraction, width), True),                   # px
        ("TranslateY", _automl_translate(fraction, height), True),
        ("Cutout", float(int(fraction * AUTOML_CUTOUT_CONST * min(height, width) / AUTOML_REFERENCE_SIZE)),
         False),                                                                    # half side, px
        ("SolarizeAdd", float(int(fraction * 110)), False),                         # added below 128
    ]


def cutout_at(images: torch.Tensor, pad: int, fill, centre_y: torch.Tensor, centre_x: torch.Tensor
              ) -> torch.Tensor:
    """automl's cutout around given centres: rows [cy - pad, cy + pad) and columns
    [cx - pad, cx + pad), clipped to the image, set to `fill` in every channel.
    images uint8 [B, C, H, W]; centre_y, centre_x int64 [B] (autoaugment.py draws them uniformly
    in [0, H) and [0, W), as `AUTOML_OPS` does; given here so that a comparison can reuse TF's)."""
    batch, _, height, width = images.shape
    centre_y, centre_x = centre_y.view(batch, 1, 1, 1), centre_x.view(batch, 1, 1, 1)
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
    inside = ((rows >= centre_y - pad) & (rows < centre_y + pad)
              & (cols >= centre_x - pad) & (cols < centre_x + pad))                 # [B, 1, H, W]
    return images.masked_fill(inside, fill)


def _cutout(images: torch.Tensor, pad: float, fill, generator: torch.Generator | None) -> torch.Tensor:
    """automl's cutout per image: a (2 pad)-side square around a uniform centre (`cutout_at`)."""
    batch, _, height, width = images.shape
    pad = int(pad)
    if pad == 0:
        return images
    centre_y = torch.randint(height, (batch,), device=images.device, generator=generator)
    centre_x = torch.randint(width, (batch,), device=images.device, generator=generator)
    return cutout_at(images, pad, fill, centre_y, centre_x)


# How each automl op applies its argument m (signed already) to uint8 [B, C, H, W]:
# f(images, m, fill, interpolation, generator). Cutout alone draws (its centres).
AUTOML_OPS = {
    "AutoContrast": lambda x, m, fill, mode, g: TF.autocontrast(x),
    "Equalize": lambda x, m, fill, mode, g: TF.equalize(x),
    "Invert": lambda x, m, fill, mode, g: TF.invert(x),
    "Rotate": lambda x, m, fill, mode, g: TF.rotate(x, angle=m, interpolation=mode, fill=fill),
    "Posterize": lambda x, m, fill, mode, g: TF.posterize(x, bits=int(m)),
    "Solarize": lambda x, m, fill, mode, g: torch.where(x < m, x, 255 - x),          # TF: image < threshold
    "Color": lambda x, m, fill, mode, g: TF.adjust_saturation(x, m),
    "Contrast": lambda x, m, fill, mode, g: TF.adjust_contrast(x, m),
    "Brightness": lambda x, m, fill, mode, g: TF.adjust_brightness(x, m),
    "Sharpness": lambda x, m, fill, mode, g: TF.adjust_sharpness(x, m),
    "ShearX": lambda x, m, fill, mode, g: _shear(x, m, 0, fill, mode, TF_PIXEL_CENTRE),
    "ShearY": lambda x, m, fill, mode, g: _shear(x, m, 1, fill, mode, TF_PIXEL_CENTRE),
    # automl's translate_x(image, pixels) translates by -pixels: +m moves the content left / up
    "TranslateX": lambda x, m, fill, mode, g: TF.affine(
        x, angle=0.0, translate=[-m, 0.0], scale=1.0, shear=[0.0, 0.0], interpolation=mode, fill=fill),
    "TranslateY": lambda x, m, fill, mode, g: TF.affine(
        x, angle=0.0, translate=[0.0, -m], scale=1.0, shear=[0.0, 0.0], interpolation=mode, fill=fill),
    "Cutout": lambda x, m, fill, mode, g: _cutout(x, m, fill, g),
    "SolarizeAdd": lambda x, m, fill, mode, g: torch.where(                          # threshold 128
        x < 128, (x.to(torch.int16) + int(m)).clamp(0, 255).to(x.dtype), x),
}


class AutomlRandAugment(nn.Module):
    """automl's RandAugment (autoaugment.py, ``distort_image_with_randaugment``) for one image.

    `num_ops` times: an op uniform over the 16 of `automl_op_table`, applied always (automl draws
    a probability per op and discards it), with a random sign for the signed ops. uint8
    [C, H, W] in, uint8 out; the draws come from torch's global generator, as in torchvision's
    transforms, so ``torch.manual_seed`` repeats them.

    Args:
        level: magnitude on the paper's scale, 0 to 30.
        num_ops: ops applied in sequence (``num_layers`` in automl, N of RandAugment).
        fill: value of uncovered and cut-out pixels (automl's ``replace``, grey 128).
    """

    def __init__(self, level: float, num_ops: int = 2, fill=RANDAUG_FILL,
                 interpolation=v2.InterpolationMode.NEAREST) -> None:
        super().__init__()
        self.level = check_level(level)
        self.num_ops = check_int("num_ops", num_ops, 0)
        self.fill, self.interpolation = fill, interpolation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
            raise TypeError(f"AutomlRandAugment takes one uint8 image [C, H, W], got "
                            f"{getattr(image, 'dtype', type(image).__name__)} {list(getattr(image, 'shape', []))}")
        table = automl_op_table(self.level, *image.shape[-2:])
        out = image[None]
        for _ in range(self.num_ops):
            op, magnitude, signed = table[int(torch.randint(len(table), ()))]
            if signed and bool(torch.rand(()) < 0.5):
                magnitude = -magnitude
            out = AUTOML_OPS[op](out, magnitude, self.fill, self.interpolation, None)
        return out[0]

    def extra_repr(self) -> str:
        return f"level={self.level:g}, num_ops={self.num_ops}, fill={self.fill}"


# The per-image transform of each op table.
RANDAUGMENTS = {"torchvision": TorchvisionRandAugment, "automl": AutomlRandAugment}


# --- batched on the device -----------------------------------------------------------------------

def draw_randaug_groups(batch: int, num_ops: int, num_choices: int, device=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample and op slot, an op k uniform in [0, num_choices) and a sign; int64 [num_ops, B].

    The value is the (op, sign) group 2k + s, s = 1 for a negated magnitude (probability 1/2,
    as in torchvision's RandAugment; unsigned ops ignore s). Draws on `device`, no host sync.
    """
    op_index = torch.randint(num_choices, (num_ops, batch), device=device, generator=generator)
    negative = torch.rand((num_ops, batch), device=device, generator=generator) < 0.5
    return 2 * op_index + negative


# Each table: the ops at a level, f(level, H, W) -> [(op, magnitude, signed)], and how one op
# applies to a batch, f(op, images, signed magnitude, fill, interpolation, generator).
_TABLES = {
    "torchvision": (randaug_op_table, lambda op, x, m, fill, mode, g: RANDAUG_OPS[op](x, m, fill, mode)),
    "automl": (automl_op_table, lambda op, x, m, fill, mode, g: AUTOML_OPS[op](x, m, fill, mode, g)),
}


def batched_rand_augment(images: torch.Tensor, level: float, num_ops: int = 2,
                         generator: torch.Generator | None = None, *, ops: str = "torchvision",
                         fill=RANDAUG_FILL, interpolation=v2.InterpolationMode.NEAREST) -> torch.Tensor:
    """RandAugment with its own ops and signs per image, batched on the images' device.

    The per-sample semantics of `TorchvisionRandAugment` or `AutomlRandAugment` (the CPU path,
    chosen by `ops`): for each of `num_ops` slots, every image draws one op uniformly from the
    same table (`randaug_op_table` or `automl_op_table`: same ops, magnitudes and caps) and, for
    signed ops, a sign; the magnitude is the table's at `level`. The batch is then processed by
    (op, sign) group: for each slot, the images are sorted by group, and each non-empty group is
    gathered (``index_select``), transformed with the functional op at its magnitude
    (`RANDAUG_OPS` or `AUTOML_OPS`) and scattered back (``index_copy_``). Same fill and nearest
    interpolation as the CPU path.

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
        ops: the op table, "torchvision" or "automl" (module docstring).
        fill, interpolation: as `TorchvisionRandAugment` (grey 128, nearest).

    Returns:
        uint8 [B, C, H, W], a new tensor unless nothing was to be done.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor [B, C, H, W], got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [B, C, H, W] with C = 1 or 3, got {list(images.shape)}")
    num_ops = check_int("num_ops", num_ops, 0)
    op_table, apply = _TABLES[check_choice("ops", ops, RANDAUG_OP_TABLES)]
    table = op_table(level, *images.shape[-2:])                      # validates `level`
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
                    out.index_copy_(0, index, apply(op, chosen, signed_magnitude, fill, interpolation, generator))
    return out
