import json
import random

import numpy as np
import pytest
import torch

from effv2_lib import checkpoint
from effv2_lib.checkpoint import (
    RunDirectoryError,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    prepare_run_dir,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)


def test_checkpoint_round_trip_loads_without_pickled_code(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "history": [{"acc": 0.5, "x": None}],
             "rng": [capture_rng_state()]}
    path = save_checkpoint(state, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(path)  # torch.load(weights_only=True): would fail on arbitrary objects
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 3 and loaded["history"] == [{"acc": 0.5, "x": None}]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "ckpt.pt")

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. a second Ctrl-C while saving

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_covers_python_numpy_torch(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    state = load_checkpoint(save_checkpoint({"rng": capture_rng_state()}, tmp_path / "r.pt"))["rng"]
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state({"python": state["python"], "torch": state["torch"]})


def run_info(**config):
    return {"config": {"lr": 0.1, "epochs": 3, "device": "cpu", **config}}


def test_a_directory_holding_a_run_is_protected(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, run_info())
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.1
    (out / "history.json").write_text("[]")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="--resume.*--overwrite"):
        prepare_run_dir(out, run_info(lr=0.2))
    # overwrite removes the run's files and nothing else
    prepare_run_dir(out, run_info(lr=0.2), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.json"]
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.2


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        prepare_run_dir(out, run_info(), resume=True)
    prepare_run_dir(out, run_info())
    (out / "history.json").write_text("[]")
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        prepare_run_dir(out, run_info(), resume=True)
    (out / "history.json").unlink()
    save_checkpoint({"epoch": 1}, out / "checkpoint.pt")
    compare = ("lr", "epochs")
    with pytest.raises(RunDirectoryError, match="lr: 0.1 in the directory, 0.5 now"):
        prepare_run_dir(out, run_info(lr=0.5), resume=True, compare=compare)
    # a setting outside `compare` (how the run executes) may change
    assert prepare_run_dir(out, run_info(device="cuda"), resume=True, compare=compare) == out
    with pytest.raises(ValueError, match="exclude"):
        prepare_run_dir(out, run_info(), resume=True, overwrite=True)


def test_checkpoint_elsewhere_counts_as_part_of_the_run(tmp_path):
    out, elsewhere = tmp_path / "results", tmp_path / "ckpts" / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, elsewhere)
    with pytest.raises(RunDirectoryError):
        prepare_run_dir(out, run_info(), checkpoint=elsewhere)
    prepare_run_dir(out, run_info(), checkpoint=elsewhere, overwrite=True)
    assert not elsewhere.exists()


def test_weights_split_into_shards_and_merge_back(tmp_path):
    state = {f"layer{i}.weight": torch.randn(100, 10) for i in range(5)}  # 4,000 bytes each
    files = save_weights(state, tmp_path / "model.pt", max_bytes=9_000)
    assert [f.name for f in files] == ["model.part0.pt", "model.part1.pt", "model.part2.pt"]
    merged = load_weights(files)
    assert merged.keys() == state.keys() and all(torch.equal(merged[k], state[k]) for k in state)
    assert save_weights(state, tmp_path / "one.pt") == [tmp_path / "one.pt"]
    with pytest.raises(ValueError, match="alone"):
        save_weights(state, tmp_path / "x.pt", max_bytes=1000)


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_stopped_before_its_first_checkpoint_starts_again(resume, tmp_path):
    """run.json alone (killed in the first epoch): nothing to resume, nothing to lose; the same
    command starts it, with or without --resume, and with the settings given now."""
    out = tmp_path / "run"
    prepare_run_dir(out, run_info())
    assert prepare_run_dir(out, run_info(lr=0.01), resume=resume, compare=("lr",)) == out
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.01
