"""Experiments: progressive learning against its baselines on real CIFAR-10, one command.

Tan & Le (2021), "EfficientNetV2", Section 4 claims that progressive learning with adaptive
regularization trains faster at no loss of accuracy, and Section 6.3 that adapting the
regularization to the image size matters. ``cpu-cifar10`` tests both on the full CIFAR-10
(50,000 training / 10,000 test images) with EfficientNetV2-CIFAR-tiny, sized for a 2-core CPU.
Every run shares the seed, optimizer, recipe and evaluation; they differ only in what the name
says:

    progressive            the cifar10 preset scaled to --epochs (16 -> 32 px, regularization grows),
                           or the schedule --schedule FILE gives (a recipe tuned on held-out data)
    fixed                  the same epochs at 32 px with the final stage's regularization (baseline)
    progressive-fixed-reg  the progressive sizes with the final regularization throughout (Sec. 6.3)
    fixed-time-matched     32 px for as many epochs as the progressive run's training cost allows
    resnet20-time-matched  ResNet-20 (He et al. 2016) at 32 px, time-matched the same way

Time matching uses a cost that does not move with the machine's load: training images per second
at each image size, measured once when the experiment starts (``throughput.json``, on random data,
as `effv2_lib.bench` does), times the images each run trains on. Wall times are reported beside
it, with the load average recorded every epoch.

Runs go one after the other into OUT/<run>/ and the experiment resumes: a finished run is
skipped, an interrupted one continues from its checkpoint; a directory whose runs were trained
to another schedule or model is refused rather than mixed into the table. After each run
OUT/README.md (the table) and OUT/comparison.png (accuracy against training time) are written
again from what has finished, so results land as they come::

    python -m effv2_lib.experiments cpu-cifar10 --data DIR --out results/cpu-cifar10
    python -m effv2_lib.experiments cpu-cifar10 --data DIR --schedule FILE --out results/cpu-cifar10-tuned
    python -m effv2_lib.experiments cpu-cifar10 --out results/cpu-cifar10 --report   # table, figure only
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shlex
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ._checks import check_int, check_real
from ._cli import one_line_errors, output_path, schedule_file
from .checkpoint import HISTORY_FILE, RUN_FILE, SUMMARY_FILE, atomic_write_json, describe_data, read_json
from .config import SMOKE, TrainConfig, resolve_schedule, smoke_config
from .data import check_data_source
from .files import read_run
from .model import build_model
from .runtime import cpu_name, hardware, is_quick_check, pick_device, train_throughput
from .schedule import ProgressiveSchedule
from .timing import predicted_seconds

__all__ = ["RUN_NAMES", "EXPERIMENTS", "RACE_SCHEDULE", "RACE_FIXED_EPOCHS", "ExperimentRun", "plan_cpu_cifar10",
           "plan_race", "measure_throughput", "run_cost", "run_experiment", "load_results", "results_table",
           "write_report", "main"]

RUN_NAMES = ("progressive", "fixed", "progressive-fixed-reg", "fixed-time-matched", "resnet20-time-matched")
RACE_RUNS = ("progressive", "fixed-time-matched")
THROUGHPUT_FILE = "throughput.json"
LOAD_FILE = "load.json"
COMPARISON_FILE = "comparison.png"
REPORT_FILE = "README.md"
DEFAULT_EPOCHS = 12
BATCH_SIZE = 128
EXPERIMENTS = ("cpu-cifar10", "race")
CIFAR10_TRAIN_IMAGES = 50_000

# The race (NB06's live part): two epochs at 16 px, then one at 28 px, against 28 px throughout,
# both tested at 28 px, their final training size (no resize, so no BatchNorm re-estimation).
# Why these numbers (results/cpu-cifar10-race-candidates holds the recipes tried before):
# * Progressive learning can only win where a small-image epoch is much cheaper than a
#   final-size one. On a 2-core CPU below 20 px it is not (12 px costs about half of 20 px, far
#   from the 36 % its pixels suggest), and races ending at 20 px tied or lost. At 16 against
#   28 px the ratio is about 2.3.
# * Tested at the size the last stage trained at, a 3-epoch run moves by about a point with the
#   seed (Table 3's runs, results/cpu-cifar10-fused-stages); tested at 32 px after training at
#   28 px, the earlier race moved by up to 16.
# * The light regularization of the tuned recipe (results/cpu-cifar10-tuning): dropout 0 -> 0.1,
#   RandAugment 1 -> 3, no Mixup; the fixed run trains with the final stage's, as in the paper's
#   baseline.
# * The budget is the cost of two epochs at the final size, not a number of minutes: the images/s
#   measured on the 2-core CPU moved by half from one hour to the next (16 px 434 to 691), and a
#   budget in minutes then bought other epochs. Measured in final-size epochs, the progressive
#   run gets 2 epochs at 16 px and 1 at 28 px whenever a 16 px epoch costs at most half of a
#   28 px one (measured: 1/2.3 to 1/2.9). Side by side the two runs take about 12 minutes there.
RACE_SCHEDULE = ProgressiveSchedule(total_epochs=3, num_stages=2, image_size=(16, 28), size_multiple=4,
                                    dropout=(0.0, 0.1), randaug=(1, 3), mixup=(0, 0), name="race")
RACE_FIXED_EPOCHS = 2  # the budget per run: the cost of this many epochs at the final size


@dataclass(frozen=True)
class ExperimentRun:
    """One run of an experiment: its name, what it tests, and its TrainConfig."""

    name: str
    description: str
    config: TrainConfig = field(repr=False)


def _cost_key(model: str, size: int) -> str:
    return f"{model}@{size}"


def measure_throughput(models_sizes: dict[str, list[int]], batch_size: int, *, steps: int = 10, warmup: int = 2,
                       repeats: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Training images/s per (model, size): the median of `repeats` timings of `steps` steps each.

    Random data, forward + backward + SGD step, channels_last (what the trainer uses on CPU and
    CUDA), as `effv2_lib.runtime.train_throughput` measures it; the spread is kept beside.
    """
    rates: dict[str, Any] = {}
    for name, sizes in models_sizes.items():
        model = build_model(name, num_classes=10)
        for size in sorted(set(sizes)):
            timings = [train_throughput(model, size, batch_size=batch_size, steps=steps, warmup=warmup,
                                        device=device, channels_last=True) for _ in range(repeats)]
            rates[_cost_key(name, size)] = {"images_per_s": statistics.median(timings),
                                            "min": min(timings), "max": max(timings)}
    return {"batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
            "hardware": hardware(device), "load_average": os.getloadavg(), "rates": rates}


