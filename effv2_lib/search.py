"""Training-aware architecture search in miniature (Tan & Le 2021, Section 3.3).

How the paper found V2's shape: per stage, a choice of operator {MBConv, Fused-MBConv}, kernel
{3x3, 5x5}, expansion ratio {1, 4, 6} and number of layers, with V1's channel widths kept and the
needless options (pooling skips) removed; up to 1,000 sampled networks, each trained for about
10 epochs at a reduced image size, ranked by the reward

    A * S^w * P^v,    w = -0.07, v = -0.05,

A the accuracy, S the normalized training step time, P the parameter size. Both exponents are
negative: a slower or larger network needs more accuracy to score the same.

Here, on CIFAR, with every choice stated:

- The space (`Candidate`): cifar-tiny's skeleton stays (stem, each stage's stride and output width,
  head); per stage, block in `BLOCKS`, kernel in `KERNELS`, expansion in `EXPANSIONS`, layers in
  `LAYERS`: 36 options per stage, 36^6 (about 2.2e9) networks. cifar-tiny is one of them.
- The proxy (`ProxyBudget`): `epochs` epochs at `image_size` px (half the final 32) on
  `train_per_class` training images per class, SGD with the kit's recipe, no augmentation but
  crop and flip. A is the accuracy on `held_out_per_class` held-out *training* images per class,
  never the test set (the search chooses; the test set only reports).
- S: seconds per training step at the proxy's batch and size on this machine (median of timed
  repeats, `effv2_lib.runtime.measure_train_throughput`); P: parameters. Both are divided by
  cifar-tiny's, measured in the same search, so they read "times cifar-tiny"; a common factor
  changes no ranking.

`run_search` trains the candidates one after another into one JSON file (search.json), resumable:
a rerun of the same command skips the candidates already there. `reward` and `pareto_front` work
on the stored records, so the ranking can be redone for any w and v without training.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_int, check_real
from ._cli import one_line_errors, output_path
from .augment import DeviceLoader
from .checkpoint import atomic_write_json
from .data import CifarSplit, hold_out, load_cifar, subset
from .files import read_json
from .model import ARCH_PREFIX, EfficientNetV2, ModelSpec, efficientnetv2_cifar_tiny
from .optim import WarmupThenDecay, build_optimizer
from .runtime import (
    count_parameters,
    hardware,
    is_quick_check,
    measure_train_throughput,
    pick_device,
    seed_everything,
)

__all__ = ["BLOCKS", "KERNELS", "EXPANSIONS", "LAYERS", "REWARD_W", "REWARD_V", "StageChoice", "Candidate",
           "ProxyBudget", "skeleton", "sample_candidates", "train_proxy", "measure_step_time", "run_search",
           "load_search", "reward", "rank", "pareto_front"]

BLOCKS = ("fused", "mbconv")
KERNELS = (3, 5)
EXPANSIONS = (1, 4, 6)
LAYERS = (1, 2, 3)
REWARD_W, REWARD_V = -0.07, -0.05  # Section 3.3
SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class StageChoice:
    """What the search chooses for one stage."""

    block: str
    kernel_size: int
    expand_ratio: int
    num_layers: int

    def __post_init__(self) -> None:
        check_choice("block", self.block, BLOCKS)
        check_choice("kernel_size", self.kernel_size, KERNELS)
        check_choice("expand_ratio", self.expand_ratio, EXPANSIONS)
        check_choice("num_layers", self.num_layers, LAYERS)

    @property
    def code(self) -> str:
        """e.g. F4k3x2: Fused-MBConv, expansion 4, 3x3 kernel, 2 layers."""
        return f"{'F' if self.block == 'fused' else 'M'}{self.expand_ratio}k{self.kernel_size}x{self.num_layers}"


@dataclass(frozen=True)
class Candidate:
    """One network of the space: a `StageChoice` per stage of the skeleton."""

    stages: tuple[StageChoice, ...]

    @property
    def name(self) -> str:
        return "-".join(stage.code for stage in self.stages)

    @classmethod
    def from_name(cls, name: str) -> Candidate:
        """The candidate `name` names (e.g. ``F1k3x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2``, cifar-tiny)."""
        stages = []
        for code in str(name).split("-"):
            try:
                op, rest = code[0], code[1:]
                expand, rest = rest.split("k")
                kernel, layers = rest.split("x")
                block, numbers = {"F": "fused", "M": "mbconv"}[op], (int(kernel), int(expand), int(layers))
            except (KeyError, ValueError, IndexError):
                raise ValueError(f"{code!r} in {name!r} is not a stage code: expected F or M, the expansion, k, "
                                 f"the kernel, x, the layers, e.g. F4k3x2") from None
            stages.append(StageChoice(block, *numbers))  # each choice checked against the space
        if len(stages) != len(skeleton().stages):
            raise ValueError(f"{name!r} names {len(stages)} stages; the skeleton has {len(skeleton().stages)}")
        return cls(tuple(stages))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Candidate:
        return cls(tuple(StageChoice(s.block, s.kernel_size, int(s.expand_ratio), s.num_layers) for s in spec.stages))

    def spec(self) -> ModelSpec:
        """The network: the skeleton's strides and widths with this candidate's choices."""
        base = skeleton()
        stages = tuple(replace(stage, block=choice.block, kernel_size=choice.kernel_size,
                               expand_ratio=choice.expand_ratio, num_layers=choice.num_layers)
                       for stage, choice in zip(base.stages, self.stages, strict=True))
        return replace(base, name=f"{ARCH_PREFIX}{self.name}", stages=stages)

    def build(self, num_classes: int = 10, dropout: float | None = None,
              stochastic_depth_prob: float | None = None) -> EfficientNetV2:
        """The network; dropout and stochastic depth default to cifar-tiny's (its factory's defaults).
        ``build_model("arch:" + name)`` builds the same, for the trainer and the command line."""
        if stochastic_depth_prob is None:
            stochastic_depth_prob = _CIFAR_TINY_STOCHASTIC_DEPTH
        return EfficientNetV2(self.spec(), num_classes, dropout, stochastic_depth_prob)


@functools.cache
def skeleton() -> ModelSpec:
    """cifar-tiny's spec: the stem, strides, widths and head every candidate keeps (read off the
    network its factory builds, with torch's random state left as it was)."""
    with torch.random.fork_rng(devices=[]):
        return efficientnetv2_cifar_tiny(num_classes=10).spec


