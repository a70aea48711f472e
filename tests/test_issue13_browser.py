"""Issue 13, "Tested in a real browser": the dashboard in headless Chromium, over file:// and mongodb://.

Debian's chromium is driven by Selenium through Debian's chromedriver (tests/browser.py installs both
with apt-get when missing and root, as on CI; without them the tests fail when ``$CI`` is set and skip
with the reason otherwise). The app (``tensorhub.ui.create_app``) is served by uvicorn on a free
127.0.0.1 port over a store the ``store`` fixture fills: finished interactive runs with two metrics,
a task with two attempts, a run kept running, a dataset and a model with lineage, and a run, metric
and dataset named ``<script>alert(1)</script>``. Screenshots of the main pages go to tests/artifacts/.
The DOM these tests read is the contract in the issue's notes (ids, classes, data-attributes).
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from tensorhub import TensorHub

from browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    WAIT,
    assert_no_alert,
    chart_traces,
    chromium,
    driver,
    screenshot,
    serve,
    standin_app,
    wait_for,
)
from conftest import fresh_uri

# the first browser test of a fresh CI machine installs chromium (apt-get) in its setup
pytestmark = pytest.mark.timeout(900)

PROJECT = "vision"
XSS = "<script>alert(1)</script>"
TOKEN = "s3cret-token"
#: the script of the task with two attempts: the first fails after logging, the retry finishes
RETRIED_SCRIPT = """
    from tensorhub import TensorHub
    from tensorhub.context import current_attempt
    hub = TensorHub()
    attempt = current_attempt()
    for step in range(5):
        hub.log(step=step, loss=1.0 / (step + 1) / attempt, acc=0.5 + 0.1 * step)
    if attempt == 1:
        raise RuntimeError("the first attempt fails on purpose")
    done = True
"""


@dataclass
class Store:
    """The filled store: its URI and backend, and the ids (hex) of what the pages must show."""

    uri: str
    backend: str
    hub: TensorHub
    runs: dict[str, str] = field(default_factory=dict)  # run name -> id
    statuses: dict[str, str] = field(default_factory=dict)  # run name -> status it has now
    dataset_id: str = ""
    model_id: str = ""


@pytest.fixture(scope="module", params=["file", "mongodb"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A project with finished runs (one with 2 attempts), one running run, lineage and an XSS name."""
    uri = fresh_uri(request.param, request, tmp_path_factory)
    hub = TensorHub(uri, project_name=PROJECT)
    filled = Store(uri, request.param, hub)
    for name, lr in (("mlp-a", 0.1), ("mlp-b", 0.01)):
        with hub.start_run(name, lr=lr, units=8) as run:
            for step in range(5):
                run.log(step=step, loss=1.0 / (step + 1) + lr, acc=0.5 + 0.1 * step)
            run.log(step=4, kind="validation", acc=0.8 - lr)
        filled.runs[name] = str(run.id)
    with hub.start_run("train", epochs=1) as run:
        filled.dataset_id = str(hub.save_dataset([np.arange(4.0)], "mnist"))
        filled.model_id = str(hub.save_model([np.ones(3)], "mlp", dataset=filled.dataset_id, test_accuracy=0.9))
        run.log(step=0, loss=1.0)
    filled.runs["train"] = str(run.id)
    script = tmp_path_factory.mktemp("scripts") / "retried.py"
    script.write_text(textwrap.dedent(RETRIED_SCRIPT))
    filled.runs["retried"] = str(hub.create_task("retried", script, {"lr": 0.5}, saved_result_keys=["done"],
                                                 retry_on_error=1))
    assert hub.run_task("retried", in_process=True) and hub.run_task("retried", in_process=True)
    assert hub.find_tasks("retried")[0]["attempts"] == 2
    with hub.start_run(XSS, lr=1.0) as run:
        for step in range(3):
            run.log(step=step, **{XSS: float(step)})
    filled.runs[XSS] = str(run.id)
    hub.save_dataset([np.ones(2)], XSS)
    filled.statuses = {name: "finished" for name in filled.runs}
    live = hub.start_run("live", lr=0.3)  # kept running while the module's tests run
    live.log(step=0, loss=2.0)
    filled.runs["live"] = str(live.id)
    filled.statuses["live"] = "running"
    try:
        yield filled
    finally:
        live.end()
        hub.close()


