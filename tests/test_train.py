"""The trainer on tiny CPU runs: 160 sample images, cifar-tiny, 16-20 px, 3 epochs."""

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

import effv2_lib.augment as augment_module
import effv2_lib.config as config_module
import effv2_lib.loop_machinery as machinery_module
import effv2_lib.train as train_module
import effv2_lib.trainer as trainer_module
import effv2_lib.training_data as training_data_module
from effv2_lib.checkpoint import RunDirectoryError, load_checkpoint
from effv2_lib.config import resolve_schedule
from effv2_lib.data import load_cifar, subset
from effv2_lib.evaluate import evaluate, reestimate_batchnorm
from effv2_lib.optim import ModelEMA, WarmupThenDecay, parameter_groups
from effv2_lib.schedule import ProgressiveSchedule
from effv2_lib.train import NonFiniteLossError, TrainConfig, auto_config, train

ROOT = Path(__file__).resolve().parent.parent
# 3 epochs in 2 stages: epochs 1-2 at 16 px without regularization, epoch 3 at 20 px with
# dropout 0.1, RandAugment 3 and Mixup 0.2 (soft targets).
SCHEDULE = ProgressiveSchedule(3, 2, image_size=(16, 20), dropout=(0.0, 0.1), randaug=(0, 3), mixup=(0, 0.2),
                               size_multiple=4, name="test")


@pytest.fixture(scope="module")
def tiny_data():
    data = load_cifar(prefer_sample=True)
    return replace(data, train=subset(data.train, 16, seed=0), test=subset(data.test, 5, seed=0))


def config(**overrides):
    settings = dict(model="cifar-tiny", schedule=SCHEDULE, batch_size=32, warmup_epochs=0.5, bn_batches=2,
                    loader="device", device="cpu", seed=0)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """An uninterrupted 3-epoch run with EMA: the reference for resuming, and its files."""
    out = tmp_path_factory.mktemp("straight")
    records = []
    result = train(config(out=str(out), ema=True), progress=False, data=tiny_data, on_epoch=records.append)
    return result, out, records


def assert_same_training_state(path_a, path_b):
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    if a["ema"] is not None:
        for name, tensor in a["ema"]["module"].items():
            assert torch.equal(tensor, b["ema"]["module"][name]), f"ema.{name} differs"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    losses = [[r["train_loss"] for r in c["history"]] for c in (a, b)]
    assert losses[0] == losses[1]


def test_records_files_and_plots(straight_run):
    result, out, records = straight_run
    assert result.status == "finished"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "confusion_matrix.png", "curves.png",
                                                    "history.json", "run.json", "summary.json"]
    history = json.loads((out / "history.json").read_text())
    assert history == records == result.history
    # each epoch trained with its stage's settings
    assert [(r["stage"], r["image_size"], r["dropout"], r["randaug_magnitude"], r["mixup_alpha"])
            for r in history] == [(0, 16, 0.0, 0.0, 0.0), (0, 16, 0.0, 0.0, 0.0), (1, 20, 0.1, 3.0, 0.2)]
    assert [r["randaug_applied"] for r in history] == [False, False, True]
    for key in ("train_loss", "train_acc", "test_acc", "test_acc_raw", "images_per_s", "epoch_time",
                "wall_time", "lr", "randaug_magnitude"):
        assert all(math.isfinite(r[key]) for r in history), key
    assert history[0]["wall_time"] < history[1]["wall_time"] < history[2]["wall_time"]
    assert history[-1]["lr"] < history[0]["lr"]  # cosine decay
    assert result.model.classifier[0].p == pytest.approx(0.1)  # dropout of the last stage

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    assert summary["params"] == sum(p.numel() for p in result.model.parameters())
    assert summary["hardware"]["device"] == "cpu" and summary["data"]["is_sample"] is True
    assert summary["schedule"]["num_stages"] == 2 and summary["optimizer"]["ema"] is True
    bn = summary["bn_reestimation"]
    assert bn["applied"] and (bn["last_train_size"], bn["eval_size"]) == (20, 32)  # trained at 20, tested at 32
    assert bn["test_acc_after"] == summary["final_test_acc"]
    assert bn["test_acc_before"] == history[-1]["test_acc"]
    assert bn["change"] == pytest.approx(bn["test_acc_after"] - bn["test_acc_before"])
    assert sum(map(sum, summary["confusion_matrix"])) == summary["test_images"] == 50
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_stopping_and_resuming_reaches_the_same_weights(straight_run, tiny_data, tmp_path):
    _, straight_out, _ = straight_run
    out = str(tmp_path / "resumed")
    first = train(config(out=out, ema=True, stop_after=2), progress=False, data=tiny_data)
    assert first.status == "stopped" and len(first.history) == 2
    assert load_checkpoint(Path(out) / "checkpoint.pt")["epoch"] == 2
    second = train(config(out=out, ema=True, resume=True), progress=False, data=tiny_data)
    assert second.status == "finished" and [r["epoch"] for r in second.history] == [1, 2, 3]
    # the resumed run starts a new stage (20 px, Mixup) with restored RNG and data streams
    assert_same_training_state(straight_out / "checkpoint.pt", Path(out) / "checkpoint.pt")


