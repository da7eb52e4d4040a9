"""Table 3 in miniature, trained: in which stages Fused-MBConv pays (Tan & Le 2021, Section 3.2).

The paper's Table 3 replaces MBConv by Fused-MBConv in the first 0, 3, 5 or all 7 stages of an
EfficientNet-B4-like network and reports parameters, FLOPs, ImageNet top-1 and training
throughput. Fused-MBConv in stages 1-3 is the fastest and as accurate as any; in every stage it
is the largest, slower, and less accurate. Notebook 03 times those variants on random inputs;
this module *trains* the same four variants of the kit's CIFAR network, cifar-tiny (six stages,
fused in 1-3 as in V2):

    no fused      MBConv in every stage
    fused 1-3     cifar-tiny itself
    fused 1-5     Fused-MBConv up to stage 5, MBConv in stage 6
    fused all     Fused-MBConv in every stage

Each variant keeps cifar-tiny's kernels, expansions, layers and widths; only the block type
changes (the variants are networks of `effv2_lib.search`'s space, trained as ``arch:CODE``).

The budget is the experiments' load-independent training cost (`effv2_lib.experiments`):
images/s measured for every variant at the training size before the first run
(throughput.json), times the images trained on. cifar-tiny's `epochs` epochs set the budget;
each variant trains as many whole epochs as fit in it, so a faster network gets more epochs.
All train at one fixed size (16 px, where the search's proxy also trained, so that a run
takes minutes on a CPU) and are tested there, on all 10,000 test images, light
regularization (RandAugment magnitude 1, no dropout; the network keeps its stochastic depth), SGD,
batch 128.

Seeds go to OUT/seed-N/<variant>/ (every run a normal run directory); the run resumes, and
OUT/README.md (the table over seeds, beside the paper's) and OUT/curves.png are rewritten as runs
finish::

    python -m effv2_lib.fused_stages --data DIR --seeds 0 1 --out results/cpu-cifar10-fused-stages
    python -m effv2_lib.fused_stages --out results/cpu-cifar10-fused-stages --report
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ._checks import check_int
from ._cli import int_at_least, one_line_errors, output_path
from .checkpoint import HISTORY_FILE, SUMMARY_FILE, atomic_write_json, read_json
from .config import SMOKE, TrainConfig
from .data import check_data_source
from .experiments import (
    BATCH_SIZE,
    CIFAR10_TRAIN_IMAGES,
    THROUGHPUT_FILE,
    ExperimentRun,
    _check_same_run,
    _status,
    _train_one,
    _with_cost,
    measure_throughput,
    run_cost,
)
from .model import ARCH_PREFIX, build_model
from .runtime import count_parameters, is_quick_check
from .schedule import ProgressiveSchedule
from .search import REFERENCE, Candidate

__all__ = ["VARIANTS", "PAPER_TABLE_3", "IMAGE_SIZE", "DEFAULT_EPOCHS", "variant", "multiply_adds", "plan",
           "run", "load_runs", "summary_rows", "plot_runs", "write_report", "main"]

IMAGE_SIZE = 16  # px: training and test size
DEFAULT_EPOCHS = 4  # cifar-tiny's epochs set the budget: 7.9 min of training cost on the 2-core CPU of the results
REPORT_FILE = "README.md"
CURVES_FILE = "curves.png"

# variant: the stages (1-based) that use Fused-MBConv; the paper's rows are 0, 1-3, 1-5, 1-7 of 7
VARIANTS = {"no fused": 0, "fused 1-3": 3, "fused 1-5": 5, "fused all": 6}
# Table 3 of the paper (EfficientNet-B4-like, 380 px): params (M), FLOPs (B), top-1 (%), TPUv3
# images/s/core, V100 images/s
PAPER_TABLE_3 = {"no fused": (19.3, 4.5, 82.8, 262, 155), "fused 1-3": (20.0, 7.5, 83.1, 362, 216),
                 "fused 1-5": (43.4, 21.3, 83.1, 327, 223), "fused all": (132.0, 34.4, 81.7, 254, 206)}


def variant(name: str) -> Candidate:
    """cifar-tiny with Fused-MBConv in its first VARIANTS[name] stages and MBConv after."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; the variants are {', '.join(VARIANTS)}")
    fused = VARIANTS[name]
    return Candidate(tuple(replace(stage, block="fused" if index < fused else "mbconv")
                           for index, stage in enumerate(REFERENCE.stages)))


