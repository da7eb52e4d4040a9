"""Progressive learning schedule: Algorithm 1 of the paper, the official code's variant, presets."""

import dataclasses
import json
from itertools import pairwise

import pytest

from effv2_lib.schedule import PRESETS, ProgressiveSchedule, Stage


def column(schedule, attr):
    return [getattr(stage, attr) for stage in schedule.stages]


def test_paper_s_matches_algorithm_1_by_hand():
    schedule = ProgressiveSchedule.from_preset("paper-s")
    # S_i = 128 + (300 - 128) * i / 3 = 128, 185.33, 242.67, 300
    assert column(schedule, "image_size") == [128, 185, 243, 300]
    assert column(schedule, "randaug_magnitude") == pytest.approx([5, 8 + 1 / 3, 11 + 2 / 3, 15])
    assert column(schedule, "dropout") == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert column(schedule, "mixup_alpha") == [0.0] * 4
    # 350 = 88 + 88 + 87 + 87: "about 87 epochs per stage", the longer ones first
    assert column(schedule, "num_epochs") == [88, 88, 87, 87]
    assert schedule.stages[-1].end_epoch == 350


@pytest.mark.parametrize("name, final_size, randaug, mixup, dropout", [
    ("paper-m", 380, (5, 20), (0, 0.2), (0.1, 0.4)),
    ("paper-l", 380, (5, 25), (0, 0.4), (0.1, 0.5)),
])
def test_paper_m_l_endpoints_follow_table_6(name, final_size, randaug, mixup, dropout):
    first, *_, last = ProgressiveSchedule.from_preset(name).stages
    assert (first.image_size, last.image_size) == (128, final_size)
    assert (first.randaug_magnitude, last.randaug_magnitude) == randaug
    assert (first.mixup_alpha, last.mixup_alpha) == mixup
    assert (first.dropout, last.dropout) == dropout


def test_automl_s_follows_the_official_code():
    schedule = ProgressiveSchedule.from_preset("automl-s")
    # int(128 + (300 - 128) * (i + 1) / 4): the code never trains at 128 px
    assert column(schedule, "image_size") == [171, 214, 257, 300]
    assert column(schedule, "randaug_magnitude") == pytest.approx([5, 5 + 5 / 3, 5 + 10 / 3, 10])
    assert column(schedule, "dropout") == [0.2] * 4  # its dropout ramp is never applied
    # boundaries int(i / 4 * 350) = 0, 87, 175, 262
    assert column(schedule, "start_epoch") == [0, 87, 175, 262]


def test_automl_m_l_sizes_and_mixup():
    m = ProgressiveSchedule.from_preset("automl-m")
    assert column(m, "image_size") == [192, 256, 320, 384]
    assert column(m, "mixup_alpha") == pytest.approx([0, 0.2 / 3, 0.4 / 3, 0.2])
    assert ProgressiveSchedule.from_preset("automl-l").stages[-1].mixup_alpha == 0.5


@pytest.mark.parametrize("name, alpha", [("automl-s", 0.0), ("automl-m", 0.2), ("automl-l", 0.5)])
def test_automl_presets_ramp_cutmix_like_mixup_and_use_automls_op_table(name, alpha):
    """effnetv2_configs.py sets cutmix_alpha = mixup_alpha (0 / 0.2 / 0.5 for S / M / L) and main.py
    ramps both with linspace(0, alpha, M); autoaugment.py's op table drives RandAugment."""
    schedule = ProgressiveSchedule.from_preset(name)
    assert column(schedule, "cutmix_alpha") == pytest.approx([0, alpha / 3, 2 * alpha / 3, alpha])
    assert column(schedule, "cutmix_alpha") == column(schedule, "mixup_alpha")
    assert set(column(schedule, "randaug_ops")) == {"automl"}
    assert ("CutMix a" in schedule.table()) == (alpha > 0) and "automl RandAugment ops" in schedule.table()


