"""automl's RandAugment op table (google/automl, efficientnetv2/autoaugment.py), on both paths.

Expected values are derived by hand from autoaugment.py's ``level_to_arg`` with l = level / 10
(``_MAX_LEVEL`` = 10) and ``distort_image_with_randaugment``'s constants (translate_const=100,
cutout_const=40, replace=128), scaled from 224 px to the image as effv2_lib.randaugment states,
and read as TensorFlow executes them (Solarize's threshold modulo 256, Posterize's shift clamped
to [0, 7]). scripts/compare_tf_randaugment.py checks the ops against TensorFlow itself.
"""

import pytest
import torch
from torchvision.transforms import v2

from effv2_lib.augment import DeviceLoader, train_transform
from effv2_lib.data import load_cifar
from effv2_lib.randaugment import (
    AUTOML_OPS,
    RANDAUG_FILL,
    RANDAUG_OPS,
    AutomlRandAugment,
    TorchvisionRandAugment,
    automl_op_table,
    batched_rand_augment,
    randaug_op_table,
)
from effv2_lib.schedule import ProgressiveSchedule

NEAREST = v2.InterpolationMode.NEAREST

# autoaugment.py, level_to_arg, at levels 5 / 10 / 15 for a 224 px image (the constants' own scale)
AUTOML_AT_224 = {
    "AutoContrast": (0, 0, 0), "Equalize": (0, 0, 0), "Invert": (0, 0, 0),
    "Rotate": (15, 30, 45),                      # (l * 30) degrees
    "Posterize": (2, 4, 6),                      # int(l * 4) bits
    "Solarize": (128, 0, 128),                   # int(l * 256) as uint8: 128, 256 -> 0, 384 -> 128
    "Color": (1.0, 1.9, 2.8), "Contrast": (1.0, 1.9, 2.8),   # l * 1.8 + 0.1
    "Brightness": (1.0, 1.9, 2.8), "Sharpness": (1.0, 1.9, 2.8),
    "ShearX": (0.15, 0.3, 0.45), "ShearY": (0.15, 0.3, 0.45),   # l * 0.3
    "TranslateX": (50, 100, 112), "TranslateY": (50, 100, 112),  # l * translate_const, at most half the side
    "Cutout": (20, 40, 60),                      # int(l * cutout_const), half the side
    "SolarizeAdd": (55, 110, 165),               # int(l * 110)
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}  # _randomly_negate_tensor


@pytest.fixture(scope="module")
def photos():
    return load_cifar(prefer_sample=True).train.images[:64]          # uint8 [64, 3, 32, 32]


@pytest.mark.parametrize("column, level", [(0, 5), (1, 10), (2, 15)])
def test_automl_table_follows_level_to_arg(column, level):
    table = automl_op_table(level, 224, 224)
    # the 16 ops of available_ops, in its order: no Identity
    assert [op for op, _, _ in table] == list(AUTOML_AT_224)
    for op, magnitude, signed in table:
        assert magnitude == pytest.approx(AUTOML_AT_224[op][column]), op
        assert signed == (op in SIGNED), op


@pytest.mark.parametrize("level, translate, cutout", [(5, 50 * 32 / 224, 2), (10, 100 * 32 / 224, 5),
                                                      (15, 16, 8), (25, 16, 14)])   # 21.4, 35.7 px: capped
def test_translate_and_cutout_scale_from_224_px_to_the_image(level, translate, cutout):
    table = {op: magnitude for op, magnitude, _ in automl_op_table(level, 32, 32)}
    assert table["TranslateX"] == pytest.approx(translate) and table["TranslateY"] == pytest.approx(translate)
    assert table["Cutout"] == cutout                                 # int(2.86), int(5.71), int(8.57), int(14.3)
    assert table["Rotate"] == 3 * level                              # the angle does not scale


@pytest.mark.parametrize("level, bits", [(0, 1), (2, 1), (2.5, 1), (5, 2), (20, 8), (22, 8), (22.5, 1), (25, 1)])
def test_posterize_keeps_the_bits_tensorflow_keeps(level, bits):
    # shift 8 - int(0.4 level) as uint8, clamped to [0, 7]: 8 -> 7 (level < 2.5), -1 -> 255 -> 7 (level >= 22.5)
    assert dict((op, m) for op, m, _ in automl_op_table(level, 32, 32))["Posterize"] == bits


@pytest.mark.parametrize("level, threshold", [(2, 51), (5, 128), (9, 230), (10, 0), (15, 128), (20, 0), (25, 128)])
def test_solarize_threshold_wraps_modulo_256_as_in_tensorflow(level, threshold):
    assert dict((op, m) for op, m, _ in automl_op_table(level, 32, 32))["Solarize"] == threshold


