"""The history's digest and the per-epoch line, on hand-made records."""

import pytest

from effv2_lib.report import digest_history, epoch_line


def record(epoch, test_acc, images_per_s, epoch_time, wall_time, compile_time=None):
    return dict(epoch=epoch, stage=0, image_size=16, train_loss=1.0, train_acc=0.5, test_acc=test_acc,
                images_per_s=images_per_s, epoch_time=epoch_time, wall_time=wall_time, compile_time=compile_time)


def test_digest_finds_best_targets_and_throughput_without_compiling():
    # Epoch 1 compiled for 9 s of its 10 s: 1,000 images in the 1 s left. Epoch 2: 3,000 images in 1 s.
    history = [record(1, 0.91, 1000.0, 10.0, 12.0, compile_time=9.0), record(2, 0.95, 3000.0, 1.0, 14.0),
               record(3, 0.93, 3000.0, 1.0, 16.0)]
    digest = digest_history(history)
    assert (digest["final_test_acc"], digest["best_test_acc"], digest["best_epoch"]) == (0.93, 0.95, 2)
    assert digest["reached"] == {"0.90": {"epoch": 1, "wall_time": 12.0}, "0.94": {"epoch": 2, "wall_time": 14.0},
                                 "0.96": None}
    assert digest["train_time_s"] == 12.0 and digest["wall_time_s"] == 16.0
    # 7,000 images over 3 s of training without compiling; weighting by epoch time would give 1,333
    assert digest["mean_images_per_s"] == pytest.approx(7000 / 3)
    assert digest["compile_time_s"] == 9.0


def test_digest_of_an_empty_history_and_without_compiling():
    empty = digest_history([])
    assert empty["epochs_done"] == 0 and empty["final_test_acc"] is None and empty["reached"]["0.94"] is None
    assert digest_history([record(1, 0.5, 100.0, 2.0, 3.0)])["compile_time_s"] is None


def test_epoch_line_names_the_stage_and_the_compile_time():
    line = epoch_line(record(3, 0.9123, 2500.0, 4.0, 130.0, compile_time=1.5), total_epochs=40)
    assert line.startswith("epoch 3/40: stage 0 16 px") and "test acc 0.9123" in line
    assert "2500 img/s" in line and "2.2 min" in line and "compile 1.5 s" in line
