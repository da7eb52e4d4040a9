"""The three explorers in a real JupyterLab, driven through headless Chromium.

test_widgets.py checks the explorers' logic by setting `.value` in Python; these tests check
what only a browser can: that a notebook runs in JupyterLab, the widgets render, and a
control moved with the keyboard or the mouse reaches the kernel and comes back as a new
table, figure or predicted time. Each explorer is shown by a one-cell notebook the test writes
itself (the notebooks that show them, 04, 05 and 07, run under nbval), so that the browser
time goes to the widgets, not to running a whole lesson a second time:

* the schedule explorer (cifar10, with images/s per size given): moving the S_e slider
  changes the stage table, the plot and the predicted training time, and the preset menu says
  the schedule was edited;
* the augmentation explorer (six images of the bundled CIFAR-10 sample): moving the
  RandAugment magnitude slider and choosing the other op table each change the image;
* the reward explorer (the committed search, results/cpu-cifar10-search): moving w to its
  most negative value re-ranks the networks and picks a faster winner.

One JupyterLab server (on a temporary copy of notebooks/) serves the tests; each opens its
notebook in a workspace of its own. Needs Debian's chromium (``apt-get install chromium``)
and the playwright Python package (its own browser download is not used). Without them the
tests are skipped, unless EFFV2_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser
is a failure.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SCHEDULE_NOTEBOOK = "browser_test_schedule_explorer.ipynb"  # written by the fixture
AUGMENTATION_NOTEBOOK = "browser_test_augmentation_explorer.ipynb"  # written by the fixture
REWARD_NOTEBOOK = "browser_test_reward_explorer.ipynb"  # written by the fixture
SEARCH_FILE = REPO / "results" / "cpu-cifar10-search" / "search.json"  # the committed search, 31 networks
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90  # JupyterLab's first start on 2 slow cores
KERNEL_READY_S = 90
RUN_ALL_S = 240  # a scratch notebook: a kernel start, the library's import, one explorer, on a busy machine
UPDATE_S = 40  # one control change: a comm round trip and a redraw

# The scratch notebooks, one explorer each (the notebooks that show them run under nbval).
# The schedule explorer as notebook 04 shows it, with images/s per size given instead of measured.
SCHEDULE_SOURCE = """\
from effv2_lib.widgets import schedule_explorer

rates = {12: 1500.0, 16: 1000.0, 20: 700.0, 24: 500.0, 28: 380.0, 32: 300.0, 40: 190.0}  # {size px: images/s}
explorer = schedule_explorer("cifar10", images_per_s=rates, images_per_epoch=50_000, hardware="a test machine")
explorer"""

# Six images of the bundled sample in the augmentation explorer.
AUGMENTATION_SOURCE = """\
import numpy as np
import torch

from effv2_lib.data import SAMPLE_PATH
from effv2_lib.widgets import augmentation_explorer

with np.load(str(SAMPLE_PATH)) as sample:
    images = torch.from_numpy(sample["x_train"][:6]).permute(0, 3, 1, 2).contiguous()  # uint8 [6, 3, 32, 32]
    labels = sample["y_train"][:6].astype(np.int64).tolist()
    classes = [str(name) for name in sample["classes"]]
explorer = augmentation_explorer(images, labels, classes, magnitude=5.0, mixup_alpha=0.2, seed=0)
explorer"""


# The scratch notebook: the committed search in the reward explorer.
REWARD_SOURCE = f"""\
from effv2_lib.search import load_search
from effv2_lib.widgets import reward_explorer

