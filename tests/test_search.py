"""The search in miniature (Section 3.3): its space, sampling, reward, front, and a resumable run."""

import json

import pytest

from effv2_lib import search, train
from effv2_lib.config import TrainConfig
from effv2_lib.model import build_model
from effv2_lib.runtime import count_parameters
from effv2_lib.search import QUICK_BUDGET, REFERENCE, Candidate, pareto_front, rank, reward, sample_candidates


def test_cifar_tiny_is_a_point_of_the_space():
    assert REFERENCE.name == "F1k3x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2"
    assert Candidate.from_name(REFERENCE.name) == REFERENCE
    built = REFERENCE.build(10)
    assert count_parameters(built) == count_parameters(build_model("cifar-tiny", 10))
    assert str(built) == str(build_model("cifar-tiny", 10))


@pytest.mark.parametrize("name, words", [
    ("F1k3x1", "names 1 stages; the skeleton has 6"),
    ("X1k3x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2", "'X1k3x1' in"),
    ("F2k3x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2", "expand_ratio"),
    ("F1k7x1-F4k3x2-F4k3x2-M4k3x2-M6k3x2-M6k3x2", "kernel_size"),
])
def test_a_bad_candidate_name_says_what_a_stage_code_is(name, words):
    with pytest.raises(ValueError, match=words):
        Candidate.from_name(name)


def test_sampling_is_reproducible_distinct_and_leaves_out_the_reference():
    first, again, other = sample_candidates(40, seed=3), sample_candidates(40, seed=3), sample_candidates(40, seed=4)
    assert [c.name for c in first] == [c.name for c in again] != [c.name for c in other]
    assert len({c.name for c in first}) == 40 and REFERENCE not in first
    assert {s.block for c in first for s in c.stages} == {"fused", "mbconv"}  # both ops drawn


def test_the_reward_prefers_accuracy_and_penalizes_time_and_size_by_the_papers_exponents():
    reference = {"name": "ref", "accuracy": 0.5, "step_time_s": 0.2, "params": 1_000_000}
    slower = {**reference, "name": "slow", "step_time_s": 0.4}
    assert reward(reference, reference) == 0.5
    assert reward(slower, reference) == pytest.approx(0.5 * 2 ** -0.07)
    assert reward({**reference, "params": 2_000_000}, reference) == pytest.approx(0.5 * 2 ** -0.05)
    # w = 0: time no longer counts; a strong time penalty flips the order
    assert reward(slower, reference, w=0.0) == reward(reference, reference)
    faster_worse = {**reference, "name": "fast", "accuracy": 0.45, "step_time_s": 0.1}
    found = {"reference": reference, "candidates": [slower, faster_worse]}
    assert [r["name"] for r in rank(found)][0] == "ref"
    assert [r["name"] for r in rank(found, w=-0.5)][0] == "fast"


def test_the_pareto_front_keeps_only_the_undominated():
    records = [{"name": n, "accuracy": a, "step_time_s": s} for n, a, s in
               [("a", 0.40, 0.1), ("b", 0.50, 0.2), ("c", 0.45, 0.3), ("d", 0.60, 0.4), ("e", 0.60, 0.5)]]
    assert pareto_front(records) == ["a", "b", "d"]


def test_a_search_resumes_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "search"
    found = search.run_search(out, 1, seed=0, budget=QUICK_BUDGET, sample=True, device="cpu",
                              timing=dict(steps=1, repeats=1))
    stored = json.loads((out / "search.json").read_text())
    assert stored["reference"]["name"] == REFERENCE.name and len(stored["candidates"]) == 1
    for record in (stored["reference"], *stored["candidates"]):
        assert 0 <= record["accuracy"] <= 1 and record["step_time_s"] > 0 and record["params"] > 0
    assert stored["data"]["held_out_images"] == 50 and stored["data"]["train_images"] == 100
    # a rerun of the same command trains nothing again
    again = search.run_search(out, 1, seed=0, budget=QUICK_BUDGET, sample=True, device="cpu",
                              log=lambda line: pytest.fail(f"trained again: {line}"))
    assert again["candidates"] == found["candidates"]
    with pytest.raises(ValueError, match="holds a search with other settings"):
        search.run_search(out, 1, seed=1, budget=QUICK_BUDGET, sample=True, device="cpu")
    report = search.write_report(out).read_text()
    assert f"`{REFERENCE.name} (cifar-tiny)`" in report and "held-out training images" in report
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"


def test_a_searched_network_trains_by_name_through_the_trainer(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EFFV2_DATA", raising=False)
    monkeypatch.delenv("EFFV2_QUICK", raising=False)
    assert str(build_model("arch:" + REFERENCE.name, 10)) == str(build_model("cifar-tiny", 10))
    with pytest.raises(ValueError, match="unknown model 'tiny'.*or arch: and a network's stage codes"):
        TrainConfig(model="tiny")
    with pytest.raises(ValueError, match="is not a stage code"):
        TrainConfig(model="arch:F1k3")
    with pytest.raises(SystemExit):
        train.main(["--model", "arch:F1k3x1", "--sample"])
    assert "argument --model: 'F1k3x1' names 1 stages; the skeleton has 6" in capsys.readouterr().err
    fused_everywhere = "arch:" + REFERENCE.name.replace("M", "F")  # Table 3's last row, in our six stages
    out = tmp_path / "run"
    assert train.main(["--model", fused_everywhere, "--sample", "--smoke", "--fixed-size", "16", "--epochs", "1",
                       "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_name"] == fused_everywhere and summary["status"] == "finished"
