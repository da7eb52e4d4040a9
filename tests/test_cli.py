"""Every command-line entry point answers bad input with one `error:` line and a non-zero status."""

from pathlib import Path

import numpy as np
import pytest

from effv2_lib import bench, bench_data, evaluate, experiments, train


def npz_pair(folder: Path, labels_train=None) -> Path:
    """A 20 / 10 image data set in the train.npz / test.npz layout."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 20), ("test", 10)):
        y = np.arange(n) % 10 if split == "test" or labels_train is None else labels_train
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=y)
    return folder


def corrupt(folder: Path) -> Path:
    npz_pair(folder)
    (folder / "train.npz").write_bytes(b"not an npz file at all")
    return folder


def mislabeled(folder: Path) -> Path:
    return npz_pair(folder, labels_train=np.full(20, 12))  # CIFAR-10 has labels 0-9


def weights_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"\x00garbage")
    return folder / "model.pt"


TINY = ["--model", "cifar-tiny", "--device", "cpu", "--no-progress", "--batch-size", "10"]
# (entry point, arguments, fixture that prepares a path or None, words the message must contain)
BAD_INPUTS = [
    (train.main, ["--data", "{path}", *TINY], None, "holds no cifar10"),
    (train.main, ["--data", "{path}", *TINY], corrupt, "not a readable .npz"),
    (train.main, ["--data", "{path}", *TINY], mislabeled, "labels must lie in [0, 10)"),
    (train.main, ["--sample", "--epochs", "1", "--preset", "cifar10", *TINY], None, "every stage needs at least"),
    (train.main, ["--sample", "--batch-size", "0"], None, "batch_size must be an int >= 1"),
    (train.main, ["--sample", "--lr", "-1"], None, "lr must be a number > 0"),
    (train.main, ["--sample", "--fixed-size", "4", *TINY], None, "fixed_size must be an int >= 8"),
    (train.main, ["--sample", "--model", "resnet20", "--preset", "cifar10", "--eval-size", "2"], None,
     "eval_size must be an int >= 8"),
    (train.main, ["--resume", "--out", "{path}", *TINY], None, "nothing to resume"),
    (evaluate.main, ["{path}", "--data", "missing", "--model", "cifar-tiny"], weights_file, ""),
    (experiments.main, ["cpu-cifar10", "--out", "{path}", "--epochs", "2", "--smoke"], None,
     "epochs must be an int >= 4"),
    (bench.main, ["--model", "cifar-tiny", "--device", "cpu", "--sizes", "0"], None, "image_size must be an int"),
    (bench_data.main, ["--data-dir", "{path}"], None, "holds no cifar10"),
]


@pytest.mark.parametrize("main, args, prepare, words", BAD_INPUTS,
                         ids=[f"{m.__module__.split('.')[-1]}-{i}" for i, (m, *_) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_one_error_line_and_no_traceback(main, args, prepare, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    path = prepare(tmp_path / "input") if prepare else tmp_path / "missing"
    argv = [a.replace("{path}", str(path)) for a in args]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own refusals: usage line, then "prog: error: ..."
        status = exit_.code
    err = capsys.readouterr().err
    assert status not in (0, None)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert words in errors[0], err
