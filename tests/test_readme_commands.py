"""Every training command the README documents runs in its --smoke form, survives Ctrl-C and resumes.

The commands are read from the README's code blocks, so a command that stops working, or that
cannot be resumed by repeating it with --resume, fails here. To keep the test short each runs
with --smoke (10 images per class), cifar-tiny instead of cifar and at most 4 epochs (the
CPU experiment: its first run), on a small npz data set where the command names DIR.
"""

import json
import os
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest

import effv2_lib.experiments as experiments_module
import effv2_lib.train as train_module
import effv2_lib.trainer as trainer_module

README = Path(__file__).resolve().parent.parent / "README.md"
ENTRY_POINTS = {"python -m effv2_lib.train": train_module.main, "effv2-train": train_module.main,
                "python -m effv2_lib.experiments": experiments_module.main,
                "effv2-experiments": experiments_module.main}


def documented_commands() -> list[str]:
    """Lines of the README's fenced code blocks that call a training entry point (comments cut)."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.split("#")[0].strip())
    return sorted({line for line in lines if any(line.startswith(p + " ") for p in ENTRY_POINTS)})


def test_the_readme_documents_training_and_the_experiment():
    commands = documented_commands()
    assert any("effv2_lib.experiments" in c for c in commands)
    assert any("--fixed-size" in c for c in commands) and any("--auto" in c for c in commands)
    assert any("effv2_lib.experiments" in c and "--schedule" in c for c in commands)  # the tuned recipe
    assert any(c.startswith("python -m effv2_lib.experiments race ") for c in commands)  # notebook 06's race


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 100)):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    return folder


def shrunk(command: str, data: Path, out: Path) -> tuple:
    prefix = next(p for p in ENTRY_POINTS if command.startswith(p + " "))
    args = shlex.split(command[len(prefix):])
    args = [str(data) if a == "DIR" else a for a in args]
    is_experiment = ENTRY_POINTS[prefix] is experiments_module.main
    if "--schedule" in args:  # a file of the repository (the test runs elsewhere); it sets the epochs
        at = args.index("--schedule") + 1
        args[at] = str(README.parent / args[at])
    for flag, value in (("--out", str(out)), ("--model", "cifar-tiny"), ("--epochs", "4")):
        if flag in args:
            args[args.index(flag) + 1] = value
        elif flag == "--out" or (flag == "--epochs" and is_experiment and not {"--schedule", "race"} & set(args)):
            args += [flag, value]
    if is_experiment and "cpu-cifar10" in args and "--runs" not in args:
        args += ["--runs", "progressive"]  # the first of five: its resume (moving on to the next: test_experiments)
    extra = ["--smoke", "--no-progress"] + (["--device", "cpu"] if ENTRY_POINTS[prefix] is train_module.main else [])
    return ENTRY_POINTS[prefix], args + extra


@pytest.mark.slow
@pytest.mark.parametrize("command", documented_commands())
def test_a_documented_command_runs_stops_on_ctrl_c_and_resumes(command, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, args = shrunk(command, data_dir, tmp_path / "out")
    record = trainer_module.Trainer.epoch_record
    calls = []

    def ctrl_c_after_the_first_epoch(self, epoch, stage, stats):
        calls.append(epoch)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # caught by the trainer: it saves and stops
        return record(self, epoch, stage, stats)

    monkeypatch.setattr(trainer_module.Trainer, "epoch_record", ctrl_c_after_the_first_epoch)
    assert main(args) == 130
    resume = args if main is experiments_module.main else args + ["--resume"]  # the experiment resumes itself
    assert main(resume) == 0
    if main is train_module.main and "--epochs" in args:  # the command's epochs, honoured in the quick check
        history = json.loads((tmp_path / "out" / "history.json").read_text())
        assert [r["epoch"] for r in history] == [1, 2, 3, 4]
