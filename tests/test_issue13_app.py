"""Issue 13: the dashboard app (``tensorhub.ui``) through Starlette's TestClient: its pages and JSON
API over a store filled here, on every backend, user text escaped, the token and host guard, actions
only with ``allow_actions``, paging/sort/query pushed to the store, per-project hubs closed at
shutdown, a uvicorn server started in a thread on a free port, and the ``tensorhub ui`` command.
The browser-driven tests are tests/test_issue13_browser.py.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2; the client works with either
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import httpx

from tensorhub import TensorHub
from tensorhub.cli import main as cli_main
from tensorhub.errors import ConfigurationError
from tensorhub.ui import check_host, create_app, start_server

from conftest import write_script

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
BASE = "http://127.0.0.1"


def _fill(hub: TensorHub) -> dict[str, Any]:
    """Two finished runs (one named XSS, with a metric named XSS), a pending task, a dataset named XSS."""
    with hub.start_run(XSS, lr=0.1) as first:
        for step in range(5):
            first.log(step=step, loss=1.0 / (step + 1), **{XSS: float(step)})
        first.log(kind="validation", step=4, acc=0.9)
        hub.save_dataset([np.arange(4)], XSS, note=XSS)
        hub.save_model([np.ones(3)], "net", tag=XSS)
    with hub.start_run("second", lr=0.01) as second:
        for step in range(3):
            second.log(step=step, loss=2.0 / (step + 1))
    return {"first": str(first.id), "second": str(second.id)}


def _client(hub: TensorHub, **options: Any) -> TestClient:
    return TestClient(create_app(hub, **options), base_url=BASE)


def test_issue13_pages_show_the_store_on_every_backend_and_escape_user_text(hub: TensorHub) -> None:
    ids = _fill(hub)
    with _client(hub) as client:
        pages = {path: client.get(path) for path in (
            "/", "/runs", f"/runs/{ids['first']}", f"/compare?ids={ids['first']},{ids['second']}",
            "/datasets", "/models", "/queue")}
        for path, response in pages.items():
            assert response.status_code == 200, (path, response.text[:500])
            assert XSS not in response.text, f"{path} shows user text as HTML"
        assert '<tr data-project="contract">' in pages["/"].text
        runs = pages["/runs"].text
        assert '<table id="runs"' in runs and '<button type="button" id="compare">' in runs
        for run_id in ids.values():
            assert f'<tr data-run-id="{run_id}">' in runs
            assert f'<input type="checkbox" class="select-run" value="{run_id}">' in runs
        assert runs.count('<td class="status">finished</td>') == 2
        assert ESCAPED in runs
        run_page = pages[f"/runs/{ids['first']}"].text
        charts = re.findall(r'<div class="chart" data-metric="([^"]*)" data-kind="(\w+)"', run_page)
        assert sorted(charts) == sorted([("loss", "training"), (ESCAPED, "training"), ("acc", "validation")])
        assert '<span id="run-status" class="status"' in run_page and ">finished</span>" in run_page
        compare = pages[f"/compare?ids={ids['first']},{ids['second']}"].text
        assert '<div id="params-plot"' in compare and 'data-metric="loss"' in compare
        assert '<table id="datasets">' in pages["/datasets"].text and ESCAPED in pages["/datasets"].text
        assert '<table id="models">' in pages["/models"].text and '<table id="queue">' in pages["/queue"].text
        series = client.get(f"/api/runs/{ids['first']}/series", params={"metric": "loss", "kind": "training"}).json()
        assert [(s["run_id"], s["attempt"], s["y"]) for s in series["series"]] == [
            (ids["first"], 1, [1.0, 0.5, 1 / 3, 0.25, 0.2])]
        compared = client.get("/api/compare", params={"ids": f"{ids['first']},{ids['second']}", "metric": "loss"})
        assert sorted(s["run_id"] for s in compared.json()["series"]) == sorted(ids.values())
        assert client.get("/api/runs").json()["runs"][0]["run_name"] == "second"
        assert [p["project_name"] for p in client.get("/api/projects").json()] == ["contract"]


def test_issue13_run_page_lists_attempts_and_what_the_run_saved_with_links_both_ways(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        from tensorhub import TensorHub
        from tensorhub.context import current_attempt
        hub = TensorHub()
        hub.log(step=0, loss=float(current_attempt()))
        hub.log(step=1, loss=float(current_attempt()) / 2)
        hub.close()
        if current_attempt() == 1:
            raise RuntimeError("first attempt fails <b>on purpose</b>")
    """)
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        task_id = hub.create_task("retrying", script, retry_on_error=1)
        assert hub.run_task("retrying") and hub.run_task("retrying")
        ids = _fill(hub)
        with _client(hub) as client:
            page = client.get(f"/runs/{task_id}").text
            assert page.count('<tr data-attempt="') == 2
            assert "first attempt fails &lt;b&gt;on purpose&lt;/b&gt;" in page
            series = client.get(f"/api/runs/{task_id}/series", params={"metric": "loss"}).json()["series"]
            assert [(s["attempt"], s["y"]) for s in series] == [(1, [1.0, 0.5]), (2, [2.0, 1.0])]
            first = client.get(f"/runs/{ids['first']}").text
            model = hub.find_records("models")[0]
            dataset = hub.find_records("datasets")[0]
            assert f'#model-{model["_id"]}"' in first and f'#dataset-{dataset["_id"]}"' in first
            models = client.get("/models").text
            assert f'href="/runs/{ids["first"]}?project=p"' in models
            assert f'id="model-{model["_id"]}"' in models
            only = client.get("/datasets", params={"id": str(dataset["_id"])}).text
            assert only.count("<tr id=\"dataset-") == 1


