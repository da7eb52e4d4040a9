"""RunDirectory: one object for a run's files and what its checkpoint holds."""

import json

import pytest
import torch
from torch import nn

from effv2_lib.checkpoint import RunDirectoryError, capture_rng_state
from effv2_lib.optim import ModelEMA
from effv2_lib.run_directory import RunDirectory
from effv2_lib.schedule import ProgressiveSchedule

pytestmark = pytest.mark.usefixtures("close_figures")

SCHEDULE = ProgressiveSchedule(4, 2, image_size=(16, 32))


def parts(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    model(torch.randn(8, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, ModelEMA(model, 0.9)


def save(run_dir, model, optimizer, scheduler, ema, *, epoch=2, step=0, partial=None, history=()):
    run_dir.save(epoch=epoch, step=step, partial=partial, model=model, optimizer=optimizer, scheduler=scheduler,
                 ema=ema, rng=[capture_rng_state()], schedule=SCHEDULE, config={"lr": 0.1},
                 history=list(history), elapsed=12.5, compile_error=None)


def test_save_then_resume_restores_every_object_and_the_position(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create_or_resume({"config": {"lr": 0.1}}, resume=False, overwrite=False, compare=("lr",))
    model, optimizer, scheduler, ema = parts(0)
    history = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}]
    save(run_dir, model, optimizer, scheduler, ema, history=history)
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == history   # an epoch ended
    fresh = parts(1)
    where = run_dir.resume("cpu", schedule=SCHEDULE, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2],
                           ema=fresh[3])
    assert (where["epoch"], where["step"], where["partial"], where["history"], where["elapsed"]) == (
        2, 0, None, history, 12.5)
    for saved, restored in zip(model.state_dict().values(), fresh[0].state_dict().values(), strict=True):
        assert torch.equal(saved, restored)
    momentum = [o.state_dict()["state"][0]["momentum_buffer"] for o in (optimizer, fresh[1])]
    assert torch.equal(*momentum)
    assert fresh[2].state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    with pytest.raises(RunDirectoryError, match="schedule differs"):
        run_dir.resume("cpu", schedule=ProgressiveSchedule(4, 1, image_size=(32, 32)), model=fresh[0],
                       optimizer=fresh[1], scheduler=fresh[2], ema=fresh[3])
    with pytest.raises(RunDirectoryError, match="no EMA weights"):
        save(run_dir, model, optimizer, scheduler, None)
        run_dir.resume("cpu", schedule=SCHEDULE, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2],
                       ema=fresh[3])


def test_a_mid_epoch_save_leaves_history_json_alone(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    model, optimizer, scheduler, ema = parts()
    save(run_dir, model, optimizer, scheduler, ema, history=[{"epoch": 1}])
    save(run_dir, model, optimizer, scheduler, ema, epoch=1, step=3, partial={"seen": 96},
         history=[{"epoch": 1}, {"x": 1}])
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == [{"epoch": 1}]
    where = run_dir.resume("cpu", schedule=SCHEDULE, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
    assert (where["epoch"], where["step"], where["partial"]) == (1, 3, {"seen": 96})


def test_without_a_directory_or_on_other_ranks_nothing_is_written(tmp_path):
    model, optimizer, scheduler, ema = parts()
    in_memory = RunDirectory(None)
    assert in_memory.out is None and in_memory.checkpoint is None
    save(in_memory, model, optimizer, scheduler, ema)
    in_memory.finish({"final_test_acc": 0.5}, [{"epoch": 1}], title="t", classes=["a"])
    other_rank = RunDirectory(tmp_path / "run", tmp_path / "fast", writer=False)
    assert other_rank.checkpoint == tmp_path / "fast" / "checkpoint.pt"
    other_rank.create_or_resume({"config": {}}, resume=False, overwrite=False, compare=())
    save(other_rank, model, optimizer, scheduler, ema)
    other_rank.finish({"final_test_acc": 0.5}, [], title="t", classes=["a"], weights=model.state_dict())
    assert not (tmp_path / "run").exists() and not (tmp_path / "fast").exists()


def test_finish_writes_the_summary_the_figures_and_the_weights(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    model = parts()[0]
    history = [{"epoch": e, "stage": 0, "image_size": 16, "train_loss": 1.0 / e, "train_acc": 0.1 * e,
                "test_acc": 0.1 * e, "images_per_s": 100.0, "epoch_time": 1.0, "wall_time": float(e), "lr": 0.1}
               for e in (1, 2)]
    summary = {"final_test_acc": 0.2, "confusion_matrix": [[1, 0], [1, 1]]}
    run_dir.finish(summary, history, title="a run", classes=["a", "b"], weights=model.state_dict())
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == ["confusion_matrix.png", "curves.png", "model.pt", "summary.json"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["weights"] == ["model.pt"]
