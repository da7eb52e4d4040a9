"""Per-stage regularization: RandAugment mapping, transforms, batched RandAugment, Mixup, dropout,
DeviceLoader."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms import v2

from effv2_lib import augment, randaugment
from effv2_lib.augment import (
    DeviceLoader,
    cutmix_batch,
    denormalize,
    eval_transform,
    mix_batch,
    mixup_batch,
    set_dropout,
    train_transform,
)
from effv2_lib.data import CIFAR10_MEAN, CIFAR10_STD, CifarSplit, load_cifar
from effv2_lib.randaugment import (
    TorchvisionRandAugment,
    batched_rand_augment,
    randaug_op_table,
    randaug_to_torchvision,
)

SIZES = (16, 24, 32)


@pytest.fixture(scope="module")
def sample():
    return load_cifar(prefer_sample=True)


@pytest.fixture(scope="module")
def images(sample):
    return sample.train.images[:16]                      # uint8 [16, 3, 32, 32], real photos


def normalized(images_uint8):
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


# --- RandAugment magnitude mapping ------------------------------------------------------------

@pytest.mark.parametrize("m_paper, bin_", [(0, 0), (1, 3), (5, 15), (8 + 1 / 3, 25), (10, 30),
                                           (11 + 2 / 3, 35), (15, 45), (25, 75), (30, 90)])
def test_paper_magnitude_maps_to_three_bins_per_level(m_paper, bin_):
    assert randaug_to_torchvision(m_paper) == bin_


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (30.5, ValueError), (float("nan"), ValueError),
                                        ("5", TypeError), (True, TypeError)])
def test_magnitude_outside_the_scale_is_rejected(bad, error):
    with pytest.raises(error, match="randaug_magnitude"):
        randaug_to_torchvision(bad)


@pytest.mark.parametrize("size", [24, 32])
def test_magnitude_table_equals_torchvision_up_to_level_10(size):
    ours, theirs = TorchvisionRandAugment._AUGMENTATION_SPACE, v2.RandAugment._AUGMENTATION_SPACE
    assert ours.keys() == theirs.keys()
    for op, (their_range, signed) in theirs.items():
        expected = their_range(31, size, size)
        got = ours[op][0](91, size, size)
        assert ours[op][1] == signed
        if expected is None:
            assert got is None
        else:
            assert torch.allclose(got[:31].double(), expected.double(), atol=1e-6), op


def test_levels_above_10_continue_linearly_and_stay_valid():
    space = TorchvisionRandAugment._AUGMENTATION_SPACE
    level_15 = {op: fn(91, 32, 32)[45] for op, (fn, _) in space.items() if fn(91, 32, 32) is not None}
    assert float(level_15["Rotate"]) == pytest.approx(45.0)          # 3 degrees per level, as TF
    assert float(level_15["ShearX"]) == pytest.approx(0.45)          # 0.03 per level, as TF
    assert float(level_15["TranslateX"]) == 16.0                     # capped at half the side
    assert float(level_15["Brightness"]) == pytest.approx(0.99)      # factor 1 - m stays > 0
    assert int(level_15["Posterize"]) == 2 and float(level_15["Solarize"]) == 0.0
    assert int(space["Posterize"][0](91, 32, 32)[75]) == 1           # level 25: at least 1 bit


@pytest.mark.parametrize("level", [1, 5, 8 + 1 / 3, 10])
def test_paper_randaugment_is_torchvision_randaugment_up_to_level_10(images, level):
    for seed in range(len(images)):
        torch.manual_seed(seed)
        ours = TorchvisionRandAugment(level)(images[seed])
        torch.manual_seed(seed)
        theirs = v2.RandAugment(2, randaug_to_torchvision(level), 31, fill=128)(images[seed])
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("op", sorted(v2.RandAugment._AUGMENTATION_SPACE))
@pytest.mark.parametrize("size", SIZES)
def test_every_op_works_at_the_highest_level(images, op, size):
    only_op = type("OnlyOp", (TorchvisionRandAugment,),
                   {"_AUGMENTATION_SPACE": {op: TorchvisionRandAugment._AUGMENTATION_SPACE[op]}})
    image = v2.functional.resize(images[0], [size, size], antialias=True)
    torch.manual_seed(0)
    out = only_op(30, num_ops=3)(image)
    assert out.shape == (3, size, size) and out.dtype == torch.uint8


# --- batched RandAugment (device path) -------------------------------------------------------

def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch24(images):
    return v2.functional.resize(images, [24, 24], antialias=True)      # uint8 [16, 3, 24, 24]


def test_batched_rand_augment_at_magnitude_zero_is_the_identity(images):
    generator = seeded()
    assert batched_rand_augment(images, 0, 2, generator) is images
    assert batched_rand_augment(images, 10, 0, generator) is images
    assert torch.equal(generator.get_state(), seeded().get_state())    # drew nothing


@pytest.mark.parametrize("op", sorted(v2.RandAugment._AUGMENTATION_SPACE))
def test_each_batched_op_equals_paper_randaugment_per_image(batch24, monkeypatch, op):
    # the space narrowed to one op: every image gets it, with its own sign when signed
    magnitudes_fn, signed = TorchvisionRandAugment._AUGMENTATION_SPACE[op]
    monkeypatch.setattr(TorchvisionRandAugment, "_AUGMENTATION_SPACE", {op: (magnitudes_fn, signed)})
    out = batched_rand_augment(batch24, 15, 1, seeded())

    def per_image(sign):        # the CPU path with the sign fixed: the table negated, unsigned
        fixed = lambda *args: None if magnitudes_fn(*args) is None else sign * magnitudes_fn(*args)  # noqa: E731
        reference = type("Fixed", (TorchvisionRandAugment,), {"_AUGMENTATION_SPACE": {op: (fixed, False)}})(15, 1)
        return torch.stack([reference(image) for image in batch24])

    plus = (out == per_image(1)).flatten(1).all(1)                     # [16] bool
    minus = (out == per_image(-1)).flatten(1).all(1) if signed else plus
    assert bool((plus | minus).all()), op
    if signed:
        assert bool((plus & ~minus).any()) and bool((minus & ~plus).any()), op


def test_batched_rand_augment_picks_ops_per_sample(images):
    copies = images[:1].expand(64, 3, 32, 32).contiguous()              # 64 copies of one photo
    out = batched_rand_augment(copies, 10, 2, seeded())
    assert len(torch.unique(out.flatten(1), dim=0)) > 40
    # what it fixes: torchvision's RandAugment on a batch gives every image the same ops
    torch.manual_seed(0)
    same = v2.RandAugment(2, 30, 31, fill=128)(copies)
    assert len(torch.unique(same.flatten(1), dim=0)) == 1


def test_batched_rand_augment_is_deterministic_under_a_generator(batch24):
    runs = [batched_rand_augment(batch24, 8, 2, seeded(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (5, 3, 24, 24), (4, 1, 32, 32), (0, 3, 32, 32)])
def test_batched_rand_augment_keeps_dtype_shape_and_input(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=seeded())
    before = images.clone()
    out = batched_rand_augment(images, 25, 3, seeded())
    assert out.shape == shape and out.dtype == torch.uint8
    assert torch.equal(images, before)                                 # input untouched


def test_batched_rand_augment_validates(images):
    with pytest.raises(TypeError, match="uint8"):
        batched_rand_augment(images.float(), 5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        batched_rand_augment(images[0], 5)
    with pytest.raises(ValueError, match="randaug_magnitude"):
        batched_rand_augment(images, 31)
    with pytest.raises(ValueError, match="num_ops"):
        batched_rand_augment(images, 5, -1)


def test_op_table_is_the_cpu_paths_table():
    table = randaug_op_table(15, 32, 32)
    assert [op for op, _, _ in table] == list(TorchvisionRandAugment._AUGMENTATION_SPACE)
    magnitudes = {op: m for op, m, _ in table}
    assert magnitudes["Rotate"] == pytest.approx(45.0) and magnitudes["TranslateX"] == 16.0
    assert magnitudes["Identity"] == 0.0


# --- per-sample transforms --------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("magnitude", [0, 10, 15])
def test_train_transform_shapes_per_stage(images, size, magnitude):
    torch.manual_seed(0)
    out = train_transform(size, magnitude)(images[0])
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    raw = train_transform(size, magnitude, normalize=False)(images[0])
    assert raw.shape == (3, size, size) and raw.dtype == torch.uint8


def test_train_transform_takes_a_stage(images):
    stage = SimpleNamespace(image_size=24, randaug_magnitude=15.0, dropout=0.2, mixup_alpha=0.1)
    transform = train_transform(stage)
    assert any(isinstance(t, TorchvisionRandAugment) and t.level == 15.0 for t in transform.transforms)
    assert transform(images[0]).shape == (3, 24, 24)
    override = train_transform(stage, randaug_magnitude=0)
    assert not any(isinstance(t, v2.RandAugment) for t in override.transforms)


def test_train_transform_takes_a_real_schedule_stage(images):
    from effv2_lib.schedule import ProgressiveSchedule
    for stage in ProgressiveSchedule.from_preset("cifar10").stages:
        assert train_transform(stage)(images[0]).shape == (3, stage.image_size, stage.image_size)


def test_magnitude_zero_is_exactly_no_randaugment(images):
    with_zero = train_transform(32, 0)
    assert not any(isinstance(t, v2.RandAugment) for t in with_zero.transforms)
    reference = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    for seed in range(8):
        torch.manual_seed(seed)
        ours = with_zero(images[seed])
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(images[seed]))
    # why RandAugment is left out rather than run at magnitude 0: torchvision's still changes images
    changed = 0
    for seed in range(16):
        torch.manual_seed(seed)
        changed += not torch.equal(v2.RandAugment(2, 0, 31)(images[seed]), images[seed])
    assert changed > 0


def test_train_transform_is_deterministic_under_a_seed(images):
    transform = train_transform(24, 10)
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(torch.stack([transform(image) for image in images]))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("size", SIZES)
def test_eval_transform_only_resizes_and_normalizes(images, size):
    out = eval_transform(size)(images[0])
    assert out.shape == (3, size, size)
    assert torch.equal(out, eval_transform(size)(images[0]))
    if size == 32:
        assert torch.allclose(out, normalized(images[0]), atol=1e-6)
    assert torch.allclose(denormalize(eval_transform(32)(images[0])), images[0] / 255, atol=1e-6)


def test_transform_arguments_are_validated():
    with pytest.raises(ValueError, match="image_size"):
        train_transform(4)
    with pytest.raises(TypeError, match="image_size"):
        eval_transform(24.0)
    with pytest.raises(ValueError, match="randaug_magnitude"):
        train_transform(32, 31)


# --- Mixup ------------------------------------------------------------------------------------

def test_mixup_alpha_zero_is_the_identity(images):
    batch, labels = normalized(images), torch.arange(16) % 10
    mixed, targets = mixup_batch(batch, labels, 0.0, 10)
    assert mixed is batch and targets is labels and targets.dtype == torch.int64


def test_mixup_mixes_each_sample_with_the_reversed_batch(images):
    batch, labels = normalized(images[:8]), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    mixed, targets = mixup_batch(batch, labels, 0.4, 10, torch.Generator().manual_seed(0))
    assert targets.shape == (8, 10) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8))
    lam = targets[torch.arange(8), labels]                             # weight of the own label
    assert bool((lam >= 0.5).all()) and len(torch.unique(lam)) > 1     # per-sample, folded
    assert torch.allclose(targets[torch.arange(8), labels.flip(0)], 1 - lam)
    expected = lam.view(8, 1, 1, 1) * batch + (1 - lam.view(8, 1, 1, 1)) * batch.flip(0)
    assert torch.allclose(mixed, expected, atol=1e-6)
    logits = torch.randn(8, 10)
    assert torch.isfinite(F.cross_entropy(logits, targets, label_smoothing=0.1))


def test_mixup_is_deterministic_under_a_generator(images):
    batch, labels = normalized(images), torch.arange(16) % 10
    runs = [mixup_batch(batch, labels, 0.2, 10, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_mixup_alpha_is_validated(images):
    with pytest.raises(ValueError, match="mixup_alpha"):
        mixup_batch(normalized(images), torch.zeros(16, dtype=torch.long), -0.1, 10)


# --- CutMix, and Mixup with CutMix ------------------------------------------------------------

def constant_images(batch, size=16):
    """float [B, 3, size, size], image i filled with the value i: a pixel tells whose it is."""
    return torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def test_cutmix_pastes_a_box_of_the_reversed_batch_weighted_by_its_area():
    """automl's cutmix_mask: box sides int(sqrt(1 - lambda) * side) around a uniform centre, clipped;
    the label weight is the area pasted (per image here; automl averages it over the half batch)."""
    batch = 64
    images, labels = constant_images(batch), torch.arange(batch)
    mixed, targets = cutmix_batch(images, labels, 1.0, batch, torch.Generator().manual_seed(0))
    partner = batch - 1 - labels
    own_pixels = (mixed == images).all(1).flatten(1).float().mean(1)             # [B]
    from_partner = (mixed == partner.float().view(-1, 1, 1, 1)).all(1)          # [B, 16, 16]
    assert bool(((mixed == images) | (mixed == partner.float().view(-1, 1, 1, 1))).all())
    assert torch.allclose(targets[labels, partner], from_partner.flatten(1).float().mean(1))
    assert torch.allclose(targets[labels, labels], own_pixels) and torch.allclose(targets.sum(1), torch.ones(batch))
    rows, cols = from_partner.any(2), from_partner.any(1)
    assert torch.equal(from_partner, rows[:, :, None] & cols[:, None, :])       # a rectangle
    # lambda ~ Beta(1, 1) is uniform: the box's side fraction sqrt(1 - lambda) spans (0, 1)
    assert float(targets[labels, partner].max()) > 0.5 and float(targets[labels, partner].min()) < 0.05
    assert cutmix_batch(images, labels, 0.0, batch) == (images, labels)
    with pytest.raises(ValueError, match="cutmix_alpha"):
        cutmix_batch(images, labels, -1.0, batch)


def test_cutmix_area_is_measured_after_clipping_at_the_border():
    # lambda near 0 gives a box about the size of the image, always clipped by the border
    images, labels = constant_images(32), torch.arange(32)
    mixed, targets = cutmix_batch(images, labels, 0.05, 32, torch.Generator().manual_seed(1))
    pasted = (mixed == (31 - labels).float().view(-1, 1, 1, 1)).all(1).flatten(1).float().mean(1)
    assert torch.allclose(targets[labels, 31 - labels], pasted)
    assert float(pasted.min()) < 0.75 < float(pasted.max())   # clipped boxes: less than the full area


def test_mix_batch_gives_half_the_batch_mixup_and_half_cutmix():
    """automl datasets.py, mixing: with both alphas, Mixup on image[:B // 2], CutMix on image[B // 2:],
    each half mixed with itself reversed."""
    batch = 12                                    # halves of 6: no image is its own partner
    images, labels = constant_images(batch), torch.arange(batch)
    mixed, targets = mix_batch(images, labels, 0.4, 1.0, batch, torch.Generator().manual_seed(0))
    half = batch // 2
    first, second = labels[:half], labels[half:]
    # Mixup half: partner i <-> 5 - i, every pixel the weighted mean of the two values
    partner = half - 1 - first
    lam = targets[first, first]
    assert torch.allclose(targets[first, partner], 1 - lam) and bool((lam >= 0.5).all())
    expected = lam * first + (1 - lam) * partner
    assert torch.allclose(mixed[:half], expected.view(-1, 1, 1, 1).expand(-1, 3, 16, 16))
    # CutMix half: partner j <-> 17 - j, pixels either own or partner, weights = area
    partner = 3 * half - 1 - second
    values = mixed[half:]
    assert bool(((values == second.float().view(-1, 1, 1, 1)) | (values == partner.float().view(-1, 1, 1, 1))).all())
    pasted = (values == partner.float().view(-1, 1, 1, 1)).all(1).flatten(1).float().mean(1)
    assert torch.allclose(targets[second, partner], pasted)
    # nothing crosses the halves
    assert float(targets[:half, half:].abs().sum()) == 0 and float(targets[half:, :half].abs().sum()) == 0


def test_mix_batch_without_cutmix_is_exactly_mixup(images):
    batch, labels = normalized(images), torch.arange(16) % 10
    ours = mix_batch(batch, labels, 0.2, 0.0, 10, torch.Generator().manual_seed(5))
    theirs = mixup_batch(batch, labels, 0.2, 10, torch.Generator().manual_seed(5))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    only_cutmix = mix_batch(batch, labels, 0.0, 0.5, 10, torch.Generator().manual_seed(5))
    assert torch.equal(only_cutmix[1], cutmix_batch(batch, labels, 0.5, 10, torch.Generator().manual_seed(5))[1])
    assert mix_batch(batch, labels, 0.0, 0.0, 10)[1] is labels


# --- dropout ----------------------------------------------------------------------------------

def test_set_dropout_sets_every_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 2)))
    assert set_dropout(model, 0.35) == 2
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.35, 0.35]


def test_set_dropout_on_the_cifar_model():
    from effv2_lib.model import efficientnetv2_cifar_tiny
    model = efficientnetv2_cifar_tiny(num_classes=10)
    set_dropout(model, 0.25)
    assert model.classifier[0].p == 0.25


@pytest.mark.parametrize("rate, error", [(1.0, ValueError), (-0.1, ValueError), ("0.2", TypeError)])
def test_set_dropout_validates(rate, error):
    with pytest.raises(error, match="rate"):
        set_dropout(nn.Sequential(nn.Dropout(0.1)), rate)


def test_set_dropout_needs_a_dropout():
    with pytest.raises(ValueError, match="no nn.Dropout"):
        set_dropout(nn.Linear(2, 2), 0.1)


# --- DeviceLoader -----------------------------------------------------------------------------

def loader(split, batch_size=32, seed=0, **kwargs):
    return DeviceLoader(split, batch_size, device="cpu", generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("size", SIZES)
def test_device_loader_shapes_and_targets_per_stage(sample, size):
    plain = loader(sample.train, image_size=size)
    images, labels = next(iter(plain))
    assert images.shape == (32, 3, size, size) and images.dtype == torch.float32
    assert labels.shape == (32,) and labels.dtype == torch.int64
    plain.set_stage(SimpleNamespace(image_size=size, mixup_alpha=0.2))
    images, targets = next(iter(plain))
    assert images.shape == (32, 3, size, size)
    assert targets.shape == (32, 10) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(32))


@pytest.mark.parametrize("augment_chunk", [8192, 24])  # one chunk; chunks of 3 batches, the last one short
def test_device_loader_covers_every_index_once_per_epoch(augment_chunk):
    # image i is the constant i, so any crop or flip of it still says which image it was
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 32, 32).contiguous()
    split = CifarSplit(images, torch.arange(50) % 10, [str(c) for c in range(10)])
    for drop_last, expected_batches in ((False, 7), (True, 6)):
        epoch = loader(split, batch_size=8, drop_last=drop_last, augment_chunk=augment_chunk)
        assert len(list(epoch)) == expected_batches
        assert len(epoch) == expected_batches
        seen = []
        for batch, labels in epoch:
            pixels = denormalize(batch) * 255                      # [B, 3, 32, 32], constant per image
            seen += pixels.mean((1, 2, 3)).round().long().tolist()
            assert torch.equal(labels, torch.tensor(seen[-len(labels):]) % 10)
        assert len(seen) == len(set(seen)) == (50 if not drop_last else 48)
    eval_order = [int(y) for _, labels in loader(split, batch_size=8, train=False, augment_chunk=augment_chunk)
                  for y in labels]
    assert eval_order == (torch.arange(50) % 10).tolist()


def test_device_loader_crops_and_flips_each_sample_independently(sample):
    one = sample.train.images[:1].expand(64, 3, 32, 32).contiguous()     # 64 copies of one photo
    split = CifarSplit(one, torch.zeros(64, dtype=torch.long), sample.classes)
    batch, _ = next(iter(loader(split, batch_size=64)))
    crops = (denormalize(batch) * 255).round().to(torch.uint8)
    assert len(torch.unique(crops.flatten(1), dim=0)) > 20           # not one crop for the batch
    # every output is a 32 px window of the reflect-padded photo, mirrored or not
    padded = F.pad(one[:1].float(), (4, 4, 4, 4), mode="reflect")[0].to(torch.uint8)
    windows = torch.stack([padded[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)])
    plain, mirrored = windows.flatten(1), windows.flip(-1).flatten(1)   # [81, 3*32*32] each
    is_plain = torch.stack([(plain == crop).all(1).any() for crop in crops.flatten(1)])
    is_mirrored = torch.stack([(mirrored == crop).all(1).any() for crop in crops.flatten(1)])
    assert bool((is_plain | is_mirrored).all())
    assert bool((is_plain & ~is_mirrored).any()) and bool((is_mirrored & ~is_plain).any())  # flips per sample


def test_device_loader_eval_mode_matches_eval_transform(sample):
    for size in (32, 16):
        batch, labels = next(iter(loader(sample.test, batch_size=16, train=False, image_size=size,
                                         mixup_alpha=0.5, randaug_magnitude=10)))
        expected = torch.stack([eval_transform(size)(image) for image in sample.test.images[:16]])
        assert torch.allclose(batch, expected, atol=1e-5)              # resized in uint8, as on the CPU
        assert torch.equal(labels, sample.test.labels[:16])


def test_device_loader_set_stage_takes_the_stage_randaugment(sample):
    from effv2_lib.schedule import ProgressiveSchedule
    stages = ProgressiveSchedule.from_preset("cifar10").stages
    epoch = loader(sample.train, image_size=stages[0])
    assert (epoch.image_size, epoch.randaug_magnitude) == (stages[0].image_size, stages[0].randaug_magnitude)
    epoch.set_stage(stages[-1])
    assert (epoch.image_size, epoch.mixup_alpha, epoch.randaug_magnitude) == (
        stages[-1].image_size, stages[-1].mixup_alpha, stages[-1].randaug_magnitude)
    epoch.set_stage(stages[-1], randaug_magnitude=0)                   # an explicit value wins
    assert epoch.randaug_magnitude == 0.0 and epoch.mixup_alpha == stages[-1].mixup_alpha
    epoch.set_stage(24, randaug_magnitude=7.5)
    assert (epoch.image_size, epoch.mixup_alpha, epoch.randaug_magnitude) == (24, 0.0, 7.5)
    epoch.set_stage(24)                                                # a plain size: regularizers off
    assert epoch.randaug_magnitude == 0.0
    with pytest.raises(ValueError, match="randaug_magnitude"):
        epoch.set_stage(24, randaug_magnitude=31)
    assert epoch.randaug_magnitude == 0.0                              # a rejected stage changes nothing
    with pytest.raises(ValueError, match="randaug_num_ops"):
        loader(sample.train, randaug_num_ops=-1)


def test_device_loader_randaugments_each_sample_at_the_stage_size(sample, monkeypatch):
    calls = []

    def spy(images, level, num_ops, generator, ops):                   # records, changes nothing
        calls.append((images.dtype, tuple(images.shape), level, num_ops, ops))
        return images
    plain = next(iter(loader(sample.train, image_size=24, augment_chunk=100)))[0]
    monkeypatch.setattr(augment, "batched_rand_augment", spy)
    spied = [images for images, _ in loader(sample.train, image_size=24, randaug_magnitude=6, randaug_num_ops=3,
                                            augment_chunk=100)]
    # once per chunk of 3 batches of 32 (augment_chunk rounded down), after resize, before float
    assert len(spied) == 78 and len(calls) == 26
    assert set(calls) == {(torch.uint8, (96, 3, 24, 24), 6.0, 3, "torchvision")}
    assert torch.equal(spied[0], plain)
    monkeypatch.undo()
    augmented = next(iter(loader(sample.train, image_size=24, randaug_magnitude=6, augment_chunk=100)))[0]
    assert augmented.shape == plain.shape and augmented.dtype == plain.dtype
    changed = (augmented != plain).flatten(1).any(1)                    # same crops, then RandAugment
    assert int(changed.sum()) > 0.8 * len(changed)


def test_device_loader_is_deterministic_under_a_generator(sample):
    def epoch(seed):
        return [batch for batch, _ in loader(sample.train, batch_size=500, seed=seed, mixup_alpha=0.2)]
    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    torch.manual_seed(5)
    a = next(iter(DeviceLoader(sample.train, 8, device="cpu")))[0]
    torch.manual_seed(5)
    assert torch.equal(a, next(iter(DeviceLoader(sample.train, 8, device="cpu")))[0])


def test_device_loader_channels_last_and_validation(sample):
    batch, _ = next(iter(loader(sample.train, channels_last=True, image_size=24)))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="batch_size"):
        loader(sample.train, batch_size=0)
    with pytest.raises(ValueError, match="image_size"):
        loader(sample.train, image_size=4)
    with pytest.raises(ValueError, match="mixup_alpha"):
        loader(sample.train).set_stage(32, -1.0)


def test_device_loader_reads_back_only_once_per_chunk(sample, monkeypatch):
    # Every read of a device tensor's value waits for the GPU; count them (same code on the CPU).
    # The RandAugment op table is left out: it reads torchvision's magnitude tables, which live
    # in host memory even when training on a GPU.
    reads, in_table = [], [False]

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            if not in_table[0]:
                reads.append(name)
            return method(self, *args, **kwargs)
        return wrapper

    def table_from_host(*args):
        in_table[0] = True
        try:
            return op_table(*args)
        finally:
            in_table[0] = False

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    op_table, apply = randaugment._TABLES["torchvision"]
    monkeypatch.setitem(randaugment._TABLES, "torchvision", (table_from_host, apply))
    settings = dict(image_size=24, mixup_alpha=0.2, augment_chunk=320)  # 10 batches of 32 per chunk
    assert len(list(loader(sample.train, **settings))) == 78 and reads == []
    assert len(list(loader(sample.train, randaug_magnitude=5, **settings))) == 78
    assert reads == ["tolist"] * 8  # RandAugment's group sizes, once for each of the 8 chunks


# --- the private APIs the kit relies on ---------------------------------------------------------

def test_torchvision_randaugment_space_keeps_the_contract_we_extend():
    """TorchvisionRandAugment extends torchvision's private v2.RandAugment._AUGMENTATION_SPACE; if a release
    changes it, this says so by name instead of failing somewhere in an augmentation."""
    space = getattr(v2.RandAugment, "_AUGMENTATION_SPACE", None)
    where = f"torchvision {torchvision.__version__}"
    assert isinstance(space, dict) and space, f"{where}: v2.RandAugment._AUGMENTATION_SPACE is gone or not a dict"
    for op, entry in space.items():
        assert isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0]) and isinstance(entry[1], bool), (
            f"{where}: _AUGMENTATION_SPACE[{op!r}] is no longer (magnitudes_fn, signed)")
        magnitudes = entry[0](31, 32, 32)
        assert magnitudes is None or (isinstance(magnitudes, torch.Tensor) and magnitudes.shape == (31,)), (
            f"{where}: _AUGMENTATION_SPACE[{op!r}][0](num_bins, height, width) no longer gives num_bins magnitudes")


def test_torch_standard_gamma_takes_a_generator():
    """mixup_batch draws Beta(alpha, alpha) through torch's private torch._standard_gamma with a generator."""
    assert hasattr(torch, "_standard_gamma"), f"torch {torch.__version__} has no torch._standard_gamma"
    draws = [torch._standard_gamma(torch.full((5,), 0.4), generator=torch.Generator().manual_seed(3))
             for _ in range(2)]
    assert torch.equal(*draws), f"torch {torch.__version__}: _standard_gamma ignores its generator"


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_the_gamma_fallback_draws_the_gamma_distribution(alpha, monkeypatch):
    """Without torch._standard_gamma the draws come from Marsaglia & Tsang's method: Gamma(a, 1) has
    mean a and variance a; 40,000 draws put the sample mean within about 4 standard errors."""
    monkeypatch.delattr(torch, "_standard_gamma")
    generator = torch.Generator().manual_seed(0)
    draws = augment.standard_gamma(torch.full((40_000,), alpha), generator).double()
    assert (draws > 0).all()
    standard_error = (alpha / len(draws)) ** 0.5
    assert abs(draws.mean().item() - alpha) < 4 * standard_error
    assert draws.var().item() == pytest.approx(alpha, rel=0.1)
    again = augment.standard_gamma(torch.full((40_000,), alpha), torch.Generator().manual_seed(0))
    assert torch.equal(again.double(), draws)  # the generator decides every draw
