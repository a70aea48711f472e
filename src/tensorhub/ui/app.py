"""The dashboard's Starlette app: pages (Jinja2, autoescaped) and a JSON API, read through the
public :class:`~tensorhub.hub.TensorHub` API only (no backend branches).

Why Starlette (not FastAPI): a handful of routes, HTML and JSON; FastAPI's pydantic models and
OpenAPI schema would add dependencies and start-up time for nothing used here.

Stored text reaches the browser only through autoescaped templates, data-attributes and JSON
fetched from ``/api/...`` (no inline script, and a Content-Security-Policy forbids any), so a
dataset or metric named ``<script>`` is shown as text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from bson import ObjectId, json_util
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from tensorhub import plots as _plots
from tensorhub.errors import InvalidArgumentError, NotFoundError, TensorHubError
from tensorhub.hub import TensorHub

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: rows per page of the runs, datasets and models tables
PAGE_SIZE = 50
#: the projects opened besides the app's own hub, at most (least recently used closed first)
MAX_PROJECT_HUBS = 16
#: the cookie that keeps a token given as ``?token=`` for the page's own requests
TOKEN_COOKIE = "tensorhub_ui_token"
#: the header a POST action must carry: a cross-site form cannot set it (so it cannot delete tasks)
ACTION_HEADER = "x-tensorhub-action"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: columns of the runs table that sort in the store, and the task field each sorts by
SORT_FIELDS = {"run_name": "task_name", "status": "status", "attempt": "attempts", "host": "owner.host",
               "started_at": "started_at", "finished_at": "finished_at", "time": "time"}
_FIELD = re.compile(r"^(params|result)\.[A-Za-z0-9_\-]{1,100}$")
ACTIONS = ("cancel", "requeue", "delete")
KINDS = ("training", "validation", "testing")
X_AXES = ("step", "epoch", "time")
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


# ---------------------------------------------------------------------------- values for JSON
def plain(value: Any) -> Any:
    """``value`` with ids and times as strings, NaN/inf as None (JSON that browsers parse)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def _json(value: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(plain(value), status_code=status_code)


# ---------------------------------------------------------------------------- hubs per project
class ProjectHubs:
    """The app's hub, and hubs of the same store for other projects, opened on first use.

    At most :data:`MAX_PROJECT_HUBS` extra ones stay open; all are closed by :meth:`close`
    (the app's shutdown), except the app's own hub, which its caller owns.
    """

    def __init__(self, hub: TensorHub) -> None:
        self.hub = hub
        self._open: OrderedDict[str, TensorHub] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, project: str | None) -> TensorHub:
        """The hub of ``project`` (default: the app's own)."""
        if not project or project == self.hub.project_name:
            return self.hub
        with self._lock:
            found = self._open.pop(project, None)
            if found is None:
                found = TensorHub(self.hub.uri, project_name=project, blobs=self.hub.blobs_uri, create=False)
            self._open[project] = found
            while len(self._open) > MAX_PROJECT_HUBS:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
            return found

    def close(self) -> None:
        """Close the hubs this object opened."""
        with self._lock:
            while self._open:
                self._open.popitem()[1].close()


# ---------------------------------------------------------------------------- requests
def _oid(text: str) -> ObjectId:
    if not ObjectId.is_valid(text):
        raise HTTPException(404, f"not a record id: {text!r}")
    return ObjectId(text)


def _int(request: Request, name: str, default: int, least: int = 0) -> int:
    try:
        return max(least, int(request.query_params.get(name, default)))
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer") from None


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str:
    value = request.query_params.get(name) or choices[0]
    if value not in choices:
        raise HTTPException(400, f"{name} must be one of {', '.join(choices)}")
    return value


def parse_q(text: str | None) -> dict[str, Any]:
    """The runs query box: a JSON MongoDB filter (Extended JSON); empty means every run.

    Raises:
        InvalidArgumentError: Not JSON, or not an object.
    """
    if not text or not text.strip():
        return {}
    try:
        parsed = json_util.loads(text)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"the query is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgumentError('a query is a JSON object, e.g. {"status": "failed"}')
    if any(k in ("sort", "limit", "as_frame", "metrics") for k in parsed):  # fields, not find_runs' options
        parsed = {"$and": [parsed]}
    return parsed


def _sort(request: Request) -> tuple[str, int, list[tuple[str, int]] | None]:
    column = request.query_params.get("sort") or ""
    direction = -1 if request.query_params.get("dir", "-1") != "1" else 1
    if not column:
        return "", direction, None
    if column in SORT_FIELDS:
        return column, direction, [(SORT_FIELDS[column], direction)]
    if _FIELD.match(column):
        head, _, rest = column.partition(".")
        return column, direction, [(("hyper_parameters" if head == "params" else "result") + "." + rest, direction)]
    raise HTTPException(400, f"cannot sort by {column!r}")


