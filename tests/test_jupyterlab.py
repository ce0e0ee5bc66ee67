"""The course as learners run it: JupyterLab in a real browser, notebooks run, widgets moved.

nbval (which executes every notebook in the same pytest run) talks to the kernel only: it cannot
see whether a widget renders in JupyterLab, nor whether moving it changes anything. So this module
starts JupyterLab (token-less, on a free localhost port, serving temporary copies of notebooks 01
and 08 -- JupyterLab autosaves, the repository's files are never opened) with ``KD_FAST=1`` and
offline Hugging Face settings, and drives Debian's headless Chromium with Playwright:

- notebook 01: Run All Cells, then move the temperature slider (``temperature_explorer``) with
  the keyboard and check that the plot below it is redrawn for the new ``T``;
- notebook 08: Run All Cells, then type a query into the search box (``search_explorer``) and
  check that every model's ranked results for that query appear.

On a failure a full-page screenshot, the page's HTML and JupyterLab's log are saved to
``$KD_ARTIFACTS_DIR`` (default ``<repo>/test-artifacts/``), and the assertion message names them.

Chromium is required: .ci/run installs it (apt-get install chromium); without it these tests fail
with the command to run. Playwright's own browser download (``playwright install``) is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import check_site  # noqa: E402

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # reported by the browser fixture, as a test failure with the command to run
    sync_playwright = None

NOTEBOOK_01 = "01_softmax_and_temperature.ipynb"
NOTEBOOK_08 = "08_semantic_search_distillation.ipynb"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
SERVER_START_S = 120  # JupyterLab answering on its port
KERNEL_READY_S = 90  # the notebook's kernel started and idle
RUN_ALL_S = 420  # every cell of a KD_FAST notebook executed (08 trains two students: ~1 min alone, 3+ on a busy CPU)
WIDGET_S = 60  # a widget's round trip through the kernel
EXPECT_S = 15  # anything else shown on the page
# JupyterLab user settings: no news or update checks (no network), no prompts over the notebook
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def artifacts_dir() -> Path:
    """Where failure screenshots go: ``$KD_ARTIFACTS_DIR``, else ``<repo>/test-artifacts``."""
    return Path(os.environ.get("KD_ARTIFACTS_DIR") or ROOT / "test-artifacts")


# ---------------------------------------------------------------------------------------------
# JupyterLab server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_environment(home: Path) -> dict[str, str]:
    """The server's (and so the kernels') environment: fast, offline notebooks; private Jupyter dirs."""
    env = dict(os.environ, KD_FAST="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as for a learner
    for name, values in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def _wait_until_answering(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if _get(f"{url}api/status") == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer on {url} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, url: str) -> None:
    """Shut the server and its kernels down (REST API), then make sure every process is gone."""
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    with contextlib.suppress(OSError):
        urllib.request.urlopen(urllib.request.Request(f"{url}api/shutdown", method="POST"), timeout=10)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:  # kernels run in sessions of their own: not reached by signals to the server
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    """A token-less JupyterLab on a free port, serving copies of notebooks 01 and 08.

    Yields ``{"url": base URL, "log": server log path}``."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "notebooks"
    root.mkdir()
    for name in (NOTEBOOK_01, NOTEBOOK_08):
        shutil.copy(ROOT / "notebooks" / name, root / name)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = home / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.open_browser=False",
           "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}"]
    with log.open("w") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, env=_lab_environment(home), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_answering(proc, url, log)
        yield {"url": url, "log": log}
    finally:
        _stop(proc, url)


# ---------------------------------------------------------------------------------------------
# browser


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (one browser for the module)."""
    if sync_playwright is None:
        pytest.fail("Playwright is not installed: pip install -e '.[dev]' (or pip install playwright); "
                    "do not run `playwright install`, the tests use the system Chromium")
    try:
        binary = check_site.find_chromium()
    except FileNotFoundError as err:
        pytest.fail(f"the JupyterLab browser tests need Chromium: {err}")
    expect.set_options(timeout=EXPECT_S * 1000)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab) -> Iterator[Page]:
    """A fresh browser page; on a failure, artifacts are saved by :func:`artifacts_on_failure`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextlib.contextmanager
def artifacts_on_failure(page: Page, lab: dict, name: str) -> Iterator[None]:
    """Turn any failure inside into an AssertionError naming a screenshot, the page's HTML and the
    server log, saved to :func:`artifacts_dir`."""
    try:
        yield
    except Exception as err:
        folder = artifacts_dir()
        folder.mkdir(parents=True, exist_ok=True)
        shot, html, log = (folder / f"jupyterlab-{name}{suffix}" for suffix in (".png", ".html", ".log"))
        saved = []
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
            saved.append(f"screenshot: {shot}")
        with contextlib.suppress(Exception):
            html.write_text(page.content(), encoding="utf-8")
            saved.append(f"page HTML: {html}")
        with contextlib.suppress(OSError):
            shutil.copy(lab["log"], log)
            saved.append(f"JupyterLab log: {log}")
        what = str(err) if isinstance(err, AssertionError) else f"{type(err).__name__}: {err}"
        raise AssertionError(f"{what}\n" + "\n".join(saved)) from err


# ---------------------------------------------------------------------------------------------
# driving JupyterLab

