"""What a student reads: every exercise has a hint and a solution, solution code is executed, and
no development jargon is left in the notebooks."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        cell["text"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return cells


def exercise_numbers(markdown: str) -> list[int]:
    """The numbers of the top-level list items after '## Exercises'."""
    section = markdown.split("## Exercises", 1)[1]
    return [int(n) for n in re.findall(r"^(\d+)\. ", section, flags=re.MULTILINE)]


def summaries(markdown: str) -> set[str]:
    return set(re.findall(r"<summary>\s*(.*?)\s*</summary>", markdown))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hint_and_a_solution(path):
    cells = _cells(path)
    exercises = [c["text"] for c in cells if c["cell_type"] == "markdown" and "## Exercises" in c["text"]]
    assert len(exercises) == 1, f"{path.name}: expected one '## Exercises' section, found {len(exercises)}"
    numbers = exercise_numbers(exercises[0])
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, f"{path.name}: exercises numbered {numbers}"
    found = set().union(*(summaries(c["text"]) for c in cells if c["cell_type"] == "markdown"))
    missing = [f"{n}. {kind}" for n in numbers for kind in ("Hint", "Solution") if f"{n}. {kind}" not in found]
    assert not missing, f"{path.name}: no collapsible {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solution_code_is_executable_and_collapsed(path):
    cells = _cells(path)
    in_markdown = [i for i, c in enumerate(cells)
                   if c["cell_type"] == "markdown" and "<details" in c["text"] and "```python" in c["text"]]
    assert not in_markdown, f"{path.name}: cells {in_markdown} hide code in markdown, where nothing runs it"
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or "solution" not in cell["metadata"].get("tags", []):
            continue
        hidden = cell["metadata"].get("jupyter", {})
        assert hidden.get("source_hidden") is True, f"{path.name}: cell {i} is open"
        assert hidden.get("outputs_hidden") is True, f"{path.name}: cell {i} shows its output under the exercises"
        assert re.match(r"# Solution to exercise \d+", cell["text"]), f"{path.name}: cell {i} does not say whose"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_development_jargon(path):
    jargon = re.compile(r"smoke|seed article|module docstring|\bSMOKE\b", re.IGNORECASE)
    hits = [(i, m.group(0)) for i, c in enumerate(_cells(path)) for m in jargon.finditer(c["text"])]
    assert not hits, f"{path.name}: {hits[:5]}"


def test_the_exercise_parser_reads_only_the_exercise_list():
    text = "## Summary\n\n1. not an exercise\n\n## Exercises\n\n1. First.\n   1. nested, indented\n2. Second.\n"
    assert exercise_numbers(text) == [1, 2]
    assert summaries("<details><summary>2. Hint</summary>x</details>") == {"2. Hint"}


# What keeps the loop fast and safe, and its own checks, belong to the appendix a curious reader opens
# (notebooks/06a_appendix_training_machinery.md), not to the training lesson.
MACHINERY = re.compile(r"stop vote|sync_every|host.sync|NonFiniteLossError|non-finite|compile fallback|"
                       r"CompiledForward|load avg|load average|line budget|source_lines", re.IGNORECASE)


def test_the_training_lesson_leaves_the_machinery_to_its_appendix():
    lesson = NOTEBOOKS[[p.name[:2] for p in NOTEBOOKS].index("06")]
    notebook = json.loads(lesson.read_text(encoding="utf-8"))
    texts = [(i, c["text"]) for i, c in enumerate(_cells(lesson))]
    texts += [(i, json.dumps(cell.get("outputs", []))) for i, cell in enumerate(notebook["cells"])]
    hits = [(i, m.group(0)) for i, text in texts for m in MACHINERY.finditer(text)]
    assert not hits, f"{lesson.name}: machinery in cells {hits[:5]}"
    appendix = (lesson.parent / "06a_appendix_training_machinery.md").read_text(encoding="utf-8")
    for word in ("vote", "sync_every", "NonFiniteLossError", "CompiledForward", "load average", "line budget"):
        assert word in appendix, f"the appendix does not explain {word}"
    assert "06a_appendix_training_machinery.md" in "".join(text for _, text in texts), "the lesson must link it"