def run_rows(hub: TensorHub, request: Request) -> dict[str, Any]:
    """One page of runs for the runs table and ``/api/runs``: sort and limit go to the store."""
    query = parse_q(request.query_params.get("q"))
    column, direction, sort = _sort(request)
    page = _int(request, "page", 0)
    size = _int(request, "size", PAGE_SIZE, least=1)
    size = min(size, 500)
    # no log row is read: the table shows params and results, and is refreshed every second
    rows = hub.find_runs(sort=sort, limit=(page + 1) * size + 1, metrics=False, **query)
    more = len(rows) > (page + 1) * size
    rows = rows[page * size:(page + 1) * size]
    params = list(dict.fromkeys(p for r in rows for p in r["params"]))
    results = list(dict.fromkeys(k for r in rows for k in (r["result"] or {}) if isinstance(r["result"], dict)))
    return {"runs": rows, "params": params, "results": results, "page": page, "size": size, "more": more,
            "sort": column, "dir": direction}


# ---------------------------------------------------------------------------- security
class Guard(BaseHTTPMiddleware):
    """Token check (every request, when a token is set), Host check (loopback mode: no DNS
    rebinding), and security headers on every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    def _authorized(self, request: Request) -> tuple[bool, bool]:
        """(authorized, came as ``?token=``)."""
        assert self.token is not None
        header = request.headers.get("authorization", "")
        given = [header[7:] if header.lower().startswith("bearer ") else None,
                 request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)]
        for i, value in enumerate(given):
            if value and hmac.compare_digest(value.encode(), self.token.encode()):
                return True, i == 1
        return False, False

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        from_query = False
        if self.token is None:
            host = request.url.hostname or ""
            if host.strip("[]") not in LOOPBACK_HOSTS:
                return PlainTextResponse("this dashboard answers on 127.0.0.1/localhost only", status_code=400)
        else:
            ok, from_query = self._authorized(request)
            if not ok:
                return PlainTextResponse("401: a token is needed (Authorization: Bearer TOKEN, or ?token=TOKEN)",
                                         status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if from_query:  # the page's own fetches then carry it without the token in their URLs
            response.set_cookie(TOKEN_COOKIE, self.token or "", httponly=True, samesite="strict")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


# ---------------------------------------------------------------------------- the app
def create_app(hub: TensorHub, token: str | None = None, allow_actions: bool = False) -> Starlette:
    """The dashboard as an ASGI app over ``hub``'s store (its project is the default one).

    Args:
        hub: The hub to read; other projects of its store are opened on demand (``?project=``)
            and closed when the app shuts down. The caller closes ``hub`` itself.
        token: When set, every request (pages, API, static files) needs it as ``Authorization:
            Bearer TOKEN``, ``?token=TOKEN`` (then kept in a cookie) or that cookie; else 401.
            Default ``None``: no token, and only requests addressed to a loopback host are served.
        allow_actions: Enable ``POST /api/tasks/{id}/cancel|requeue|delete`` and their buttons.
            Default ``False``: read-only (those POSTs answer 403).

    Returns:
        A :class:`starlette.applications.Starlette` app (serve it with :func:`tensorhub.ui.serve`
        or any ASGI server).
    """
    hubs = ProjectHubs(hub)
    # autoescape on every template, whatever its file name: every stored string is shown as text
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
    templates = Jinja2Templates(env=env)
    templates.env.filters["tojson_text"] = as_text  # plain text, escaped by autoescape like any other
    templates.env.filters["user_fields"] = user_fields
    templates.env.filters["when"] = when

    def project_of(request: Request) -> str:
        return request.query_params.get("project") or hub.project_name

    def hub_of(request: Request) -> TensorHub:
        return hubs.get(project_of(request))

    def url_for_page(request: Request) -> Callable[..., str]:
        project = project_of(request)

        def url(path: str, **params: Any) -> str:
            items = {"project": project, **{k: v for k, v in params.items() if v is not None and v != ""}}
            return f"{path}?{urlencode(items)}"
        return url

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(project=project_of(request), url=url_for_page(request), allow_actions=allow_actions,
                       page_name=name.removesuffix(".html"))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # ---- pages
    def projects_page(request: Request) -> Response:
        return render(request, "projects.html", projects=hub.list_projects())

    def runs_page(request: Request) -> Response:
        try:
            table = run_rows(hub_of(request), request)
            error = None
        except TensorHubError as exc:
            table = {"runs": [], "params": [], "results": [], "page": 0, "size": PAGE_SIZE, "more": False,
                     "sort": "", "dir": -1}
            error = str(exc)
        return render(request, "runs.html", status_code=400 if error else 200, error=error,
                      q=request.query_params.get("q", ""), **table)

    def _task(h: TensorHub, run_id: str) -> dict[str, Any]:
        found = h.find_tasks(_id=_oid(run_id), limit=1)
        if not found:
            raise HTTPException(404, f"no run {run_id} in project {h.project_name!r}")
        return found[0]

    def run_page(request: Request) -> Response:
        h = hub_of(request)
        task = _task(h, request.path_params["run_id"])
        saved = h.find_run_records(task["_id"])
        models = h.find_records("models", _id={"$in": saved["models"]}) if saved["models"] else []
        datasets = h.find_records("datasets", _id={"$in": saved["datasets"]}) if saved["datasets"] else []
        metrics = _plots.run_metrics(h, task["_id"])
        return render(request, "run.html", task=task, saved=saved, models=models, datasets=datasets,
                      metrics=metrics, attempts=_attempts(task), x_axes=X_AXES)

    def compare_page(request: Request) -> Response:
        h = hub_of(request)
        ids = [_oid(i) for i in (request.query_params.get("ids") or "").split(",") if i.strip()]
        runs = h.find_runs(_id={"$in": ids}, metrics=False) if ids else []
        metrics: dict[str, dict[str, None]] = {}
        for run in runs:
            for kind, names in _plots.run_metrics(h, run["id"]).items():
                metrics.setdefault(kind, {}).update(dict.fromkeys(names))
        return render(request, "compare.html", runs=runs, ids=",".join(str(i) for i in ids),
                      metrics={k: list(v) for k, v in metrics.items()}, x_axes=X_AXES)

    def records_page(kind: str) -> Callable[[Request], Response]:
        def page(request: Request) -> Response:
            h = hub_of(request)
            number = _int(request, "page", 0)
            record_id = request.query_params.get("id")  # a lineage link: that record only
            query = {"_id": _oid(record_id)} if record_id else {}
            rows = h.find_records(kind, None, (number + 1) * PAGE_SIZE + 1, **query)
            more = len(rows) > (number + 1) * PAGE_SIZE
            return render(request, f"{kind}.html", records=rows[number * PAGE_SIZE:(number + 1) * PAGE_SIZE],
                          page=number, more=more)
        return page

    def queue_page(request: Request) -> Response:
        return render(request, "queue.html", **queue_summary(hub_of(request)))

    # ---- API
    def api_projects(request: Request) -> Response:
        return _json(hub.list_projects())

    def api_runs(request: Request) -> Response:
        return _json(run_rows(hub_of(request), request))

    def api_run(request: Request) -> Response:
        h = hub_of(request)
        run_id = _oid(request.path_params["run_id"])
        rows = h.find_runs(_id=run_id, limit=1, metrics=False)  # polled every second by the run page
        if not rows:
            raise HTTPException(404, f"no run {run_id} in project {h.project_name!r}")
        return _json(rows[0])

    def api_series(request: Request) -> Response:
        h = hub_of(request)
        metric = request.query_params.get("metric") or ""
        if not metric:
            raise HTTPException(400, "metric= is needed")
        series = _plots.log_series(h, metric, runs=[_oid(request.path_params["run_id"])],
                                   x=_choice(request, "x", X_AXES), kind=_choice(request, "kind", KINDS))
        return _json({"metric": metric, "series": series})

    def api_compare(request: Request) -> Response:
        h = hub_of(request)
        ids = [_oid(i) for i in (request.query_params.get("ids") or "").split(",") if i.strip()]
        metric = request.query_params.get("metric")
        if metric:
            series = _plots.log_series(h, metric, runs=ids, x=_choice(request, "x", X_AXES),
                                       kind=_choice(request, "kind", KINDS)) if ids else []
            return _json({"metric": metric, "series": series})
        rows = h.compare_runs(_id={"$in": ids}) if ids else []
        params = list(dict.fromkeys(k for r in rows for k in r if k.startswith("params.")))
        keys = list(dict.fromkeys(k for r in rows for k in r if k not in params and not k.startswith("best_")
                                  and k not in ("run_name", "id", "status", "attempt", "duration_s")))
        return _json({"rows": rows, "params": params, "keys": keys})

    def api_action(request: Request) -> Response:
        if not allow_actions:
            return _json({"error": "actions are disabled: start the dashboard with --allow-actions"}, 403)
        if request.headers.get(ACTION_HEADER) != "1":
            return _json({"error": f"an action needs the {ACTION_HEADER}: 1 header"}, 403)
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}")
        h = hub_of(request)
        task_id = _oid(request.path_params["task_id"])
        method = {"cancel": h.cancel_tasks, "requeue": h.requeue_tasks, "delete": h.delete_tasks}[action]
        count = method(_id=task_id)
        log.info("ui: %s task %s of project %r: %d changed", action, task_id, h.project_name, count)
        return _json({"action": action, "id": task_id, "count": count})

    def plotly_js(request: Request) -> Response:
        return FileResponse(_plotly_path(), media_type="application/javascript")

    async def error_page(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        if isinstance(exc, NotFoundError):
            status = 404
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if request.url.path.startswith("/api/"):
            return _json({"error": detail}, status)
        return render(request, "error.html", status_code=status, message=detail)

    routes = [
        Route("/", projects_page),
        Route("/runs", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/compare", compare_page),
        Route("/datasets", records_page("datasets")),
        Route("/models", records_page("models")),
        Route("/queue", queue_page),
        Route("/api/projects", api_projects),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/series", api_series),
        Route("/api/compare", api_compare),
        Route("/api/tasks/{task_id}/{action}", api_action, methods=["POST"]),
        Route("/static/plotly.min.js", plotly_js),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # no icon; no 404 in the console
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=token)],
                    exception_handlers={HTTPException: error_page, TensorHubError: error_page},
                    lifespan=_closing(hubs))
    app.state.hubs = hubs
    return app


def _closing(hubs: ProjectHubs) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the hubs opened for other projects are closed at shutdown."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            hubs.close()
    return lifespan


def _plotly_path() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def _attempts(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every attempt of a task, oldest first: its number and, for failed ones, the error (from
    ``errors``); the last one carries the task's current outcome."""
    count = task.get("attempts") or 0
    errors = {e.get("attempt"): e for e in task.get("errors") or [] if isinstance(e, Mapping)}
    rows = []
    for number in range(1, max(count, max((k for k in errors if isinstance(k, int)), default=0)) + 1):
        entry = errors.get(number) or {}
        last = number == count
        rows.append({"attempt": number,
                     "status": task.get("status") if last else ("failed" if entry else "ended"),
                     "error": entry.get("error") or (task.get("error") if last else None),
                     "host": ((entry.get("owner") or {}).get("host") if entry else None)
                     or ((task.get("owner") or {}).get("host") if last else None)})
    return rows