# '[12]:' for every code cell of the visible notebook ('[ ]:' not run, '[*]:' queued or running),
# or the first traceback shown, or null while cells are still waiting
RUN_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  for (const out of panel.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')) {
    if (out.textContent.includes('Traceback')) return 'error: ' + out.textContent.slice(-1500);
  }
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
  const done = prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
  return done ? 'done ' + prompts.length : null;
}"""


def _menu(page: Page, menu: str, item: str) -> None:
    """Click a menu bar entry, then one of its items (as a learner does)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def open_and_run_all(page: Page, lab: dict, notebook: str) -> None:
    """Open ``notebook`` (in a workspace of its own), clear the stored outputs (widget views from
    the saved state included), Run All Cells, and wait until every code cell has run."""
    workspace = re.sub(r"\W", "-", Path(notebook).stem)
    page.goto(f"{lab['url']}lab/workspaces/{workspace}/tree/{notebook}")
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    # the status bar's kernel item: 'Python 3 (ipykernel) | Idle' once the kernel has started and answered
    # (the toolbar's indicator says 'idle' before there is a kernel at all; Run All then asks for one)
    kernel = page.locator(f"#jp-main-statusbar [title='Change kernel for {notebook}']")
    expect(kernel).to_have_text(re.compile(r"\| Idle$"), timeout=KERNEL_READY_S * 1000)
    _menu(page, "Edit", "Clear Outputs of All Cells")
    expect(panel.locator(".jp-OutputArea-output")).to_have_count(0)
    _menu(page, "Run", "Run All Cells")
    state = page.wait_for_function(RUN_STATE_JS, timeout=RUN_ALL_S * 1000, polling=500).json_value()
    assert state.startswith("done"), f"{notebook}: a cell failed in JupyterLab:\n{state}"
    expect(kernel).to_have_text(re.compile(r"\| Idle$"), timeout=WIDGET_S * 1000)
    dialogs = page.locator(".jp-Dialog")
    assert dialogs.count() == 0, f"a dialog is open after Run All Cells: {dialogs.first.inner_text()!r}"


IMAGE_SRC_JS = """() => [...document.querySelectorAll(
  '.jp-NotebookPanel:not(.lm-mod-hidden) .widget-interact .widget-output img')].map(i => i.src)"""


# ---------------------------------------------------------------------------------------------
# tests


def test_temperature_slider_redraws_the_plot(page, lab):
    with artifacts_on_failure(page, lab, "01-temperature-slider"):
        open_and_run_all(page, lab, NOTEBOOK_01)
        explorer = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-interact")
        expect(explorer).to_have_count(1)
        slider = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="T"))
        readout = slider.locator(".widget-readout")
        expect(readout).to_have_text(re.compile(r"^1(\.0*)?$"))  # temperature=1.0 in the notebook
        expect(explorer.locator(".widget-output img")).to_have_count(1, timeout=WIDGET_S * 1000)
        before = page.evaluate(IMAGE_SRC_JS)
        assert len(before) == 1 and before[0].startswith("data:image/png;base64,"), before

        slider.locator(".noUi-handle").focus()
        page.keyboard.press("End")  # the slider's maximum, T = 100 (t_range's default)
        expect(readout).to_have_text("100")
        changed = page.wait_for_function(
            f"() => {{ const s = ({IMAGE_SRC_JS})(); return s.length === 1 && s[0] !== {json.dumps(before[0])} "
            "&& s[0].startsWith('data:image/png;base64,'); }",
            timeout=WIDGET_S * 1000, polling=250).json_value()
        assert changed, "the plot under the slider was not redrawn"
        after = page.evaluate(IMAGE_SRC_JS)
        assert after != before and len(after) == 1, "expected one new figure under the slider"


def _result_columns(text: str) -> tuple[list[str], list[list[float]]]:
    """Model names and, per model, the scores by rank, read from ``format_search_results`` text."""
    lines = text.splitlines()
    names = [n.strip() for n in lines[1].split(" | ")]
    scores: list[list[float]] = [[] for _ in names]
    for line in lines[2:]:
        cells = line[3:].split(" | ")
        assert len(cells) == len(names), f"a result line with {len(cells)} columns: {line!r}"
        for column, cell in zip(scores, cells, strict=True):
            column.append(float(cell.split()[0]))
    return names, scores


def test_search_box_shows_ranked_results(page, lab):
    with artifacts_on_failure(page, lab, "08-search-box"):
        open_and_run_all(page, lab, NOTEBOOK_08)
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        explorer = panel.locator(".widget-vbox", has=page.locator(".widget-text"))
        expect(explorer).to_have_count(1)
        results = explorer.locator(".widget-html pre")
        expect(results).to_contain_text("query: oil prices push stocks lower", timeout=WIDGET_S * 1000)
        before = results.inner_text()

        query = "football team wins the championship final"
        box = explorer.locator(".widget-text", has=page.locator(".widget-label", has_text="query")).locator("input")
        box.fill(query)
        box.press("Enter")  # continuous_update=False: the query is sent on Enter
        expect(results).to_contain_text(f"query: {query}", timeout=WIDGET_S * 1000)
        text = results.inner_text()
        assert text != before
        assert text.splitlines()[0] == f"query: {query}", text
        names, scores = _result_columns(text)
        assert names == ["teacher", "deep student", "narrow student"], names
        for name, column in zip(names, scores, strict=True):
            assert len(column) == 5, f"{name}: {len(column)} results, expected k=5\n{text}"
            assert all(-1.0 <= s <= 1.0 for s in column), f"{name}: cosine out of range\n{text}"
            assert column == sorted(column, reverse=True), f"{name}: results not ranked best first\n{text}"
