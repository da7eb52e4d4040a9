"""Architecture figures drawn from the objects that compute: a change to a table changes its figure.

Tan & Le (2021), Figure 2 draws MBConv and Fused-MBConv; Table 4 lists V2-S's stages. Here

* `plot_block` draws one block (`effv2_lib.blocks.MBConv` or `FusedMBConv`) layer by layer, with
  the tensor shape after each layer measured by running the block on a zero input, the
  squeeze-and-excitation branch and, where there is a residual, the stochastic-depth step on the
  residual branch (the layers) and the identity shortcut that is always added;
* `plot_network` draws a network's stem, stages and head from its `ModelSpec` (one small square
  per block, coloured by operator), with the feature-map size each stage sees at a given input;
* `plot_family` stacks several such diagrams at one scale (V2-S, M, L and XL: the later stages
  grow most, the paper's non-uniform scaling of Section 3.3);
* `plot_stochastic_depth` draws the drop probability of every block's residual branch in a built
  network, read from its `StochasticDepth` modules, beside the rule p_i = 0.2 i / n: blocks
  without a residual (the first of a stage that changes the width or the stride) have no branch
  to drop, and are drawn as such.

Every function returns the Figure and draws nothing it did not read from the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle
from torch import nn

from ._checks import check_int
from .blocks import ConvBNAct, FusedMBConv, MBConv, SqueezeExcitation, StochasticDepth
from .model import EfficientNetV2, ModelSpec

__all__ = ["BLOCK_COLORS", "describe_layers", "plot_block", "plot_network", "plot_family", "plot_stochastic_depth"]

BLOCK_COLORS = {"fused": "#f4a261", "mbconv": "#5fa8d3", "stem": "#cccccc", "head": "#cccccc"}
BLOCK_GID, STAGE_GID, DROP_GID = "block", "stage", "stochastic_depth"  # patch gids, for tests and for reading a figure


def _layer_label(name: str, layer: nn.Module) -> str:
    if isinstance(layer, ConvBNAct):
        conv = layer.conv
        k, stride = conv.kernel_size[0], conv.stride[0]
        kind = "depthwise " if conv.groups > 1 else ""
        text = f"{name}: {k}x{k} {kind}conv, {conv.in_channels}->{conv.out_channels}"
        text += f", stride {stride}" if stride > 1 else ""
        return text + (" + BN + SiLU" if hasattr(layer, "act") else " + BN (linear)")
    if isinstance(layer, SqueezeExcitation):
        c, squeeze = layer.reduce.in_channels, layer.reduce.out_channels
        return f"{name}: pool, 1x1 {c}->{squeeze}, SiLU, 1x1 {squeeze}->{c}, sigmoid, x input"
    return f"{name}: {type(layer).__name__}"


def describe_layers(block: MBConv | FusedMBConv, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """[(label, output shape [C, H, W])] of `block`'s layers in the order they run, measured on a
    zero input of [1, C_in, size, size]; the first entry is the input."""
    if not isinstance(block, (MBConv, FusedMBConv)):
        raise TypeError(f"block must be an MBConv or FusedMBConv, got {type(block).__name__}")
    size = check_int("size", size, 1)
    x = torch.zeros(1, block.in_channels, size, size)
    rows = [("input", tuple(x.shape[1:]))]
    was_training = block.training
    block.eval()
    with torch.no_grad():
        for name, layer in block.named_children():
            if name == "stochastic_depth":
                continue
            x = layer(x)
            rows.append((_layer_label(name, layer), tuple(x.shape[1:])))
    block.train(was_training)
    return rows


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str, gid: str) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", facecolor=color,
                                edgecolor="0.25", gid=gid))
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fitting(span: float, *labels: str) -> str:
    """The longest of `labels` that fits, written at 90 degrees, along `span` rows of `plot_block`."""
    return next((label for label in labels if 0.075 * len(label) <= 0.62 * span), labels[-1])


def plot_block(block: MBConv | FusedMBConv, size: int, *, title: str | None = None, ax: Axes | None = None) -> Figure:
    """One block, top to bottom: its layers with the shape after each, then, where the block has a
    residual, the stochastic-depth step on that branch and the identity shortcut on the left.

    Stochastic depth acts on the residual branch F(x), the layers drawn in the column: in training
    it zeroes F(x) for a sample with probability p and scales it by 1/(1-p) otherwise; the shortcut
    x is always added. The figure says so where it happens, on the branch.
    """
    rows = describe_layers(block, size)
    kind = "MBConv" if isinstance(block, MBConv) else "Fused-MBConv"
    extra = 2 if block.has_residual else 1  # (stochastic depth and) the sum, or the "no residual" note
    if ax is None:
        _, ax = plt.subplots(figsize=(8.2, 0.55 + 0.62 * (len(rows) + extra)), layout="constrained")
    color = BLOCK_COLORS["mbconv" if isinstance(block, MBConv) else "fused"]
    ys = [len(rows) - i for i in range(len(rows))]
    for (label, shape), y in zip(rows, ys, strict=True):
        is_input = label == "input"
        _box(ax, 0, y, 7.6, 0.56, "input" if is_input else label, "white" if is_input else color, BLOCK_GID)
        ax.text(3.95, y, _shape(shape), fontsize=9, color="0.3", ha="left", va="center")
    for y0, y1 in zip(ys, ys[1:], strict=False):
        ax.annotate("", (0, y1 + 0.3), (0, y0 - 0.3), arrowprops=dict(arrowstyle="->", color="0.3"))
    if block.has_residual:
        p = block.stochastic_depth.p
        y_drop, y_sum = ys[-1] - 1, ys[-1] - 1.85
        ax.add_patch(FancyBboxPatch((-3.8, y_drop - 0.28), 7.6, 0.56, boxstyle="round,pad=0.02", facecolor="white",
                                    edgecolor="C3", linestyle="--", linewidth=1.5, gid=DROP_GID))
        ax.text(0, y_drop, f"stochastic depth on this branch F(x): in training, p = {p:.3g} per sample\n"
                           f"F(x) -> 0 with probability p, else F(x) / (1 - p); identity in eval",
                ha="center", va="center", fontsize=9, color="C3")
        ax.annotate("", (0, y_drop + 0.3), (0, ys[-1] - 0.3), arrowprops=dict(arrowstyle="->", color="0.3"))
        ax.annotate("", (0, y_sum + 0.2), (0, y_drop - 0.3), arrowprops=dict(arrowstyle="->", color="0.3"))
        ax.plot([-4.15, -4.15], [ys[0], y_sum], color="C2", linewidth=2)
        ax.plot([-3.8, -4.15], [ys[0], ys[0]], color="C2", linewidth=2)
        ax.annotate("", (-0.22, y_sum), (-4.15, y_sum), arrowprops=dict(arrowstyle="->", color="C2", linewidth=2))
        ax.text(-4.3, (ys[0] + y_sum) / 2, _fitting(ys[0] - y_sum, "identity shortcut x: always added, never dropped",
                                                    "identity shortcut x, never dropped", "shortcut x"),
                rotation=90, ha="right", va="center", fontsize=9, color="C2")
        ax.text(0, y_sum, "+", ha="center", va="center", fontsize=14, color="C2",
                bbox=dict(boxstyle="circle,pad=0.15", facecolor="white", edgecolor="C2"))
        ax.text(0.35, y_sum, "x + F(x)", ha="left", va="center", fontsize=9, color="C2")
        ax.plot([5.45, 5.45], [ys[1] + 0.28, y_drop - 0.28], color="C3", linewidth=1.5)
        branch_label = _fitting(ys[1] - y_drop + 0.56, "residual branch F(x)", "F(x)")
        ax.text(5.6, (ys[1] + y_drop) / 2, branch_label, rotation=90, ha="left", va="center", fontsize=9, color="C3")
        bottom = y_sum - 0.3
    else:
        ax.text(0, ys[-1] - 0.75, "no residual (stride or width changes): the output is F(x), nothing to drop",
                ha="center", va="center", fontsize=9, color="0.4")
        bottom = ys[-1] - 1.0
    ax.set_xlim(-4.75, 5.95)
    ax.set_ylim(bottom, ys[0] + 0.4)
    ax.axis("off")
    ax.set_title(title or f"{kind} at {size} x {size} px: [C, H, W] after each layer")
    return ax.figure


def plot_network(model: EfficientNetV2 | ModelSpec, image_size: int | None = None, *,
                 ax: Axes | None = None, slots: int | None = None) -> Figure:
    """Stem, stages and head from the stage table: a row per stage, a square per block.

    image_size (default: the spec's evaluation size) sets the map sizes written beside each stage.
    slots (default: the longest stage's number of blocks) is how many block positions the x axis
    holds; give several networks the same value to draw their blocks at one scale (`plot_family`).
    """
    spec = model.spec if isinstance(model, EfficientNetV2) else model
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model must be an EfficientNetV2 or a ModelSpec, got {type(model).__name__}")
    size = check_int("image_size", image_size if image_size is not None else spec.eval_size, 1)
    rows = len(spec.stages) + 2
    longest = max(s.num_layers for s in spec.stages)
    slots = check_int("slots", slots if slots is not None else longest, longest)
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 0.55 * rows + 1.2), layout="constrained")
    side = size // spec.stem_stride

    def row(y: float, label: str, detail: str) -> None:
        ax.text(-0.3, y, label, ha="right", va="center", fontsize=10, fontweight="bold")
        ax.text(longest + 0.5, y, detail, ha="left", va="center", fontsize=9)

    y = rows - 1
    ax.add_patch(Rectangle((0, y - 0.35), 1, 0.7, facecolor=BLOCK_COLORS["stem"], edgecolor="0.3", gid=STAGE_GID))
    row(y, "stem", f"3x3 conv, stride {spec.stem_stride}, 3->{spec.stages[0].in_channels}, map {side} x {side}")
    for i, stage in enumerate(spec.stages, 1):
        y -= 1
        side = -(-side // stage.stride)  # ceil: padding keeps a border pixel
        for j in range(stage.num_layers):
            ax.add_patch(Rectangle((j + 0.05, y - 0.35), 0.9, 0.7, facecolor=BLOCK_COLORS[stage.block],
                                   edgecolor="0.3", gid=BLOCK_GID))
        op = "Fused-MBConv" if stage.block == "fused" else "MBConv + SE"
        row(y, f"stage {i}", f"{op}, e{stage.expand_ratio:g}, k{stage.kernel_size}, s{stage.stride}, "
                             f"{stage.in_channels}->{stage.out_channels}, x{stage.num_layers}, map {side} x {side}")
    y -= 1
    ax.add_patch(Rectangle((0, y - 0.35), 1, 0.7, facecolor=BLOCK_COLORS["head"], edgecolor="0.3", gid=STAGE_GID))
    row(y, "head", f"1x1 conv ->{spec.head_channels}, pool, dropout {spec.dropout:g}, linear")
    # the blocks take the left 60 % of the width, the text column the rest, whatever the scale
    ax.set_xlim(-2.2, -2.2 + (slots + 2.7) / 0.6)
    ax.set_ylim(-0.7, rows - 0.3)
    ax.axis("off")
    ax.set_title(f"{spec.name}: {len(spec.stages)} stages, {spec.num_blocks} blocks, output stride "
                 f"{spec.output_stride}, maps at {size} px input (orange: Fused-MBConv, blue: MBConv)")
    return ax.figure


def plot_family(models: Mapping[str, EfficientNetV2 | ModelSpec] | Sequence[EfficientNetV2 | ModelSpec],
                image_size: int | None = None) -> Figure:
    """Several networks' stage diagrams (`plot_network`) stacked, one block drawn the same size in all.

    The common scale shows non-uniform scaling (paper Section 3.3): V2-M, L and XL grow mostly by
    adding blocks to the later stages. models: a {label: network or spec} dict (the label heads its
    panel) or a list (each panel headed by the spec's name). image_size: the input the map sizes are
    given for, the same for all (e.g. 32 to set V2-S beside the CIFAR variant), or None for each
    network's own evaluation size.
    """
    if isinstance(models, Mapping):
        labelled = [(str(label), model) for label, model in models.items()]
    elif isinstance(models, Sequence) and not isinstance(models, str):
        labelled = [(None, model) for model in models]
    else:
        raise TypeError(f"models must be a dict or list of networks or specs, got {type(models).__name__}")
    if not labelled:
        raise ValueError("models must hold at least one network or spec, got none")
    specs = []
    for label, model in labelled:
        spec = model.spec if isinstance(model, EfficientNetV2) else model
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"each model must be an EfficientNetV2 or a ModelSpec, got {type(model).__name__}")
        specs.append((label, spec))
    slots = max(stage.num_layers for _, spec in specs for stage in spec.stages)
    heights = [len(spec.stages) + 2 for _, spec in specs]
    fig, axes = plt.subplots(len(specs), 1, figsize=(13, 0.36 * sum(heights) + 0.8 * len(specs)),
                             height_ratios=heights, layout="constrained", squeeze=False)
    for ax, (label, spec) in zip(axes[:, 0], specs, strict=True):
        plot_network(spec, image_size, ax=ax, slots=slots)
        if label is not None:
            ax.set_title(f"{label}: {ax.get_title()}")
    return fig


def plot_stochastic_depth(model: EfficientNetV2, *, ax: Axes | None = None) -> Figure:
    """Drop probability of each block's residual branch F(x), as the built network holds it.

    One bar per block in network order, coloured by stage, the stages named under the axis. Blocks
    without a residual (the first of a stage that changes the stride or the width) have no branch to
    drop: they are drawn as short hatched marks at p = 0. The dashed line is the rule the
    probabilities were set by, p_i = p_max * i / n with p_max read back from the last block that
    has a residual (0.2 in EfficientNetV2).
    """
    if not isinstance(model, EfficientNetV2):
        raise TypeError(f"model must be an EfficientNetV2, got {type(model).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.9), layout="constrained")
    blocks = [(i, block) for i, stage in enumerate(model.stages) for block in stage]
    n = len(blocks)
    probabilities = [next(m for m in block.modules() if isinstance(m, StochasticDepth)).p for _, block in blocks]
    top = max(probabilities, default=0.0) or 1.0
    centres, labels = [], []
    for index, ((stage, block), p) in enumerate(zip(blocks, probabilities, strict=True)):
        color = f"C{stage % 10}"
        if block.has_residual:
            ax.bar(index, p, color=color, gid=BLOCK_GID)
        else:  # nothing to drop: without a residual the branch is the whole output
            ax.bar(index, 0.03 * top, color="white", edgecolor=color, hatch="///", gid=BLOCK_GID)
    start = 0
    for stage_index, stage in enumerate(model.stages):
        centres.append(start + (len(stage) - 1) / 2)
        labels.append(f"stage {stage_index + 1}")
        if start:
            ax.axvline(start - 0.5, color="0.85", linewidth=0.8, zorder=0)
        start += len(stage)
    last = max((i for i, (_, block) in enumerate(blocks) if block.has_residual and i), default=None)
    if last is not None and probabilities[last] > 0:
        p_max = probabilities[last] * n / last
        ax.plot([-0.5, n - 0.5], [p_max * -0.5 / n, p_max * (n - 0.5) / n], "--", color="0.45", linewidth=1,
                label=f"rule: p_i = {p_max:.2g} i / n  (i = 0..{n - 1}, n = {n} blocks)")
    handles = ax.get_legend_handles_labels()[0]
    handles.append(Patch(facecolor="white", edgecolor="0.4", hatch="///", label="no residual: nothing to drop, p = 0"))
    ax.legend(handles=handles, loc="upper left", fontsize=9, frameon=False)
    ax.set_xticks(centres, labels, fontsize=9)
    ax.tick_params(axis="x", length=0)
    ax.set(ylabel="drop probability p", xlim=(-0.7, n - 0.3), ylim=(0, 1.12 * top),
           title=f"{model.name}: probability that a block's residual branch is dropped in training")
    ax.spines[["top", "right"]].set_visible(False)
    return ax.figure
