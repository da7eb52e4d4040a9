"""Architecture figures: what they draw is read from the models, so it follows the tables."""

import pytest

from effv2_lib import MODEL_SPECS, efficientnetv2_cifar, efficientnetv2_s, scale_spec
from effv2_lib.blocks import FusedMBConv, MBConv
from effv2_lib.diagrams import (
    BLOCK_GID,
    DROP_GID,
    describe_layers,
    plot_block,
    plot_family,
    plot_network,
    plot_stochastic_depth,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def patches(fig, gid=BLOCK_GID):
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == gid]


def texts(fig):
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + fig.axes[0].get_title()


def test_the_v2_s_figure_has_its_6_stages_and_40_blocks_from_the_spec():
    fig = plot_network(efficientnetv2_s())
    assert len(patches(fig)) == 40
    words = texts(fig)
    assert "6 stages, 40 blocks, output stride 32" in words
    assert "160->256, x15, map 12 x 12" in words  # stage 6 at the 384 px evaluation size
    assert sum(f"stage {i}" in words for i in range(1, 8)) == 6
    deeper = scale_spec(MODEL_SPECS["s"], depth_mult=1.5)
    # ceil(L x 1.5) per stage: 3 + 6 + 6 + 9 + 14 + 23; a change to the table changes the figure
    assert len(patches(plot_network(deeper))) == deeper.num_blocks == 61


def test_the_cifar_figure_shows_output_stride_8():
    words = texts(plot_network(efficientnetv2_cifar(), 32))
    assert "output stride 8" in words and "map 4 x 4" in words and "stride 1" in words


def test_block_layers_and_shapes_are_measured_on_the_block():
    rows = describe_layers(MBConv(64, 128, expand_ratio=4, stride=2), 16)
    assert [shape for _, shape in rows] == [(64, 16, 16), (256, 16, 16), (256, 8, 8), (256, 8, 8), (128, 8, 8)]
    assert "depthwise" in rows[2][0] and "stride 2" in rows[2][0] and "1x1 256->16" in rows[3][0]
    fused = describe_layers(FusedMBConv(24, 24, expand_ratio=1), 32)
    assert [shape for _, shape in fused] == [(24, 32, 32), (24, 32, 32)]
    with pytest.raises(TypeError):
        describe_layers(efficientnetv2_s(), 32)


def test_block_figure_draws_the_residual_only_where_there_is_one():
    with_residual = texts(plot_block(MBConv(32, 32, stochastic_depth_prob=0.1), 8))
    assert "p = 0.1" in with_residual and "no residual" not in with_residual
    assert "no residual" in texts(plot_block(FusedMBConv(24, 48, expand_ratio=4, stride=2), 8))


def test_block_figure_drops_the_residual_branch_not_the_identity_shortcut():
    fig = plot_block(MBConv(32, 32, stochastic_depth_prob=0.1), 8)
    ax = fig.axes[0]
    (drop,) = patches(fig, DROP_GID)  # the stochastic-depth step, drawn in the column of the branch's layers
    layers = patches(fig)
    assert drop.get_x() == pytest.approx(layers[-1].get_x())
    assert drop.get_y() < min(p.get_y() for p in layers)  # after the last layer, before the sum
    shortcut = [t for t in ax.texts if "shortcut" in t.get_text()]
    assert len(shortcut) == 1 and "never dropped" in shortcut[0].get_text()
    assert shortcut[0].get_position()[0] < drop.get_x()  # the shortcut runs left of the branch
    (on_branch,) = [t for t in ax.texts if "stochastic depth" in t.get_text()]
    assert on_branch.get_position()[0] == 0 and "F(x) -> 0 with probability p" in on_branch.get_text()
    short = texts(plot_block(FusedMBConv(24, 24, expand_ratio=1, stochastic_depth_prob=0.05), 8))
    assert "shortcut x" in short and "p = 0.05" in short  # a short block gets labels that fit


def test_stochastic_depth_bars_are_the_networks_own_probabilities():
    model = efficientnetv2_s()
    fig = plot_stochastic_depth(model)
    bars = patches(fig)
    blocks = [block for stage in model.stages for block in stage]
    assert len(bars) == 40
    for bar, block in zip(bars, blocks, strict=True):
        if block.has_residual:
            assert bar.get_height() == pytest.approx(block.stochastic_depth.p)
        else:
            assert bar.get_hatch() == "///"  # never dropped: no sawtooth through a missing residual
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"stage {i}" for i in range(1, 7)]
    assert ax.get_ylim()[0] == 0  # no empty band below the bars
    (rule,) = ax.get_lines()[-1:]
    assert "0.2 i / n" in rule.get_label() and "n = 40" in rule.get_label()
    with pytest.raises(TypeError):
        plot_stochastic_depth(model.spec)


def test_the_family_figure_draws_every_block_of_every_network_at_one_scale():
    keys = ["s", "m", "l", "xl"]
    fig = plot_family([MODEL_SPECS[k] for k in keys])
    assert len(fig.axes) == 4
    for ax, key in zip(fig.axes, keys, strict=True):
        blocks = [p for p in ax.patches if p.get_gid() == BLOCK_GID]
        assert len(blocks) == MODEL_SPECS[key].num_blocks  # 40, 57, 79, 100
        assert MODEL_SPECS[key].name in ax.get_title()
    assert len({ax.get_xlim() for ax in fig.axes}) == 1  # one square is the same width in every panel
    assert len({round(p.get_width(), 9) for ax in fig.axes for p in ax.patches if p.get_gid() == BLOCK_GID}) == 1


def test_the_family_figure_labels_its_panels_and_shares_one_input_size():
    fig = plot_family({"ImageNet shape": efficientnetv2_s(), "CIFAR variant": MODEL_SPECS["cifar"]}, 32)
    top, bottom = fig.axes
    assert top.get_title().startswith("ImageNet shape: ") and bottom.get_title().startswith("CIFAR variant: ")
    assert "map 1 x 1" in "\n".join(t.get_text() for t in top.texts)  # V2-S at 32 px: stage 6
    assert "map 4 x 4" in "\n".join(t.get_text() for t in bottom.texts)  # output stride 8
    with pytest.raises(TypeError):
        plot_family([MODEL_SPECS["s"], "m"])
    with pytest.raises(ValueError):
        plot_family([])


def test_network_slots_cannot_cut_off_a_stage():
    assert plot_network(MODEL_SPECS["s"], slots=32).axes[0].get_xlim() == \
        plot_network(MODEL_SPECS["xl"]).axes[0].get_xlim()
    with pytest.raises(ValueError, match="slots"):
        plot_network(MODEL_SPECS["s"], slots=14)  # stage 6 has 15 blocks