def test_cutmix_and_op_table_follow_the_rule_unless_given():
    paper = ProgressiveSchedule(8, 4, image_size=(16, 32), mixup=(0, 0.3))
    assert set(column(paper, "cutmix_alpha")) == {0.0} and set(column(paper, "randaug_ops")) == {"torchvision"}
    assert "CutMix" not in paper.table()
    given = ProgressiveSchedule(8, 4, image_size=(16, 32), mixup=(0, 0.3), cutmix=(0.1, 0.4), randaug_ops="automl")
    assert column(given, "cutmix_alpha") == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert set(column(given, "randaug_ops")) == {"automl"}
    automl = ProgressiveSchedule(8, 4, image_size=(16, 32), mixup=(0, 0.3), cutmix=(0, 0), randaug_ops="torchvision",
                                 rule="automl")
    assert set(column(automl, "cutmix_alpha")) == {0.0} and set(column(automl, "randaug_ops")) == {"torchvision"}
    with pytest.raises(ValueError, match="randaug_ops must be one of"):
        ProgressiveSchedule(8, 4, image_size=(16, 32), randaug_ops="kornia")
    with pytest.raises(ValueError, match="cutmix"):
        ProgressiveSchedule(8, 4, image_size=(16, 32), cutmix=(0, -1))


def test_schedules_stored_before_cutmix_existed_still_load():
    """run.json, summaries and checkpoints written before the cutmix and randaug_ops fields hold
    neither, and their stages lack cutmix_alpha and randaug_ops: they trained without CutMix, with
    torchvision's ops, even under the automl rule."""
    for name in ("cifar10", "automl-m"):
        old = ProgressiveSchedule.from_preset(name, 8).to_dict()
        del old["cutmix"], old["randaug_ops"]
        for stage in old["stages"]:
            del stage["cutmix_alpha"], stage["randaug_ops"]
        restored = ProgressiveSchedule.from_dict(old)
        assert set(column(restored, "cutmix_alpha")) == {0.0} and restored.randaug_ops == "torchvision"
        assert column(restored, "mixup_alpha") == column(ProgressiveSchedule.from_preset(name, 8), "mixup_alpha")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_presets_grow_to_32_px_in_multiples_of_4(name):
    schedule = ProgressiveSchedule.from_preset(name)
    sizes = column(schedule, "image_size")
    assert sizes == [16, 20, 28, 32]  # 16 + 16 * i / 3 = 16, 21.3, 26.7, 32 rounded to 4
    assert all(size % 4 == 0 for size in sizes)
    for attr in ("dropout", "randaug_magnitude", "mixup_alpha"):
        values = column(schedule, attr)
        assert values == sorted(values) and values[0] < values[-1]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fixed_baseline_is_the_final_stage_of_its_progressive_preset(name):
    fixed = ProgressiveSchedule.from_preset(f"{name}-fixed")
    final = ProgressiveSchedule.from_preset(name).stages[-1]
    (only,) = fixed.stages
    assert (only.start_epoch, only.end_epoch) == (0, fixed.total_epochs)
    assert (only.image_size, only.dropout, only.randaug_magnitude, only.mixup_alpha) == (
        final.image_size, final.dropout, final.randaug_magnitude, final.mixup_alpha)


def test_fixed_helper_is_one_constant_stage():
    schedule = ProgressiveSchedule.fixed(5, 32, dropout=0.2, randaug=6, mixup=0.1)
    assert schedule.stages == (Stage(0, 0, 5, 32, 0.2, 6.0, 0.1),)


@pytest.mark.parametrize("total, stages, lengths", [
    (10, 4, [3, 3, 2, 2]),  # extra epochs go to the first (cheapest) stages
    (12, 4, [3, 3, 3, 3]),
    (4, 4, [1, 1, 1, 1]),
    (7, 3, [3, 2, 2]),
])
def test_stage_lengths_differ_by_at_most_one_and_tile_the_epochs(total, stages, lengths):
    schedule = ProgressiveSchedule(total, stages, image_size=(16, 32))
    assert column(schedule, "num_epochs") == lengths
    assert schedule.stages[0].start_epoch == 0
    for prev, cur in pairwise(schedule.stages):
        assert cur.start_epoch == prev.end_epoch
    assert schedule.stages[-1].end_epoch == total


def test_automl_boundaries_for_ten_epochs():
    schedule = ProgressiveSchedule(10, 4, image_size=(16, 32), rule="automl")
    assert column(schedule, "num_epochs") == [2, 3, 2, 3]  # int(i * 10 / 4)


def test_automl_rule_holds_dropout_at_its_final_value():
    """google/automl efficientnetv2/main.py computes linspace(0, dropout, M) per stage and then deletes
    it: every stage trains at the model's rate. The other regularizers still ramp."""
    schedule = ProgressiveSchedule(8, 4, image_size=(16, 32), dropout=(0.1, 0.3), randaug=(5, 15), rule="automl")
    assert column(schedule, "dropout") == [0.3] * 4
    assert column(schedule, "randaug_magnitude") == pytest.approx([5, 5 + 10 / 3, 5 + 20 / 3, 15])
    paper = ProgressiveSchedule(8, 4, image_size=(16, 32), dropout=(0.1, 0.3), rule="paper")
    assert column(paper, "dropout") == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])


