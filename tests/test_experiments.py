"""The CIFAR-10 experiment and the race at a tiny size: their plans, time matching, resuming, the reports."""

import io
import json
import shutil
from dataclasses import replace

import pytest
import torch

import effv2_lib.experiments as experiments
import effv2_lib.race as race
from effv2_lib.config import resolve_schedule, smoke_config
from effv2_lib.experiments import RUN_NAMES, plan_cpu_cifar10, plan_race, run_cost, run_experiment
from effv2_lib.race import plot_race, race_progress, summarize_seeds
from effv2_lib.schedule import ProgressiveSchedule
from effv2_lib.train import train

# images/s per (model, size), as throughput.json stores them: 32 px costs 4x 16 px
RATES = {f"cifar-tiny@{s}": {"images_per_s": r} for s, r in ((16, 1000.0), (20, 640.0), (28, 330.0), (32, 250.0))}
RATES["resnet20@32"] = {"images_per_s": 500.0}


def test_the_plan_differs_only_in_what_each_run_name_says(tmp_path):
    plan = {run.name: run for run in plan_cpu_cifar10("DIR", tmp_path, epochs=12, rates=RATES)}
    assert tuple(plan) == RUN_NAMES
    schedules = {name: resolve_schedule(run.config) for name, run in plan.items()}
    progressive, fixed, fixed_reg = schedules["progressive"], schedules["fixed"], schedules["progressive-fixed-reg"]
    assert [s.image_size for s in progressive.stages] == [16, 20, 28, 32]
    last = progressive.stages[-1]
    # fixed: one stage at the final size and regularization, same epochs
    assert fixed.num_stages == 1 and fixed.total_epochs == 12
    assert (fixed.stages[0].image_size, fixed.stages[0].dropout, fixed.stages[0].mixup_alpha) == (
        32, last.dropout, last.mixup_alpha)
    # the ablation: progressive sizes, the final regularization in every stage
    assert [s.image_size for s in fixed_reg.stages] == [s.image_size for s in progressive.stages]
    assert {(s.dropout, s.randaug_magnitude, s.mixup_alpha) for s in fixed_reg.stages} == {
        (last.dropout, last.randaug_magnitude, last.mixup_alpha)}
    # everything but the schedule and the model is shared
    for name, run in plan.items():
        assert run.config.out == str(tmp_path / name)
        for key in ("seed", "batch_size", "optimizer", "lr", "label_smoothing", "data_dir", "loader"):
            assert getattr(run.config, key) == getattr(plan["progressive"].config, key), (name, key)
    assert plan["resnet20-time-matched"].config.model == "resnet20"


