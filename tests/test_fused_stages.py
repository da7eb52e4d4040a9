"""Table 3 in miniature, trained: the variants, their equal-cost plan, multiply-adds, a run and its report."""

import json

import pytest
from torch import nn

import effv2_lib.fused_stages as fused_stages
from effv2_lib.experiments import THROUGHPUT_FILE
from effv2_lib.fused_stages import VARIANTS, multiply_adds, plan, variant
from effv2_lib.search import REFERENCE


def test_the_variants_change_only_the_block_type_and_fused_1_3_is_cifar_tiny():
    assert variant("fused 1-3") == REFERENCE
    for name, fused in VARIANTS.items():
        stages = variant(name).stages
        assert [s.block for s in stages] == ["fused"] * fused + ["mbconv"] * (len(stages) - fused)
        assert [(s.kernel_size, s.expand_ratio, s.num_layers) for s in stages] == [
            (s.kernel_size, s.expand_ratio, s.num_layers) for s in REFERENCE.stages]
    with pytest.raises(ValueError, match="unknown variant 'fused 2-4'; the variants are no fused, fused 1-3"):
        variant("fused 2-4")


def _rates(per_variant: dict[str, float]) -> dict:
    return {f"arch:{variant(name).name}@{fused_stages.IMAGE_SIZE}": {"images_per_s": rate}
            for name, rate in per_variant.items()}


def test_each_variant_gets_the_whole_epochs_that_fit_in_cifar_tinys_cost(tmp_path):
    # half cifar-tiny's speed: half its epochs; a little faster: no more than fit
    rates = _rates({"no fused": 500.0, "fused 1-3": 1000.0, "fused 1-5": 1300.0, "fused all": 250.0})
    runs = {run.name: run for run in plan(None, tmp_path, rates=rates, seed=3, epochs=4)}
    epochs = {name: run.config.schedule["total_epochs"] for name, run in runs.items()}
    assert epochs == {"no fused": 2, "fused 1-3": 4, "fused 1-5": 5, "fused all": 1}
    for name, run in runs.items():
        assert run.config.model == f"arch:{variant(name).name}" and run.config.seed == 3
        assert run.config.eval_size == fused_stages.IMAGE_SIZE  # tested at the training size: no resize
        assert run.config.out == str(tmp_path / "seed-3" / name.replace(" ", "-"))
        assert run.config.full_data_only  # a real plan refuses the sample


def test_multiply_adds_count_a_convolution_and_a_depthwise_one_by_formula():
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    assert multiply_adds(conv, 10) == 9 * 3 * 16 * 10 * 10
    assert multiply_adds(depthwise, 10) == 9 * 3 * 10 * 10
    model = variant("fused all").build()
    model.train()
    multiply_adds(model, 16)
    assert model.training  # left in the mode it was in


def test_a_quick_run_lands_every_variant_resumes_and_reports(tmp_path, monkeypatch, capsys):
    # two of the four variants: each network's first steps on a CPU cost seconds (kernel setup)
    two = {name: VARIANTS[name] for name in ("no fused", "fused 1-3")}
    monkeypatch.setattr(fused_stages, "VARIANTS", two)
    out = tmp_path / "table3"
    fused_stages.run(None, out, seeds=(0,), smoke=True, progress=False, command="test")
    report = (out / "README.md").read_text()
    assert "**A quick check" in report
    for name in two:
        assert f"| {name} | `{variant(name).name}` |" in report
        summary = json.loads((out / "seed-0" / name.replace(" ", "-") / "summary.json").read_text())
        assert summary["status"] == "finished"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = fused_stages.summary_rows(out)
    assert [row["variant"] for row in rows] == list(two)
    assert all(set(row["test_acc"]) == {0} and row["sd"] is None for row in rows)

    # a rerun trains nothing; other epochs in the same directory are refused
    monkeypatch.setattr(fused_stages, "_train_one", lambda *a: pytest.fail("a finished run was trained again"))
    fused_stages.run(None, out, seeds=(0,), smoke=True, progress=False)
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match="measured for 4 epochs .a quick check.; this run asks for 2"):
        fused_stages.run(None, out, seeds=(0,), epochs=2, smoke=True, progress=False)
    assert json.loads((out / THROUGHPUT_FILE).read_text())["quick_check"] is True


def test_the_command_refuses_the_sample_for_a_real_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    assert fused_stages.main(["--out", str(tmp_path / "x"), "--seeds", "0"]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x" / THROUGHPUT_FILE).exists()  # refused before any timing