explorer = reward_explorer(load_search({str(SEARCH_FILE)!r}))
explorer"""


def _missing(reason: str):
    if os.environ.get("EFFV2_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (EFFV2_REQUIRE_BROWSER=1 makes this a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of Debian's chromium; skips (or fails, see module docstring) without it or playwright."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright Python package is not installed (pip install playwright)")
    path = os.environ.get("EFFV2_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        _missing("chromium not found: apt-get install -y chromium (or set EFFV2_CHROMIUM)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _write_scratch_notebook(path: Path, source: str) -> None:
    cell = {"cell_type": "code", "execution_count": None, "id": "scratch", "metadata": {},
            "outputs": [], "source": source}
    notebook = {"cells": [cell], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                            "name": "python3"}}}
    path.write_text(json.dumps(notebook, indent=1) + "\n")


@pytest.fixture(scope="module")
def jupyter_lab(chromium, tmp_path_factory):
    """A JupyterLab server on a temporary copy of notebooks/ (plus the scratch notebook), without
    token; yields (url, server log, temporary folder)."""
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _write_scratch_notebook(root / SCHEDULE_NOTEBOOK, SCHEDULE_SOURCE)
    _write_scratch_notebook(root / AUGMENTATION_NOTEBOOK, AUGMENTATION_SOURCE)
    _write_scratch_notebook(root / REWARD_NOTEBOOK, REWARD_SOURCE)
    home = tmp_path / "jupyter"  # config, runtime and settings of this server only
    env = dict(os.environ, EFFV2_QUICK="1", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_DATA_DIR=str(home / "data"),
               IPYTHONDIR=str(home / "ipython"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("MPLBACKEND", None)  # make test sets Agg; the kernel should draw inline as for a reader
    if (REPO / "data").is_dir():  # notebooks may read ../data, as in the repository
        (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    # No news or update toasts over the notebook; start the default kernel without asking.
    for extension, values in {
            "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
            "notebook-extension/tracker": {"autoStartDefaultKernel": True}}.items():
        settings = home / "settings" / "@jupyterlab" / f"{extension}.jupyterlab-settings"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(values))
    port = _free_port()
    log = tmp_path / "jupyter-lab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root}",
               "--IdentityProvider.token=", "--ServerApp.allow_root=True",
               "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    with open(log, "wb") as log_file:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{_log_tail(log)}")
            try:
                with direct.open(f"{url}/api/status", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield url, log, tmp_path
    finally:
        # SIGTERM lets the server shut its kernels down; the process group catches stragglers.
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


# JavaScript run in the page. `jupyterapp` is exposed by --LabApp.expose_app_in_browser.
KERNEL_IDLE_JS = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

# After Run All: "error: ..." when a cell raised (Run All stops there), "done" when every
# code cell ran and the kernel is idle, false while cells are still queued or running.
RUN_ALL_STATE_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    // JupyterLab does not execute empty code cells: they never get an execution count.
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code'
        && cell.model.sharedModel.getSource().trim() !== '');
    for (const cell of cells) {
        if ((cell.model.getMetadata('tags') || []).includes('raises-exception')) {
            continue;
        }
        const outputs = cell.model.outputs;
        for (let k = 0; k < outputs.length; k++) {
            const output = outputs.get(k).toJSON();
            if (output.output_type === 'error') {
                return 'error: ' + output.ename + ': ' + output.evalue;
            }
        }
    }
    const kernel = panel.sessionContext.session.kernel;
    const ran = cells.every(cell => cell.model.executionCount !== null);
    return ran && kernel.status === 'idle' ? 'done' : false;
}"""

# The size cell (4th column) of the stage table's last row: S_{M-1} = S_e.
LAST_STAGE_SIZE_JS = "el => el.querySelector('tbody tr:last-child td:nth-child(4)').innerText.trim()"
CHANGED_TEXT_JS = "([el, before]) => el.innerText !== before"
# A new image: another src (each PNG from the kernel becomes a new blob URL), loaded and decoded.
CHANGED_SRC_JS = ("([el, before]) => !!el.getAttribute('src') && el.getAttribute('src') !== before"
                  " && el.complete && el.naturalWidth > 0")
SELECTED_OPTION_JS = "el => el.querySelector('select').selectedOptions[0].text.replace(/\\u00a0/g, ' ')"


