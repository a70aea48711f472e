"""Helpers of the browser tests: Debian's headless Chromium driven by Selenium, apps served by uvicorn.

* :func:`ensure_chromium` installs Debian's ``chromium`` and ``chromium-driver`` when they are
  missing and this process is root (as on CI), once per machine even under xdist (a file lock);
  no browser is ever downloaded by Selenium (its driver and binary paths are given).
* :func:`new_driver` starts one headless Chromium with the flags a closed network needs.
* :func:`serve` serves an ASGI app with a real uvicorn server in a thread on a free 127.0.0.1 port.
* :func:`standin_app` is a tiny Starlette app that proves the machinery (chromium, selenium, uvicorn)
  works here, independently of tensorhub's own app.

The fixtures (``chromium``, ``driver``) are imported by the test modules that use them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Debian packages that provide CHROMIUM and CHROMEDRIVER
APT_PACKAGES = ["chromium", "chromium-driver"]
#: bounds of the install steps (seconds): a fresh CI machine downloads ~100 MB
APT_UPDATE_TIMEOUT = 180
APT_INSTALL_TIMEOUT = 400
#: where screenshots go (git-ignored), for a reviewer to look at
ARTIFACTS = Path(__file__).parent / "artifacts"
#: the browser window's size (pixels)
WINDOW = (1280, 1000)
#: upper bound of every wait in the browser tests (seconds)
WAIT = 10.0


def _present() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def _apt(args: list[str], timeout: float) -> str:
    """Run ``apt-get args`` non-interactively within ``timeout``; return its output (raise on failure)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    log.info("apt-get %s (exit %d):\n%s", " ".join(args), done.returncode, output[-4000:])
    if done.returncode:
        raise RuntimeError(f"apt-get {' '.join(args)} exited {done.returncode}: {output[-2000:]}")
    return output


def install_chromium() -> str | None:
    """Install Debian's chromium + chromium-driver if missing; return None when present, else why not."""
    if _present():
        return None
    if shutil.which("apt-get") is None:
        return "chromium is missing and there is no apt-get to install it (install chromium and chromium-driver)"
    if os.geteuid() != 0:
        return ("chromium is missing and this user is not root, so it cannot be installed here "
                f"(run: sudo apt-get install -y {' '.join(APT_PACKAGES)})")
    try:
        _apt(["update"], APT_UPDATE_TIMEOUT)
        _apt(["install", "-y", "--no-install-recommends", *APT_PACKAGES], APT_INSTALL_TIMEOUT)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        return f"installing {' '.join(APT_PACKAGES)} failed: {e}"
    if not _present():
        return f"apt-get installed {' '.join(APT_PACKAGES)} but {CHROMIUM} or {CHROMEDRIVER} is still missing"
    return None


def ensure_chromium(lock_dir: Path) -> str | None:
    """:func:`install_chromium` once for all xdist workers (a lock file in ``lock_dir``, shared by them).

    Returns None when chromium and its driver are there, else the reason they are not.
    """
    if _present():
        return None
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here, then finds chromium present
        try:
            return install_chromium()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def require_chromium(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Make chromium available, or fail (on CI: ``$CI`` set; never skip silently there) or skip with why."""
    # the base temp's parent is shared by the xdist workers of one run (each has its own base temp)
    why = ensure_chromium(tmp_path_factory.getbasetemp().parent)
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run on CI: {why}", pytrace=False)
    pytest.skip(f"browser tests need Debian's chromium: {why}")


def new_driver(user_data_dir: Path) -> Any:
    """A headless Chromium (Selenium WebDriver) with a fresh profile; nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    # a dialog stays open for assert_no_alert to find (the default dismisses it and fails a later command)
    options.set_capability("unhandledPromptBehavior", "ignore")
    # a given driver path: Selenium Manager never looks for (or downloads) a browser or driver
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    return driver


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Chromium and chromedriver are installed (installed now if missing and root), else fail on CI / skip."""
    require_chromium(tmp_path_factory)


@pytest.fixture(scope="session")
def driver(chromium: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium per session (per xdist worker), reused by every browser test."""
    browser = new_driver(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


# ---------------------------------------------------------------------------- serving
@contextlib.contextmanager
def serve(app: Any, stop_timeout: float = 10.0) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the port is ours from now on: no race with another server
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        sock.close()
        if thread.is_alive():
            log.warning("uvicorn on port %d did not stop within %ss", port, stop_timeout)


# ---------------------------------------------------------------------------- page helpers
def screenshot(driver: Any, name: str) -> Path:
    """Save the current page as ``tests/artifacts/<name>.png`` (a reviewer looks at these)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # the whole page, not only the window: grow the window to the page's height (bounded), then restore
    width, height = WINDOW
    page_height = driver.execute_script("return document.documentElement.scrollHeight;") or height
    driver.set_window_size(width, max(height, min(int(page_height) + 150, 6000)))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    return path


def wait_for(driver: Any, predicate: Any, what: str, timeout: float = WAIT) -> Any:
    """WebDriverWait for ``predicate(driver)`` to be truthy (its value returned); fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what} on {driver.current_url}") from None


def assert_no_alert(driver: Any) -> None:
    """No JavaScript dialog (alert/confirm/prompt) is open."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        text = alert.text
    except NoAlertPresentException:
        return
    alert.dismiss()
    raise AssertionError(f"a JavaScript dialog opened: {text!r}")


def chart_traces(driver: Any) -> list[dict[str, Any]]:
    """Every ``div.chart`` on the page: its data-metric, data-kind and number of plotly traces."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('div.chart')).map(function (div) {
            var gd = div.classList.contains('js-plotly-plot') ? div : div.querySelector('.js-plotly-plot');
            return {metric: div.dataset.metric, kind: div.dataset.kind,
                    traces: gd && gd.data ? gd.data.length : null};
        });
    """)


def standin_app() -> Any:
    """A tiny Starlette app (a page, a status that changes, a token check) to prove the machinery works."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    state = {"status": "running"}

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse("""<!doctype html><title>stand-in</title>
            <p id="name"></p><span id="status">?</span>
            <script>
              document.getElementById('name').textContent = '<script>alert(1)</' + 'script>';
              function poll() { fetch('/api/status').then(r => r.json()).then(d => {
                  document.getElementById('status').textContent = d.status; }); }
              poll(); setInterval(poll, 200);
            </script>""")

    async def status(request: Any) -> JSONResponse:
        return JSONResponse(state)

    async def unsafe(request: Any) -> HTMLResponse:  # what an unescaped name would do
        return HTMLResponse("<!doctype html><title>unsafe</title><p>x</p><script>alert(1)</script>")

    async def secret(request: Any) -> Any:
        if request.headers.get("authorization") != "Bearer s3cret":
            return JSONResponse({"error": "token required"}, status_code=401)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", page), Route("/api/status", status), Route("/unsafe", unsafe),
                            Route("/secret", secret)])
    app.state.standin = state
    return app