@contextlib.contextmanager
def _served_app(uri: str, token: str | None = None) -> Iterator[str]:
    """The dashboard over its own TensorHub on ``uri`` (as ``tensorhub ui`` opens it, not the writer's
    hub), served by uvicorn on 127.0.0.1; yields its base URL."""
    from tensorhub.ui import create_app

    with TensorHub(uri, project_name=PROJECT) as hub, serve(create_app(hub, token=token)) as url:
        yield url


@pytest.fixture(scope="module")
def ui(store: Store) -> Iterator[str]:
    """The base URL of the dashboard over ``store``, served by uvicorn on 127.0.0.1."""
    with _served_app(store.uri) as url:
        yield url


def _open(driver: Any, url: str) -> None:
    """Load ``url``, check no dialog opened, and mark the page so that a reload can be told apart."""
    driver.get(url)
    assert_no_alert(driver)
    driver.execute_script("window.__tensorhubNoReload = true;")


def _wait_for_charts(driver: Any, expected: dict[tuple[str, str], int], what: str) -> list[dict[str, Any]]:
    """Wait until the page's charts are exactly ``expected`` ((kind, metric) -> traces); return them."""
    seen: list[Any] = []

    def drawn(d: Any) -> bool:
        seen[:] = chart_traces(d)
        return {(c["kind"], c["metric"]): c["traces"] for c in seen} == expected and len(seen) == len(expected)

    try:
        wait_for(driver, drawn, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; charts seen (kind, metric, traces): {seen}, expected {expected}") from None
    return seen


def _status_cell(driver: Any, run_id: str) -> str:
    cells = driver.find_elements("css selector", f'#runs tr[data-run-id="{run_id}"] td.status')
    return cells[0].text.strip() if cells else ""


# ---------------------------------------------------------------------------- the machinery itself
def test_item13_chromium_selenium_and_uvicorn_drive_a_standin_app(driver: Any) -> None:
    """Chromium loads a uvicorn-served page, sees live changes, reports a dialog, and 401s are seen."""
    import httpx

    app = standin_app()
    with serve(app) as url:
        _open(driver, url + "/")
        assert driver.find_element("id", "name").text == XSS
        wait_for(driver, lambda d: d.find_element("id", "status").text == "running", "the status 'running'")
        app.state.standin["status"] = "finished"
        wait_for(driver, lambda d: d.find_element("id", "status").text == "finished", "the status 'finished'")
        assert driver.execute_script("return window.__tensorhubNoReload === true;")
        assert chart_traces(driver) == []
        driver.get(url + "/unsafe")
        with pytest.raises(AssertionError, match="dialog opened"):  # assert_no_alert can fail
            assert_no_alert(driver)
        assert httpx.get(url + "/secret").status_code == 401
        assert httpx.get(url + "/secret", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# ---------------------------------------------------------------------------- the dashboard
def test_item13_projects_page_lists_the_fixture_project(driver: Any, ui: str, store: Store) -> None:
    _open(driver, ui + "/")
    wait_for(driver, lambda d: d.find_elements("css selector", f'#projects tr[data-project="{PROJECT}"]'),
             f"the project {PROJECT!r} in #projects")
    screenshot(driver, f"projects-{store.backend}")


def test_item13_runs_table_shows_the_runs_with_their_statuses(driver: Any, ui: str, store: Store) -> None:
    _open(driver, f"{ui}/runs?project={PROJECT}")
    for name, run_id in store.runs.items():
        wait_for(driver, lambda d: _status_cell(d, run_id) == store.statuses[name],
                 f"run {name!r} ({run_id}) with status {store.statuses[name]!r}")
        cell = driver.find_element("css selector", f'#runs tr[data-run-id="{run_id}"] td.run-name')
        assert cell.text.strip() == name
    screenshot(driver, f"runs-{store.backend}")


def test_item13_run_page_draws_one_chart_per_metric_with_one_series_per_attempt(
        driver: Any, ui: str, store: Store) -> None:
    _open(driver, f"{ui}/runs/{store.runs['retried']}?project={PROJECT}")
    # two attempts logged loss and acc: one chart each, one trace per attempt
    _wait_for_charts(driver, {("training", "loss"): 2, ("training", "acc"): 2}, "the retried task's charts")
    assert driver.find_element("id", "run-status").text.strip() == "finished"
    screenshot(driver, f"run-two-attempts-{store.backend}")
    _open(driver, f"{ui}/runs/{store.runs['mlp-a']}?project={PROJECT}")
    _wait_for_charts(driver, {("training", "loss"): 1, ("training", "acc"): 1, ("validation", "acc"): 1},
                     "mlp-a's charts")
    screenshot(driver, f"run-{store.backend}")


def test_item13_a_running_runs_status_turns_finished_on_screen_without_reload(
        driver: Any, ui: str, store: Store) -> None:
    run = store.hub.start_run("goes-live", lr=0.2)
    run_id = str(run.id)
    try:
        run.log(step=0, loss=1.5)
        _open(driver, f"{ui}/runs/{run_id}?project={PROJECT}")
        wait_for(driver, lambda d: d.find_element("id", "run-status").text.strip() == "running",
                 "the run page's status 'running'")
        run_page = driver.current_window_handle
        driver.switch_to.new_window("tab")
        _open(driver, f"{ui}/runs?project={PROJECT}")
        runs_page = driver.current_window_handle
        wait_for(driver, lambda d: _status_cell(d, run_id) == "running", "the runs table's status 'running'")
        run.end()
        # live: <= 2 s behind; 5 s allows for a loaded machine
        wait_for(driver, lambda d: _status_cell(d, run_id) == "finished", "the runs table's status 'finished'", 5)
        assert driver.execute_script("return window.__tensorhubNoReload === true;"), "the runs page was reloaded"
        driver.switch_to.window(run_page)
        wait_for(driver, lambda d: d.find_element("id", "run-status").text.strip() == "finished",
                 "the run page's status 'finished'", 5)
        assert driver.execute_script("return window.__tensorhubNoReload === true;"), "the run page was reloaded"
    finally:
        if not run.ended:
            run.end()
        for handle in driver.window_handles[1:]:  # back to one tab for the next test
            driver.switch_to.window(handle)
            driver.close()
        driver.switch_to.window(driver.window_handles[0])
    assert runs_page != run_page


def test_item13_compare_view_overlays_two_runs(driver: Any, ui: str, store: Store) -> None:
    first, second = store.runs["mlp-a"], store.runs["mlp-b"]
    _open(driver, f"{ui}/runs?project={PROJECT}")
    for run_id in (first, second):
        box = wait_for(driver, lambda d: d.find_elements("css selector", f'input.select-run[value="{run_id}"]'),
                       f"the checkbox of run {run_id}")[0]
        box.click()
    handles = set(driver.window_handles)
    driver.find_element("id", "compare").click()
    wait_for(driver, lambda d: set(d.window_handles) != handles or "/compare" in d.current_url,
             "the compare view to open")
    opened = set(driver.window_handles) - handles
    if opened:  # the button may open the view in a new tab
        driver.switch_to.window(opened.pop())
    wait_for(driver, lambda d: "/compare" in d.current_url, "the compare view's URL")
    assert first in driver.current_url and second in driver.current_url
    assert_no_alert(driver)
    # every chart overlays the two runs (both logged training loss and acc, and validation acc)
    charts = wait_for(driver, lambda d: (lambda cs: cs if cs and all(c["traces"] == 2 for c in cs) else None)(
        chart_traces(d)), "every compare chart with 2 traces")
    assert {("training", "loss"), ("training", "acc")} <= {(c["kind"], c["metric"]) for c in charts}, charts
    params = wait_for(driver, lambda d: d.execute_script("""
        var div = document.getElementById('params-plot'); if (!div) return null;
        var gd = div.classList.contains('js-plotly-plot') ? div : div.querySelector('.js-plotly-plot');
        return gd && gd.data && gd.data.length ? gd.data.length : null;"""), "the parameters plot")
    assert params >= 1
    screenshot(driver, f"compare-{store.backend}")
    for handle in driver.window_handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(driver.window_handles[0])


def test_item13_xss_names_are_shown_as_text_and_no_dialog_opens(driver: Any, ui: str, store: Store) -> None:
    run_id = store.runs[XSS]
    _open(driver, f"{ui}/runs?project={PROJECT}")
    name = wait_for(driver, lambda d: d.find_elements("css selector", f'#runs tr[data-run-id="{run_id}"] td.run-name'),
                    "the XSS run's row")[0]
    assert name.text.strip() == XSS and name.is_displayed()
    assert_no_alert(driver)
    _open(driver, f"{ui}/runs/{run_id}?project={PROJECT}")
    (chart,) = _wait_for_charts(driver, {("training", XSS): 1}, "the XSS metric's chart")
    assert XSS in driver.find_element("tag name", "body").text  # the run's name, as text
    assert_no_alert(driver)
    screenshot(driver, f"xss-run-{store.backend}")
    _open(driver, f"{ui}/datasets?project={PROJECT}")
    wait_for(driver, lambda d: XSS in d.find_element("id", "datasets").text, "the XSS dataset's name as text")
    assert_no_alert(driver)


def test_item13_datasets_models_and_queue_pages_show_the_records(driver: Any, ui: str, store: Store) -> None:
    _open(driver, f"{ui}/datasets?project={PROJECT}")
    wait_for(driver, lambda d: "mnist" in d.find_element("id", "datasets").text, "the dataset 'mnist'")
    screenshot(driver, f"datasets-{store.backend}")
    _open(driver, f"{ui}/models?project={PROJECT}")
    models = wait_for(driver, lambda d: d.find_elements("id", "models"), "#models")[0]
    assert "mlp" in models.text
    # lineage: the model's row names or links the dataset it was trained on
    links = [a.get_attribute("href") or "" for a in models.find_elements("tag name", "a")]
    assert "mnist" in models.text or any(store.dataset_id in href for href in links), models.text
    screenshot(driver, f"models-{store.backend}")
    _open(driver, f"{ui}/queue?project={PROJECT}")
    wait_for(driver, lambda d: d.find_elements("id", "queue"), "#queue")
    screenshot(driver, f"queue-{store.backend}")


def test_item13_an_app_with_a_token_refuses_requests_without_it(driver: Any, store: Store) -> None:
    import httpx

    with _served_app(store.uri, token=TOKEN) as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        for path in ("/", f"/runs?project={PROJECT}", "/api/projects", f"/api/runs?project={PROJECT}"):
            assert client.get(path).status_code == 401, f"{path} without the token"
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            ok = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200, (path, ok.text[:200])
        # in the browser: ?token= once, then the page's cookie carries it
        _open(driver, f"{url}/?token={TOKEN}")
        wait_for(driver, lambda d: d.find_elements("css selector", f'#projects tr[data-project="{PROJECT}"]'),
                 "the projects page opened with ?token=")
        _open(driver, f"{url}/runs?project={PROJECT}")
        wait_for(driver, lambda d: _status_cell(d, store.runs["mlp-a"]) == "finished",
                 "the runs page opened with the token's cookie")
