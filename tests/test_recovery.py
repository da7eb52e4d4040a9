"""Issue #21: nothing lost, nothing mixed.

A run killed at a random point (SIGKILL: no handler, no `finally`) is recovered by its own command
to the uninterrupted result, bit for bit; a resume that would switch data, and an experiment
directory that holds a quick check, are refused in one line naming the difference.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effv2_lib import experiments, run_directory, train
from effv2_lib.checkpoint import load_checkpoint

# A tiny run: 100 sample images, batch 20, 5 steps in each of 2 epochs at 16 px.
RUN = ["--model", "cifar-tiny", "--sample", "--smoke", "--fixed-size", "16", "--epochs", "2", "--device", "cpu",
       "--no-progress"]
STEPS_PER_EPOCH = 5

# Reads one kill per line (JSON: where, count, train's argv) and runs each `train.main(argv)` in a
# child forked before this process has run any torch op (no thread pool to inherit), SIGKILLed at:
#   step K    just after the K-th optimizer step (0-based, counted over the run);
#   save K    inside the K-th checkpoint save, the bytes written, before the rename.
# Prints, per kill, "killed: True" when the child died of SIGKILL. One interpreter start for all kills.
KILLER = """
import json, os, signal, sys
import torch
from effv2_lib import checkpoint, train, trainer

def kill_at(where, count):
    calls = [0]
    def maybe_kill():
        calls[0] += 1
        if calls[0] > count:
            os.kill(os.getpid(), signal.SIGKILL)
    if where == "step":
        step = trainer.Trainer.train_step
        def killing_step(self, images, targets):
            result = step(self, images, targets)
            maybe_kill()
            return result
        trainer.Trainer.train_step = killing_step
    else:
        save = torch.save
        def killing_save(obj, file, *args, **kwargs):
            save(obj, file, *args, **kwargs)
            if isinstance(obj, dict) and obj.get("format") == checkpoint.CHECKPOINT_FORMAT:
                maybe_kill()
        torch.save = killing_save

for line in sys.stdin:
    where, count, argv = json.loads(line)
    child = os.fork()
    if child == 0:
        kill_at(where, count)
        train.main(argv)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    print("killed:", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, flush=True)