@contextlib.contextmanager
def browser_session(chromium: str, jupyter_lab, name: str):
    """A _Browser for a `with` block: a Playwright error inside it fails the test with a
    screenshot and the server log; the browser is closed after the block."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        session = _Browser(playwright, chromium, jupyter_lab, name)
        try:
            yield session
        except PlaywrightError as error:
            session.fail(f"{type(error).__name__}: {error}")
        session.close()


class _Browser:
    """A headless Chromium page, with a failure that leaves a screenshot and the server log."""

    def __init__(self, playwright, chromium: str, jupyter_lab, name: str) -> None:
        self.url, self.server_log, folder = jupyter_lab
        self.screenshot = folder / f"{name}.png"
        self.browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS,
                                                  headless=True)
        self.page = self.browser.new_page(viewport={"width": 1600, "height": 1000})
        self.step = "open the notebook"

    def fail(self, message: str):
        self.page.screenshot(path=str(self.screenshot), full_page=True)
        pytest.fail(f"{message} (while trying to {self.step}); screenshot: {self.screenshot}; "
                    f"server log: {self.server_log}")

    def run_notebook(self, notebook: str, workspace: str) -> None:
        """Open `notebook` in a workspace of its own, run every cell, fail on a cell's error."""
        page = self.page
        self.step = f"open {notebook}"
        page.goto(f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}", timeout=KERNEL_READY_S * 1000)
        self.step = f"start the kernel of {notebook}"
        page.wait_for_function(KERNEL_IDLE_JS, timeout=KERNEL_READY_S * 1000, polling=500)
        self.step = f"run all cells of {notebook}"
        # `void`: the command's promise resolves only when every cell has run.
        page.evaluate("void window.jupyterapp.commands.execute('notebook:run-all-cells')")
        state = page.wait_for_function(RUN_ALL_STATE_JS, timeout=RUN_ALL_S * 1000, polling=1000).json_value()
        if state != "done":
            self.fail(f"a cell of {notebook} failed: {state}")

    def show_explorer(self, notebook: str, workspace: str, css_class: str):
        """Run every cell of `notebook`; return the first element of `css_class`, scrolled into view."""
        self.run_notebook(notebook, workspace)
        self.step = f"find the {css_class} element"
        explorer = self.page.locator(f".{css_class}").first
        explorer.scroll_into_view_if_needed(timeout=UPDATE_S * 1000)
        return explorer

    def wait_until_changed(self, script: str, locator, before: str) -> None:
        self.page.wait_for_function(script, arg=[locator.element_handle(timeout=UPDATE_S * 1000), before],
                                    timeout=UPDATE_S * 1000, polling=250)

    def close(self) -> None:
        self.page.screenshot(path=str(self.screenshot), full_page=True)
        self.browser.close()


def test_schedule_explorer_in_jupyterlab_follows_a_slider(chromium, jupyter_lab):
    with browser_session(chromium, jupyter_lab, "schedule-explorer") as session:
        page = session.page
        explorer = session.show_explorer(SCHEDULE_NOTEBOOK, "schedule", "effv2-schedule-explorer")
        table = explorer.locator(".effv2-stage-table")
        summary = explorer.locator(".effv2-summary")
        plot = explorer.locator("img.effv2-schedule-plot")
        preset = explorer.locator(".effv2-preset")
        slider = explorer.locator(".effv2-image-size-end")
        readout = slider.locator(".widget-readout")
        page.wait_for_function("el => el.innerText.includes('stage')",
                               arg=table.element_handle(timeout=UPDATE_S * 1000),
                               timeout=UPDATE_S * 1000)
        table_before, summary_before = table.inner_text(), summary.inner_text()
        plot_before, size_before = plot.get_attribute("src"), int(readout.inner_text())
        preset_before = preset.evaluate(SELECTED_OPTION_JS)

        session.step = "move the S_e slider with the keyboard"
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(3):
            handle.press("ArrowLeft")
        session.wait_until_changed(CHANGED_TEXT_JS, table, table_before)
        # Later presses may still be in flight: wait until the table shows the readout.
        size_after = int(readout.inner_text())
        page.wait_for_function(f"([el, size]) => ({LAST_STAGE_SIZE_JS})(el) === String(size)",
                               arg=[table.element_handle(), size_after],
                               timeout=UPDATE_S * 1000, polling=250)
        session.step = "see the plot and the predicted time follow"
        session.wait_until_changed(CHANGED_SRC_JS, plot, plot_before)
        session.wait_until_changed(CHANGED_TEXT_JS, summary, summary_before)
        table_after, summary_after = table.inner_text(), summary.inner_text()
        last_stage_size = int(table.evaluate(LAST_STAGE_SIZE_JS))
        preset_after = preset.evaluate(SELECTED_OPTION_JS)

    shot = f"screenshot: {session.screenshot}"
    assert size_after < size_before, f"ArrowLeft on S_e did not lower it ({size_before} -> {size_after}); {shot}"
    assert table_after != table_before, f"the stage table did not change; {shot}"
    assert last_stage_size == size_after, (
        f"the last stage should train at S_e = {size_after} px, the table says {last_stage_size}; {shot}")
    for text in (summary_before, summary_after):
        assert "Predicted training time" in text and "Relative FLOPs" in text, (
            f"the summary should show the predicted time beside the FLOPs, it says {text!r}; {shot}")
    assert summary_after != summary_before, f"the predicted time did not change; {shot}"
    assert (preset_before, preset_after) == ("cifar10", "custom (edited from cifar10)"), (
        f"the preset menu read {preset_before!r}, then {preset_after!r}; {shot}")