def test_at_returns_the_stage_at_its_boundaries():
    schedule = ProgressiveSchedule(10, 4, image_size=(16, 32))  # stages [0,3) [3,6) [6,8) [8,10)
    assert [schedule.at(e).index for e in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert schedule.at(3) is schedule.stages[1]


@pytest.mark.parametrize("epoch, message", [(-1, "epoch must be an int >= 0, got -1"),
                                            (10, r"epoch must be in \[0, 10\) .*, got 10")])
def test_at_rejects_epochs_outside_training(epoch, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveSchedule(10, 4, image_size=(16, 32)).at(epoch)


def test_at_rejects_a_float_epoch():
    with pytest.raises(TypeError, match="epoch"):
        ProgressiveSchedule(10, 4, image_size=(16, 32)).at(1.0)


def test_single_stage_trains_at_the_final_size_and_regularization():
    for rule in ("paper", "automl"):
        schedule = ProgressiveSchedule(7, 1, image_size=(16, 32), dropout=(0.1, 0.3),
                                       randaug=(2, 6), mixup=(0, 0.2), rule=rule)
        cutmix, ops = (0.2, "automl") if rule == "automl" else (0.0, "torchvision")
        assert schedule.stages == (Stage(0, 0, 7, 32, 0.3, 6.0, 0.2, cutmix, ops),)


def test_size_multiple_rounds_interior_sizes_and_keeps_the_endpoints():
    schedule = ProgressiveSchedule(8, 4, image_size=(128, 304), size_multiple=16)
    # 128, 186.7, 245.3, 304 -> nearest multiples of 16
    assert column(schedule, "image_size") == [128, 192, 240, 304]


def test_size_rounding_is_half_up():
    # 16 + 8 * 1 / 2 = 20 exactly halfway between 16 and 24
    schedule = ProgressiveSchedule(3, 3, image_size=(16, 24), size_multiple=8)
    assert column(schedule, "image_size") == [16, 24, 24]


VALID = dict(total_epochs=10, num_stages=4, image_size=(16, 32))


@pytest.mark.parametrize("overrides, error, message", [
    (dict(total_epochs=0), ValueError, "total_epochs must be an int >= 1, got 0"),
    (dict(total_epochs=-5), ValueError, "total_epochs"),
    (dict(num_stages=0), ValueError, "num_stages must be an int >= 1, got 0"),
    (dict(total_epochs=3), ValueError, "total_epochs must be >= num_stages"),
    (dict(image_size=(4, 32)), ValueError, r"image_size\[0\] \(px\) must be an int >= 8, got 4"),
    (dict(image_size=(16, 7)), ValueError, r"image_size\[1\] \(px\) must be an int >= 8, got 7"),
    (dict(image_size=(16, 32, 64)), ValueError, "pair"),
    (dict(image_size=32), TypeError, "pair"),
    (dict(image_size=(16.0, 32)), TypeError, r"image_size\[0\] \(px\) must be an int, got float 16.0"),
    (dict(image_size=(18, 32), size_multiple=4), ValueError, "multiples of size_multiple=4"),
    (dict(size_multiple=0), ValueError, "size_multiple"),
    (dict(dropout=(0.1, 1.0)), ValueError, r"dropout\[1\] must be in \[0, 1\), got 1.0"),
    (dict(dropout=(-0.1, 0.2)), ValueError, "dropout"),
    (dict(dropout=(0.1, float("nan"))), ValueError, "dropout"),
    (dict(dropout=("0.1", 0.2)), TypeError, "dropout"),
    (dict(randaug=(5, 31)), ValueError, r"randaug\[1\] must be in \[0, 30\], got 31"),
    (dict(randaug=(-1, 5)), ValueError, "randaug"),
    (dict(mixup=(0, -0.2)), ValueError, r"mixup\[1\] must be a finite number >= 0, got -0.2"),
    (dict(mixup=(0, float("inf"))), ValueError, "mixup"),
    (dict(total_epochs=10.0), TypeError, "total_epochs must be an int, got float"),
    (dict(num_stages="4"), TypeError, "num_stages"),
    (dict(num_stages=True), TypeError, "num_stages"),
    (dict(rule="timm"), ValueError, "rule must be one of"),
    (dict(name=3), TypeError, "name"),
])
def test_bad_arguments_raise_with_a_message_saying_what_is_allowed(overrides, error, message):
    with pytest.raises(error, match=message):
        ProgressiveSchedule(**{**VALID, **overrides})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown schedule preset 'paper-xs'.*'cifar10'.*'paper-s'"):
        ProgressiveSchedule.from_preset("paper-xs")


def test_preset_epochs_can_be_overridden_and_are_validated():
    assert ProgressiveSchedule.from_preset("cifar10", total_epochs=8).total_epochs == 8
    with pytest.raises(ValueError, match="total_epochs must be >= num_stages"):
        ProgressiveSchedule.from_preset("cifar10", total_epochs=2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip_gives_an_equal_schedule(name):
    schedule = ProgressiveSchedule.from_preset(name)
    restored = ProgressiveSchedule.from_json(schedule.to_json())
    assert restored == schedule
    assert restored.stages == schedule.stages
    assert ProgressiveSchedule.from_dict(json.loads(schedule.to_json())) == schedule


def test_equality_ignores_how_arguments_were_spelled_but_not_their_values():
    a = ProgressiveSchedule(10, 4, image_size=[16, 32], dropout=(0, 0.2))
    b = ProgressiveSchedule(10, 4, image_size=(16, 32), dropout=[0.0, 0.2])
    assert a == b and hash(a) == hash(b)
    assert a != dataclasses.replace(a, total_epochs=11)


def test_from_dict_rejects_unknown_keys_and_edited_stages():
    data = ProgressiveSchedule.from_preset("cifar10").to_dict()
    with pytest.raises(ValueError, match="unknown schedule keys \\['epochs'\\]"):
        ProgressiveSchedule.from_dict({**data, "epochs": 3})
    data["stages"][1]["image_size"] = 24
    with pytest.raises(ValueError, match="stored stages differ"):
        ProgressiveSchedule.from_dict(data)


def test_table_lists_every_stage_with_rounded_values():
    lines = ProgressiveSchedule.from_preset("paper-s").table().splitlines()
    assert lines[0] == "paper-s: 350 epochs in 4 stages (rule: paper), automl RandAugment ops"
    assert len(lines) == 2 + 4
    assert lines[2].split() == ["0", "0-87", "88", "128", "0.100", "5.00", "0.000"]
    assert lines[3].split()[3:6] == ["185", "0.167", "8.33"]


def test_stage_is_frozen_and_counts_its_epochs():
    stage = ProgressiveSchedule.from_preset("paper-s").stages[1]
    assert stage.num_epochs == 88
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.image_size = 64


@pytest.fixture(scope="module")
def sample_images():
    from effv2_lib.data import load_cifar
    return load_cifar(prefer_sample=True).train.images                 # uint8 [2500, 3, 32, 32]


@pytest.mark.parametrize("preset", ["paper-s", "paper-m", "paper-l", "cifar10", "cifar100",
                                    "cifar10-fixed", "cifar100-fixed"])
def test_no_stage_of_the_paper_or_cifar_presets_makes_flat_images(preset, sample_images):
    """Issue #19: read with torchvision's table stretched past level 10, paper-s's later stages made
    about 1 image in 10 flat black or grey. Each stage's RandAugment, with the preset's op table, on
    the bundled sample: at most 2% flat black or grey (pixel std below 2 grey levels). automl's own
    Brightness whitens some images at high levels (faithful); flat white stays below 2% as well."""
    import torch

    from effv2_lib.randaugment import batched_rand_augment

    for stage in ProgressiveSchedule.from_preset(preset).stages:
        out = batched_rand_augment(sample_images, stage.randaug_magnitude, ops=stage.randaug_ops,
                                   generator=torch.Generator().manual_seed(0)).float().flatten(1)
        flat = out.std(1) < 2
        white = out.mean(1) > 250
        assert float((flat & ~white).float().mean()) <= 0.02, (preset, stage.index)
        assert float((flat & white).float().mean()) <= 0.02, (preset, stage.index)


def test_torchvision_table_past_level_10_would_make_flat_images(sample_images):
    """What the paper presets avoid by reading Table 6 with automl's table: torchvision's capped
    colour factors at paper-s's last level."""
    import torch

    from effv2_lib.randaugment import batched_rand_augment

    out = batched_rand_augment(sample_images, 15, ops="torchvision", generator=torch.Generator().manual_seed(0))
    assert float((out.float().flatten(1).std(1) < 2).float().mean()) > 0.05
