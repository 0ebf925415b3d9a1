"""The two notebook widgets in a real JupyterLab, driven by headless Chromium (Playwright).

A JupyterLab server (127.0.0.1 only, a random token, its own config, data, runtime and settings folders)
serves *copies* of notebooks 01 and 02 from a temporary folder, with autosave off, so the committed files
cannot change; the test compares their bytes before and after. For each notebook the browser clears the
outputs, runs all cells in the ``ci`` profile, then moves a widget slider with the keyboard on its focused
handle, as a user would, and checks in the page that the figure was redrawn for the new value: the
slider's readout, the widget's note, a new ``<img>`` (in the masking widget's Output; for the EMA widget
the cell's own figure output, updated in place by its display id, so exactly one figure stays), and
screenshots of that image that differ. Screenshots of the widget at every step go to ``$D2V_LAB_ARTEFACTS/browser``
(default ``test-artefacts/browser`` in the repository), with the server's log.

Needs Debian's ``chromium`` (or ``$D2V_LAB_CHROMIUM``, a Chromium executable) and the ``playwright``
package (in the ``test`` extra). Without them the test FAILS under CI (``CI=true``) and skips elsewhere.
"""
from __future__ import annotations

import io
import json
import os
import secrets
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

pytestmark = pytest.mark.integration  # runs the notebooks on the real data

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_masking.ipynb", "02_ema_teacher_targets.ipynb"]
INSTALL = {"chromium": "apt-get update && apt-get install -y chromium",
           "playwright": 'pip install -c constraints.txt -e ".[test]"  (or: pip install playwright)'}

SERVER_START_S = 120   # JupyterLab answers /api/status
KERNEL_START_S = 120   # the notebook page is loaded and its kernel idle
RUN_ALL_S = 300        # every cell of a notebook has run (notebook 02 trains three short runs)
REDRAW_S = 60          # the widget shows the figure for a new slider value
STOP_S = 20            # the server shuts down (kernels included) before it is killed


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _missing(what: str, why: str):
    """A missing browser or driver: a failure under CI (the test must never pass by skipping), a skip elsewhere."""
    message = f"{why}; install it with: {INSTALL[what]}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: the browser test must run in CI)", pytrace=False)
    pytest.skip(message)


def _chromium() -> str:
    if os.environ.get("D2V_LAB_CHROMIUM"):
        path = os.environ["D2V_LAB_CHROMIUM"]
        if not Path(path).is_file():
            _missing("chromium", f"D2V_LAB_CHROMIUM={path!r} is not a file")
        return path
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing("chromium", "Chromium is not installed (no `chromium` on PATH)")
    return path


