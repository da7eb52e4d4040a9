"""The race: progressive learning against fixed-size training at equal cost, live in a class.

Tan & Le (2021), "EfficientNetV2", Section 4 and Figure 1(a): with progressive learning the same
network reaches a given accuracy in less training time. The race shows it in one class period:
two runs of `effv2_lib.experiments` ``race`` (see `plan_race` there), each within the same budget
of training cost, train on the full CIFAR-10 in a background process while the lesson goes on;
the notebook reads their run directories as epochs land. `summarize_seeds` and
`write_seed_report` turn several seeds' race directories into the committed evidence: each
run's final test accuracy, the progressive run's lead, and its spread over seeds.

    race = start_race("runs/race", data_dir=None, seed=0)   # background, returns at once
    race.finished()                                         # poll; race.wait() blocks
    figure = plot_race("runs/race")                         # what has landed so far
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import check_int
from .checkpoint import HISTORY_FILE, SUMMARY_FILE, read_json
from .experiments import RACE_RUNS, THROUGHPUT_FILE, _with_cost
from .runtime import cpu_name

__all__ = ["RaceProcess", "start_race", "race_progress", "plot_race", "summarize_seeds", "seed_table",
           "write_seed_report", "LABELS"]

LOG_FILE = "race.log"
# What the notebook and the figures call the race's two runs.
LABELS = {"progressive": "progressive", "fixed-time-matched": "fixed"}


@dataclass
class RaceProcess:
    """A race running in a background process: its directory, the process and the log it writes."""

    out: Path
    process: subprocess.Popen
    command: list[str]

    def finished(self) -> bool:
        return self.process.poll() is not None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the race ends; its exit status (0: both runs finished)."""
        return self.process.wait(timeout)

    def log(self) -> str:
        """What the race printed so far: a line per epoch of each run, then the report's path."""
        path = self.out / LOG_FILE
        return path.read_text() if path.is_file() else ""


def start_race(out: str | Path, *, data_dir: str | None = None, seed: int = 0, download: bool = False,
               budget_min: float | None = None, env: dict[str, str] | None = None) -> RaceProcess:
    """Start ``python -m effv2_lib.experiments race`` in the background, writing to `out`.

    The race is the project's own command, so a notebook that starts it and a student who types it
    get the same runs, and an interrupted race resumes when started again on the same `out`. The
    environment passes through (EFFV2_QUICK makes it a quick check, EFFV2_DATA names the data).
    """
    seed = check_int("seed", seed, 0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "effv2_lib.experiments", "race", "--out", str(out), "--seed", str(seed),
               "--no-progress"]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    if download:
        command.append("--download")
    if budget_min is not None:
        command += ["--budget-min", str(budget_min)]
    with open(out / LOG_FILE, "a") as log:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return RaceProcess(out, process, command)


def race_progress(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The epochs each run of the race in `out` has finished so far, by label ("progressive",
    "fixed"), each record with its ``cost_time``: the epoch's training images (its measured
    images/s times its seconds) at the images/s throughput.json holds for its size. Runs without a
    finished epoch are left out."""
    out = Path(out)
    if not (out / THROUGHPUT_FILE).is_file():
        return {}
    rates = read_json(out / THROUGHPUT_FILE)["rates"]
    landed = {}
    for name in RACE_RUNS:
        history_file = out / name / HISTORY_FILE
        history = read_json(history_file) if history_file.is_file() else []
        if history:
            landed[LABELS[name]] = [
                {**r, "cost_time": r["images_per_s"] * r["epoch_time"] / rates[f"cifar-tiny@{r['image_size']}"]
                 ["images_per_s"]} for r in history]
    return landed


def _final_accuracy(run_dir: Path) -> float | None:
    """The finished run's final test accuracy, None while it runs."""
    summary = run_dir / SUMMARY_FILE
    if not summary.is_file():
        return None
    summary = read_json(summary)
    return summary["final_test_acc"] if summary.get("status") == "finished" else None