def test_sigint_mid_epoch_saves_and_resume_is_exact(tiny_data, tmp_path):
    # cpu loader: per-sample RandAugment draws from torch's global generator, interleaved with
    # dropout and stochastic depth, the hardest case for an exact resume.
    reference = train(config(out=str(tmp_path / "ref"), loader="cpu"), progress=False, data=tiny_data)
    assert reference.summary["speed"]["loader"] == "cpu"
    out = tmp_path / "interrupted"

    def interrupt(epoch, step):
        if (epoch, step) == (2, 1):
            # our handler must be installed, or this would stop the test session
            assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_IGN)
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup and in background jobs
    stopped = train(config(out=str(out), loader="cpu"), progress=False, data=tiny_data, on_step=interrupt)
    assert stopped.status == "interrupted" and len(stopped.history) == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    saved = load_checkpoint(out / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == (2, 2)  # inside epoch 3, after its second step
    resumed = train(config(out=str(out), loader="cpu", resume=True), progress=False, data=tiny_data)
    assert resumed.status == "finished"
    assert_same_training_state(tmp_path / "ref" / "checkpoint.pt", out / "checkpoint.pt")
    assert resumed.history[-1]["train_acc"] == reference.history[-1]["train_acc"]


def test_ctrl_c_on_the_command_line_saves_and_exits_cleanly(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "effv2_lib.train", "--model", "cifar-tiny", "--sample", "--device", "cpu",
               "--subset-per-class", "16", "--test-subset-per-class", "5", "--batch-size", "32",
               "--epochs", "40", "--bn-batches", "2", "--no-progress", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("EFFV2_QUICK", "EFFV2_DATA")}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "history.json").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[0]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "SIGINT received" in output and "checkpoint saved" in output and "Traceback" not in output
    saved = load_checkpoint(out / "checkpoint.pt")
    done = saved["epoch"]
    assert 1 <= done < 40
    # --resume takes the run's own settings from run.json; --stop-after may differ (in this process:
    # the signal's part is done, and an interpreter start costs seconds)
    for name in ("EFFV2_QUICK", "EFFV2_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert train_module.main(["--out", str(out), "--resume", "--stop-after", str(done + 1), "--no-progress"]) == 0
    at = f"epoch {done + 1} of {saved['schedule']['total_epochs']}"
    if saved["step"]:  # stopped inside an epoch: the step is counted within the epoch
        at += f", step {saved['step'] + 1} of "
    assert f"resuming {out} at {at}" in capsys.readouterr().out
    assert len(json.loads((out / "history.json").read_text())) == done + 1


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_stops_naming_epoch_and_step(tiny_data, sync_every):
    # lr 1e30: the first step blows the weights up. With sync_every=4 the loss is read back
    # only at step 4, yet the message names the first bad step, recorded on the device.
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf|-inf) at epoch 1/3, step [23]/5"):
        train(config(lr=1e30, sync_every=sync_every), progress=False, data=tiny_data)