def test_levels_are_validated():
    with pytest.raises(ValueError, match="randaug_magnitude"):
        automl_op_table(31, 32, 32)


def test_rotate_and_shear_mean_the_same_in_both_tables(photos):
    """The one place the tables agree: 3 degrees and 0.03 of shear per level. automl's shear is about
    the first pixel's centre (TF), torchvision's about its corner: half a pixel apart."""
    for level in (3, 5, 10):
        automl = {op: m for op, m, _ in automl_op_table(level, 32, 32)}
        torchvision = {op: m for op, m, _ in randaug_op_table(level, 32, 32)}
        for op in ("Rotate", "ShearX", "ShearY"):
            assert automl[op] == pytest.approx(torchvision[op]), (op, level)
        assert torch.equal(AUTOML_OPS["Rotate"](photos, automl["Rotate"], RANDAUG_FILL, NEAREST, None),
                           RANDAUG_OPS["Rotate"](photos, torchvision["Rotate"], RANDAUG_FILL, NEAREST))


def test_shear_is_about_the_first_pixels_centre():
    # a column ramp sheared along x by m = 0.6 (level 20): row y reads column x + 0.6 y exactly when
    # the shear is about the centre of pixel 0 (TF's transform), with no rounding ties for m = 0.6
    ramp = torch.arange(16, dtype=torch.uint8).repeat(1, 3, 16, 1)          # [1, 3, 16, 16], value = column
    out = AUTOML_OPS["ShearX"](ramp, 0.6, RANDAUG_FILL, NEAREST, None)[0, 0]
    for y in range(16):
        for x in range(16):
            source = round(x + 0.6 * y)
            assert int(out[y, x]) == (source if source < 16 else RANDAUG_FILL), (y, x)


def apply(op, images, level, sign=1.0, generator=None):
    magnitude = dict((name, m) for name, m, _ in automl_op_table(level, *images.shape[-2:]))[op]
    return AUTOML_OPS[op](images, sign * magnitude, RANDAUG_FILL, NEAREST, generator)


def test_pixel_ops_at_hand_derived_arguments(photos):
    x = photos.int()
    # Solarize: image < threshold stays, the rest becomes 255 - image. The threshold int(256 l) is
    # meant to switch Solarize off from level 10 (256 > every pixel); TF reads it as uint8, so
    # level 10 inverts every pixel and level 15 solarizes at 128 again
    assert torch.equal(apply("Solarize", photos, 5).int(), torch.where(x < 128, x, 255 - x))
    assert torch.equal(apply("Solarize", photos, 10).int(), 255 - x)
    assert torch.equal(apply("Solarize", photos, 15), apply("Solarize", photos, 5))
    # Posterize keeps the top int(l * 4) bits: 2 at level 5, 6 at level 15, and at least 1
    assert torch.equal(apply("Posterize", photos, 5).int(), x & 0b11000000)
    assert torch.equal(apply("Posterize", photos, 15).int(), x & 0b11111100)
    assert torch.equal(apply("Posterize", photos, 2).int(), x & 0b10000000)
    assert torch.equal(apply("Posterize", photos, 25).int(), x & 0b10000000)
    # SolarizeAdd: + int(l * 110) below 128, clipped at 255
    assert torch.equal(apply("SolarizeAdd", photos, 15).int(), torch.where(x < 128, (x + 165).clamp(max=255), x))
    assert torch.equal(apply("Invert", photos, 5).int(), 255 - x)
    # Brightness is blend(black, image, factor): the identity at level 5, x 2.8 (clipped) at 15
    assert torch.equal(apply("Brightness", photos, 5), photos)
    assert torch.equal(apply("Brightness", photos, 15), (photos.float() * 2.8).clamp(0, 255).to(torch.uint8))
    for op in ("Color", "Contrast", "Sharpness"):                    # factor 1.0: the identity
        assert torch.equal(apply(op, photos, 5), photos), op
        assert not torch.equal(apply(op, photos, 15), photos), op


def test_translate_moves_whole_pixels_at_an_exact_level(photos):
    # level 7 at 32 px: 0.7 * 100 * 32 / 224 = 10 px exactly. As automl's translate_x(image, pixels)
    # (tensorflow_addons' translate by -pixels), a positive argument moves the content left / up
    moved = apply("TranslateX", photos, 7)
    assert torch.equal(moved[..., :-10], photos[..., 10:]) and bool((moved[..., -10:] == RANDAUG_FILL).all())
    back = apply("TranslateY", photos, 7, sign=-1.0)
    assert torch.equal(back[..., 10:, :], photos[..., :-10, :]) and bool((back[..., :10, :] == RANDAUG_FILL).all())


