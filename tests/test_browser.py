"""The schedule explorer in a real JupyterLab, driven through headless Chromium.

test_widgets.py checks the explorer's logic by setting `.value` in Python; this test checks
what only a browser can: that the notebook runs in JupyterLab, the widget renders, and a
slider moved with the keyboard reaches the kernel and comes back as a new stage table.

Needs Debian's chromium (``apt-get install chromium``) and the playwright Python package
(its own browser download is not used). Without them the test is skipped, unless
EFFV2_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser is a failure.
"""

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
NOTEBOOK = "04_progressive_learning.ipynb"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90  # JupyterLab's first start on 2 slow cores
KERNEL_READY_S = 90
RUN_ALL_S = 240  # notebook 04 in smoke mode, cells run one after another
UPDATE_S = 30  # one slider change: a comm round trip and a redraw


def _missing(reason: str):
    if os.environ.get("EFFV2_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (EFFV2_REQUIRE_BROWSER=1 makes this a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture
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


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on a temporary copy of notebooks/, without token; yields its URL."""
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home = tmp_path / "jupyter"  # config, runtime and settings of this server only
    env = dict(os.environ, EFFV2_SMOKE="1", JUPYTER_CONFIG_DIR=str(home / "config"),
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
        yield url, log
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


def test_moving_a_slider_in_jupyterlab_updates_the_stage_table(chromium, jupyter_lab, tmp_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    url, server_log = jupyter_lab
    screenshot = tmp_path / "jupyterlab.png"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS,
                                             headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        step = "open the notebook"

        def fail(message: str):
            page.screenshot(path=str(screenshot), full_page=True)
            pytest.fail(f"{message} (while trying to {step}); screenshot: {screenshot}; "
                        f"server log: {server_log}")

        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK}", timeout=KERNEL_READY_S * 1000)
            step = "start the kernel"
            page.wait_for_function(KERNEL_IDLE_JS, timeout=KERNEL_READY_S * 1000, polling=500)

            step = "run all cells"
            # `void`: the command's promise resolves only when every cell has run.
            page.evaluate("void window.jupyterapp.commands.execute('notebook:run-all-cells')")
            state = page.wait_for_function(RUN_ALL_STATE_JS, timeout=RUN_ALL_S * 1000,
                                           polling=1000).json_value()
            if state != "done":
                fail(f"a cell of {NOTEBOOK} failed: {state}")

            step = "find the schedule explorer"
            explorer = page.locator(".effv2-schedule-explorer").first
            explorer.scroll_into_view_if_needed(timeout=UPDATE_S * 1000)
            table = explorer.locator(".effv2-stage-table")
            slider = explorer.locator(".effv2-image-size-end")
            readout = slider.locator(".widget-readout")
            page.wait_for_function("el => el.innerText.includes('stage')",
                                   arg=table.element_handle(timeout=UPDATE_S * 1000),
                                   timeout=UPDATE_S * 1000)
            table_before, size_before = table.inner_text(), int(readout.inner_text())
            page.screenshot(path=str(tmp_path / "before.png"))

            step = "move the S_e slider with the keyboard"
            handle = slider.locator(".noUi-handle")
            handle.focus()
            for _ in range(3):
                handle.press("ArrowLeft")
            page.wait_for_function("([el, before]) => el.innerText !== before",
                                   arg=[table.element_handle(), table_before],
                                   timeout=UPDATE_S * 1000, polling=250)
            # Later presses may still be in flight: wait until the table shows the readout.
            size_after = int(readout.inner_text())
            page.wait_for_function(f"([el, size]) => ({LAST_STAGE_SIZE_JS})(el) === String(size)",
                                   arg=[table.element_handle(), size_after],
                                   timeout=UPDATE_S * 1000, polling=250)
            table_after = table.inner_text()
            last_stage_size = int(table.evaluate(LAST_STAGE_SIZE_JS))
        except PlaywrightError as error:
            fail(f"{type(error).__name__}: {error}")
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()

    assert size_after < size_before, (
        f"ArrowLeft on S_e did not lower it ({size_before} -> {size_after}); screenshot: {screenshot}")
    assert table_after != table_before, f"the stage table did not change; screenshot: {screenshot}"
    assert last_stage_size == size_after, (
        f"the last stage should train at S_e = {size_after} px, the table says {last_stage_size}; "
        f"screenshot: {screenshot}")