def test_augmentation_explorer_in_jupyterlab_follows_its_controls(chromium, jupyter_lab):
    with browser_session(chromium, jupyter_lab, "augmentation-explorer") as session:
        page = session.page
        explorer = session.show_explorer(AUGMENTATION_NOTEBOOK, "augmentation", "effv2-augmentation-explorer")
        plot = explorer.locator("img.effv2-augmentation-plot")
        page.wait_for_function("el => !!el.getAttribute('src') && el.complete && el.naturalWidth > 0",
                               arg=plot.element_handle(timeout=UPDATE_S * 1000), timeout=UPDATE_S * 1000)
        slider = explorer.locator(".effv2-magnitude")
        readout = slider.locator(".widget-readout")
        plot_start, magnitude_before = plot.get_attribute("src"), float(readout.inner_text())

        session.step = "move the RandAugment magnitude slider with the keyboard"
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(2):
            handle.press("ArrowRight")
        session.wait_until_changed(CHANGED_SRC_JS, plot, plot_start)
        magnitude_after = float(readout.inner_text())
        plot_after_magnitude = plot.get_attribute("src")

        session.step = "choose the automl op table"
        button = explorer.locator(".effv2-randaug-ops button", has_text="automl")
        button.click()
        session.wait_until_changed(CHANGED_SRC_JS, plot, plot_after_magnitude)
        automl_pressed = "mod-active" in (button.get_attribute("class") or "")

    shot = f"screenshot: {session.screenshot}"
    assert magnitude_after > magnitude_before, (
        f"ArrowRight did not raise the magnitude ({magnitude_before} -> {magnitude_after}); {shot}")
    assert automl_pressed, f"the automl button is not shown as chosen; {shot}"


def _number(readout: str) -> float:
    """A slider's readout as a number: ipywidgets writes negative values with the minus sign U+2212."""
    return float(readout.replace("\u2212", "-"))


# The network named in the first row of the explorer's ranking (row 0 is the header).
WINNER_JS = "el => el.querySelectorAll('tr')[1].querySelector('code').innerText.trim()"
STEP_MS_JS = "el => Number(el.querySelectorAll('tr')[1].querySelectorAll('td')[3].innerText)"


def test_reward_explorer_in_jupyterlab_reranks_when_time_costs_more(chromium, jupyter_lab):
    with browser_session(chromium, jupyter_lab, "reward-explorer") as session:
        page = session.page
        explorer = session.show_explorer(REWARD_NOTEBOOK, "reward", "effv2-reward-explorer")
        table = explorer.locator(".effv2-reward-table")
        plot = explorer.locator("img.effv2-reward-plot")
        page.wait_for_function("el => !!el.querySelector('code')", arg=table.element_handle(timeout=UPDATE_S * 1000),
                               timeout=UPDATE_S * 1000)
        slider = explorer.locator(".effv2-w")
        readout = slider.locator(".widget-readout")
        w_before, table_before = _number(readout.inner_text()), table.inner_text()
        plot_before = plot.get_attribute("src")
        winner_before, step_before = table.evaluate(WINNER_JS), table.evaluate(STEP_MS_JS)

        session.step = "move w to its most negative value with the keyboard (Home)"
        handle = slider.locator(".noUi-handle")
        handle.focus()
        handle.press("Home")
        session.wait_until_changed(CHANGED_TEXT_JS, table, table_before)
        session.wait_until_changed(CHANGED_SRC_JS, plot, plot_before)
        w_after, winner_after, step_after = _number(readout.inner_text()), table.evaluate(WINNER_JS), \
            table.evaluate(STEP_MS_JS)

    shot = f"screenshot: {session.screenshot}"
    assert w_after < w_before, f"Home on w did not lower it ({w_before} -> {w_after}); {shot}"
    assert winner_after != winner_before, f"the winner stayed {winner_before} at w = {w_after}; {shot}"
    assert step_after < step_before, (
        f"a higher price on step time chose a slower winner ({step_before} -> {step_after} ms); {shot}")
