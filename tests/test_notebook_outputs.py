"""The committed outputs: made by `make notebooks` from the notebooks' current code, without errors.

`scripts/make_notebooks.py` records in each notebook's metadata the hash of the code cells it
ran; a code edit without a new `make notebooks` makes the outputs stale, and this test says so.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SERIES_LIMIT_BYTES = 10_000_000

_spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_series_is_there():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(8)], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_were_made_from_the_current_code(path):
    notebook = _load(path)
    record = notebook["metadata"].get("effv2", {}).get("outputs")
    assert record, f"{path.name} has no recorded outputs: run `make notebooks`"
    assert record["code_sha256"] == make_notebooks.code_sha256(notebook), (
        f"{path.name}: its code cells changed since its outputs were made ({record['date']}): run `make notebooks`")
    unrun = [i for i, cell in enumerate(notebook["cells"])
             if cell["cell_type"] == "code" and cell.get("execution_count") is None]
    assert not unrun, f"{path.name}: code cells {unrun} were not executed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_hold_no_error(path):
    notebook = _load(path)
    errors = [(i, output.get("ename")) for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
              for output in cell.get("outputs", []) if output["output_type"] == "error"
              or (output["output_type"] == "stream" and "Traceback (most recent call last)" in "".join(output["text"]))]
    assert not errors, f"{path.name}: errors in cells {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_title_cell_states_the_recorded_run_time(path):
    notebook = _load(path)
    run_times = notebook["metadata"]["effv2"]["run_times"]
    assert run_times.get("cpu"), f"{path.name}: no full run on a CPU recorded"
    title = "".join(notebook["cells"][0]["source"])
    assert make_notebooks.run_time_line(run_times) in title.split("\n"), (
        f"{path.name}: the title cell's run-time line does not match the recorded run times")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_displayed_widget_has_its_state_stored(path):
    notebook = _load(path)
    shown = {output["data"][WIDGET_VIEW]["model_id"]
             for cell in notebook["cells"] if cell["cell_type"] == "code"
             for output in cell.get("outputs", []) if WIDGET_VIEW in output.get("data", {})}
    stored = notebook["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = shown - set(stored)
    assert not missing, f"{path.name}: widgets {sorted(missing)[:3]} are shown but their state was not stored"


# An absolute path of this machine (a run directory, the kernel's temporary file in a warning's prefix):
# it means nothing on a reader's machine, and names the author's.
MACHINE_PATH = re.compile(r"(?<![\w.~+-])(?:/(?:tmp|home|root|work|Users|private|mnt|opt|srv|var/folders)/|[A-Z]:\\)")


def output_texts(notebook: dict) -> list[tuple[int, str]]:
    """(cell index, text) of every textual output: streams, errors, and text/* and JSON display data."""
    texts = []
    for i, cell in enumerate(notebook["cells"]):
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if "text" in output:
                texts.append((i, "".join(output["text"])))
            texts += [(i, "".join(value) if isinstance(value, list) else json.dumps(value))
                      for kind, value in output.get("data", {}).items()
                      if kind.startswith(("text/", "application/json"))]
            texts += [(i, line) for line in output.get("traceback", [])]
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_hold_no_machine_path(path):
    hits = [(i, text[max(0, m.start() - 40):m.end() + 40]) for i, text in output_texts(_load(path))
            for m in MACHINE_PATH.finditer(text)]
    assert not hits, f"{path.name}: absolute paths in the outputs of cells {hits[:3]}"


def test_the_machine_path_check_finds_paths_and_spares_fractions_and_rates():
    found = [bool(MACHINE_PATH.search(text)) for text in (
        "/tmp/ipykernel_12/3.py:4: UserWarning", "run in /work/main/runs/race", "C:\\Users\\me",
        "writing to runs/race-1/progressive", "1,080 img/s, 3/4 done, and/or", "see https://example.org/home/x")]
    assert found == [True, True, True, False, False, False]


def test_the_widget_notebooks_show_their_explorers():
    shown = {path.name[:2] for path in NOTEBOOKS
             if WIDGET_VIEW in json.dumps([c.get("outputs", []) for c in _load(path)["cells"]])}
    assert {"04", "05", "07"} <= shown, f"explorers rendered only in notebooks {sorted(shown)}"


def test_the_series_stays_small():
    total = sum(path.stat().st_size for path in NOTEBOOKS)
    assert total < SERIES_LIMIT_BYTES, f"the notebooks weigh {total / 1e6:.1f} MB; keep figures smaller"


def test_a_stale_notebook_is_detected():
    notebook = _load(NOTEBOOKS[0])
    before = make_notebooks.code_sha256(notebook)
    code = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    code["source"] = "".join(code["source"]) + "\nprint('edited')"
    assert make_notebooks.code_sha256(notebook) != before
    markdown = next(cell for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    markdown["source"] = "edited prose"
    assert make_notebooks.code_sha256(notebook) == make_notebooks.code_sha256(
        {"cells": [c for c in notebook["cells"] if c["cell_type"] == "code"]})


def test_the_run_time_line_replaces_itself_and_says_when_no_gpu_was_measured():
    notebook = {"cells": [{"cell_type": "markdown", "source": "# Title\n\nIntro."}]}
    cpu = {"cpu": {"duration_s": 150.0, "hardware": "a 2-core x86_64 CPU", "date": "2026-11-29T10:00:00+00:00"}}
    make_notebooks.set_run_time_line(notebook, make_notebooks.run_time_line(cpu))
    text = notebook["cells"][0]["source"]
    assert text.startswith("# Title\n\n**Run time:**") and "2.5 min on a 2-core x86_64 CPU" in text
    assert "GPU not measured yet" in text
    both = dict(cpu, cuda={"duration_s": 40.0, "hardware": "NVIDIA H200", "date": "2026-11-30T10:00:00+00:00"})
    make_notebooks.set_run_time_line(notebook, make_notebooks.run_time_line(both))
    text = notebook["cells"][0]["source"]
    assert text.count("**Run time:**") == 1 and "40 s on NVIDIA H200" in text and "not measured" not in text
    with pytest.raises(ValueError, match="first cell"):
        make_notebooks.set_run_time_line({"cells": [{"cell_type": "code", "source": ""}]}, "x")


def test_the_training_lesson_shows_progress_as_lines_not_widgets():
    # A saved progress bar renders as "0% 0/39" wherever widget state is not shown (GitHub, nbconvert).
    lesson = next(path for path in NOTEBOOKS if path.name.startswith("06"))
    widgets = sum(WIDGET_VIEW in output.get("data", {}) for cell in _load(lesson)["cells"]
                  for output in cell.get("outputs", []))
    assert widgets <= 5, f"{lesson.name}: {widgets} widget outputs"