def plot_race(out: str | Path, *, ax: Any = None, budget_min: float | None = None):
    """Test accuracy against training cost for what has landed of the race in `out`: one line per
    run (`plots.plot_time_to_accuracy`), a star at each finished run's final accuracy, and the budget
    as a vertical line."""
    from .plots import plot_time_to_accuracy

    out = Path(out)
    landed = race_progress(out)
    if not landed:
        raise ValueError(f"no epoch of the race in {out} has finished yet; run this cell again in a minute")
    figure = plot_time_to_accuracy(landed, time_key="cost_time", ax=ax,
                                   time_label="training cost (min at the measured images/s)")
    axes = figure.axes[0]
    for k, (name, label) in enumerate(LABELS.items()):
        final = _final_accuracy(out / name)
        if final is not None and label in landed:
            minutes = sum(r["cost_time"] for r in landed[label]) / 60
            axes.plot([minutes], [100 * final], marker="*", markersize=13, color=f"C{k}", linestyle="none")
    if budget_min is not None:
        axes.axvline(budget_min, color="0.2", linewidth=1.0)
        axes.annotate("budget", (budget_min, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                      ha="right", va="bottom", fontsize=9)
    axes.set_title("The race (star: final test accuracy)")
    return figure


def summarize_seeds(race_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per finished race directory: seed, each run's final test accuracy, training cost and
    wall time (minutes), and the progressive run's lead in points. Quick checks and real races are never
    summed up together."""
    rows = []
    for race_dir in map(Path, race_dirs):
        throughput = read_json(race_dir / THROUGHPUT_FILE)
        rates = throughput["rates"]
        row: dict[str, Any] = {"dir": race_dir.name, "quick_check": throughput.get("quick_check", False)}
        for name, label in LABELS.items():
            summary = read_json(race_dir / name / SUMMARY_FILE)
            if summary.get("status") != "finished":
                raise ValueError(f"{race_dir / name} has not finished (status {summary.get('status')!r}); "
                                 f"rerun its race to complete it")
            history = _with_cost(read_json(race_dir / name / HISTORY_FILE), summary, rates)
            row["seed"] = summary["config"]["seed"]
            row[f"{label}_acc"] = summary["final_test_acc"]
            row[f"{label}_cost_min"] = sum(r["cost_time"] for r in history) / 60
            row[f"{label}_wall_min"] = summary["wall_time_s"] / 60  # steps, evaluation and checkpoints
            row[f"{label}_epochs"] = summary["epochs_done"]
        row["lead"] = 100 * (row["progressive_acc"] - row["fixed_acc"])
        rows.append(row)
    quick = [row["dir"] for row in rows if row["quick_check"]]
    if quick and len(quick) < len(rows):
        raise ValueError(f"{', '.join(quick)} {'is a quick check' if len(quick) == 1 else 'are quick checks'} "
                         f"(--smoke or EFFV2_QUICK=1) beside real races: one table cannot hold both")
    return rows


def seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """`summarize_seeds`' rows as a Markdown table, with the mean and the spread (sample standard
    deviation, min to max) of each accuracy and of the lead; for the lead also the standard error
    of its mean (sd / sqrt(n)), what a mean lead is judged against."""
    lines = ["| seed | progressive: test acc. | cost (min) | fixed: test acc. | cost (min) | lead (points) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {100 * row['progressive_acc']:.2f}% | {row['progressive_cost_min']:.1f} "
                     f"| {100 * row['fixed_acc']:.2f}% | {row['fixed_cost_min']:.1f} | {row['lead']:+.2f} |")
    if len(rows) >= 2:
        def spread(values: list[float], sign: str = "", error: bool = False) -> str:  # "+": leads show their sign
            sd = statistics.stdev(values)
            se = f"se {sd / len(values) ** 0.5:.2f}, " if error else ""
            return (f"{statistics.mean(values):{sign}.2f} (sd {sd:.2f}, {se}"
                    f"{min(values):{sign}.2f} to {max(values):{sign}.2f})")
        lines.append(f"| mean of {len(rows)} | {spread([100 * r['progressive_acc'] for r in rows])} | "
                     f"{statistics.mean(r['progressive_cost_min'] for r in rows):.1f} | "
                     f"{spread([100 * r['fixed_acc'] for r in rows])} | "
                     f"{statistics.mean(r['fixed_cost_min'] for r in rows):.1f} | "
                     f"{spread([r['lead'] for r in rows], '+', error=True)} |")
    return lines


def write_seed_report(root: str | Path) -> Path:
    """ROOT/README.md: the table of every race directory ROOT/seed-*, with their commands."""
    root = Path(root)
    race_dirs = sorted(root.glob("seed-*"), key=lambda p: p.name)
    rows = summarize_seeds(race_dirs)
    # One command per race: both runs record it, with "# run NAME" appended.
    commands, summaries = [], []
    for race_dir in race_dirs:
        summary = read_json(race_dir / "progressive" / SUMMARY_FILE)
        summaries.append(summary)
        command = f"`{summary['command'].split('  # run')[0]}`"
        trained_in = os.path.normpath(Path(summary["config"]["out"]).parent)
        if trained_in != os.path.normpath(race_dir):  # a report names where the runs are now
            command += f" (trained into {trained_in}, since moved to {os.path.normpath(race_dir)})"
        commands.append(command)
    eval_size = summaries[0]["eval_size"]
    # the first seed that recorded the CPU's vector instructions (older summaries lack them)
    machines = [summary["hardware"] for summary in summaries]
    hardware = next((facts for facts in machines if "cpu_capability" in facts), machines[0])
    lines = ["# The race on the full CIFAR-10, several seeds", "",
             *(["**Quick checks (--smoke or EFFV2_QUICK=1): pipeline checks on 10 images per class. Their "
                "figures are not results.**", ""] if rows and rows[0]["quick_check"] else []),
             "Written by `python -m effv2_lib.race ROOT` from the race directories' own files.",
             "Each race: `effv2_lib.experiments race`, two runs of EfficientNetV2-CIFAR-tiny on all 50,000 "
             "training images, each within the same budget of training cost; test accuracy on the 10,000 test "
             f"images at {eval_size} px, the size both runs trained at last. Lead: progressive minus fixed, in "
             "points; se: the standard error of the mean lead.", "",
             *seed_table(rows), "",
             f"Hardware: {cpu_name(hardware)} CPU, {hardware['cpu_count']} cores, torch {hardware['torch']}.",
             "", "Commands (the data set named by EFFV2_DATA):", "", *[f"- {c}" for c in commands], ""]
    report = root / "README.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m effv2_lib.race ROOT  (ROOT holds race directories seed-0, seed-1, ...)",
              file=sys.stderr)
        return 2
    print(f"written: {write_seed_report(argv[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
