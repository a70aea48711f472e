// tensorhub dashboard: charts (plotly.js, served locally) and live updates by polling the JSON API.
// Stored text is put into the page with textContent only, never as HTML.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var body = document.body;

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r.json();
    });
  }

  function withParam(url, name, value) {
    var u = new URL(url, window.location.origin);
    u.searchParams.set(name, value);
    return u.pathname + u.search;
  }

  function xAxis() {
    var select = document.getElementById("x-axis");
    return select ? select.value : "step";
  }

  // ---- charts: one per .chart div, one trace per series (a run's attempt)
  function drawChart(div) {
    var url = withParam(div.getAttribute("data-series-url"), "x", xAxis());
    return getJSON(url).then(function (data) {
      var traces = data.series.map(function (s) {
        return {x: s.x, y: s.y, name: s.name, type: "scatter", mode: s.x.length > 1 ? "lines" : "markers"};
      });
      var layout = {title: {text: div.getAttribute("data-kind") + ": " + div.getAttribute("data-metric")},
                    xaxis: {title: {text: xAxis()}}, margin: {t: 40, r: 20}, height: 320, showlegend: true};
      if (!window.Plotly) { return; }
      return window.Plotly.react(div, traces, layout, {displaylogo: false, responsive: true});
    }).catch(function (err) { console.error(err); });
  }

  function drawCharts() {
    return Promise.all(Array.prototype.map.call(document.querySelectorAll(".chart"), drawChart));
  }

  // ---- params plot (compare page): parallel coordinates of params and the chosen result
  function drawParams() {
    var div = document.getElementById("params-plot");
    if (!div) { return; }
    var select = document.getElementById("objective");
    getJSON(div.getAttribute("data-url")).then(function (data) {
      if (select.options.length === 0) {
        data.keys.forEach(function (k) {
          var o = document.createElement("option"); o.value = k; o.textContent = k; select.appendChild(o);
        });
        select.addEventListener("change", drawParams);
      }
      var objective = select.value;
      var columns = data.params.concat(objective ? [objective] : []);
      var dims = columns.map(function (col) {
        var values = data.rows.map(function (r) { return r[col]; });
        var numeric = values.every(function (v) { return typeof v === "number"; });
        if (numeric) { return {label: col, values: values}; }
        var labels = Array.from(new Set(values.map(String)));
        return {label: col, values: values.map(function (v) { return labels.indexOf(String(v)); }),
                tickvals: labels.map(function (_, i) { return i; }), ticktext: labels};
      });
      var trace = {type: "parcoords", dimensions: dims};
      if (objective) {
        var ys = data.rows.map(function (r) { return r[objective]; });
        if (ys.every(function (v) { return typeof v === "number"; })) { trace.line = {color: ys, showscale: true}; }
      }
      if (window.Plotly) { window.Plotly.react(div, [trace], {height: 360, margin: {t: 50}}, {displaylogo: false}); }
    }).catch(function (err) { console.error(err); });
  }

  // ---- runs table: live status, new rows; compare button; column filter
  function setText(cell, text) { if (cell && cell.textContent !== text) { cell.textContent = text; } }

  function fmt(v) {
    if (v === null || v === undefined) { return ""; }
    if (typeof v === "number") { return String(Number(v.toPrecision(6))); }
    if (typeof v === "object") { return JSON.stringify(v); }
    return String(v);
  }

  // a time as the server renders it: "2026-01-02 03:04:05"
  function when(text) { return text ? String(text).replace("T", " ").slice(0, 19) : ""; }

  function newRow(table, run) {
    var params = (table.getAttribute("data-params") || "").split(",").filter(Boolean);
    var results = (table.getAttribute("data-results") || "").split(",").filter(Boolean);
    var tr = document.createElement("tr");
    tr.setAttribute("data-run-id", run.id);
    function td(cls, text) { var c = document.createElement("td"); if (cls) { c.className = cls; } c.textContent = text; tr.appendChild(c); return c; }
    var first = td("", "");
    var box = document.createElement("input");
    box.type = "checkbox"; box.className = "select-run"; box.value = run.id; first.appendChild(box);
    var name = td("run-name", "");
    var link = document.createElement("a");
    link.href = "/runs/" + encodeURIComponent(run.id) + "?project=" + encodeURIComponent(body.getAttribute("data-project"));
    link.textContent = run.run_name; name.appendChild(link);
    td("status", run.status); td("attempt", fmt(run.attempt)); td("host", run.host || "");
    td("started-at", when(run.started_at)); td("finished-at", when(run.finished_at)); td("duration", fmt(run.duration_s));
    params.forEach(function (p) { td("param", fmt(run.params[p])); });
    results.forEach(function (r) { td("result", fmt(run.result && run.result[r])); });
    td("error", (run.error || "").slice(0, 200));
    return tr;
  }

  function pollRuns(table) {
    var url = "/api/runs" + window.location.search;
    getJSON(url).then(function (data) {
      var tbody = table.tBodies[0];
      var canAdd = Number(table.getAttribute("data-page")) === 0 && !table.getAttribute("data-sort");
      var added = [];
      data.runs.forEach(function (run) {
        var tr = tbody.querySelector('tr[data-run-id="' + CSS.escape(run.id) + '"]');
        if (!tr) {
          if (canAdd) { added.push(newRow(table, run)); }
          return;
        }
        setText(tr.querySelector(".status"), run.status);
        setText(tr.querySelector(".attempt"), fmt(run.attempt));
        setText(tr.querySelector(".host"), run.host || "");
        setText(tr.querySelector(".finished-at"), when(run.finished_at));
        setText(tr.querySelector(".duration"), fmt(run.duration_s));
        setText(tr.querySelector(".error"), (run.error || "").slice(0, 200));
      });
      added.reverse().forEach(function (tr) { tbody.insertBefore(tr, tbody.firstChild); });
    }).catch(function (err) { console.error(err); }).then(function () {
      setTimeout(function () { pollRuns(table); }, POLL_MS);
    });
  }

  function setupRuns() {
    var table = document.getElementById("runs");
    if (!table) { return; }
    document.getElementById("compare").addEventListener("click", function () {
      var ids = Array.prototype.map.call(document.querySelectorAll(".select-run:checked"), function (b) { return b.value; });
      if (ids.length === 0) { window.alert("select runs to compare first"); return; }
      window.location.href = "/compare?project=" + encodeURIComponent(body.getAttribute("data-project")) +
        "&ids=" + encodeURIComponent(ids.join(","));
    });
    var filter = document.getElementById("column-filter");
    filter.addEventListener("input", function () {
      var needle = filter.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
        tr.style.display = !needle || tr.textContent.toLowerCase().indexOf(needle) >= 0 ? "" : "none";
      });
    });
    pollRuns(table);
  }

  // ---- one run: live status; curves redrawn while it runs
  function setupRun() {
    var status = document.getElementById("run-status");
    if (!status) { return; }
    var runId = status.getAttribute("data-run-id");
    var url = "/api/runs/" + encodeURIComponent(runId) + "?project=" + encodeURIComponent(body.getAttribute("data-project"));
    var ticks = 0;
    function poll() {
      getJSON(url).then(function (run) {
        var was = status.textContent;
        setText(status, run.status);
        setText(document.getElementById("run-attempts"), fmt(run.attempt));
        ticks += 1;
        if (run.status === "running" && ticks % 2 === 0) { return drawCharts(); }
        if (was !== run.status) { return drawCharts(); }
      }).catch(function (err) { console.error(err); }).then(function () { setTimeout(poll, POLL_MS); });
    }
    setTimeout(poll, POLL_MS);
  }

  // ---- actions (only rendered with --allow-actions)
  function setupActions() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("button.action");
      if (!button) { return; }
      var action = button.getAttribute("data-action");
      var id = button.getAttribute("data-task-id");
      if (!window.confirm(action + " task " + id + "?")) { return; }
      fetch("/api/tasks/" + encodeURIComponent(id) + "/" + encodeURIComponent(action) + "?project=" +
            encodeURIComponent(body.getAttribute("data-project")),
            {method: "POST", credentials: "same-origin", headers: {"X-Tensorhub-Action": "1"}})
        .then(function (r) { return r.json(); })
        .then(function (data) { window.alert(data.error || (action + ": " + data.count + " task(s)")); window.location.reload(); });
    });
  }

  function start() {
    var select = document.getElementById("x-axis");
    if (select) { select.addEventListener("change", drawCharts); }
    drawCharts();
    drawParams();
    setupRuns();
    setupRun();
    setupActions();
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