def test_time_matching_uses_the_measured_cost_per_size(tmp_path):
    # progressive, 3 epochs per stage: 3 x 50,000 x (1/1000 + 1/640 + 1/330 + 1/250) s
    progressive = ProgressiveSchedule.from_preset("cifar10", 12)
    expected = 3 * 50_000 * (1 / 1000 + 1 / 640 + 1 / 330 + 1 / 250)
    assert run_cost("cifar-tiny", progressive, 50_000, RATES) == pytest.approx(expected)
    plan = {run.name: run for run in plan_cpu_cifar10(None, tmp_path, epochs=12, rates=RATES)}
    # as many 32 px epochs as fit: floor(expected / (50,000 / 250)) and floor(expected / (50,000 / 500))
    assert resolve_schedule(plan["fixed-time-matched"].config).total_epochs == int(expected // 200) == 7
    assert resolve_schedule(plan["resnet20-time-matched"].config).total_epochs == int(expected // 100) == 14
    assert len(plan_cpu_cifar10(None, tmp_path, epochs=12)) == 3  # no rates: nothing to match yet
    # a machine on which 32 px is slow leaves the matched runs fewer epochs than the preset has stages
    slow = {**RATES, "cifar-tiny@32": {"images_per_s": 60.0}, "resnet20@32": {"images_per_s": 60.0}}
    for run in plan_cpu_cifar10(None, tmp_path, epochs=4, rates=slow, smoke=True)[3:]:
        assert resolve_schedule(smoke_config(run.config)).total_epochs == resolve_schedule(run.config).total_epochs < 4


def test_a_schedule_file_sets_the_progressive_run_and_the_baselines_follow_it(tmp_path):
    light = ProgressiveSchedule(total_epochs=8, num_stages=4, image_size=(16, 32), size_multiple=4, dropout=(0.0, 0.1),
                                randaug=(1.0, 3.0), name="light")
    plan = {run.name: run for run in plan_cpu_cifar10("DIR", tmp_path, schedule=light, rates=RATES)}
    schedules = {name: resolve_schedule(run.config) for name, run in plan.items()}
    assert schedules["progressive"] == light
    last = light.stages[-1]
    fixed = schedules["fixed"].stages
    assert [(s.image_size, s.dropout, s.randaug_magnitude, s.end_epoch) for s in fixed] == [
        (32, last.dropout, last.randaug_magnitude, 8)]
    fixed_reg = schedules["progressive-fixed-reg"]
    assert [s.image_size for s in fixed_reg.stages] == [s.image_size for s in light.stages]
    assert {(s.dropout, s.randaug_magnitude) for s in fixed_reg.stages} == {(0.1, 3.0)}
    # the budget to match is the schedule's, not the preset's
    assert resolve_schedule(plan["fixed-time-matched"].config).total_epochs == int(
        run_cost("cifar-tiny", light, 50_000, RATES) // 200)


def test_a_directory_of_another_recipe_is_refused_before_anything_trains(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    (out / "fixed").mkdir(parents=True)
    (out / "throughput.json").write_text(json.dumps({"rates": RATES, "quick_check": True}))
    # fixed, as a 12-epoch preset experiment left it (run.json holds the config as given)
    old = plan_cpu_cifar10(None, out, epochs=12, smoke=True)[1].config
    (out / "fixed" / "run.json").write_text(json.dumps({"config": old.to_dict()}))
    monkeypatch.setattr(experiments, "_train_one", lambda *a: pytest.fail("trained into a mixed directory"))
    with pytest.raises(ValueError, match="exp/fixed holds a run of cifar-tiny"):
        run_experiment("cpu-cifar10", None, out, epochs=8, smoke=True, progress=False)
    with pytest.raises(ValueError, match="schedule or epochs, not both"):
        run_experiment("cpu-cifar10", None, out, epochs=12, schedule=ProgressiveSchedule.from_preset("cifar10", 12))
    monkeypatch.setattr(experiments, "write_report", lambda out: None)
    trained = []
    monkeypatch.setattr(experiments, "_train_one", lambda run, *a: trained.append(run.name))
    run_experiment("cpu-cifar10", None, out, epochs=12, smoke=True, progress=False, only=("fixed",))
    assert trained == ["fixed"]  # the same recipe: resumed, not refused


@pytest.mark.slow
def test_the_experiment_resumes_an_interrupted_run_and_skips_finished_ones(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    only = ("progressive", "fixed")
    # a straight run of the first run, for reference
    reference = plan_cpu_cifar10(None, tmp_path / "reference", epochs=4, smoke=True)[0]
    straight = train(reference.config, progress=False)
    # the experiment's first run, interrupted after 2 of its 4 epochs
    first = plan_cpu_cifar10(None, out, epochs=4, smoke=True)[0]
    assert train(replace(first.config, stop_after=2), progress=False).status == "stopped"
    run_experiment("cpu-cifar10", None, out, epochs=4, only=only, smoke=True, progress=False, command="test")
    resumed = json.loads((out / "progressive" / "history.json").read_text())
    assert [r["test_acc"] for r in resumed] == [r["test_acc"] for r in straight.history]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight.history]
    loads = json.loads((out / "progressive" / "load.json").read_text())
    assert [entry["epoch"] for entry in loads] == [3, 4]  # recorded by the experiment's own epochs
    for name in only:
        assert json.loads((out / name / "summary.json").read_text())["status"] == "finished"
    assert not (out / "fixed-time-matched").exists()
    rates = json.loads((out / "throughput.json").read_text())["rates"]
    assert set(rates) == {"cifar-tiny@16", "cifar-tiny@20", "cifar-tiny@28", "cifar-tiny@32", "resnet20@32"}
    report = (out / "README.md").read_text()
    assert "| progressive |" in report and "| fixed |" in report and "Not run yet" in report
    assert "**A quick check" in report  # its figures are never read as an experiment's
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun trains nothing that has finished
    monkeypatch.setattr(experiments, "_train_one", lambda *a: pytest.fail("a finished run was trained again"))
    run_experiment("cpu-cifar10", None, out, epochs=4, only=only, smoke=True, progress=False, command="test")

    # a run finished on another CPU (a seed completed later): the report names each run's machine
    assert "run by run" not in report
    summary_file = out / "fixed" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["hardware"] = {**summary["hardware"], "cpu_capability": "OTHER", "torch_threads": 1}
    summary_file.write_text(json.dumps(summary))
    report = experiments.write_report(out).read_text()
    assert "Hardware, run by run: progressive on " in report
    assert "; fixed on x86_64 (OTHER) CPU, " in report.replace(summary["hardware"]["device_name"], "x86_64")
    assert "1 torch thread," in report and "timed on the " in report


def test_the_command_refuses_bad_input_with_one_line(tmp_path, capsys):
    assert experiments.main(["cpu-cifar10", "--out", str(tmp_path), "--epochs", "3", "--smoke"]) == 1
    assert capsys.readouterr().err.startswith("error: epochs must be an int >= 4")
    with pytest.raises(SystemExit):
        experiments.main(["cpu-cifar10", "--out", str(tmp_path), "--runs", "nonsense"])
    schedule = tmp_path / "light.json"
    schedule.write_text(ProgressiveSchedule.from_preset("cifar10", 8).to_json())
    with pytest.raises(SystemExit):  # a schedule has its own epochs
        experiments.main(["cpu-cifar10", "--out", str(tmp_path), "--schedule", str(schedule), "--epochs", "8"])
    assert "not allowed with argument --schedule" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["cpu-cifar10", "--out", str(tmp_path), "--schedule", str(tmp_path / "missing.json")])
    assert "cannot read the schedule file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("imagenet", None, tmp_path)


def test_the_race_gives_each_run_as_many_epochs_as_fit_in_one_budget(tmp_path):
    rates = RATES
    budget = 10 * 60.0
    progressive, fixed = plan_race("DIR", tmp_path, rates=rates, budget_s=budget)
    schedules = {run.name: resolve_schedule(run.config) for run in (progressive, fixed)}
    costs = {name: run_cost("cifar-tiny", schedule, 50_000, rates) for name, schedule in schedules.items()}
    assert [s.image_size for s in schedules["progressive"].stages] == [16, 28]
    assert [s.image_size for s in schedules["fixed-time-matched"].stages] == [28]
    for name, schedule in schedules.items():  # within the budget, and one more epoch would not be
        assert costs[name] <= budget, name
        longer = replace(schedule, total_epochs=schedule.total_epochs + 1)
        assert run_cost("cifar-tiny", longer, 50_000, rates) > budget, name
    assert progressive.config.eval_size == fixed.config.eval_size == 28  # tested where both ended: no resize
    assert progressive.config.data_dir == fixed.config.data_dir == "DIR" and fixed.config.full_data_only
    default = {run.name: resolve_schedule(run.config) for run in plan_race("DIR", tmp_path, rates=rates)}
    assert default["fixed-time-matched"].total_epochs == experiments.RACE_FIXED_EPOCHS  # the budget's own epochs
    assert [s.num_epochs for s in default["progressive"].stages] == [2, 1]  # 16 px costs under half of 28 px here
    tiny = plan_race("DIR", tmp_path, rates=rates, budget_s=1.0)[0]  # the least: one epoch per stage
    assert resolve_schedule(tiny.config).total_epochs == 2 and "over it" in tiny.description
    with pytest.raises(ValueError, match="budget_s"):
        plan_race("DIR", tmp_path, rates=rates, budget_s=-1)


def test_the_race_runs_lands_epoch_by_epoch_and_sums_up_over_seeds(tmp_path, capsys):
    root = tmp_path / "race"
    with pytest.raises(ValueError, match="the race sets its own schedule"):
        run_experiment("race", None, root / "seed-0", epochs=4, smoke=True)
    run_experiment("race", None, root / "seed-0", smoke=True, progress=False, command="race-test", side_by_side=True)
    assert json.loads((root / "seed-0" / "throughput.json").read_text())["experiment"] == "race"
    landed = race_progress(root / "seed-0")
    assert list(landed) == ["progressive", "fixed"]
    sizes = [r["image_size"] for r in landed["progressive"]]  # how many epochs: from the quick check's timing
    assert sizes[0] == 16 and sizes[-1] == 28 and sizes == sorted(sizes)
    assert all(r["cost_time"] > 0 for records in landed.values() for r in records)
    report = (root / "seed-0" / "README.md").read_text()
    assert "| fixed-time-matched |" in report and "Not run yet" not in report
    figure = plot_race(root / "seed-0", budget_min=1.0)
    assert len([line for line in figure.axes[0].get_lines() if line.get_marker() == "*"]) == 2
    shutil.copytree(root / "seed-0", root / "seed-1")
    rows = summarize_seeds([root / "seed-0", root / "seed-1"])
    assert rows[0]["lead"] == pytest.approx(100 * (rows[0]["progressive_acc"] - rows[0]["fixed_acc"]))
    fixed_summary = json.loads((root / "seed-0" / "fixed-time-matched" / "summary.json").read_text())
    assert rows[0]["fixed_wall_min"] == fixed_summary["wall_time_s"] / 60 > fixed_summary["train_time_s"] / 60
    assert race.main([str(root)]) == 0
    table = (root / "README.md").read_text()
    assert "| mean of 2 |" in table and table.count("`race-test`") == 2
    assert table.count("since moved to") == 1  # seed-1 was copied from seed-0: its runs say seed-0
    assert table.startswith("# The race") and "**Quick checks" in table
    assert f"| {rows[0]['lead']:+.2f} (sd 0.00, " in table  # the mean lead keeps its sign
    assert f"({torch.backends.cpu.get_cpu_capability()}) CPU" in table  # which vector instructions ran it
    real = json.loads((root / "seed-1" / "throughput.json").read_text()) | {"quick_check": False}
    (root / "seed-1" / "throughput.json").write_text(json.dumps(real))  # as if seed-1 were a real race
    with pytest.raises(ValueError, match="seed-0 is a quick check .* beside real races"):
        summarize_seeds([root / "seed-0", root / "seed-1"])
    (root / "seed-1" / "fixed-time-matched" / "summary.json").write_text(json.dumps({"status": "stopped"}))
    with pytest.raises(ValueError, match="has not finished"):
        summarize_seeds([root / "seed-1"])
    with pytest.raises(ValueError, match="no epoch of the race"):
        plot_race(tmp_path)


def test_the_seed_table_gives_the_mean_lead_its_standard_error():
    def row(seed: int, progressive: float, fixed: float) -> dict:
        return {"seed": seed, "progressive_acc": progressive, "fixed_acc": fixed, "progressive_cost_min": 4.0,
                "fixed_cost_min": 5.0, "lead": 100 * (progressive - fixed)}

    rows = [row(0, 0.57, 0.52), row(1, 0.56, 0.58), row(2, 0.53, 0.52), row(3, 0.55, 0.55)]
    last = race.seed_table(rows)[-1]
    # leads +5, -2, +1, 0: mean +1.00, sd 2.94, se = sd / sqrt(4) = 1.47
    assert last.startswith("| mean of 4 |") and last.endswith("| +1.00 (sd 2.94, se 1.47, -2.00 to +5.00) |")
    assert last.count("se ") == 1  # the accuracies keep their sd alone
    assert len(race.seed_table(rows[:1])) == 3  # one race: no spread to give


def test_side_by_side_runs_say_whose_each_line_is():
    stream = io.StringIO()
    prefixed = experiments._LinePrefix(stream, "[fixed] ")
    prefixed.write("epoch 1/3: test acc 0.39\nepoch 2")
    prefixed.write("/3: test acc 0.45\n")
    assert stream.getvalue() == "[fixed] epoch 1/3: test acc 0.39\n[fixed] epoch 2/3: test acc 0.45\n"