def multiply_adds(model: torch.nn.Module, image_size: int) -> int:
    """Multiply-adds of one image's forward pass (the paper's "FLOPs"), counted by torch's
    FlopCounterMode (which counts two FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    return counter.get_total_flops() // 2


def _model(name: str) -> str:
    return f"{ARCH_PREFIX}{variant(name).name}"


def _slug(name: str) -> str:
    return name.replace(" ", "-")


def plan(data_dir: str | None, out: str | Path, *, rates: dict[str, Any], seed: int, epochs: int = DEFAULT_EPOCHS,
         smoke: bool = False) -> list[ExperimentRun]:
    """One seed's four runs: each variant for as many whole epochs at IMAGE_SIZE as fit in the
    cost of cifar-tiny's `epochs` epochs there (`rates`: throughput.json's measured images/s)."""
    epochs = check_int("epochs", epochs, 1)
    base = TrainConfig(batch_size=BATCH_SIZE, seed=seed, data_dir=data_dir, full_data_only=not smoke,
                       sample=smoke and data_dir is None, loader="device", eval_size=IMAGE_SIZE, smoke=smoke)

    def cost(name: str, n: int) -> float:
        return run_cost(_model(name), ProgressiveSchedule.fixed(n, IMAGE_SIZE), CIFAR10_TRAIN_IMAGES, rates)

    budget = cost("fused 1-3", epochs)
    runs = []
    for name in VARIANTS:
        n = max(1, math.floor(budget / cost(name, 1) + 1e-9))  # whole epochs within the budget
        schedule = ProgressiveSchedule.fixed(n, IMAGE_SIZE, randaug=1.0, name="fused-stages")
        runs.append(ExperimentRun(name, f"{variant(name).name}: {n} epochs at {IMAGE_SIZE} px, "
                                        f"{cost(name, n) / 60:.1f} of the budget's {budget / 60:.1f} min",
                                  replace(base, model=_model(name), schedule=schedule.to_dict(),
                                          out=str(Path(out) / f"seed-{seed}" / _slug(name)))))
    return runs


def run(data_dir: str | None, out: str | Path, *, seeds: tuple[int, ...] = (0, 1), epochs: int = DEFAULT_EPOCHS,
        smoke: bool = False, progress: bool = True, command: str = "") -> None:
    """Train (or resume) every variant for every seed, seed by seed; rewrite the report after each run."""
    if not seeds:
        raise ValueError("seeds must name at least one seed, got none")
    out = Path(out)
    first = plan(data_dir, out, rates=_any_rates(), seed=seeds[0], epochs=epochs, smoke=smoke)[0].config
    source = check_data_source(first.dataset, first.data_dir, sample=first.sample,
                               full_data_only=first.full_data_only)  # before any timing
    out.mkdir(parents=True, exist_ok=True)
    throughput_file = out / THROUGHPUT_FILE
    if throughput_file.is_file():
        throughput = read_json(throughput_file)
        if throughput.get("quick_check", False) != smoke or throughput.get("epochs") != epochs:
            raise ValueError(f"{throughput_file} was measured for {throughput.get('epochs')} epochs"
                             f"{' (a quick check)' if throughput.get('quick_check') else ''}; this run asks for "
                             f"{epochs}{' (a quick check)' if smoke else ''}: give another --out")
    else:  # measured before any training, while the machine is as quiet as it will be
        timing = dict(steps=1, warmup=0, repeats=1) if smoke else {}
        measured = measure_throughput({_model(name): [IMAGE_SIZE] for name in VARIANTS},
                                      SMOKE["batch_size"] if smoke else BATCH_SIZE, **timing)
        throughput = {"experiment": "fused-stages", "quick_check": smoke, "epochs": epochs, **measured}
        atomic_write_json(throughput_file, throughput)
    plans = [plan(data_dir, out, rates=throughput["rates"], seed=seed, epochs=epochs, smoke=smoke) for seed in seeds]
    for runs in plans:  # before anything trains
        for planned in runs:
            _check_same_run(planned, source)
    for seed, runs in zip(seeds, plans, strict=True):
        for planned in runs:
            state = _status(Path(planned.config.out))
            print(f"== seed {seed}, {planned.name}: {planned.description} "
                  f"[{'already finished' if state == 'finished' else state}]", flush=True)
            if state != "finished":
                _train_one(replace(planned, name=f"{planned.name}, seed {seed}"), command, progress)
            write_report(out)


def _any_rates() -> dict[str, Any]:
    return {f"{_model(name)}@{IMAGE_SIZE}": {"images_per_s": 1.0} for name in VARIANTS}


def load_runs(out: str | Path) -> dict[str, dict[int, tuple[dict, list]]]:
    """The finished runs under `out` as {variant: {seed: (summary, history)}}, each history record
    with its ``cost_time`` (seconds at the measured images/s)."""
    out = Path(out)
    rates = read_json(out / THROUGHPUT_FILE)["rates"]
    found: dict[str, dict[int, tuple[dict, list]]] = {name: {} for name in VARIANTS}
    for seed_dir in sorted(out.glob("seed-*"), key=lambda p: int(p.name.split("-")[1])):
        for name in VARIANTS:
            run_dir = seed_dir / _slug(name)
            if _status(run_dir) != "finished":
                continue
            summary = read_json(run_dir / SUMMARY_FILE)
            history = _with_cost(read_json(run_dir / HISTORY_FILE), summary, rates)
            found[name][int(seed_dir.name.split("-")[1])] = (summary, history)
    return found


def summary_rows(out: str | Path, runs: dict[str, dict[int, tuple[dict, list]]] | None = None
                 ) -> list[dict[str, Any]]:
    """One row per variant: code, parameters, multiply-adds at IMAGE_SIZE, measured images/s (the
    median and the range of the timings), epochs, cost, test accuracy per seed, their mean and
    (with 2 or more seeds) the sample standard deviation. `runs`: `load_runs(out)`, if already read."""
    out = Path(out)
    rates = read_json(out / THROUGHPUT_FILE)["rates"]
    runs = load_runs(out) if runs is None else runs
    rows = []
    for name in VARIANTS:
        model = build_model(_model(name), num_classes=10)
        finished = runs[name]
        accuracies = {seed: summary["final_test_acc"] for seed, (summary, _) in finished.items()}
        any_run = next(iter(finished.values()), None)
        rate = rates[f"{_model(name)}@{IMAGE_SIZE}"]
        rows.append({
            "variant": name, "code": variant(name).name, "params": count_parameters(model),
            "multiply_adds": multiply_adds(model, IMAGE_SIZE), "images_per_s": rate["images_per_s"],
            "images_per_s_range": (rate["min"], rate["max"]),
            "epochs": None if any_run is None else any_run[0]["epochs_done"],
            "cost_s": None if any_run is None else sum(r["cost_time"] for r in any_run[1]),
            "test_acc": accuracies,
            "mean": statistics.mean(accuracies.values()) if accuracies else None,
            "sd": statistics.stdev(accuracies.values()) if len(accuracies) > 1 else None})
    return rows


def _accuracy_cell(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "not run yet"
    seeds = ", ".join(f"{100 * acc:.2f}" for acc in row["test_acc"].values())
    spread = f" (sd {100 * row['sd']:.2f})" if row["sd"] is not None else ""
    return f"{100 * row['mean']:.2f}%{spread}; seeds: {seeds}"


def plot_runs(runs: dict[str, dict[int, tuple[dict, list]]]) -> Figure:
    """Test accuracy against training cost, one line per finished run (`load_runs`' runs)."""
    from .plots import plot_time_to_accuracy

    curves = {f"{name}, seed {seed}": history
              for name, by_seed in runs.items() for seed, (_, history) in by_seed.items()}
    if not curves:
        raise ValueError("no finished run to draw")
    figure = plot_time_to_accuracy(curves, time_key="cost_time",
                                   time_label="training cost (min at the measured images/s)")
    figure.axes[0].set_title(f"CIFAR-10 at {IMAGE_SIZE} px: Fused-MBConv in which stages, at equal training cost")
    return figure


def write_report(out: str | Path) -> Path:
    """OUT/README.md (ours beside the paper's Table 3) and OUT/curves.png from the finished runs."""
    import matplotlib.pyplot as plt

    out = Path(out)
    throughput = read_json(out / THROUGHPUT_FILE)
    runs = load_runs(out)
    rows = summary_rows(out, runs)
    reference = next(row for row in rows if row["variant"] == "fused 1-3")
    lines = [
        "# Table 3 in miniature, trained: Fused-MBConv in no stage, stages 1-3, 1-5 or all",
        "",
        *(["**A quick check (--smoke or EFFV2_QUICK=1): a pipeline check on 10 images per class with one-step "
           "timings. Its figures are not results.**", ""] if throughput.get("quick_check") else []),
        "Written by `python -m effv2_lib.fused_stages` from the runs' own files; nothing is typed in.",
        f"Each variant of cifar-tiny trains at {IMAGE_SIZE} px for as many whole epochs as fit in the training "
        f"cost of cifar-tiny's {throughput['epochs']} (images/s measured before the first run, batch "
        f"{throughput['batch_size']}, random data); test accuracy: top-1 on the CIFAR-10 test images at "
        f"{IMAGE_SIZE} px after the last epoch. Multiply-adds: one {IMAGE_SIZE} px image's forward pass.",
        "",
        "| variant | network | params | multiply-adds | train img/s | epochs | cost (min) | test acc. (mean) |"
        " paper: params, FLOPs | paper: top-1 | paper: V100 img/s (TPUv3/core) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = PAPER_TABLE_3[row["variant"]]
        cost = "-" if row["cost_s"] is None else f"{row['cost_s'] / 60:.1f}"
        low, high = row["images_per_s_range"]
        lines.append(
            f"| {row['variant']} | `{row['code']}` | {row['params'] / 1e6:.3f}M "
            f"({row['params'] / reference['params']:.2f}x) | {row['multiply_adds'] / 1e6:.1f}M "
            f"({row['multiply_adds'] / reference['multiply_adds']:.2f}x) | {row['images_per_s']:.0f} "
            f"({row['images_per_s'] / reference['images_per_s']:.2f}x; range {low:.0f}-{high:.0f}) | "
            f"{row['epochs'] or '-'} | {cost} | "
            f"{_accuracy_cell(row)} | {paper[0]}M, {paper[1]}B | {paper[2]}% | {paper[4]} ({paper[3]}) |")
    hw = throughput["hardware"]
    lines += ["", f"Hardware: {hw['device_name']} ({hw['device']}), {hw['cpu_count']} CPU cores, torch {hw['torch']}; "
                  f"images/s: median of {throughput['repeats']} timings of {throughput['steps']} steps.",
              "The paper's columns: Tan & Le (2021), Table 3, EfficientNet-B4-like network at 380 px on ImageNet.",
              "", "Commands:", ""]
    commands = {summary["command"].split("  # run")[0] for by_seed in runs.values() for summary, _ in by_seed.values()}
    lines += [f"- `{command}`" for command in sorted(commands)]
    if any(runs.values()):
        figure = plot_runs(runs)
        figure.savefig(out / CURVES_FILE, dpi=110)
        plt.close(figure)
        lines += ["", f"![test accuracy against training cost]({CURVES_FILE})"]
    report = out / REPORT_FILE
    report.write_text("\n".join(lines) + "\n")
    return report


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.fused_stages",
        description="Table 3 in miniature, trained: cifar-tiny with Fused-MBConv in no stage, stages 1-3, 1-5 or "
                    "all, each within the same training cost on CIFAR-10; resumable.")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="directory with CIFAR-10's train.npz / test.npz (default: $EFFV2_DATA)")
    parser.add_argument("--out", required=True, type=output_path, help="directory (seed-N/<variant>/ per run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int_at_least(1), default=DEFAULT_EPOCHS,
                        help=f"cifar-tiny's epochs, which set the budget (default {DEFAULT_EPOCHS})")
    parser.add_argument("--report", action="store_true", help="only rewrite the table and the figure")
    parser.add_argument("--smoke", action="store_true", help="a pipeline check in seconds on 10 images per class "
                                                             "(also EFFV2_QUICK=1); not an experiment")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")
    if not args.report:
        run(args.data or os.environ.get("EFFV2_DATA"), args.out, seeds=tuple(args.seeds), epochs=args.epochs,
            smoke=args.smoke or is_quick_check(), progress=args.progress,
            command=shlex.join(["python", "-m", "effv2_lib.fused_stages", *argv]))
    print(f"report written to {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