def run_cost(model: str, schedule: ProgressiveSchedule, train_images: int, rates: dict[str, Any]) -> float:
    """Seconds the run's training steps cost at the measured images/s: sum over stages of
    epochs x images / rate(model, size) (`timing.predicted_seconds`, the explorer's prediction,
    on this model's measured sizes). Independent of the load while the run trains."""
    measured = {int(key.split("@")[1]): rate["images_per_s"] for key, rate in rates.items()
                if key.startswith(f"{model}@")}
    return predicted_seconds(schedule, measured, train_images)


def plan_cpu_cifar10(data_dir: str | None, out: str | Path, *, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                     batch_size: int = BATCH_SIZE, rates: dict[str, Any] | None = None, train_images: int = 50_000,
                     smoke: bool = False, schedule: ProgressiveSchedule | dict | None = None) -> list[ExperimentRun]:
    """The five runs of ``cpu-cifar10``: the progressive run trains `schedule` if given, else the
    cifar10 preset at `epochs`; the others are derived from its sizes and final stage. The
    time-matched runs need `rates` (measured images/s); without them only the first three are planned."""
    out = Path(out)
    recipe = (dict(preset="cifar10", epochs=epochs) if schedule is None
              else dict(schedule=schedule, epochs=None))
    base = TrainConfig(model="cifar-tiny", batch_size=batch_size, seed=seed, data_dir=data_dir,
                       full_data_only=not smoke, sample=smoke and data_dir is None, loader="device", smoke=smoke,
                       **recipe)
    progressive = resolve_schedule(base)
    last = progressive.stages[-1]
    fixed_reg = replace(progressive, dropout=(last.dropout,) * 2, randaug=(last.randaug_magnitude,) * 2,
                        mixup=(last.mixup_alpha,) * 2, cutmix=(last.cutmix_alpha,) * 2,
                        name=f"{progressive.name or 'schedule'}, final regularization throughout")

    def run(name: str, description: str, **changes: Any) -> ExperimentRun:
        return ExperimentRun(name, description, replace(base, out=str(out / name), **changes))

    runs = [
        run("progressive", f"{progressive.image_size[0]} -> {last.image_size} px in {progressive.num_stages} stages, "
                           "regularization grows with the size", ),
        run("fixed", f"{last.image_size} px every epoch, the final stage's regularization (the paper's baseline)",
            fixed_size=last.image_size),
        run("progressive-fixed-reg", "the progressive sizes, the final regularization throughout (Section 6.3)",
            schedule=fixed_reg.to_dict(), epochs=None),
    ]
    if rates is None:
        return runs
    budget = run_cost("cifar-tiny", progressive, train_images, rates)
    for name, model in (("fixed-time-matched", "cifar-tiny"), ("resnet20-time-matched", "resnet20")):
        per_epoch = run_cost(model, ProgressiveSchedule.fixed(1, last.image_size), train_images, rates)
        matched = max(1, math.floor(budget / per_epoch))  # as many epochs as fit in the progressive cost
        what = "EfficientNetV2-CIFAR-tiny" if model == "cifar-tiny" else "ResNet-20 (He et al. 2016)"
        runs.append(run(name, f"{what} at {last.image_size} px, {matched} epochs: as many as fit in the "
                              f"progressive run's training cost", model=model, fixed_size=last.image_size,
                        epochs=matched))
    return runs


