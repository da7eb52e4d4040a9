"""DistributedDataParallel on the CPU: 2 gloo processes train a tiny job and end identical."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from effv2_lib.data import load_cifar, subset
from effv2_lib.schedule import ProgressiveSchedule
from effv2_lib.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank, as torchrun would start it: the process group comes from the environment."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    data = load_cifar(prefer_sample=True)
    data = replace(data, train=subset(data.train, 16, seed=0), test=subset(data.test, 5, seed=0))
    # 2 epochs in 2 stages (16 px, then 20 px with dropout and Mixup), EMA on. Without the final
    # BatchNorm re-estimation the statistics are what training left on each rank.
    schedule = ProgressiveSchedule(2, 2, image_size=(16, 20), dropout=(0.0, 0.1), mixup=(0.0, 0.2), size_multiple=4)
    config = TrainConfig(model="cifar-tiny", schedule=schedule, batch_size=32, warmup_epochs=0.2, bn_batches=2,
                         loader="device", device="cpu", ema=True, bn_reestimate=False, out=str(Path(out) / "run"))
    result = train(config, progress=False, data=data)
    torch.save({"model": result.model.state_dict(), "summary": result.summary,
                "steps": result.summary["optimizer"]["steps_per_epoch"]}, Path(out) / f"rank{rank}.pt")


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["model"].keys() == rank1["model"].keys()
    for name, tensor in rank0["model"].items():
        assert torch.equal(tensor, rank1["model"][name]), f"{name} differs between the ranks"
    # the global batch of 32 is split over the ranks: 160 images -> 5 steps of 16 per rank
    assert rank0["steps"] == 5
    summary = rank0["summary"]
    assert summary["ranks_identical"] is True and summary["hardware"]["world_size"] == 2
    assert summary["test_images"] == 50  # each rank tested its half; the counts were summed
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.pt", "confusion_matrix.png", "curves.png", "history.json", "run.json",
                     "summary.json"]
    assert len(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["rng"]) == 2  # per-rank RNG


def test_torchrun_command_line_with_the_cpu_loader(tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("EFFV2_QUICK", "EFFV2_DATA")}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "effv2_lib.train", "--model", "cifar-tiny", "--sample", "--device", "cpu", "--loader", "cpu",
               "--subset-per-class", "8", "--test-subset-per-class", "5", "--batch-size", "16", "--epochs", "4",
               "--bn-batches", "2", "--no-progress", "--out", str(out)]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks_identical"] is True and summary["speed"]["world_size"] == 2
    assert summary["speed"]["loader"] == "cpu" and summary["epochs_done"] == 4
    assert finished.stdout.count("done: test accuracy") == 1  # only rank 0 reports
