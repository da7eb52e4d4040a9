"""Execute the notebooks in their full mode and commit-ready: `make notebooks`.

Each notebook runs top to bottom in a fresh kernel on the machine at hand (the CPU's real
paths, not the quick check: ``EFFV2_QUICK`` is removed from the kernel's environment), with
the widget state stored so that the explorers render as static widgets on the web. What
produced the outputs goes into the notebook's metadata under ``effv2``:

* ``outputs``: the SHA-256 of the code cells' sources (outputs depend on code, not on the
  markdown between it), the git commit and whether the tree had uncommitted changes, the
  library version, the device and hardware, the date and the duration;
* ``run_times``: the latest full-run duration per device type ("cpu", "cuda", "mps"), so a
  run on a GPU adds its figure without erasing the CPU's.

The first markdown cell's ``**Run time:**`` line is rewritten from ``run_times``.
``tests/test_notebook_outputs.py`` fails when a notebook's outputs are missing, stale (made
from other code cells) or hold an error. A notebook that fails to execute is left as it was.

    python scripts/make_notebooks.py                 # every notebook in notebooks/
    python scripts/make_notebooks.py notebooks/04_progressive_learning.ipynb
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
RUN_TIME_PREFIX = "**Run time:**"
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU (MPS)", "xpu": "Intel GPU (XPU)"}


def code_sha256(notebook: dict) -> str:
    """SHA-256 of the code cells' sources in order: what a notebook's outputs were made from."""
    sources = ["".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
               for cell in notebook["cells"] if cell["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def run_time_line(run_times: dict[str, dict]) -> str:
    """The notebook's run-time sentence, from its recorded full runs (GPU: not measured, if none)."""
    parts = [f"{_minutes(record['duration_s'])} on {record['hardware']} ("
             + ("" if kind == "cpu" else f"{DEVICE_NAMES.get(kind, kind)}, ")
             + f"measured {record['date'][:10]})" for kind, record in sorted(run_times.items())]
    if not any(kind != "cpu" for kind in run_times):
        parts.append("on a GPU not measured yet, and not predicted either: no GPU throughput has been "
                     "measured to predict it from")
    return (f"{RUN_TIME_PREFIX} the full run takes " + "; ".join(parts)
            + ". With `EFFV2_QUICK=1` (the quick check) every notebook runs in seconds, with figures that "
              "mean nothing.")


def set_run_time_line(notebook: dict, line: str) -> None:
    """Replace the first cell's run-time line, or add it below the title."""
    first = notebook["cells"][0]
    if first["cell_type"] != "markdown":
        raise ValueError("the first cell of a notebook must be its markdown title cell")
    text = "".join(first["source"]) if isinstance(first["source"], list) else first["source"]
    lines = text.split("\n")
    for i, existing in enumerate(lines):
        if existing.startswith(RUN_TIME_PREFIX):
            lines[i] = line
            break
    else:
        lines[1:1] = ["", line]
    first["source"] = "\n".join(lines)


def _hardware_text() -> tuple[str, str]:
    from effv2_lib.runtime import cpu_name, hardware, pick_device

    device = pick_device()
    info = hardware(device)
    if device.type == "cpu":
        return "cpu", f"a {info['cpu_count']}-core {cpu_name(info)} CPU"
    return device.type, str(info["device_name"])


def execute(path: Path, timeout: int) -> float:
    """Run `path` in place (full mode, widget state stored); return its duration in seconds."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    env_backup = {key: os.environ.pop(key) for key in ("EFFV2_QUICK", "MPLBACKEND") if key in os.environ}
    try:  # the kernel inherits this environment: no quick check, matplotlib's inline backend
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        duration = time.perf_counter() - start
    finally:
        os.environ.update(env_backup)
    kind, hardware_text = _hardware_text()
    dirty = bool(_git("status", "--porcelain", "--", "effv2_lib", "notebooks", "pyproject.toml"))
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = notebook.metadata.setdefault("effv2", {})
    # Whether the run read the full CIFAR-10: notebook 06's race needs it (make notebooks DATA=DIR).
    data = "EFFV2_DATA (a directory of the full data)" if os.environ.get("EFFV2_DATA") else "no EFFV2_DATA"
    record["outputs"] = {"code_sha256": code_sha256(notebook), "commit": _git("rev-parse", "HEAD"), "data": data,
                         "uncommitted_changes": dirty, "library_version": metadata.version("effv2_lib"), "device": kind,
                         "hardware": hardware_text, "date": date, "duration_s": round(duration, 1)}
    run_times = record.setdefault("run_times", {})
    run_times[kind] = {"duration_s": round(duration, 1), "hardware": hardware_text, "date": date}
    set_run_time_line(notebook, run_time_line(run_times))
    # The run-time line is markdown, so rewriting it leaves the code hash (and the outputs) valid.
    _write(path, notebook)
    return duration


def _write(path: Path, notebook: dict) -> None:
    """Write atomically: a notebook is never left half written."""
    temporary = path.with_suffix(".ipynb.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(notebook, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (default: 3600)")
    parser.add_argument("--run-times-only", action="store_true",
                        help="execute nothing: rewrite each title cell's run-time line from the recorded run times")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if args.run_times_only:
        for path in paths:
            notebook = json.loads(path.read_text(encoding="utf-8"))
            set_run_time_line(notebook, run_time_line(notebook["metadata"]["effv2"]["run_times"]))
            _write(path, notebook)
        return 0
    failed = []
    for path in paths:
        print(f"{path.name} ...", flush=True)
        try:
            duration = execute(path.resolve(), args.timeout)
        except Exception as error:  # report every notebook, then fail
            failed.append(path.name)
            print(f"  FAILED, left unchanged: {type(error).__name__}: {str(error)[-2000:]}", flush=True)
            continue
        print(f"  {_minutes(duration)}, {path.stat().st_size / 1e6:.2f} MB", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