def _artefacts() -> Path:
    root = Path(os.environ.get("D2V_LAB_ARTEFACTS") or REPO / "test-artefacts")
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def _write_settings(folder: Path) -> None:
    """JupyterLab user settings for the test: no autosave (belt and braces: the notebooks are copies
    anyway), every cell kept in the DOM (no windowing, so the widget is there to find), no news pop-up."""
    settings = {"@jupyterlab/docmanager-extension/plugin": {"autosave": False},
                "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
    for plugin, values in settings.items():
        package, name = plugin.rsplit("/", 1)
        path = folder / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def committed():
    """The committed notebooks' bytes, to check that nothing the test does writes to them."""
    return {p: p.read_bytes() for p in sorted((REPO / "notebooks").glob("*.ipynb"))}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright (its own browser download is not used)."""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright", "the Python package `playwright` is not installed")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def lab(shared_root, committed, tmp_path_factory, browser):
    """A JupyterLab server on 127.0.0.1 serving copies of the notebooks; always stopped afterwards.
    Yields (base url, token, log path)."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copyfile(REPO / "notebooks" / name, root / "notebooks" / name)
    _write_settings(tmp / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ,  # D2V_LAB_DATA, D2V_LAB_PROFILE=ci and D2V_LAB_CACHE reach the kernels
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
               # one thread per kernel: on a busy 2-core machine two torch threads per kernel make
               # notebook 02's short trainings ten times slower
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.allow_root=True",  # CI runs as root
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells and read the notebook model
           f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    log_path = _artefacts() / "jupyterlab.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited with {proc.returncode} while starting; log: {log_path}\n"
                                f"{log_path.read_text()[-3000:]}")
                try:
                    _api(base, token, "/api/status", timeout=2)
                    break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s; log: {log_path}")
                    time.sleep(0.5)
            yield base, token, log_path
        finally:
            _stop(proc, base, token)


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down (it shuts its kernels down); if it does not exit, terminate, then kill its group."""
    if proc.poll() is None:
        try:
            _api(base, token, "/api/shutdown", method="POST")
        except (urllib.error.URLError, OSError):
            pass
        try:
            proc.wait(timeout=STOP_S)
            return
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --- the page -------------------------------------------------------------------------------------

KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(w && w.content && w.content.model && k && k.status === 'idle');
}"""
RUN_ALL = """() => {
  const app = window.jupyterapp;
  app.commands.execute('notebook:clear-all-cell-outputs');
  app.commands.execute('notebook:run-all-cells');   // not awaited: the test polls for the end, bounded
  return true;
}"""
PROGRESS = """() => {
  const panel = window.jupyterapp.shell.currentWidget, cells = panel.content.model.cells;
  const out = {path: panel.context.path, code: 0, done: 0, errors: [], first: null,
               kernel: panel.sessionContext.session.kernel.status};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.code++;
    if (c.executionCount !== null) out.done++;
    const outputs = c.outputs.toJSON();
    if (out.code === 1) out.first = outputs.map(o => [].concat(o.text || '').join('')).join('');
    for (const o of outputs) if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
  }
  return out;
}"""
FINISHED = f"""() => {{
  const p = ({PROGRESS})();
  return (p.errors.length || (p.done === p.code && p.kernel === 'idle')) ? p : false;
}}"""


def _open(page, base: str, token: str, name: str) -> None:
    """Load JupyterLab with a notebook copy open."""
    # a workspace of its own, so JupyterLab does not reopen (and start a kernel for) the other notebook
    workspace = name.split("_")[0]
    page.goto(f"{base}/lab/workspaces/nb{workspace}/tree/notebooks/{name}?token={token}", timeout=KERNEL_START_S * 1000)


def _run_all(page) -> None:
    """Wait for the notebook's kernel, then clear the outputs and start running every cell."""
    page.wait_for_function(KERNEL_IDLE, timeout=KERNEL_START_S * 1000, polling=250)
    page.evaluate(RUN_ALL)


def _finished(page, name: str) -> dict:
    """Wait (bounded) until every cell has run; fail on an error output or a profile other than ci."""
    try:
        result = page.wait_for_function(FINISHED, timeout=RUN_ALL_S * 1000, polling=500).json_value()
    except Exception as exc:  # a Playwright timeout: say how far it got
        raise AssertionError(f"{name}: the cells did not all run within {RUN_ALL_S} s: "
                             f"{page.evaluate(PROGRESS)}") from exc
    assert not result["errors"], f"{name}: a cell failed: {result['errors']}"
    assert result["first"].startswith("profile: ci"), f"{name} did not run in the ci profile: {result['first']!r}"
    return result


def _slider(page, description: str):
    """The slider labelled ``description``, its handle and readout, the widget's outer box (slider rows,
    note and, for the masking widget, its Output) and the notebook cell that holds the widget."""
    slider = page.locator(".widget-hslider", has=page.locator("label.widget-label", has_text=description))
    box = page.locator(".widget-vbox", has=slider).last
    cell = page.locator(".jp-Cell", has=slider)
    return slider, slider.locator(".noUi-handle"), slider.locator(".widget-readout"), box, cell


def _pixels(png: bytes):
    import matplotlib.image as mpimg
    return mpimg.imread(io.BytesIO(png), format="png")


def _changed_share(before: bytes, after: bytes) -> float:
    """The share of pixels that differ between two screenshots of the figure (0 when it did not redraw).
    A 2-pixel border is left out: the image sits at a fractional position, so its edge rows blend in
    whatever is next to it."""
    a, b = _pixels(before), _pixels(after)
    if a.shape != b.shape:
        return 1.0
    return float((abs(a - b).max(axis=-1) > 0.02)[2:-2, 2:-2].mean())


def _capture(img, attempts: int = 20) -> tuple[str, bytes]:
    """The figure's ``src`` and a screenshot of it, taken when the image is stable. JupyterLab may swap
    the ``<img>`` element for an equal one while it renders an output (an Output widget's clear and
    display arrive as two messages), and a screenshot of the swapped-out element fails with
    'not attached to the DOM': retry until the src is the same before and after the screenshot."""
    from playwright.sync_api import Error

    for _ in range(attempts):
        try:
            src = img.get_attribute("src")
            png = img.screenshot()
            if img.get_attribute("src") == src:
                return src, png
        except Error as exc:
            if "not attached" not in str(exc):
                raise
        time.sleep(0.5)
    raise AssertionError(f"the figure kept changing for {attempts * 0.5:.0f} s; cannot take a stable screenshot")


def _shot(box, name: str) -> None:
    box.screenshot(path=str(_artefacts() / f"{name}.png"))


def _figure_rendered(img) -> None:
    """The figure's image is decoded (ready to paint, so a screenshot shows it) and not empty."""
    width = img.evaluate("e => e.decode().then(() => e.naturalWidth)")
    assert width > 100, f"the widget's figure did not render (image width {width})"


def _shutdown_kernels(base: str, token: str) -> None:
    for session in _api(base, token, "/api/sessions"):
        _api(base, token, f"/api/sessions/{session['id']}", method="DELETE", timeout=30)


@pytest.fixture(scope="module")
def notebooks(lab, browser):
    """Both notebooks open, each in a page of its own, running all their cells at the same time (one
    thread per kernel: on two cores they run side by side). Yields {notebook name: page}. Afterwards a
    screenshot of each page's last state joins the artefacts (the first thing to look at when a test
    fails) and the kernels are shut down (the server would keep them running)."""
    base, token, _ = lab
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pages, errors = {}, []
    try:
        for name in NOTEBOOKS:
            pages[name] = context.new_page()
            pages[name].set_default_timeout(REDRAW_S * 1000)
            pages[name].on("pageerror", lambda e, name=name: errors.append(f"{name}: {e}"))
            _open(pages[name], base, token, name)
        for page in pages.values():  # both kernels start while the pages load
            _run_all(page)
        yield pages
    finally:
        if errors:
            print("errors in the pages:", *errors, sep="\n  ")  # shown by pytest when a test fails
        for name, page in pages.items():
            try:
                page.screenshot(path=str(_artefacts() / f"{Path(name).stem}-page.png"), timeout=30_000)
            except Exception as exc:  # the screenshot is a diagnostic: never hide the test's own outcome
                print(f"no page screenshot of {name}: {exc}")
        context.close()
        _shutdown_kernels(base, token)


def _assert_unchanged(committed: dict) -> None:
    changed = [p.name for p, data in committed.items() if p.read_bytes() != data]
    assert not changed, f"the browser test changed committed notebooks: {changed}"


# --- the tests -------------------------------------------------------------------------------------

def test_mask_ratio_slider_redraws_the_masks_in_jupyterlab(notebooks, committed):
    from playwright.sync_api import expect

    page = notebooks["01_masking.ipynb"]
    _finished(page, "01_masking.ipynb")
    slider, handle, readout, box, _ = _slider(page, "mask ratio")
    img = box.locator(".widget-output img")                             # the figure lives in the widget's Output
    note = box.locator(".widget-html-content")
    expect(readout).to_have_text("0.60")
    expect(note).to_contain_text("asked 60%; achieved: image 59.4%")      # round(0.6 * 64) = 38 of 64
    _figure_rendered(img)
    first_src, first_png = _capture(img)
    _shot(box, "01_masking-0-ratio-0.60")

    handle.focus()
    handle.press("ArrowLeft")                                            # one step of 0.05 down
    expect(readout).to_have_text("0.55")
    expect(note).to_contain_text("asked 55%; achieved: image 54.7%", timeout=REDRAW_S * 1000)  # 35 of 64
    expect(img).not_to_have_attribute("src", first_src, timeout=REDRAW_S * 1000)
    _figure_rendered(img)
    _shot(box, "01_masking-1-ratio-0.55")
    changed = _changed_share(first_png, _capture(img)[1])
    assert changed > 0.01, f"the figure on screen barely changed: {changed:.2%} of its pixels"  # about 5%

    handle.press("ArrowRight")                                           # back: the same seeded figure again
    expect(readout).to_have_text("0.60")
    expect(note).to_contain_text("asked 60%; achieved: image 59.4%", timeout=REDRAW_S * 1000)
    expect(img).to_have_attribute("src", first_src, timeout=REDRAW_S * 1000)
    _figure_rendered(img)
    _shot(box, "01_masking-2-ratio-0.60-again")
    changed = _changed_share(first_png, _capture(img)[1])
    assert changed == 0.0, f"the figure for 0.60 looks different the second time: {changed:.2%} of its pixels"
    _assert_unchanged(committed)


def test_ema_decay_slider_redraws_the_teacher_curves_in_jupyterlab(notebooks, committed):
    from playwright.sync_api import expect

    page = notebooks["02_ema_teacher_targets.ipynb"]
    _finished(page, "02_ema_teacher_targets.ipynb")
    slider, handle, readout, box, cell = _slider(page, "EMA decay tau")
    # the figure is an ordinary output of the widget's cell (so a saved notebook keeps it), below the
    # widget box, and a slider move updates it in place through its display id
    img = cell.locator(".jp-OutputArea-output.jp-RenderedImage img")
    note = box.locator(".widget-html-content")
    expect(readout).to_have_text("0.98")
    expect(note).to_contain_text("tau=0.98, K=2 after")
    expect(img).to_have_count(1)
    _figure_rendered(img)
    src, png = _capture(img)
    seen, pngs = {0.98: src}, {0.98: png}
    _shot(cell, "02_ema-0-tau-0.98")

    # End and Home jump to tau = 1 and tau = 0: both ran in the notebook already (cached), so each move
    # redraws in a moment instead of training again. The figure draws the chosen tau next to the
    # references tau = 0 and tau = 1, so both moves draw the same two runs: the same image, not 0.98's.
    for step, (key, tau, text) in enumerate([("End", 1.0, "1.0"), ("Home", 0.0, "0.0")], start=1):
        handle.focus()
        handle.press(key)
        expect(readout).to_have_text(text)
        expect(note).to_contain_text(f"tau={tau:g}, K=2 after", timeout=REDRAW_S * 1000)
        expect(img).not_to_have_attribute("src", seen[0.98], timeout=REDRAW_S * 1000)
        if tau == 0.0:
            expect(img).to_have_attribute("src", seen[1.0], timeout=REDRAW_S * 1000)
        _figure_rendered(img)
        expect(img).to_have_count(1)                                    # redrawn in place, never a second figure
        seen[tau], pngs[tau] = _capture(img)
        _shot(cell, f"02_ema-{step}-tau-{text}")
        changed = _changed_share(pngs[0.98], pngs[tau])
        assert changed > 0.01, f"the figure on screen barely changed for tau={tau}: {changed:.2%} of its pixels"
    _assert_unchanged(committed)