def test_bf16_autocast_with_reads_every_few_steps(tiny_data):
    # the settings of a CUDA run (bf16, channels_last, sync_every > 1), on the CPU
    one_epoch = replace(SCHEDULE, total_epochs=1, num_stages=1)
    result = train(config(schedule=one_epoch, bf16=True, channels_last=True, sync_every=3, bn_reestimate=False),
                   progress=False, data=tiny_data)
    assert result.summary["speed"]["bf16"] is True and math.isfinite(result.history[0]["train_loss"])


def test_the_training_step_reads_nothing_back_to_the_host(tiny_data, monkeypatch):
    # On a GPU every read of a tensor's value (item, tolist, bool, float, int) waits for the
    # queued work; the step and its bookkeeping must queue only. Counted on the CPU, same code.
    reads, inside, calls = [], [False], []

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            if inside[0]:
                reads.append(name)
            return method(self, *args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    def watched(function):
        def wrapper(*args, **kwargs):
            calls.append(function.__name__)
            inside[0] = True
            try:
                return function(*args, **kwargs)
            finally:
                inside[0] = False
        return wrapper

    monkeypatch.setattr(trainer_module.Trainer, "train_step", watched(trainer_module.Trainer.train_step))
    monkeypatch.setattr(machinery_module.DeviceTally, "add", watched(machinery_module.DeviceTally.add))
    steps = []
    two_stages = replace(SCHEDULE, total_epochs=2, num_stages=2)  # the second one with Mixup's soft targets
    train(config(schedule=two_stages, ema=True, sync_every=50, bn_reestimate=False), progress=False,
          data=tiny_data, on_step=lambda epoch, step: steps.append(step))
    assert len(steps) == 10 and calls == ["train_step", "add"] * 10 and reads == []


def test_the_loop_a_student_opens_reads_as_algorithm_1():
    """Issue 13: Trainer.run stays about 30 lines; the epoch loop and the step together about 40, with
    the distributed, signal, non-finite and timing machinery in helpers beside them."""
    lines = {name: len(inspect.getsource(getattr(trainer_module.Trainer, name)).splitlines())
             for name in ("run", "train_epoch", "train_step")}
    assert lines["run"] <= 30 and lines["train_epoch"] + lines["train_step"] <= 40, lines
    loop = inspect.getsource(trainer_module.Trainer.train_epoch) + inspect.getsource(trainer_module.Trainer.train_step)
    for machinery in ("ranks", "signal", "isfinite", "perf_counter", "synchronize", "compile(", "tqdm", "checkpoint"):
        assert machinery not in loop, machinery


def test_the_class_a_student_opens_is_the_method():
    """Issue 18: setup, data loading, loaders, the run directory and the report live in their own
    modules (run_setup, training_data, run_state, run_report, loop_machinery); Trainer keeps the
    method and stays about 250 lines."""
    assert len(inspect.getsource(trainer_module.Trainer).splitlines()) <= 250
    lines = {name: len(inspect.getsource(getattr(trainer_module.Trainer, name)).splitlines())
             for name in ("run", "train_epoch", "train_step")}  # Algorithm 1, an epoch, a step: one screen
    assert lines["run"] <= 30 and lines["train_epoch"] + lines["train_step"] <= 40, lines
    for moved in ("setup", "load_data", "build_loaders", "epoch_batches", "prepare_out_dir", "load_training_state",
                  "save_training_state", "summary", "describe", "describe_result", "compiling_step",
                  "raise_non_finite"):
        assert not hasattr(trainer_module.Trainer, moved), moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA check of the test above; needs a GPU")
def test_the_training_step_never_waits_for_the_gpu(tiny_data, monkeypatch):
    # On CUDA, PyTorch itself can flag every host-device synchronization: make each one an error
    # inside the step and its bookkeeping (this also catches what the counting test cannot see,
    # such as boolean-mask indexing).
    def strict(function):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return wrapper

    monkeypatch.setattr(trainer_module.Trainer, "train_step", strict(trainer_module.Trainer.train_step))
    monkeypatch.setattr(machinery_module.DeviceTally, "add", strict(machinery_module.DeviceTally.add))
    two_stages = replace(SCHEDULE, total_epochs=2, num_stages=2)
    result = train(config(schedule=two_stages, device="cuda", ema=True, sync_every=50, bn_reestimate=False),
                   progress=False, data=tiny_data)
    assert result.status == "finished" and len(result.history) == 2


def test_a_different_run_is_not_overwritten(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train(config(out=out, stop_after=1), progress=False, data=tiny_data)
    with pytest.raises(RunDirectoryError, match="already holds"):
        train(config(out=out, lr=0.01), progress=False, data=tiny_data)
    with pytest.raises(RunDirectoryError, match="lr: None in the directory, 0.01 now"):
        train(config(out=out, lr=0.01, resume=True), progress=False, data=tiny_data)
    replaced = train(config(out=out, lr=0.01, stop_after=1, overwrite=True), progress=False, data=tiny_data)
    assert replaced.status == "stopped"
    assert json.loads((Path(out) / "run.json").read_text())["config"]["lr"] == 0.01


def test_the_sample_is_refused_when_full_data_is_required(tiny_data):
    with pytest.raises(FileNotFoundError, match="full cifar10"):
        train(config(full_data_only=True), progress=False, data=tiny_data)


def test_compile_failure_falls_back_to_eager(tiny_data, monkeypatch):
    def broken_compile(module, **kwargs):
        def forward(*args):
            raise RuntimeError("no compiler here")
        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = train(config(compile=True, schedule=replace(SCHEDULE, total_epochs=2, num_stages=1)), progress=False,
                   data=tiny_data)
    assert result.status == "finished"
    assert "no compiler here" in result.summary["compile_error"]
    assert result.history[0]["compile_time"] is not None


def test_compiled_training_matches_eager_across_a_size_change(tiny_data, monkeypatch):
    # One epoch at 16 px, one at 20 px: dynamo recompiles for the new size (a static graph each).
    # No dropout: compiled code draws its dropout masks from its own generator, not eager's.
    # The eager backend: dynamo captures a graph per size and guards it, as the trainer compiles,
    # and runs it without inductor's code generation (2.5 minutes of C++ compiling on 2 cores for
    # the two sizes; inductor's numerics are torch's to test, the trainer's handling of the
    # compiled module ours).
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode, dynamic: compile_(module, backend="eager",
                                                                                 dynamic=dynamic))
    two_sizes = replace(SCHEDULE, total_epochs=2, num_stages=2, dropout=(0.0, 0.0))
    eager = train(config(schedule=two_sizes, bn_reestimate=False), progress=False, data=tiny_data)
    compiled = train(config(schedule=two_sizes, bn_reestimate=False, compile=True), progress=False, data=tiny_data)
    assert compiled.summary["compile_error"] is None
    assert [r["image_size"] for r in compiled.history] == [16, 20]
    assert all(r["compile_time"] is not None for r in compiled.history)
    for ours, reference in zip(compiled.history, eager.history, strict=True):  # inductor reorders float sums
        assert ours["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-2)


def test_batchnorm_is_reestimated_only_when_the_last_size_differs_from_the_test_size(tiny_data, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "reestimate_batchnorm", lambda *a, **k: calls.append(1) or 2)
    at_test_size = ProgressiveSchedule.fixed(1, 32)
    summary = train(config(schedule=at_test_size), progress=False, data=tiny_data).summary
    bn = summary["bn_reestimation"]
    assert not calls and bn["applied"] is False and bn["change"] == 0
    assert bn["test_acc_before"] == bn["test_acc_after"] == summary["final_test_acc"]
    train(config(schedule=at_test_size, bn_reestimate=True), progress=False, data=tiny_data)
    assert calls == [1]  # asked for explicitly, it runs anyway


def test_holdout_evaluates_on_held_out_training_images_never_the_test_set(tiny_data):
    result = train(config(schedule=ProgressiveSchedule.fixed(1, 16), holdout_per_class=4), progress=False,
                   data=tiny_data)
    data = result.summary["data"]
    assert (data["train_images"], data["test_images"]) == (120, 40)  # 16 per class: 12 train, 4 held out
    assert data["evaluated_on"] == "held-out training images (4 per class)"
    assert sum(map(sum, result.summary["confusion_matrix"])) == 40
    assert train(config(schedule=ProgressiveSchedule.fixed(1, 16)), progress=False,
                 data=tiny_data).summary["data"]["evaluated_on"] == "test"


def test_smoke_mode_runs_each_stage_once_on_ten_images_per_class():
    result = train(TrainConfig(model="cifar-tiny", smoke=True, sample=True, device="cpu", loader="device"),
                   progress=False)
    assert [r["image_size"] for r in result.history] == [16, 20, 28, 32]  # the cifar10 preset's stages
    assert result.summary["data"]["train_images"] == 100


def test_a_schedule_file_from_the_explorer_trains_and_is_recorded(tmp_path):
    schedule = ProgressiveSchedule(total_epochs=3, num_stages=3, image_size=(12, 20), size_multiple=4,
                                   dropout=(0.0, 0.1), randaug=(1, 3), mixup=(0.0, 0.0), name="my schedule")
    path = tmp_path / "schedule.json"
    path.write_text(schedule.to_json())
    out = tmp_path / "run"
    command = ["--smoke", "--model", "cifar-tiny", "--schedule", str(path), "--out", str(out), "--no-progress",
               "--device", "cpu"]
    assert train_module.main(command) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["image_size"] for r in history] == [12, 16, 20]
    run = json.loads((out / "run.json").read_text())
    assert ProgressiveSchedule.from_dict(run["config"]["schedule"]) == schedule
    assert train_module.main(command + ["--resume"]) == 0  # finished: resuming it again is a no-op


@pytest.mark.parametrize("content, words", [
    (None, "cannot read the schedule file"),
    ("not json", "is not a schedule"),
    ('{"total_epochs": 4, "num_stages": 0, "image_size": [16, 32]}', "num_stages must be an int >= 1"),
    ('{"total_epochs": 4}', "is not a schedule"),
])
def test_a_bad_schedule_file_is_refused_with_one_line(content, words, tmp_path, capsys):
    path = tmp_path / "schedule.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit):
        train_module.main(["--schedule", str(path), "--smoke", "--model", "cifar-tiny", "--no-progress"])
    assert words in capsys.readouterr().err


def test_a_schedule_file_and_a_preset_exclude_each_other(tmp_path, capsys):
    path = tmp_path / "schedule.json"
    path.write_text(ProgressiveSchedule.from_preset("cifar10", 8).to_json())
    with pytest.raises(SystemExit):
        train_module.main(["--schedule", str(path), "--preset", "cifar10", "--smoke", "--model", "cifar-tiny"])
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("loader", ["cpu", "device"])
def test_the_automl_rule_trains_with_cutmix_and_automls_ops_on_either_loader(tiny_data, loader, monkeypatch):
    schedule = ProgressiveSchedule(2, 2, image_size=(16, 20), randaug=(5, 10), mixup=(0.2, 0.4), size_multiple=4,
                                   rule="automl")
    mixed = []
    real_mix = training_data_module.mix_batch

    def spy(images, labels, mixup_alpha, cutmix_alpha, *args):
        mixed.append((mixup_alpha, cutmix_alpha))
        return real_mix(images, labels, mixup_alpha, cutmix_alpha, *args)
    if loader == "cpu":
        monkeypatch.setattr(training_data_module, "mix_batch", spy)
    else:
        monkeypatch.setattr(augment_module, "mix_batch", spy)
    result = train(config(schedule=schedule, loader=loader, bn_reestimate=False), progress=False, data=tiny_data)
    assert [(r["mixup_alpha"], r["cutmix_alpha"]) for r in result.history] == [(0.2, 0.2), (0.4, 0.4)]
    assert set(mixed) == {(0.2, 0.2), (0.4, 0.4)}
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_rmsprop_with_the_papers_exponential_decay(tiny_data):
    one_epoch = replace(SCHEDULE, total_epochs=1, num_stages=1)
    result = train(config(schedule=one_epoch, optimizer="rmsprop", lr_schedule="exponential", bn_reestimate=False),
                   progress=False, data=tiny_data)
    settings = result.summary["optimizer"]
    assert (settings["name"], settings["weight_decay"]) == ("rmsprop", 1e-5)
    assert settings["lr"] == pytest.approx(0.016 * 32 / 256)  # the paper's 0.256 per 4096, scaled
    assert math.isfinite(result.history[0]["train_loss"])


def test_resolve_schedule_presets_and_fixed_size():
    progressive = resolve_schedule(TrainConfig(preset="cifar10", epochs=8))
    assert [s.image_size for s in progressive.stages] == [16, 20, 28, 32]
    fixed = resolve_schedule(TrainConfig(preset="cifar10", epochs=8, fixed_size=24))
    assert fixed.num_stages == 1 and fixed.total_epochs == 8
    last = progressive.stages[-1]
    assert (fixed.stages[0].image_size, fixed.stages[0].dropout, fixed.stages[0].mixup_alpha) == (
        24, last.dropout, last.mixup_alpha)
    with pytest.raises(ValueError, match="disagrees"):
        resolve_schedule(TrainConfig(schedule=SCHEDULE, epochs=5))


@pytest.mark.parametrize("smoke", [False, True])
def test_a_fixed_run_may_be_shorter_than_its_preset_has_stages(smoke):
    # a time-matched fixed run can get fewer epochs (here 2) than the 4-stage preset it comes from
    cfg = TrainConfig(preset="cifar10", epochs=2, fixed_size=32, smoke=smoke)
    fixed = resolve_schedule(config_module.smoke_config(cfg) if smoke else cfg)
    last = ProgressiveSchedule.from_preset("cifar10").stages[-1]
    assert (fixed.num_stages, fixed.total_epochs) == (1, 2)
    assert (fixed.stages[0].image_size, fixed.stages[0].dropout, fixed.stages[0].randaug_magnitude,
            fixed.stages[0].mixup_alpha) == (32, last.dropout, last.randaug_magnitude, last.mixup_alpha)
    # the automl rule's final CutMix and op table carry over to its fixed baseline
    automl_fixed = resolve_schedule(TrainConfig(preset="automl-m", epochs=3, fixed_size=64)).stages[0]
    assert (automl_fixed.cutmix_alpha, automl_fixed.randaug_ops) == (0.2, "automl")
    # without epochs, smoke mode gives the fixed run one epoch per stage it replaces
    default = resolve_schedule(config_module.smoke_config(TrainConfig(preset="cifar10", fixed_size=32, smoke=True)))
    assert (default.num_stages, default.total_epochs) == (1, 4)


@pytest.mark.parametrize("bad, match", [(dict(optimizer="adam"), "optimizer must be one of"),
                                        (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
                                        (dict(resume=True), "need an output directory"),
                                        (dict(sample=True, data_dir="x"), "sample=True")])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_warmup_then_cosine_and_exponential():
    cosine = WarmupThenDecay(warmup_steps=4, total_steps=20, steps_per_epoch=5)
    factors = [cosine(t) for t in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in pairwise(factors[4:])) and factors[-1] < 0.01
    staircase = WarmupThenDecay(0, 100, 10, kind="exponential", decay_rate=0.5, decay_epochs=2)
    assert [staircase(t) for t in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]


def test_exponential_decay_counts_from_step_0_through_the_warm_up():
    """google/automl efficientnetv2/utils.py: lr = initial * 0.97 ** floor(step / decay_steps) on the
    global step, with the warm-up's linear rate used instead while step < warmup_steps. By hand,
    10 steps per epoch, decay every 2.4 epochs = 24 steps, 30 warm-up steps."""
    paper = WarmupThenDecay(30, 1000, 10, kind="exponential")
    assert paper(29) == 1.0  # last warm-up step: (29 + 1) / 30
    assert paper(30) == pytest.approx(0.97)  # floor(30 / 24) = 1: the decay ran during the warm-up
    assert paper(47) == pytest.approx(0.97) and paper(48) == pytest.approx(0.97 ** 2)
    assert paper(240) == pytest.approx(0.97 ** 10)


def test_no_weight_decay_on_batchnorm_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_ema_warms_up_then_averages():
    model = nn.BatchNorm1d(1)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(11.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)  # decay min(0.5, 1/10) = 0.1: 0.1 * 1 + 0.9 * 11
    assert ema.module.weight.item() == pytest.approx(10.0)
    assert ema.module.num_batches_tracked.item() == 7  # integers are copied
    ema.update(model)  # min(0.5, 2/11)
    assert ema.module.weight.item() == pytest.approx(10.0 * 2 / 11 + 11.0 * 9 / 11)
    restored = ModelEMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2 and torch.equal(restored.module.weight, ema.module.weight)


def test_saved_weights_evaluate_to_the_reported_accuracy(tiny_data, tmp_path):
    import numpy as np

    from effv2_lib import evaluate as evaluate_module

    one_epoch = replace(SCHEDULE, total_epochs=1, num_stages=1)
    result = train(config(schedule=one_epoch, out=str(tmp_path / "run"), save_weights=True), progress=False,
                   data=tiny_data)
    assert result.summary["weights"] == ["model.pt"]
    data_dir = tmp_path / "data"  # the same test images, as a data directory (NHWC uint8)
    data_dir.mkdir()
    for split in ("train", "test"):
        images = getattr(tiny_data, split).images.permute(0, 2, 3, 1).numpy()
        np.savez(data_dir / f"{split}.npz", x=images, y=getattr(tiny_data, split).labels.numpy())
    out = tmp_path / "eval.json"
    assert evaluate_module.main([str(tmp_path / "run"), "--data", str(data_dir), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "cifar-tiny" and report["num_images"] == 50
    assert report["accuracy"] == result.summary["final_test_acc"]


def test_evaluate_counts_a_confusion_matrix():
    class Always(nn.Module):  # predicts class 2 for every image
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 0.0, 1.0]))

        def forward(self, x):
            return self.bias.expand(len(x), 3)

    batches = [(torch.zeros(4, 3, 8, 8), torch.tensor([0, 2, 2, 1])), (torch.zeros(2, 3, 8, 8), torch.tensor([2, 0]))]
    result = evaluate(Always(), batches, num_classes=3)
    assert result.accuracy == pytest.approx(3 / 6) and result.num_images == 6
    assert result.confusion.tolist() == [[0, 0, 2], [0, 0, 1], [0, 0, 3]]
    with pytest.raises(ValueError, match="class indices"):
        evaluate(Always(), [(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3))], num_classes=3)


