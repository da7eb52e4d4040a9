"""Issue #21's careless-student cases: every corrupt file, range error and unhelpful message ends in
one clear line (or a notice), driven through the commands as a user types them (in-process)."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from effv2_lib import bench, bench_data, evaluate, train
from effv2_lib.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from effv2_lib.config import TrainConfig
from effv2_lib.data import check_data_source, command_line_words, fit_batch_to_data
from effv2_lib.files import read_json
from effv2_lib.model import build_model


def run(main, argv, capsys):
    """(status, stdout, the one error line): argparse's refusals and the commands' own alike."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status not in (0, None) and len(errors) == 1, err
    return status, out, errors[0]


def tiny_data(folder: Path, n_train: int = 20) -> Path:
    """n_train training / 10 test images, labels cycling over the 10 classes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", 10)):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    return folder


@pytest.fixture(autouse=True)
def _no_data_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------- 5: corrupt files, one line each
def a_run(out: Path, checkpoint: bytes | None = None) -> Path:
    """A run directory of a quick check on the sample: run.json, and checkpoint.pt as given."""
    out.mkdir(parents=True)
    config = TrainConfig(model="cifar-tiny", sample=True, smoke=True, device="cpu", out=str(out))
    (out / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    if checkpoint is not None:
        (out / "checkpoint.pt").write_bytes(checkpoint)
    return out


def weights_bytes(tmp_path: Path) -> bytes:
    return save_weights({"w": torch.zeros(2)}, tmp_path / "w.pt")[0].read_bytes()


@pytest.mark.parametrize("content, words", [
    (b"this is a text file\n", "is text"),
    (b"", "is empty"),
    ("weights", "holds a model's weights alone"),
])
def test_resume_from_a_corrupt_checkpoint_names_it(content, words, tmp_path, capsys):
    content = weights_bytes(tmp_path) if content == "weights" else content
    out = a_run(tmp_path / "run", content)
    _, _, error = run(train.main, ["--resume", "--out", out, "--no-progress"], capsys)
    assert f"{out / 'checkpoint.pt'} {words}" in error and "To go on:" in error and "--overwrite" in error


def test_a_checkpoint_and_weights_are_told_apart(tmp_path):
    weights = save_weights({"w": torch.zeros(2)}, tmp_path / "model.pt")[0]
    checkpoint = save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="weights alone.*not a training checkpoint"):
        load_checkpoint(weights)
    with pytest.raises(ValueError, match="holds a training checkpoint.*not weights.*--save-weights"):
        load_weights(checkpoint)
    for text, words in (("", "is empty"), ("{}", "is text"), ("\x80\x02garbage", "not a readable torch file")):
        (tmp_path / "bad.pt").write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError, match=words):
            load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("content, words", [
    ('{"command": "x"}', "lacks 'config'"),
    ("not json", "is not JSON"),
])
def test_a_run_json_without_config_or_not_json_is_named(content, words, tmp_path, capsys):
    out = a_run(tmp_path / "run")
    (out / "run.json").write_text(content)
    _, _, error = run(train.main, ["--resume", "--out", out, "--no-progress"], capsys)
    assert f"{out / 'run.json'} {words}" in error and "--overwrite" in error


def test_every_json_file_is_read_through_one_place(tmp_path):
    (tmp_path / "history.json").write_text('[{"epoch": 1}')
    with pytest.raises(ValueError, match=r"history\.json is not JSON.*one record per finished epoch.*To go on"):
        read_json(tmp_path / "history.json")
    with pytest.raises(FileNotFoundError, match=r"summary\.json does not exist"):
        read_json(tmp_path / "summary.json")


@pytest.mark.parametrize("content, words", [(b"", "is empty"), (b"\x00garbage", "not a readable torch file")])
def test_evaluate_on_an_empty_or_garbage_weights_file(content, words, tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(content)
    _, _, error = run(evaluate.main, [tmp_path / "model.pt", "--data", tiny_data(tmp_path / "data"),
                                      "--model", "cifar-tiny", "--device", "cpu"], capsys)
    assert "model.pt is" in error and words in error and "--save-weights" in error


def test_a_bad_schedule_file_is_named(tmp_path, capsys):
    (tmp_path / "s.json").write_text("{oops")
    _, _, error = run(train.main, ["--schedule", tmp_path / "s.json", "--sample"], capsys)
    assert "s.json is not a schedule: it is not JSON" in error and "ProgressiveSchedule" in error


# ------------------------------------------------------------ 1: killed before the first checkpoint
def test_a_run_killed_before_its_first_checkpoint_is_started_by_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(model="cifar-tiny", sample=True, smoke=True, fixed_size=16, epochs=1, device="cpu",
                         out=str(out))
    (out / "run.json").write_text(json.dumps({"config": config.to_dict()}))  # all a kill -9 in epoch 1 leaves
    assert train.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


# ------------------------------------------------------------------------- 4: --stop-after sticks
def test_a_resume_does_not_inherit_stop_after_or_the_device(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(model="cifar-tiny", sample=True, stop_after=10, device="cpu", out=str(out))
    (out / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    resumed, _, _ = train._config_from_args(train.build_parser().parse_args(["--resume", "--out", str(out)]))
    assert resumed.stop_after is None and resumed.device is None and resumed.model == "cifar-tiny"
    again, _, _ = train._config_from_args(train.build_parser().parse_args(
        ["--resume", "--out", str(out), "--stop-after", "20"]))
    assert again.stop_after == 20


# --------------------------------------------------------------------------------- 6: bench_data
@pytest.mark.filterwarnings("ignore:'effv2_lib.bench_data' found in sys.modules:RuntimeWarning")
def test_bench_data_exits_with_its_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_data", "--data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("effv2_lib.bench_data", run_name="__main__")
    assert exit_.value.code == 1
    assert "error: --data" in capsys.readouterr().err


def test_bench_data_refuses_a_batch_larger_than_the_data_and_zero_repeats(tmp_path, capsys):
    data = tiny_data(tmp_path / "data")
    _, _, error = run(bench_data.main, ["--data", data, "--batch-size", "64", "--device", "cpu"], capsys)
    assert "--batch-size 64 is larger than the 20 training images" in error  # it used to spin forever
    _, _, error = run(bench_data.main, ["--repeats", "0"], capsys)
    assert "--repeats: expected an integer >= 1, got 0" in error


# ------------------------------------------------------------------------ 7: two run directories
def test_evaluate_with_two_run_directories_evaluates_each(tmp_path, capsys):
    data = tiny_data(tmp_path / "data")
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        torch.manual_seed(seed)
        save_weights(build_model("cifar-tiny", 10).state_dict(), run_dir / "model.pt")
        (run_dir / "summary.json").write_text(json.dumps({"model_name": "cifar-tiny", "eval_size": 16,
                                                          "dataset": "cifar10"}))
        runs.append(run_dir)
    result = tmp_path / "result.json"
    assert evaluate.main([*map(str, runs), "--data", str(data), "--device", "cpu", "--json", str(result)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(r) for r in runs]
    assert all("cifar-tiny at 16 px" in line and "of 10 test images" in line for line in lines)
    assert [r["weights"] for r in json.loads(result.read_text())["results"]] == [[str(r / "model.pt")] for r in runs]


# ---------------------------------------------------------------- 8, 9: no empty path, no silent values
@pytest.mark.parametrize("main, argv, words", [
    (train.main, ["--out", "", "--sample"], "argument --out: expected a path, got ''"),
    (train.main, ["--checkpoint-dir", " ", "--out", "x", "--sample"], "argument --checkpoint-dir: expected a path"),
    (evaluate.main, ["model.pt", "--data", "d", "--json", ""], "argument --json: expected a path"),
    (evaluate.main, ["model.pt", "--data", "d", "--eval-size", "0"], "--eval-size: expected an integer >= 8, got 0"),
    (bench.main, ["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (bench.main, ["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (bench.main, ["--device", "tpu"], "cpu, cuda, cuda:N (the N-th GPU), mps (Apple), xpu (Intel); got 'tpu'"),
])
def test_values_out_of_range_are_refused_not_replaced(main, argv, words, capsys):
    _, out, error = run(main, argv, capsys)
    assert words in error and len(error) < 300


def test_the_quick_check_says_which_options_it_replaces():
    args = train.build_parser().parse_args(["--smoke", "--sample", "--batch-size", "1000000", "--seed", "3"])
    config, _, note = train._config_from_args(args)
    assert config.smoke and config.batch_size == 1_000_000  # as given; the quick check trains with its own
    assert note.count("\n") == 0
    assert "the quick check (--smoke) trains with its own --batch-size 20 instead of the --batch-size 1000000" in note


def test_a_batch_larger_than_the_data_is_fitted_with_a_notice():
    assert fit_batch_to_data(256, 1000) == (256, None)
    used, notice = fit_batch_to_data(1_000_000, 100)
    assert used == 100 and "batch_size 1000000 is larger than the training set (100 images)" in notice
    assert fit_batch_to_data(64, 30, processes=4)[0] == 28  # every process takes as many images
    with command_line_words():
        assert "--batch-size 64" in fit_batch_to_data(64, 30)[1]


# ------------------------------------------------------------------------------ 10: better messages
def test_weights_of_another_variant_say_which(tmp_path, capsys):
    save_weights(build_model("cifar-tiny", 10).state_dict(), tmp_path / "model.pt")
    _, _, error = run(evaluate.main, [tmp_path / "model.pt", "--data", tiny_data(tmp_path / "data"),
                                      "--model", "resnet20", "--device", "cpu"], capsys)
    assert "holds the weights of the model 'cifar-tiny' (10 classes), not of 'resnet20'" in error
    assert len(error) < 400  # not torch's listing of every key


def test_a_data_set_too_small_for_the_quick_check_is_named_in_user_words(tmp_path, capsys):
    data = tiny_data(tmp_path / "data")  # 2 images per class
    _, _, error = run(train.main, ["--data", data, "--smoke", "--model", "cifar-tiny", "--device", "cpu",
                                   "--no-progress", "--out", tmp_path / "run"], capsys)
    assert "n_per_class" not in error and "quick check" in error
    assert f"{data / 'train.npz'} has only 2 of class 'airplane'" in error


def test_data_errors_under_a_command_name_its_options(tmp_path, capsys):
    _, _, error = run(train.main, ["--data", tmp_path / "missing", "--device", "cpu"], capsys)
    assert f"--data {tmp_path / 'missing'} holds no cifar10" in error and "--download" in error
    assert "data_dir=" not in error and "load_cifar(" not in error
    save_weights(build_model("cifar-tiny", 10).state_dict(), tmp_path / "model.pt")
    _, _, error = run(evaluate.main, [tmp_path / "model.pt", "--data", tmp_path / "missing", "--model", "cifar-tiny",
                                      "--device", "cpu"], capsys)
    assert "--data" in error and "--download" not in error  # evaluate has no --download


def test_a_data_directory_is_checked_cheaply_before_long_work(tmp_path):
    data = tiny_data(tmp_path / "data")
    assert check_data_source("cifar10", str(data)) == str(data)
    np.savez(data / "test.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"test\.npz lacks the arrays \['y'\]"):
        check_data_source("cifar10", str(data))
    with pytest.raises(FileNotFoundError, match="holds no cifar10"):
        check_data_source("cifar10", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="full cifar10"):
        check_data_source("cifar10", None, full_data_only=True)
    assert check_data_source("cifar10", None, sample=True).startswith("sample:")