def test_issue13_token_is_needed_for_every_request_when_set(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        _fill(hub)
        with _client(hub, token="s3cret") as client:
            for path in ("/", "/runs", "/api/runs", "/static/app.js", "/static/plotly.min.js", "/nowhere"):
                assert client.get(path).status_code == 401, path
                assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            # ?token= once: the page's own requests then carry it in a cookie
            assert client.get("/runs?token=s3cret").status_code == 200
            assert client.get("/api/runs").status_code == 200
        with _client(hub, token="s3cret") as client:  # any Host is served with a token (a non-loopback bind)
            assert client.get("/", headers={"Host": "dashboard.example", "Authorization": "Bearer s3cret"}
                              ).status_code == 200


def test_issue13_without_token_only_loopback_hosts_are_served_and_binding_wider_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        with hub.start_run("exists"):  # the store exists: `tensorhub ui` opens it read-only
            pass
        with _client(hub) as client:
            assert client.get("/").status_code == 200
            assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200
            assert client.get("/", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    check_host("127.0.0.1", None)
    check_host("::1", None)
    with pytest.raises(ConfigurationError, match="token"):
        check_host("0.0.0.0", None)
    seen: list[dict] = []
    monkeypatch.setattr("tensorhub.ui.server.serve", lambda hub, **kw: seen.append(kw))
    monkeypatch.delenv("TENSORHUB_UI_TOKEN", raising=False)
    uri = f"file://{tmp_path}"
    refused = CliRunner().invoke(cli_main, ["ui", "--uri", uri, "-p", "p", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "token" in refused.output and not seen
    monkeypatch.setenv("TENSORHUB_UI_TOKEN", "from-env")
    started = CliRunner().invoke(cli_main, ["ui", "--uri", uri, "-p", "p", "--host", "0.0.0.0", "--allow-actions"])
    assert started.exit_code == 0, started.output
    assert seen == [{"host": "0.0.0.0", "port": 8765, "token": "from-env", "allow_actions": True}]
    missing = CliRunner().invoke(cli_main, ["ui", "--uri", f"file://{tmp_path / 'nothing'}"])
    assert missing.exit_code == 1 and "Error" in missing.output and len(seen) == 1


def test_issue13_actions_are_refused_unless_allowed(tmp_path: Path) -> None:
    script = write_script(tmp_path, "print('hi')\n")
    action = {"X-Tensorhub-Action": "1"}
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        task_id = str(hub.create_task("queued", script))
        with _client(hub) as client:
            for name in ("cancel", "requeue", "delete"):
                assert client.post(f"/api/tasks/{task_id}/{name}", headers=action).status_code == 403
            assert "data-action=" not in client.get("/runs").text
        assert hub.find_tasks()[0]["status"] == "pending"
        with _client(hub, allow_actions=True) as client:
            assert 'data-action="cancel"' in client.get("/runs").text
            # a cross-site form cannot set the header: refused
            assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 403
            assert hub.find_tasks()[0]["status"] == "pending"
            assert client.post(f"/api/tasks/{task_id}/cancel", headers=action).json()["count"] == 1
            assert hub.find_tasks()[0]["status"] == "cancelled"
            assert client.post(f"/api/tasks/{task_id}/requeue", headers=action).json()["count"] == 1
            assert hub.find_tasks()[0]["status"] == "pending"
            assert client.post(f"/api/tasks/{task_id}/delete", headers=action).json()["count"] == 1
            assert hub.find_tasks() == []
            assert client.get(f"/api/tasks/{task_id}/delete").status_code == 405


class _Spy:
    """Records the keyword arguments of each ``find_runs`` call, then calls the real one."""

    def __init__(self, hub: TensorHub) -> None:
        self.calls: list[dict] = []
        self._real = hub.find_runs

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self._real(**kwargs)


def test_issue13_runs_table_pages_sorts_and_queries_in_the_store(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        for lr in (0.3, 0.1, 0.2, 0.4):
            with hub.start_run("r", lr=lr) as run:
                run.log(step=0, loss=lr)
        with hub.start_run("bad", lr=9) as run:
            run.end(result={"score": 1})
        spy = _Spy(hub)
        monkeypatch.setattr(hub, "find_runs", spy)
        with _client(hub) as client:
            page = client.get("/api/runs", params={"q": '{"task_name": "r"}', "sort": "params.lr", "dir": "1",
                                                   "size": "2", "page": "1"}).json()
            assert [r["params"]["lr"] for r in page["runs"]] == [0.3, 0.4] and page["more"] is False
            assert spy.calls[-1] == {"sort": [("hyper_parameters.lr", 1)], "limit": 5, "metrics": False,
                                     "task_name": "r"}
            first = client.get("/api/runs", params={"sort": "params.lr", "size": "2"}).json()
            assert [r["params"]["lr"] for r in first["runs"]] == [9, 0.4] and first["more"] is True
            html = client.get("/runs", params={"q": '{"result.score": 1}'}).text
            assert html.count("<tr data-run-id=") == 1
            bad = client.get("/runs", params={"q": '{"<b>": '})
            assert bad.status_code == 400 and 'id="query-error"' in bad.text and "<b>" not in bad.text
            assert client.get("/api/runs", params={"q": '{"$where": "1"}'}).status_code == 400
            assert client.get("/api/runs", params={"sort": "x); drop"}).status_code == 400
            # a field named like an option of find_runs is a field, not the option
            assert client.get("/api/runs", params={"q": '{"limit": 1}'}).json()["runs"] == []


def test_issue13_runs_listing_and_live_status_read_no_log_rows(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        with hub.start_run("many rows") as run:
            run.log(step=0, loss=1.0)

        def refuse(*args: Any) -> None:
            raise AssertionError("the runs table read log rows")

        monkeypatch.setattr("tensorhub.runs._log_metrics", refuse)
        with _client(hub) as client:
            assert client.get("/api/runs").json()["runs"][0]["metrics"] == {}
            assert client.get(f"/api/runs/{run.id}").json()["status"] == "finished"
            assert client.get("/runs").status_code == 200
        assert hub.find_runs(metrics=False)[0]["metrics"] == {}
        with pytest.raises(AssertionError, match="read log rows"):
            hub.find_runs()


def test_issue13_other_projects_are_opened_per_request_and_closed_at_shutdown(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}"
    with TensorHub(uri, project_name="other") as other:
        with other.start_run("theirs"):
            pass
    with TensorHub(uri, project_name="mine") as hub:
        app = create_app(hub)
        with TestClient(app, base_url=BASE) as client:
            assert "theirs" not in client.get("/runs").text
            assert "theirs" in client.get("/runs", params={"project": "other"}).text
            assert [r["run_name"] for r in client.get("/api/runs?project=other").json()["runs"]] == ["theirs"]
            opened = app.state.hubs._open["other"]
        assert app.state.hubs._open == {}
        with pytest.raises(Exception, match="closed"):
            opened.find_runs()
        assert hub.find_runs() == []  # the app's own hub is its caller's, still open


def test_issue13_server_starts_in_a_thread_on_a_free_port(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        _fill(hub)
        server = start_server(hub, port=0)
        try:
            assert server.port > 0
            response = httpx.get(f"http://127.0.0.1:{server.port}/runs", timeout=10)
            assert response.status_code == 200 and "<table id=\"runs\"" in response.text
            plotly = httpx.get(f"http://127.0.0.1:{server.port}/static/plotly.min.js", timeout=10)
            assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
            basic = httpx.get(f"http://127.0.0.1:{server.port}/static/plotly-basic.min.js", timeout=10)
            assert basic.status_code == 200 and b"plotly.js (basic" in basic.content[:200]
            # the basic bundle is the plotly package's version, so both pages draw the same charts
            version = re.search(rb"v(\d+\.\d+\.\d+)", plotly.content[:200])
            assert version and version.group(1) in basic.content[:200]
            assert "script-src 'self'" in response.headers["content-security-policy"]
        finally:
            server.stop()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=2)


def test_issue13_live_status_comes_from_the_api(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        run = hub.start_run("live")
        with _client(hub) as client:
            assert client.get(f"/api/runs/{run.id}").json()["status"] == "running"
            assert '<td class="status">running</td>' in client.get("/runs").text
            run.log(step=0, loss=1.0)
            run.end()
            assert client.get(f"/api/runs/{run.id}").json()["status"] == "finished"
            assert client.get("/api/runs").json()["runs"][0]["status"] == "finished"
            assert client.get(f"/api/runs/{'0' * 24}").status_code == 404
            assert client.get("/runs/not-an-id").status_code == 404


def test_issue13_queue_page_counts_per_task_name_and_shows_failures(tmp_path: Path) -> None:
    script = write_script(tmp_path, "raise ValueError('broken <i>script</i>')\n")
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.create_task("a", script)
        hub.create_task("a", script)
        hub.create_task("b", script)
        assert hub.run_task("b")
        with _client(hub) as client:
            page = client.get("/queue").text
            row_a = re.search(r'<tr data-task-name="a">.*?</tr>', page, re.S)
            assert row_a and '<td class="pending">2</td>' in row_a.group(0)
            row_b = re.search(r'<tr data-task-name="b">.*?</tr>', page, re.S)
            assert row_b and '<td class="failed">1</td>' in row_b.group(0)
            assert "broken &lt;i&gt;script&lt;/i&gt;" in page and "<i>script" not in page


def test_issue13_json_in_pages_is_safe_for_html() -> None:
    from tensorhub.ui.app import dumps_for_html, plain

    text = dumps_for_html({"name": "</script><script>alert(1)</script>", "x": float("nan")})
    assert "<" not in text and ">" not in text and json.loads(text)["name"].startswith("</script>")
    assert plain({"t": float("inf")}) == {"t": None}


def test_issue13_demo_ends_with_the_ui_command() -> None:
    from tensorhub.demo import ui_command_line

    assert ui_command_line("file://./demo-hub") == "tensorhub ui --uri file://./demo-hub --project demo"
    # a password never lands on a command line that `ps` shows
    assert "hunter2" not in ui_command_line("mongodb://user:hunter2@db:27017/x")