def plan_race(data_dir: str | None, out: str | Path, *, rates: dict[str, Any], budget_s: float | None = None,
              seed: int = 0, batch_size: int = BATCH_SIZE, smoke: bool = False, download: bool = False,
              schedule: ProgressiveSchedule = RACE_SCHEDULE) -> list[ExperimentRun]:
    """The race: two runs that each spend at most `budget_s` seconds of training cost on the full
    CIFAR-10 at the measured images/s (`rates`, as throughput.json holds them); by default the
    cost of RACE_FIXED_EPOCHS epochs at the schedule's final size.

    progressive           `schedule` with as many epochs as fit in the budget (at least one per stage)
    fixed-time-matched    the final size and regularization, as many epochs as fit in the budget

    Both are tested at the final training size. The plan is made for 50,000 training images
    whatever the data: on the sample or in the quick check the runs keep the full data's epochs
    (and take seconds).
    """
    model = "cifar-tiny"
    final_size = schedule.stages[-1].image_size
    fixed_epoch = run_cost(model, ProgressiveSchedule.fixed(1, final_size), CIFAR10_TRAIN_IMAGES, rates)
    budget_s = check_real("budget_s", RACE_FIXED_EPOCHS * fixed_epoch if budget_s is None else budget_s, 0,
                          math.inf, allowed="a number of seconds > 0")
    base = TrainConfig(model=model, batch_size=batch_size, seed=seed, data_dir=data_dir, download=download,
                       full_data_only=not smoke and data_dir is not None, sample=smoke and data_dir is None,
                       loader="device", smoke=smoke, eval_size=final_size)

    def cost(epochs: int) -> float:
        return run_cost(model, replace(schedule, total_epochs=epochs), CIFAR10_TRAIN_IMAGES, rates)

    epochs = schedule.num_stages  # the least: one epoch per stage
    while cost(epochs + 1) <= budget_s:
        epochs += 1
    progressive = replace(schedule, total_epochs=epochs)
    last = progressive.stages[-1]
    fixed_epochs = max(1, math.floor(budget_s / fixed_epoch * (1 + 1e-9)))  # the default budget: exactly 2

    def of_budget(seconds: float, least: str) -> str:
        over = f" (over it: {least} is the least the race runs)" if seconds > budget_s else ""
        return f"{seconds / 60:.1f} min of the budget of {budget_s / 60:.1f} min{over}"

    sizes = " -> ".join(f"{s.image_size} px x {s.num_epochs}" for s in progressive.stages)
    return [
        ExperimentRun("progressive", f"{sizes} epochs, regularization grows with the size: "
                                     f"{of_budget(cost(epochs), 'one epoch per stage')}",
                      replace(base, schedule=progressive.to_dict(), out=str(Path(out) / "progressive"))),
        ExperimentRun("fixed-time-matched", f"{last.image_size} px x {fixed_epochs} epochs, the final "
                                            f"regularization: {of_budget(fixed_epochs * fixed_epoch, 'one epoch')}",
                      replace(base, schedule=progressive.to_dict(), fixed_size=last.image_size,
                              epochs=fixed_epochs, out=str(Path(out) / "fixed-time-matched"))),
    ]