def queue_summary(hub: TensorHub) -> dict[str, Any]:
    """The queue page: counts per task name and status (pending/running/failed/...), the workers seen
    in the leases of running tasks, and the newest failed tasks with their errors."""
    unfinished = hub.find_records("tasks", status={"$in": ["pending", "running"]}, limit=20000)
    failed = hub.find_records("tasks", status="failed", limit=50)
    counts: dict[str, dict[str, int]] = {}
    for project in hub.list_projects():
        if project["project_name"] == hub.project_name:
            totals = project["tasks_by_status"]
            break
    else:
        totals = {}
    for task in unfinished + failed:
        per = counts.setdefault(str(task.get("task_name")), {})
        per[str(task.get("status"))] = per.get(str(task.get("status")), 0) + 1
    workers: dict[tuple, dict[str, Any]] = {}
    for task in unfinished:
        owner = task.get("owner") or {}
        if task.get("status") != "running" or not owner:
            continue
        key = (owner.get("host"), owner.get("pid"), owner.get("worker_id"))
        seen = workers.setdefault(key, {"host": owner.get("host"), "pid": owner.get("pid"),
                                        "worker_id": owner.get("worker_id"), "tasks": [], "lease_expires_at": None})
        seen["tasks"].append(task)
        expires = task.get("lease_expires_at")
        if expires is not None and (seen["lease_expires_at"] is None or expires > seen["lease_expires_at"]):
            seen["lease_expires_at"] = expires
    return {"counts": counts, "totals": totals, "workers": list(workers.values()), "failed": failed}