def test_cutout_greys_a_square_of_twice_the_argument_around_a_random_centre():
    images = torch.zeros(400, 3, 64, 64, dtype=torch.uint8)
    out = apply("Cutout", images, 10, generator=torch.Generator().manual_seed(0))   # int(40 * 64 / 224) = 11
    grey = out == RANDAUG_FILL                                        # [400, 3, 64, 64]
    assert bool((grey.all(1) == grey.any(1)).all())                  # every channel, or none
    rows, cols = grey[:, 0].any(2), grey[:, 0].any(1)                 # [400, 64] each
    assert torch.equal(grey[:, 0], rows[:, :, None] & cols[:, None, :])   # a rectangle
    heights, widths = rows.sum(1), cols.sum(1)
    assert int(heights.max()) == int(widths.max()) == 22              # 2 * 11 when the square is inside
    assert int(heights.min()) >= 11 and int(widths.min()) >= 11       # clipped at a border, never below half
    assert len({int(i) for i in rows.float().argmax(1)}) > 20         # the centre moves


def one_op_results(image, level, op_table, ops):
    """Every image one automl op can make from `image` (uint8 [3, H, W]), Cutout excepted."""
    results = []
    for op, magnitude, signed in op_table(level, *image.shape[-2:]):
        if op == "Cutout":
            continue
        for sign in ((1.0, -1.0) if signed else (1.0,)):
            results.append(ops[op](image[None], sign * magnitude, RANDAUG_FILL, NEAREST, None)[0])
    return results


def is_a_cutout_of(out, image):
    changed = (out != image).any(0)
    return bool((out[:, changed] == RANDAUG_FILL).all())


def test_each_image_gets_one_automl_op_of_its_own_on_the_device_path(photos):
    out = batched_rand_augment(photos, 10, num_ops=1, generator=torch.Generator().manual_seed(0), ops="automl")
    used = set()
    for image, result in zip(photos, out, strict=True):
        candidates = one_op_results(image, 10, automl_op_table, AUTOML_OPS)
        match = [i for i, candidate in enumerate(candidates) if torch.equal(candidate, result)]
        assert match or is_a_cutout_of(result, image)
        used.add(match[0] if match else "cutout")
    assert len(used) > 8                                             # drawn per image, not per batch
    again = batched_rand_augment(photos, 10, num_ops=1, generator=torch.Generator().manual_seed(0), ops="automl")
    assert torch.equal(out, again)
    assert batched_rand_augment(photos, 0, ops="automl") is photos   # level 0: off


def test_the_per_image_transform_draws_from_the_same_table(photos):
    torch.manual_seed(0)
    augment = AutomlRandAugment(10, num_ops=1)
    for image in photos[:24]:
        result = augment(image)
        assert any(torch.equal(c, result) for c in one_op_results(image, 10, automl_op_table, AUTOML_OPS)) or \
            is_a_cutout_of(result, image)
    with pytest.raises(TypeError, match="one uint8 image"):
        augment(photos)
    with pytest.raises(ValueError, match="ops must be one of torchvision, automl"):
        batched_rand_augment(photos, 5, ops="tf")


def test_a_stage_picks_the_table_on_both_loaders():
    stage = ProgressiveSchedule.from_preset("automl-m", 8).stages[-1]
    assert stage.randaug_ops == "automl"
    steps = train_transform(stage).transforms
    assert any(isinstance(t, AutomlRandAugment) and t.level == stage.randaug_magnitude for t in steps)
    assert not any(isinstance(t, TorchvisionRandAugment) for t in steps)
    paper = ProgressiveSchedule.from_preset("paper-m", 8).stages[-1]    # Table 6 read with automl's table
    assert paper.randaug_ops == "automl"
    cifar = ProgressiveSchedule.from_preset("cifar10", 8).stages[-1]
    assert any(isinstance(t, TorchvisionRandAugment) for t in train_transform(cifar).transforms)
    split = load_cifar(prefer_sample=True).train
    loader = DeviceLoader(split, 16, device="cpu", image_size=stage, generator=torch.Generator().manual_seed(0))
    assert (loader.randaug_ops, loader.cutmix_alpha, loader.mixup_alpha) == ("automl", 0.2, 0.2)
    loader.set_stage(cifar)
    assert (loader.randaug_ops, loader.cutmix_alpha) == ("torchvision", 0.0)