_CIFAR_TINY_STOCHASTIC_DEPTH = inspect.signature(efficientnetv2_cifar_tiny).parameters["stochastic_depth_prob"].default
REFERENCE = Candidate.from_spec(skeleton())  # cifar-tiny, the kit's network, in the search's terms


def sample_candidates(count: int, seed: int, exclude: Sequence[Candidate] = (REFERENCE,)) -> list[Candidate]:
    """`count` distinct candidates, each stage's four choices drawn uniformly; the same for the same
    seed on every machine (Python's `random`, not torch's)."""
    check_int("count", count, 0)
    draw = random.Random(seed)
    seen, found = {c.name for c in exclude}, []
    while len(found) < count:
        candidate = Candidate(tuple(StageChoice(draw.choice(BLOCKS), draw.choice(KERNELS), draw.choice(EXPANSIONS),
                                                draw.choice(LAYERS)) for _ in skeleton().stages))
        if candidate.name not in seen:
            seen.add(candidate.name)
            found.append(candidate)
    return found


@dataclass(frozen=True)
class ProxyBudget:
    """How each candidate is trained and measured (the paper: about 10 epochs at a reduced size)."""

    image_size: int = 16
    epochs: int = 2
    train_per_class: int = 1000
    held_out_per_class: int = 200
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, skeleton().stem_stride * 8)
        for name in ("epochs", "train_per_class", "held_out_per_class", "batch_size"):
            check_int(name, getattr(self, name), 1)


QUICK_BUDGET = ProxyBudget(image_size=16, epochs=1, train_per_class=10, held_out_per_class=5, batch_size=20)