# ----------------------------------------------------------------------------------- running
def _status(run_dir: Path) -> str:
    """'finished', 'started' (resumable) or 'new'."""
    summary = run_dir / SUMMARY_FILE
    if summary.is_file() and read_json(summary).get("status") == "finished":
        return "finished"
    return "started" if (run_dir / RUN_FILE).is_file() else "new"


def _train_one(run: ExperimentRun, command: str, progress: bool) -> None:
    from .train import train

    run_dir = Path(run.config.out)
    resume = _status(run_dir) == "started"
    load_file = run_dir / LOAD_FILE
    loads = read_json(load_file) if resume and load_file.is_file() else []

    def record_load(record: dict[str, Any]) -> None:
        loads.append({"epoch": record["epoch"], "load_average_1min": os.getloadavg()[0]})
        atomic_write_json(load_file, loads)

    result = train(replace(run.config, resume=resume), progress=progress, on_epoch=record_load,
                   command=f"{command}  # run {run.name}", resume_command=command or None)
    if result.status != "finished":
        raise KeyboardInterrupt(f"run {run.name} stopped ({result.status}); rerun the command to resume it")


def _train_side_by_side(runs: list[ExperimentRun], command: str) -> None:
    """Train `runs` at the same time, each in its own process with an equal share of torch's CPU threads.

    Why: a training step on CIFAR-sized images is too small to keep two threads busy. On the 2-core
    CPU the race was sized on, two single-threaded runs side by side trained about 1.5 times the
    images per second of one two-threaded run (12 px: about 480 img/s each against 620 alone; 20 px:
    about 230 each against 310; results/cpu-cifar10-race-candidates). The costs do not change: they
    are counted at the images/s throughput.json measured for one run on all threads. Each run's
    lines are prefixed with its name; Ctrl-C stops both, each at a checkpoint.
    """
    threads = max(1, torch.get_num_threads() // len(runs))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its own torch thread pool
    workers = [context.Process(target=_train_in_worker, args=(run, command, threads), name=run.name)
               for run in runs]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:  # the workers got the signal too: let them save their checkpoints
        for worker in workers:
            worker.join()
        raise
    failed = [f"{worker.name} (exit status {worker.exitcode})" for worker in workers if worker.exitcode != 0]
    if failed:
        raise RuntimeError(f"run {', '.join(failed)} did not finish (its lines above say why); "
                           "rerun the command to resume")


class _LinePrefix:
    """A text stream that starts every line written to `stream` with `prefix`."""

    def __init__(self, stream, prefix: str) -> None:
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _train_in_worker(run: ExperimentRun, command: str, threads: int) -> None:
    torch.set_num_threads(threads)
    sys.stdout = _LinePrefix(sys.stdout, f"[{run.name}] ")
    try:
        _train_one(run, command, progress=False)  # two progress bars on one terminal would garble each other
    except KeyboardInterrupt as stopped:
        print(stopped, flush=True)
        raise SystemExit(1) from None


def _check_same_run(run: ExperimentRun, source: str) -> None:
    """Refuse a run directory that holds a run of another model or schedule, a quick check where
    the real run belongs (or the reverse), or a run on other data than `source` (a finished one
    would otherwise be skipped and reported as if it were this experiment's)."""
    run_file = Path(run.config.out) / RUN_FILE
    if not run_file.is_file():
        return
    recorded = read_run(run_file)
    stored = TrainConfig(**recorded["config"])  # as given: a quick check's is shrunk when it trains
    if stored.smoke != run.config.smoke:
        held, wanted = ("a quick check's run", "the real experiment") if stored.smoke else \
            ("a real run", "the quick check (--smoke or EFFV2_QUICK=1)")
        raise ValueError(f"{run.config.out} holds {held}; {wanted} needs its own --out")
    data = recorded.get("data")  # directories from before run.json recorded the data have none
    if data is not None and data["source"] != source:
        raise ValueError(f"{run.config.out} holds a run on {describe_data(data)}, and this experiment reads "
                         f"{source}: give the data that made that directory, or another --out")
    stored, planned = (smoke_config(c) if c.smoke else c for c in (stored, run.config))
    found, wanted = resolve_schedule(stored), resolve_schedule(planned)
    if (stored.model, found) != (planned.model, wanted):
        raise ValueError(f"{run.config.out} holds a run of {stored.model} on the schedule\n{found.table()}\n"
                         f"but this experiment's {run.name} run is {planned.model} on\n{wanted.table()}\n"
                         "give another --out (or the options that made that directory)")


def run_experiment(name: str, data_dir: str | None, out: str | Path, *, epochs: int | None = None, seed: int = 0,
                   only: tuple[str, ...] | None = None, smoke: bool = False, progress: bool = True,
                   command: str = "", schedule: ProgressiveSchedule | dict | None = None,
                   budget_s: float | None = None, download: bool = False,
                   side_by_side: bool | None = None) -> list[ExperimentRun]:
    """Run (or resume) an experiment's runs in order; rewrite the report after each one.

    ``cpu-cifar10``: the five runs of `plan_cpu_cifar10`; the progressive run trains `schedule`,
    else the cifar10 preset at `epochs` (default 12). ``race``: the two runs of `plan_race` within
    `budget_s` seconds of training cost each (default: RACE_FIXED_EPOCHS epochs at the final size),
    trained side by side (`_train_side_by_side`) by default where that helps: a real race on a CPU
    with a thread for each run.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    race = name == "race"
    names = RACE_RUNS if race else RUN_NAMES
    only = names if only is None else only
    unknown = set(only) - set(names)
    if unknown:
        raise ValueError(f"unknown runs {sorted(unknown)}; the runs of {name} are {', '.join(names)}")
    if race and (schedule is not None or epochs is not None):
        raise ValueError("the race sets its own schedule and epochs from its budget; give neither")
    if schedule is not None and epochs is not None:
        raise ValueError("a schedule sets its own epochs; give the schedule or epochs, not both")
    if not race and schedule is None:
        epochs = check_int("epochs", DEFAULT_EPOCHS if epochs is None else epochs, 4)  # >= 1 epoch per stage
    any_rates = {f"cifar-tiny@{stage.image_size}": {"images_per_s": 1.0} for stage in RACE_SCHEDULE.stages}
    if race:
        first = plan_race(data_dir, out, rates=any_rates, smoke=smoke, download=download)[0].config
    else:
        first = plan_cpu_cifar10(data_dir, out, epochs=epochs, seed=seed, smoke=smoke, schedule=schedule)[0].config
    source = check_data_source(first.dataset, first.data_dir, download=first.download, sample=first.sample,
                               full_data_only=first.full_data_only)  # before any timing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    throughput_file = out / THROUGHPUT_FILE
    if throughput_file.is_file():
        throughput = read_json(throughput_file)
        if throughput.get("quick_check", False) != smoke:  # a quick check times one step: no costs from it
            held = "a quick check's one-step timing" if smoke is False else "a real experiment's timing"
            raise ValueError(f"{throughput_file} holds {held}; the {'quick check' if smoke else 'experiment'} "
                             "needs its own --out")
    else:  # measured before any training, while the machine is as quiet as it will be
        if race:
            models_sizes = {"cifar-tiny": [s.image_size for s in RACE_SCHEDULE.stages]}
        else:
            plan = plan_cpu_cifar10(data_dir, out, epochs=epochs, seed=seed, smoke=smoke, schedule=schedule)
            sizes = sorted({s.image_size for r in plan for s in resolve_schedule(r.config).stages})
            models_sizes = {"cifar-tiny": sizes, "resnet20": [sizes[-1]]}
        timing = dict(steps=1, warmup=0, repeats=1) if smoke else {}
        if race:  # the race trains wherever the trainer would (cpu-cifar10 is a CPU experiment by name)
            timing["device"] = pick_device(None).type
        throughput = measure_throughput(models_sizes, SMOKE["batch_size"] if smoke else BATCH_SIZE, **timing)
        atomic_write_json(throughput_file, {"experiment": name, "quick_check": smoke, **throughput})
    if race:
        plan = plan_race(data_dir, out, rates=throughput["rates"], budget_s=budget_s, seed=seed, smoke=smoke,
                         download=download)
    else:
        train_images = 10 * SMOKE["subset_per_class"] if smoke else CIFAR10_TRAIN_IMAGES  # CIFAR-10: 10 classes
        plan = plan_cpu_cifar10(data_dir, out, epochs=epochs, seed=seed, smoke=smoke, rates=throughput["rates"],
                                train_images=train_images, schedule=schedule)
    runs = [run for run in plan if run.name in only]
    for run in runs:  # before anything trains
        _check_same_run(run, source)
    pending = []
    for run in runs:
        state = _status(Path(run.config.out))
        print(f"== {run.name}: {run.description} [{'already finished' if state == 'finished' else state}]",
              flush=True)
        if state != "finished":
            pending.append(run)
    if side_by_side is None:
        side_by_side = race and not smoke and pick_device(None).type == "cpu" and torch.get_num_threads() >= 2
    if side_by_side and len(pending) > 1:
        _train_side_by_side(pending, command)
    else:
        for run in pending:
            _train_one(run, command, progress)
            write_report(out)
    write_report(out)
    return plan


# ---------------------------------------------------------------------------------- reporting
def _with_cost(history: list[dict[str, Any]], summary: dict[str, Any], rates: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with each epoch's load-independent cost (seconds at the measured images/s)."""
    images = summary["optimizer"]["steps_per_epoch"] * summary["optimizer"]["batch_size"]
    model = summary["model_name"]
    return [{**r, "cost_time": images / rates[_cost_key(model, r["image_size"])]["images_per_s"]} for r in history]


def _time_to_reach(history: list[dict[str, Any]], accuracy: float, key: str) -> float | None:
    """Seconds (summing `key` over epochs) until the first epoch whose test accuracy reaches `accuracy`."""
    elapsed = 0.0
    for record in history:
        elapsed += record[key]
        if record["test_acc"] >= accuracy:
            return elapsed
    return None


def _test_images(finished: dict[str, tuple[dict, list, list]]) -> str:
    counts = {summary["test_images"] for summary, _, _ in finished.values()}
    return f"{counts.pop():,}" if len(counts) == 1 else "10,000"


def _test_size(finished: dict[str, tuple[dict, list, list]]) -> str:
    sizes = sorted({summary["eval_size"] for summary, _, _ in finished.values()}) or [32]
    return " or ".join(str(size) for size in sizes)


def _minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds / 60:.1f}"