#: fields shown in their own columns, or internal, left out of a record's "tags" cell
_SHOWN = frozenset({"_id", "project_name", "time", "blob_prefix", "blob_refs", "spec", "schema", "pickled",
                    "revision", "dataset_name", "model_name", "nbytes", "rows", "task_id", "attempt", "dataset_id",
                    "format", "adapter", "manifest", "arrays", "blob_sha256"})


def when(value: Any) -> str:
    """A stored time as ``2026-01-02 03:04:05`` (UTC), empty for None."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def as_text(value: Any, limit: int = 2000) -> str:
    """``value`` as one line of JSON text (cut at ``limit`` characters), for a table cell."""
    text = json.dumps(plain(value), sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"


def user_fields(record: Mapping[str, Any], kind: str = "") -> dict[str, Any]:
    """A record's other fields (tags, metrics, description), without those shown elsewhere.

    Args:
        record: A dataset or model record.
        kind: Its kind (unused for now: both kinds share the list).
    """
    return {k: v for k, v in record.items() if k not in _SHOWN}


def dumps_for_html(value: Any) -> str:
    """JSON safe inside an HTML page (``<``, ``>``, ``&`` escaped as ``\\u00XX``), for any caller
    that must embed data; the app itself passes data through data-attributes and the API."""
    text = json.dumps(plain(value))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
