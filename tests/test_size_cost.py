"""Table 2 in miniature: throughput, memory and the largest batch against the image size."""

import json
import sys

import pytest
import torch
from torch import nn

from effv2_lib import size_cost
from effv2_lib.size_cost import format_table, measure_size_cost, peak_memory_kind


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_memory_grows_with_the_pixels_and_the_batch_that_fits_shrinks():
    rows = measure_size_cost(_small_net(), [32, 8, 16], batch_size=4, device="cpu", steps=1, warmup=0, repeats=1,
                             memory_limit=2**20)
    assert [row.image_size for row in rows] == [8, 16, 32]  # ascending, whatever the order given
    first, last = rows[0], rows[-1]
    # the estimate is fixed + batch x per-image activations, and activations scale as S^2
    growth = [row.estimated_memory - first.estimated_memory for row in rows[1:]]
    assert growth[1] / growth[0] == pytest.approx((32**2 - 8**2) / (16**2 - 8**2), rel=1e-3)
    assert first.largest_batch > last.largest_batch > 0
    assert all(row.throughput.median > 0 for row in rows)
    if peak_memory_kind(torch.device("cpu")) == "resident":  # Linux: VmHWM, reset per size
        assert all(row.peak_memory > 0 for row in rows)
    else:
        assert all(row.peak_memory is None for row in rows)
    table = format_table(rows, "resident").splitlines()
    assert len(table) == 4 and table[1].split()[0] == "8" and table[1].split()[3] == "1.00"


@pytest.mark.parametrize("kwargs, words", [
    (dict(sizes=[]), "sizes must name at least one image size"),
    (dict(sizes=[4]), "each size must be"),
    (dict(sizes=[8], batch_size=0), "batch_size must be"),
    (dict(sizes=[8], memory_limit=0), "memory_limit must be"),
])
def test_bad_input_says_what_was_expected(kwargs, words):
    with pytest.raises(ValueError, match=words):
        measure_size_cost(_small_net(), device="cpu", **kwargs)


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["size_cost"])
    out = tmp_path / "sizes.json"
    assert size_cost.main(["--model", "cifar-tiny", "--sizes", "8", "--batch-size", "2", "--device", "cpu",
                           "--repeats", "1", "--memory-limit-gib", "0.5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cifar-tiny, batch 2" in printed and "largest batch" in printed
    record = json.loads(out.read_text())
    assert record["rows"][0]["image_size"] == 8 and record["memory_limit"] == 2**29
    assert size_cost.main(["--memory-limit-gib", "-1"]) == 1