def _run_names(throughput: dict[str, Any]) -> tuple[str, ...]:
    """The runs of the experiment that measured `throughput` (directories from before the race
    was added hold cpu-cifar10's)."""
    return RACE_RUNS if throughput.get("experiment") == "race" else RUN_NAMES


def load_results(out: str | Path) -> tuple[dict[str, tuple[dict, list, list]], dict[str, Any]]:
    """The finished runs under `out`, in the experiment's order, as {name: (summary, history, loads)},
    each history record with its ``cost_time``; and throughput.json. (What the report and the
    notebooks read.)"""
    out = Path(out)
    throughput = read_json(out / THROUGHPUT_FILE)
    finished = {}
    for name in _run_names(throughput):
        run_dir = out / name
        if _status(run_dir) == "finished":
            summary = read_json(run_dir / SUMMARY_FILE)
            loads = read_json(run_dir / LOAD_FILE) if (run_dir / LOAD_FILE).is_file() else []
            history = _with_cost(read_json(run_dir / HISTORY_FILE), summary, throughput["rates"])
            finished[name] = (summary, history, loads)
    return finished, throughput


def results_table(finished: dict[str, tuple[dict, list, list]], *, wall_and_load: bool = True) -> list[str]:
    """The Markdown table of `load_results`' finished runs: one row per run, every figure from its files.
    `wall_and_load=False` leaves out the measured wall time and the load average (a lesson compares
    runs by their load-independent cost alone)."""
    # "fixed": the fixed run of the same epochs, or in the race the budget-matched one
    runs = {"progressive": "progressive", "fixed": "fixed" if "fixed" in finished else "fixed-time-matched"}
    targets = {name: finished[run][0]["final_test_acc"] for name, run in runs.items() if run in finished}
    head = ["run", "model", "epochs", "sizes (px)", "test acc.", "BN re-est. (before / after)", "cost (min)",
            "wall (min)", "cost to reach progressive's acc. (min)", "cost to reach fixed's acc. (min)",
            "load avg. (mean, max)"]
    machine = {"wall (min)", "load avg. (mean, max)"}
    keep = [wall_and_load or column not in machine for column in head]
    lines = ["| " + " | ".join(c for c, k in zip(head, keep, strict=True) if k) + " |",
             "|" + "---|" * sum(keep)]
    for name, (summary, history, loads) in finished.items():
        schedule = ProgressiveSchedule.from_dict(summary["schedule"])
        sizes = " -> ".join(str(s.image_size) for s in schedule.stages)
        bn = summary["bn_reestimation"]
        bn_text = (f"{100 * bn['test_acc_before']:.2f}% / {100 * bn['test_acc_after']:.2f}%" if bn["applied"]
                   else "not applied")
        values = [entry["load_average_1min"] for entry in loads]
        load = f"{statistics.mean(values):.2f}, {max(values):.2f}" if values else "-"
        reach = [_minutes(_time_to_reach(history, targets[other], "cost_time")) if other in targets else "-"
                 for other in ("progressive", "fixed")]
        cells = [name, f"{summary['model']} ({summary['params'] / 1e6:.2f}M)", str(summary["epochs_done"]), sizes,
                 f"{100 * summary['final_test_acc']:.2f}%", bn_text, f"{sum(r['cost_time'] for r in history) / 60:.1f}",
                 f"{summary['train_time_s'] / 60:.1f}", reach[0], reach[1], load]
        lines.append("| " + " | ".join(c for c, k in zip(cells, keep, strict=True) if k) + " |")
    return lines