def test_reestimate_batchnorm_averages_statistics_with_other_layers_in_eval():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.9))
    model.train()
    batches = [torch.randn(8, 2, 4, 4) * 3 + 1 for _ in range(3)]
    assert reestimate_batchnorm(model, batches) == 3
    bn = model[0]
    expected_mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    expected_var = torch.stack([b.transpose(0, 1).reshape(2, -1).var(1) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    assert bn.momentum == 0.1 and model.training and model[1].training  # modes and momentum restored
    with pytest.raises(ValueError, match="no batch"):
        reestimate_batchnorm(model, [])


def test_auto_config_on_cpu_and_gpu(monkeypatch):
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    cpu, text = auto_config("cpu")
    assert cpu.model == "cifar-tiny" and cpu.device == "cpu" and not cpu.full_data_only
    assert "CPU classroom run" in text and cpu.out.startswith("runs/auto-cpu-")
    assert "make experiment" not in text  # no full data: nothing to point at
    assert resolve_schedule(cpu).num_stages == 4
    with_data, text = auto_config("cpu", data_dir="/data/cifar10")
    assert with_data.subset_per_class == 250 and "make experiment DATA=DIR" in text  # the real run, and its cost
    monkeypatch.setattr(config_module, "pick_device", lambda preference=None: torch.device("cuda"))
    gpu, text = auto_config(data_dir="/data/cifar10")
    assert gpu.model == "cifar" and gpu.full_data_only and gpu.data_dir == "/data/cifar10" and not gpu.download
    assert resolve_schedule(gpu).total_epochs == 40


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--auto", "--model", "--preset", "--epochs", "--data", "--out", "--fixed-size", "--compile",
                   "--smoke", "--resume", "--overwrite",
                   "--schedule", "--device", "--batch-size", "--lr", "--optimizer",
                   "--ema", "--seed", "--subset-per-class", "--loader", "--bn-reestimate", "--stop-after"):
        assert option in text, option