def proxy_splits(train: CifarSplit, budget: ProxyBudget, seed: int) -> tuple[CifarSplit, CifarSplit]:
    """(proxy training images, held-out images): the held-out ones first (seed 0, the same for every
    search), then `train_per_class` per class of the rest."""
    rest, held = hold_out(train, budget.held_out_per_class, seed=0,
                          asked_by="the search's held_out_per_class")
    return subset(rest, budget.train_per_class, seed=seed, asked_by="the search's train_per_class"), held


def train_proxy(model: nn.Module, train: CifarSplit, held: CifarSplit, budget: ProxyBudget, *,
                device: torch.device, seed: int) -> tuple[float, float]:
    """Train `model` on `train` for the proxy budget; (accuracy on `held`, training seconds).

    SGD with Nesterov momentum at 0.1 per 128 images, a warm-up of a fifth of the steps then cosine
    to 0, label smoothing 0.1: the kit's recipe, shortened. Crop and flip only."""
    seed_everything(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    loader = DeviceLoader(train, budget.batch_size, device=device, image_size=budget.image_size,
                          channels_last=True, generator=generator)
    model.to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, "sgd", budget.batch_size)
    steps = len(loader) * budget.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupThenDecay(steps // 5, steps, len(loader)))
    started = time.perf_counter()
    for _ in range(budget.epochs):
        for images, labels in loader:  # [B, 3, S, S], [B]
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DeviceLoader(held, 500, device=device, image_size=budget.image_size, train=False,
                                           channels_last=True, generator=generator):
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(held), seconds


def measure_step_time(model: nn.Module, budget: ProxyBudget, device: torch.device, *, steps: int = 5,
                      repeats: int = 3) -> float:
    """S: seconds per training step at the proxy's batch and size (median of `repeats`)."""
    rate = measure_train_throughput(model, budget.image_size, budget.batch_size, steps=steps, warmup=2,
                                    repeats=repeats, device=device, channels_last=True)
    return budget.batch_size / rate.median


def _measure(candidate: Candidate, train: CifarSplit, held: CifarSplit, budget: ProxyBudget, *,
             device: torch.device, seed: int, timing: dict[str, int]) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = candidate.build(len(train.classes))
    step_time = measure_step_time(model, budget, device, **timing)  # before training: the machine as it is now
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    accuracy, seconds = train_proxy(model, train, held, budget, device=device, seed=seed)
    return {"name": candidate.name, "accuracy": accuracy, "step_time_s": step_time,
            "params": count_parameters(model), "train_time_s": seconds, "load_average_1min": load}


def run_search(out: str | Path, count: int, *, seed: int = 0, data_dir: str | None = None,
               budget: ProxyBudget = ProxyBudget(), device: str | None = None, sample: bool = False,
               command: str = "", log: Callable[[str], None] = print,
               timing: dict[str, int] | None = None) -> dict[str, Any]:
    """Measure cifar-tiny and `count` sampled candidates (A, S, P) into ``out/search.json``.

    Resumable: the file is rewritten after each candidate, and a rerun with the same settings skips
    the candidates it holds; other settings in the same `out` are refused."""
    out = Path(out)
    device = pick_device(device)
    settings = {"count": check_int("count", count, 1), "seed": seed, "budget": asdict(budget),
                "space": {"blocks": BLOCKS, "kernels": KERNELS, "expansions": EXPANSIONS, "layers": LAYERS}}
    path = out / SEARCH_FILE
    if path.is_file():
        stored = read_json(path, what="a search's results")
        found = {key: stored.get(key) for key in settings}
        if found != json.loads(json.dumps(settings)):  # as JSON reads it back: tuples as lists
            raise ValueError(f"{path} holds a search with other settings ({found}); give another --out")
        search = stored
    else:
        search = {**settings, "command": command, "hardware": hardware(device), "data": None, "reference": None,
                  "candidates": []}
    data = load_cifar("cifar10", data_dir=data_dir, prefer_sample=sample)
    train, held = proxy_splits(data.train, budget, seed)
    search["data"] = {"source": data.source, "sample": data.is_sample, "train_images": len(train),
                      "held_out_images": len(held)}
    timing = timing or {}
    todo = [REFERENCE, *sample_candidates(count, seed)]
    done = {r["name"] for r in search["candidates"]} | ({search["reference"]["name"]} if search["reference"] else set())
    for index, candidate in enumerate(todo):
        if candidate.name in done:
            continue
        record = _measure(candidate, train, held, budget, device=device, seed=seed, timing=timing)
        if candidate == REFERENCE:
            search["reference"] = record
        else:
            search["candidates"].append(record)
        atomic_write_json(path, search)
        log(f"[{index}/{count}] {record['name']}: accuracy {record['accuracy']:.1%}, "
            f"step {1000 * record['step_time_s']:.0f} ms, {record['params'] / 1e6:.2f} M parameters")
    return search


def load_search(path: str | Path) -> dict[str, Any]:
    """A search.json (or the directory holding it)."""
    path = Path(path)
    return read_json(path / SEARCH_FILE if path.is_dir() else path, what="a search's results")


def reward(record: dict[str, Any], reference: dict[str, Any], w: float = REWARD_W, v: float = REWARD_V) -> float:
    """A * S^w * P^v with S and P relative to `reference` (cifar-tiny's record)."""
    check_real("w", w, -10, 10)
    check_real("v", v, -10, 10)
    return (record["accuracy"] * (record["step_time_s"] / reference["step_time_s"]) ** w
            * (record["params"] / reference["params"]) ** v)


def rank(search: dict[str, Any], w: float = REWARD_W, v: float = REWARD_V) -> list[dict[str, Any]]:
    """Every measured network, cifar-tiny included, best reward first, each with its "reward"."""
    reference = search["reference"]
    records = [reference, *search["candidates"]]
    return sorted(({**r, "reward": reward(r, reference, w, v)} for r in records), key=lambda r: -r["reward"])


def pareto_front(records: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the networks no other beats on both accuracy and step time, fastest first."""
    front, best = [], -1.0
    for record in sorted(records, key=lambda r: (r["step_time_s"], -r["accuracy"])):
        if record["accuracy"] > best:
            front.append(record["name"])
            best = record["accuracy"]
    return front


def stage_preferences(records: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per stage, over `records`: the share of Fused-MBConv, of 5x5 kernels, and the mean expansion
    and layers. Over the best-ranked candidates against all of them, what the winners share."""
    stages = [Candidate.from_name(r["name"]).stages for r in records]
    return [{"fused": sum(s[i].block == "fused" for s in stages) / len(stages),
             "kernel5": sum(s[i].kernel_size == 5 for s in stages) / len(stages),
             "expansion": sum(s[i].expand_ratio for s in stages) / len(stages),
             "layers": sum(s[i].num_layers for s in stages) / len(stages)} for i in range(len(stages[0]))]


def _hardware_words(facts: dict[str, Any]) -> str:
    return (f"{facts['device_name']} ({facts['device']}, {facts['cpu_count']} CPU cores, torch "
            f"{facts['torch']})")


def write_report(out: str | Path, top: int = 10) -> Path:
    """out/README.md: the ranking by the paper's reward, the accuracy/step-time Pareto front, and
    what the best `top` share per stage against every candidate, from search.json alone; and
    out/search.png, the networks as points (`effv2_lib.plots.plot_search`)."""
    out = Path(out)
    search = load_search(out)
    ranked = rank(search)
    reference = search["reference"]
    front = set(pareto_front(ranked))
    budget, data = search["budget"], search["data"]
    lines = [
        "# Training-aware search in miniature (Section 3.3)", "",
        f"Written by `python -m effv2_lib.search --report` from `search.json` in this directory. "
        f"cifar-tiny and {len(search['candidates'])} candidates sampled with seed {search['seed']}, each trained "
        f"{budget['epochs']} epoch(s) at {budget['image_size']} px on {data['train_images']:,} training images "
        f"({data['source']}{', the bundled sample' if data['sample'] else ''}); accuracy A on "
        f"{data['held_out_images']:,} held-out training images (not the test set). S: seconds per training step "
        f"at batch {budget['batch_size']}, P: parameters, both relative to cifar-tiny; reward A * S^{REWARD_W} * "
        f"P^{REWARD_V}. Hardware: {_hardware_words(search['hardware'])}.", "",
        f"Command: `{search['command']}`", "",
        "| rank | network | A | S (ms) | P (M) | reward | Pareto |", "|---|---|---|---|---|---|---|",
    ]
    for place, r in enumerate(ranked, 1):
        if place <= top or r is reference or r["name"] == reference["name"]:
            name = f"{r['name']} (cifar-tiny)" if r["name"] == reference["name"] else r["name"]
            lines.append(f"| {place} | `{name}` | {r['accuracy']:.1%} | {1000 * r['step_time_s']:.0f} | "
                         f"{r['params'] / 1e6:.2f} | {r['reward']:.4f} | {'yes' if r['name'] in front else ''} |")
    best, everyone = stage_preferences(ranked[:top]), stage_preferences(ranked)
    lines += ["", f"What the best {min(top, len(ranked))} share, per stage (all {len(ranked)} in brackets):", "",
              "| stage | Fused-MBConv | 5x5 kernel | mean expansion | mean layers |", "|---|---|---|---|---|"]
    for i, (b, a) in enumerate(zip(best, everyone, strict=True), 1):
        lines.append(f"| {i} | {b['fused']:.0%} ({a['fused']:.0%}) | {b['kernel5']:.0%} ({a['kernel5']:.0%}) | "
                     f"{b['expansion']:.1f} ({a['expansion']:.1f}) | {b['layers']:.1f} ({a['layers']:.1f}) |")
    lines += ["", "![accuracy against step time](search.png)"]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    _write_figure(out / "search.png", ranked, reference["name"])
    return path


def _write_figure(path: Path, ranked: list[dict[str, Any]], reference: str) -> None:
    import matplotlib.pyplot as plt

    from .plots import plot_search

    fig = plot_search(ranked, front=pareto_front(ranked), reference=reference, winner=ranked[0]["name"])
    fig.savefig(path, dpi=100)
    plt.close(fig)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    defaults = ProxyBudget()
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.search",
        description="Training-aware architecture search in miniature (Section 3.3): sample networks around "
                    "cifar-tiny, train each briefly at a reduced size, rank by A * S^w * P^v. Resumable.")
    parser.add_argument("--out", required=True, type=output_path, help="directory for search.json and README.md")
    parser.add_argument("--candidates", type=int, default=30, help="networks sampled besides cifar-tiny (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="which candidates, and every training's seed")
    parser.add_argument("--data", default=None, metavar="DIR", help="CIFAR-10's train.npz/test.npz (default: "
                                                                   "$EFFV2_DATA, else the bundled sample)")
    parser.add_argument("--sample", action="store_true", help="the bundled 2,500-image sample")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="proxy epochs per candidate")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="proxy image size (px)")
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class,
                        help="proxy training images per class")
    parser.add_argument("--held-out-per-class", type=int, default=defaults.held_out_per_class,
                        help="held-out training images per class that measure A")
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="a pipeline check in seconds (also EFFV2_QUICK=1)")
    parser.add_argument("--report", action="store_true", help="only rewrite README.md from search.json")
    args = parser.parse_args(argv)
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")  # files only; no window
    if not args.report:
        smoke = args.smoke or is_quick_check()
        budget = QUICK_BUDGET if smoke else ProxyBudget(args.image_size, args.epochs, args.train_per_class,
                                                        args.held_out_per_class)
        run_search(args.out, 2 if smoke else args.candidates, seed=args.seed, data_dir=args.data, budget=budget,
                   device=args.device, sample=args.sample or (smoke and args.data is None),
                   command=shlex.join(["python", "-m", "effv2_lib.search", *argv]),
                   timing=dict(steps=1, repeats=1) if smoke else None)
    print(f"done: {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