def _machine(hw: dict[str, Any]) -> str:
    threads = hw["torch_threads"]
    return (f"{cpu_name(hw)} CPU, {hw['cpu_count']} cores, {threads} torch thread{'' if threads == 1 else 's'}, "
            f"torch {hw['torch']}")


def write_report(out: str | Path) -> Path:
    """OUT/README.md (the table) and OUT/comparison.png from the finished runs in `out`."""
    import matplotlib.pyplot as plt

    from .plots import plot_time_to_accuracy

    out = Path(out)
    finished, throughput = load_results(out)
    rates = throughput["rates"]
    target = finished["fixed"][0]["final_test_acc"] if "fixed" in finished else None
    title = ("the race, progressive learning against fixed-size training at equal training cost"
             if _run_names(throughput) == RACE_RUNS else "progressive learning against its baselines")
    lines = [
        f"# CIFAR-10 on a CPU: {title}",
        "",
        *(["**A quick check (--smoke or EFFV2_QUICK=1): a pipeline check on 10 images per class with one-step "
           "timings. Its figures are not results.**", ""] if throughput.get("quick_check") else []),
        "Written by `python -m effv2_lib.experiments` after each run from the runs' own files; nothing is typed in.",
        f"Test accuracy: top-1 on the {_test_images(finished)} CIFAR-10 test images after the last epoch, after",
        "the BatchNorm re-estimation where it applies (only where the last training size differs from the "
        f"{_test_size(finished)} px test size).",
        "Cost: each epoch's training images divided by the images/s measured for its model and size in",
        "throughput.json before the first run; it does not move with the machine's load, so runs compare",
        "on it. Wall: the measured time of the training steps (evaluation excluded), with the load average.",
        "",
        *results_table(finished),
    ]
    if "progressive" in finished:
        schedule = ProgressiveSchedule.from_dict(finished["progressive"][0]["schedule"])
        lines += ["", f"The progressive run's schedule (`{schedule.name or 'custom'}`); the other runs take its "
                      "final stage:", "", "```", *schedule.table().splitlines(), "```"]
        lines += ["", f"Seed {finished['progressive'][0]['config']['seed']} (every run of the experiment shares it)."]
    missing = [name for name in _run_names(throughput) if name not in finished]
    if missing:
        lines += ["", f"Not run yet (or still running): {', '.join(missing)}."]
    if finished:
        # Runs of one folder can train on different machines (a seed completed in a later session);
        # the report names each one then, and the CPU that timed the sizes where it is another.
        machines = {name: _machine(summary["hardware"]) for name, (summary, _, _) in finished.items()}
        hardware_text = (f"Hardware: {next(iter(machines.values()))}." if len(set(machines.values())) == 1 else
                         "Hardware, run by run: " + "; ".join(f"{name} on {machine}" for name, machine in
                                                            machines.items()) + ".")
        timed = throughput.get("hardware")
        trained_cpus = {cpu_name(summary["hardware"]) for summary, _, _ in finished.values()}
        timed_on = "" if timed is None or trained_cpus == {cpu_name(timed)} else f", timed on the {cpu_name(timed)} CPU"
        lines += ["", f"{hardware_text} Training images/s (median of {throughput['repeats']} timings "
                      f"of {throughput['steps']} steps, batch {throughput['batch_size']}, random data{timed_on}): "
                  + ", ".join(f"{key} {value['images_per_s']:.0f}" for key, value in rates.items()) + ".",
                  "", "Commands:", ""]
        lines += [f"- {name}: `{summary['command']}`" for name, (summary, _, _) in finished.items()]
        figure = plot_time_to_accuracy({name: history for name, (_, history, _) in finished.items()},
                                       target=target, time_key="cost_time",
                                       time_label="training cost (min at the measured images/s)")
        if target is not None:
            figure.axes[0].set_title(f"CIFAR-10 test accuracy against training cost (dashed: fixed's final "
                                     f"{100 * target:.2f}%)")
        figure.savefig(out / COMPARISON_FILE, dpi=110)
        plt.close(figure)
        lines += ["", f"![test accuracy against training cost]({COMPARISON_FILE})"]
    report = out / REPORT_FILE
    report.write_text("\n".join(lines) + "\n")
    return report


