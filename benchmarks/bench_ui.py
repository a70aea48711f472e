"""The dashboard on a large ``file://`` store: time to first byte and to full render, size of chart data.

The store: one sweep of ``--tasks`` tasks (default 10,000; one ``create_sweep`` write), a few of them
run to ``finished`` with a result (``run_task(in_process=True)``), a few finished interactive runs
with short curves, and one interactive run with ``--rows`` training log rows (default 1,000,000;
``loss`` and ``acc`` per step, plus a validation row every 1,000 steps), saved in batches with
``save_training_logs`` inside ``with hub.start_run(...)``. The build time is printed, not judged.

The app (:func:`tensorhub.ui.server.start_server`, uvicorn on a free 127.0.0.1 port) is measured:

* over HTTP with httpx: time to first byte (response headers in) and total time of ``GET /runs``,
  ``GET /runs/{id}`` of the big run and of each chart's data (``/api/runs/{id}/series?...``), and
  the size of each chart's JSON;
* in headless Chromium (Selenium, Debian's ``/usr/bin/chromium``): time from navigation start until
  the page is loaded and every ``div.chart`` has its plotly traces drawn (runs page: until it is
  loaded, its table filled).

Each figure is the median of ``--repeats`` requests/page loads after one untimed warm-up (the first,
cold, figure is printed beside it). Targets (issue 13): < 1 s for every time, < 500 KB per chart.
Absolute seconds, unlike the other benchmarks' ratios: a page has no raw baseline doing the same job.

    python benchmarks/bench_ui.py                 # 10,000 tasks, 1,000,000 rows
    python benchmarks/bench_ui.py --quick         # 1,000 tasks, 100,000 rows
    python benchmarks/bench_ui.py --rows 300000 --tasks 3000 --profile
    python benchmarks/run_all.py --only ui --ui-rows 300000   # --tasks is bench_tasks' there
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402  (the ui/test extras; run_all.py skips this benchmark without them)
import starlette  # noqa: E402, F401
import uvicorn  # noqa: E402, F401

from _common import bench_main, fmt_seconds, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "ui"
PROJECT = "bench"
#: targets of issue 13
TIME_TARGET_S = 1.0
SIZE_TARGET_KB = 500.0
#: rows per save_training_logs batch while building the store
BATCH = 100_000
#: upper bound of one page's render wait in the browser (seconds)
RENDER_WAIT_S = 60
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

SCRIPT = "loss = lr * units / 1000.0\naccuracy = 1.0 - loss / 10\n"


# ---------------------------------------------------------------------------- the store
def build_store(uri: str, tasks: int, rows: int, script: Path) -> tuple[str, dict[str, float]]:
    """Fill the store; return the big run's id and the seconds each step took."""
    timings: dict[str, float] = {}
    hub = TensorHub(uri, project_name=PROJECT)
    try:
        started = time.perf_counter()
        lrs = [10.0 ** -(1 + i % 5) for i in range(tasks)]
        points = [{"lr": lrs[i], "units": 100 + (i // 5) % 2000, "seed": i} for i in range(tasks)]
        hub.create_sweep("sweep", str(script), points=points, saved_result_keys=["loss", "accuracy"])
        timings["create_sweep"] = time.perf_counter() - started

        started = time.perf_counter()
        for _ in range(min(20, tasks)):  # a share finished with a result, through the real runner path
            hub.run_task("sweep", in_process=True)
        for i in range(10):  # short finished interactive runs
            with hub.start_run("short", lr=0.1 / (i + 1)) as run:
                for step in range(200):
                    run.log(step=step, loss=1.0 / (step + 1 + i), acc=step / 200)
        timings["finish runs"] = time.perf_counter() - started

        started = time.perf_counter()
        with hub.start_run("big", lr=0.01, units=800) as run:
            for start in range(0, rows, BATCH):
                steps = range(start, min(start + BATCH, rows))
                hub.save_training_logs([{"step": s, "epoch": s // 10_000, "loss": 2.0 / math.sqrt(s + 1)
                                         + 0.05 * math.sin(s / 97.0), "acc": 1.0 - 1.0 / math.sqrt(s + 1)}
                                        for s in steps])
            hub.save_validation_logs([{"step": s, "loss": 2.1 / math.sqrt(s + 1), "acc": 1 - 1.1 / math.sqrt(s + 1)}
                                      for s in range(0, rows, 1000)])
            big_id = str(run.id)
        timings[f"{rows:,} log rows"] = time.perf_counter() - started
    finally:
        hub.close()
    return big_id, timings


# ---------------------------------------------------------------------------- HTTP figures
def http_once(client: httpx.Client, url: str) -> tuple[float, float, int, int]:
    """One GET: (seconds to the response headers, seconds to the last byte, status, body bytes)."""
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        first = time.perf_counter() - started
        size = sum(len(chunk) for chunk in response.iter_bytes())
        total = time.perf_counter() - started
    return first, total, response.status_code, size


def http_figures(client: httpx.Client, url: str, repeats: int) -> dict[str, Any]:
    cold = http_once(client, url)
    if cold[2] != 200:
        raise RuntimeError(f"GET {url} answered {cold[2]}")
    samples = [http_once(client, url) for _ in range(repeats)]
    return {"ttfb_s": statistics.median(s[0] for s in samples), "total_s": statistics.median(s[1] for s in samples),
            "cold_ttfb_s": cold[0], "cold_total_s": cold[1], "bytes": cold[3]}


def chart_urls(html: str) -> list[str]:
    """The series URLs of the run page's charts (their ``data-series-url``), x=step."""
    import html as html_lib

    urls = [html_lib.unescape(u) for u in re.findall(r'data-series-url="([^"]+)"', html)]
    return [u if "x=" in u else f"{u}{'&' if '?' in u else '?'}x=step" for u in urls]


# ---------------------------------------------------------------------------- browser figures
RENDERED_JS = """
var done = arguments[arguments.length - 1], waitMs = arguments[0], needRows = arguments[1];
var started = performance.now();
function ready() {
  if (document.readyState !== 'complete') { return false; }
  if (needRows && !document.querySelector('#runs tr[data-run-id]')) { return false; }
  var charts = document.querySelectorAll('div.chart');
  for (var i = 0; i < charts.length; i++) {
    var gd = charts[i].classList.contains('js-plotly-plot') ? charts[i] : charts[i].querySelector('.js-plotly-plot');
    if (!gd || !gd.data || !gd._fullLayout || !gd.querySelector('.main-svg')) { return false; }
  }
  return true;
}
(function poll() {
  if (ready()) {
    var nav = performance.getEntriesByType('navigation')[0] || {};
    requestAnimationFrame(function () {  // the frame that paints what was drawn
      done({rendered: performance.now(), charts: document.querySelectorAll('div.chart').length,
            ttfb: nav.responseStart, dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd});
    });
  } else if (performance.now() - started > waitMs) {
    done(null);
  } else { setTimeout(poll, 5); }
})();
"""


def new_driver(profile_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--window-size=1280,1000", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(RENDER_WAIT_S)
    driver.set_script_timeout(RENDER_WAIT_S + 5)
    return driver


def render_once(driver: Any, url: str, need_rows: bool) -> dict[str, float]:
    driver.get("about:blank")
    driver.get(url)
    got = driver.execute_async_script(RENDERED_JS, RENDER_WAIT_S * 1000, need_rows)
    if got is None:  # past the bound: a FAIL in the table, not an abort of the whole benchmark
        print(f"[ui] {url} did not render within {RENDER_WAIT_S} s", flush=True)
        nan = float("inf")
        return {"rendered": nan, "ttfb": nan, "dom": nan, "load": nan, "charts": -1}
    return {k: (v / 1000.0 if k != "charts" else v) for k, v in got.items()}


def render_figures(driver: Any, url: str, repeats: int, need_rows: bool) -> dict[str, Any]:
    cold = render_once(driver, url, need_rows)
    samples = [render_once(driver, url, need_rows) for _ in range(repeats)]
    out = {k: statistics.median(s[k] for s in samples) for k in ("rendered", "ttfb", "dom", "load")}
    out.update(cold_rendered=cold["rendered"], charts=int(cold["charts"]))
    return out


def browser_missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return f"{CHROMIUM} / {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


# ---------------------------------------------------------------------------- the run
def run(tasks: int, rows: int, repeats: int, tmpdir: str | None, show_profile: bool) -> dict[str, Any]:
    from tensorhub.ui.server import start_server

    print(f"[ui] tasks={tasks:,}, log rows={rows:,}, repeats={repeats}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-ui-", dir=tmpdir))
    figures: dict[str, Any] = {"tasks": tasks, "rows": rows, "http": {}, "charts": {}, "browser": {}}
    try:
        script = tmp / "train.py"
        script.write_text(SCRIPT)
        uri = f"file://{tmp / 'store'}"
        started = time.perf_counter()
        big_id, timings = build_store(uri, tasks, rows, script)
        figures["build_s"] = time.perf_counter() - started
        print(f"[ui] store built in {figures['build_s']:.1f} s ("
              + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")", flush=True)

        hub = TensorHub(uri, project_name=PROJECT)
        server = start_server(hub)
        base = f"http://127.0.0.1:{server.port}"
        pages = {"runs page": f"/runs?project={PROJECT}", "run page": f"/runs/{big_id}?project={PROJECT}"}
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                for name, path in pages.items():
                    figures["http"][name] = http_figures(client, path, repeats)
                    print(f"  http  {name:28} ttfb {fmt_seconds(figures['http'][name]['ttfb_s']):>9}"
                          f"  total {fmt_seconds(figures['http'][name]['total_s']):>9}", flush=True)
                urls = chart_urls(client.get(pages["run page"]).text)
                if not urls:  # the contract's URL, should the page not name its charts' data
                    urls = [f"/api/runs/{big_id}/series?metric=loss&kind=training&x=step"]
                for url in urls:
                    label = _chart_label(url)
                    figures["charts"][label] = http_figures(client, url, repeats)
                    c = figures["charts"][label]
                    print(f"  http  chart {label:22} ttfb {fmt_seconds(c['ttfb_s']):>9}  total "
                          f"{fmt_seconds(c['total_s']):>9}  {c['bytes'] / 1000:.0f} KB", flush=True)
            why = browser_missing()
            if why:
                print(f"[ui] browser figures skipped: {why}", flush=True)
                figures["browser_skipped"] = why
            else:
                driver = new_driver(tmp / "chromium-profile")
                try:
                    for name, path in pages.items():
                        figures["browser"][name] = render_figures(driver, base + path, repeats,
                                                                  need_rows=name == "runs page")
                        b = figures["browser"][name]
                        print(f"  chromium {name:25} ttfb {fmt_seconds(b['ttfb']):>9}  loaded "
                              f"{fmt_seconds(b['load']):>9}  rendered {fmt_seconds(b['rendered']):>9}"
                              f" ({b['charts']} charts)", flush=True)
                finally:
                    driver.quit()
            if show_profile:
                _profile_requests(hub, big_id)
        finally:
            server.stop()
            hub.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def _chart_label(url: str) -> str:
    query = dict(p.split("=", 1) for p in url.split("?", 1)[-1].split("&") if "=" in p)
    return f"{query.get('kind', '?')}:{query.get('metric', '?')}"


def _profile_requests(hub: TensorHub, run_id: str) -> None:
    """cProfile of the store reads behind the run page and its loss chart, called in this thread
    (the same calls as ``ui/app.py``'s ``run_page`` and ``api_series``): where the server's time goes."""
    from bson import ObjectId

    from tensorhub.ui import app as ui_app

    oid = ObjectId(run_id)
    print(profile("run page: find_run_records + run_metrics",
                  lambda: (hub.find_run_records(oid), ui_app._plots.run_metrics(hub, oid)), top=20))
    print(profile("chart data: log_series(loss, training, x=step)",
                  lambda: ui_app._plots.log_series(hub, "loss", runs=[oid], x="step", kind="training"), top=20))


# ---------------------------------------------------------------------------- the report
def rows_of(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, value, target, PASS/FAIL) for each measured figure."""
    def judge(value: float, target: float) -> str:
        return "PASS" if value < target else "FAIL"

    out = []
    for name, f in figures["http"].items():
        out.append((f"{name}: time to first byte (http)", fmt_seconds(f["ttfb_s"]), "< 1 s",
                    judge(f["ttfb_s"], TIME_TARGET_S)))
        out.append((f"{name}: last byte (http, {f['bytes'] / 1000:.0f} KB)", fmt_seconds(f["total_s"]), "< 1 s",
                    judge(f["total_s"], TIME_TARGET_S)))
    for name, f in figures["browser"].items():
        out.append((f"{name}: full render (chromium, {f['charts']} charts)", fmt_seconds(f["rendered"]), "< 1 s",
                    judge(f["rendered"], TIME_TARGET_S)))
    for label, f in figures["charts"].items():
        out.append((f"chart data {label}: total time (http)", fmt_seconds(f["total_s"]), "< 1 s",
                    judge(f["total_s"], TIME_TARGET_S)))
        out.append((f"chart data {label}: JSON size", f"{f['bytes'] / 1000:.0f} KB", "< 500 KB",
                    judge(f["bytes"] / 1000, SIZE_TARGET_KB)))
    return out


def report(results: list[Any], extras: dict[str, Any]) -> list[str]:
    figures = extras.get("ui")
    if not figures:
        return []
    lines = [f"dashboard on file:// with {figures['tasks']:,} tasks and a run of {figures['rows']:,} log rows "
             f"(store built in {figures['build_s']:.0f} s); median of the warm requests/page loads", "",
             "| what | measured | target | |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows_of(figures)]
    if figures.get("browser_skipped"):
        lines.append(f"\nbrowser figures skipped: {figures['browser_skipped']}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # run_all.py's --tasks belongs to bench_tasks: there only the --ui-* names are ours
    taken = getattr(parser, "_option_string_actions", {})
    parser.add_argument("--ui-tasks", *(["--tasks"] if "--tasks" not in taken else []), dest="ui_tasks", type=int,
                        default=None, help="tasks in the ui benchmark's store (default 10000, 1000 with --quick)")
    parser.add_argument("--ui-rows", *(["--rows"] if "--rows" not in taken else []), dest="ui_rows", type=int,
                        default=None, help="log rows of the ui benchmark's big run (default 1000000, 100000 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Any]:
    tasks = args.ui_tasks or (1_000 if args.quick else 10_000)
    rows = args.ui_rows or (100_000 if args.quick else 1_000_000)
    extras["ui"] = run(tasks, rows, repeats_of(args), args.tmpdir, args.profile)
    return []


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