"""


def _result(out: Path) -> tuple[dict, dict, list]:
    history = json.loads((out / "history.json").read_text())
    return load_checkpoint(out / "checkpoint.pt")["model"], json.loads((out / "summary.json").read_text()), history


@pytest.mark.slow
def test_a_run_killed_anywhere_is_recovered_to_the_uninterrupted_result(tmp_path, monkeypatch):
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    draw = random.Random(21)
    kills = {"before-the-first-checkpoint": ("step", draw.randrange(STEPS_PER_EPOCH - 1)),
             "mid-epoch": ("step", STEPS_PER_EPOCH + draw.randrange(STEPS_PER_EPOCH - 1)),
             "during-a-save": ("save", draw.randrange(2))}  # epoch 1's checkpoint, or epoch 2's
    commands = {name: [*RUN, "--out", str(tmp_path / name)] for name in kills}
    killed = subprocess.run([sys.executable, "-c", KILLER], capture_output=True, text=True, timeout=300,
                            input="".join(json.dumps([*kills[name], argv]) + "\n" for name, argv in commands.items()))
    verdicts = [line for line in killed.stdout.splitlines() if line.startswith("killed:")]
    assert verdicts == ["killed: True"] * len(kills), killed.stdout[-3000:] + killed.stderr[-3000:]

    assert train.main([*RUN, "--out", str(tmp_path / "whole")]) == 0
    weights, summary, history = _result(tmp_path / "whole")
    for name, argv in commands.items():
        assert not (tmp_path / name / "summary.json").exists(), name  # it was killed before the end
        assert train.main([*argv, "--resume"]) == 0, name
        recovered, recovered_summary, recovered_history = _result(tmp_path / name)
        assert recovered.keys() == weights.keys()
        assert all(torch.equal(recovered[k], weights[k]) for k in weights), name
        assert recovered_summary["final_test_acc"] == summary["final_test_acc"], name
        assert [r["train_loss"] for r in recovered_history] == [r["train_loss"] for r in history], name


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch):
    """Runs here are compared by their files, not their figures (matplotlib takes most of a tiny run)."""
    monkeypatch.setattr(run_directory, "write_plots", lambda *a, **k: None)


def _one_line_error(main, argv, capsys) -> str:
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and err.count("\n") == 1, err
    return err


def _npz_data(folder: Path, seed: int) -> Path:
    """A small "CIFAR-10": 200 training, 100 test images."""
    import numpy as np
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, n in (("train", 200), ("test", 100)):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    return folder


def test_a_resume_on_other_data_is_refused(tmp_path, monkeypatch, capsys):
    """Case 3: started with EFFV2_DATA, resumed in a shell without it (the sample) or with other data."""
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    monkeypatch.setenv("EFFV2_DATA", str(_npz_data(tmp_path / "first", seed=0)))
    out = tmp_path / "run"
    argv = ["--model", "cifar-tiny", "--smoke", "--fixed-size", "16", "--epochs", "2", "--device", "cpu",
            "--no-progress", "--out", out]
    assert train.main([str(a) for a in [*argv, "--stop-after", "1"]]) == 0
    recorded = json.loads((out / "run.json").read_text())["data"]
    assert recorded["source"] == str(tmp_path / "first")
    assert recorded["train_images"] == 100  # the quick check's 10 per class
    capsys.readouterr()
    monkeypatch.delenv("EFFV2_DATA")
    error = _one_line_error(train.main, ["--resume", "--out", out, "--no-progress"], capsys)
    assert f"trained on {tmp_path / 'first'} (100 training images" in error and "sample:" in error
    monkeypatch.setenv("EFFV2_DATA", str(_npz_data(tmp_path / "second", seed=1)))
    error = _one_line_error(train.main, ["--resume", "--out", out, "--no-progress"], capsys)
    assert f"go on with {tmp_path / 'second'}" in error and "the same --data, or EFFV2_DATA" in error
    monkeypatch.setenv("EFFV2_DATA", str(tmp_path / "first"))
    assert train.main(["--resume", "--out", str(out), "--no-progress"]) == 0


def test_a_quick_check_experiment_is_never_read_as_the_real_one(tmp_path, monkeypatch, capsys):
    """Case 2: the quick check's finished runs and one-step timing in the real experiment's --out."""
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    monkeypatch.setattr(experiments, "_train_one", lambda *a: pytest.fail("trained into a quick check's directory"))
    out = tmp_path / "exp"
    out.mkdir()
    rates = {f"{m}@{s}": {"images_per_s": 100.0} for m in ("cifar-tiny", "resnet20") for s in (16, 20, 24, 28, 32)}
    (out / "throughput.json").write_text(json.dumps({"experiment": "cpu-cifar10", "quick_check": True,
                                                     "rates": rates}))
    data = _npz_data(tmp_path / "data", seed=0)
    error = _one_line_error(experiments.main, ["cpu-cifar10", "--data", data, "--out", out, "--runs", "fixed",
                                               "--no-progress"], capsys)
    assert "throughput.json holds a quick check's one-step timing; the experiment needs its own --out" in error
    # the reverse: a real run's directory under the quick check
    (out / "throughput.json").write_text(json.dumps({"experiment": "cpu-cifar10", "quick_check": False,
                                                     "rates": rates}))
    fixed = experiments.plan_cpu_cifar10(None, out, epochs=12)[1].config
    (out / "fixed").mkdir()
    (out / "fixed" / "run.json").write_text(json.dumps({"config": fixed.to_dict()}))
    with pytest.raises(ValueError, match="exp/fixed holds a real run; the quick check .* needs its own --out"):
        experiments._check_same_run(experiments.plan_cpu_cifar10(None, out, epochs=12, smoke=True)[1],
                                    "sample:cifar10_sample.npz")
    with pytest.raises(ValueError, match=r"holds a run on /elsewhere \(50,000 training images.*reads /data/here"):
        (out / "fixed" / "run.json").write_text(json.dumps({"config": fixed.to_dict(), "data": {
            "source": "/elsewhere", "train_images": 50_000, "fingerprint": "0123"}}))
        experiments._check_same_run(experiments.plan_cpu_cifar10(None, out, epochs=12)[1], "/data/here")


def test_a_batch_larger_than_the_data_trains_with_a_notice_and_records_the_batch_used(tmp_path, monkeypatch, capsys):
    """Case 9: --batch-size 1000000 on 100 images: one step of 100 per epoch, said and recorded."""
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    out = tmp_path / "run"
    assert train.main(["--model", "cifar-tiny", "--sample", "--subset-per-class", "10", "--test-subset-per-class", "2",
                       "--fixed-size", "16", "--epochs", "1", "--batch-size", "1000000", "--device", "cpu",
                       "--no-progress", "--out", str(out)]) == 0
    assert ("NOTE: --batch-size 1000000 is larger than the training set (100 images); training with batch 100"
            in capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer"]["batch_size"] == 100 and summary["optimizer"]["steps_per_epoch"] == 1


def test_a_run_stopped_inside_an_experiment_names_the_experiments_command(tmp_path, monkeypatch):
    """Case 10: the hint to continue is the experiment's own command, not train --resume."""
    from types import SimpleNamespace

    from effv2_lib import train as train_module
    from effv2_lib.run_directory import RunDirectory
    from effv2_lib.run_state import resume_hint
    run_dir = RunDirectory(tmp_path / "exp" / "progressive")
    command = "python -m effv2_lib.experiments race --out exp"
    assert resume_hint(run_dir, "exp/progressive", command).endswith(f"continue by running {command} again")
    assert resume_hint(run_dir, "exp/progressive").endswith("continue with --resume --out exp/progressive")
    given = {}
    monkeypatch.setattr(train_module, "train", lambda config, **kw: given.update(kw) or SimpleNamespace(
        status="interrupted"))
    run = experiments.plan_race(None, tmp_path / "exp", rates={f"cifar-tiny@{s}": {"images_per_s": 1e3}
                                                              for s in (16, 28)}, smoke=True)[0]
    with pytest.raises(KeyboardInterrupt, match="rerun the command to resume it"):
        experiments._train_one(run, command, progress=False)
    assert given["resume_command"] == command