# ------------------------------------------------------------------------------------- CLI
@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.experiments",
        description="Progressive learning against fixed-size training, its ablation and ResNet-20 on CIFAR-10; "
                    "resumable (a rerun skips finished runs and continues an interrupted one).")
    parser.add_argument("experiment", choices=EXPERIMENTS,
                        help="cpu-cifar10: five runs of the preset (or --schedule); race: progressive against "
                             "fixed-size training within one budget of training cost each")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="directory with CIFAR-10's train.npz / test.npz (default: $EFFV2_DATA)")
    parser.add_argument("--download", action="store_true",
                        help="without --data: let torchvision download CIFAR-10 into data/ (race only)")
    parser.add_argument("--out", required=True, type=output_path,
                        help="experiment directory (one sub-directory per run)")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--epochs", type=int, help=f"epoch budget N of the cifar10 preset (default {DEFAULT_EPOCHS})")
    recipe.add_argument("--schedule", type=schedule_file, metavar="FILE",
                        help="the progressive run's schedule as JSON (ProgressiveSchedule.to_json()) instead of "
                             "the preset; the other runs follow its sizes, final stage and epochs")
    parser.add_argument("--budget-min", type=float, default=None, metavar="MIN",
                        help=f"race only: minutes of training cost per run on all 50,000 images at the measured "
                             f"images/s (default: the cost of {RACE_FIXED_EPOCHS} epochs at the final size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=None, choices=RUN_NAMES, metavar="RUN",
                        help=f"which runs, in the experiment's order (default: all: {', '.join(RUN_NAMES)}; "
                             f"the race: {', '.join(RACE_RUNS)})")
    parser.add_argument("--report", action="store_true", help="only rewrite the table and the figure")
    parser.add_argument("--smoke", action="store_true", help="a pipeline check in seconds on 10 images per class "
                                                             "(also EFFV2_QUICK=1); not an experiment")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    smoke = args.smoke or is_quick_check()
    data = args.data or os.environ.get("EFFV2_DATA")
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")
    if args.report:
        print(f"report written to {write_report(args.out)}")
        return 0
    if args.experiment != "race" and (args.download or args.budget_min is not None):
        raise ValueError("--download and --budget-min are options of the race")
    run_experiment(args.experiment, data, args.out, epochs=args.epochs, seed=args.seed,
                   only=None if args.runs is None else tuple(args.runs), smoke=smoke, progress=args.progress,
                   schedule=args.schedule, download=args.download,
                   budget_s=None if args.budget_min is None else args.budget_min * 60,
                   command=shlex.join(["python", "-m", "effv2_lib.experiments", *argv]))
    print(f"done: {Path(args.out) / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
