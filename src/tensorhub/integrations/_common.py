"""What every trainer integration shares: the run it logs to, metric names to log kinds, plain values."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from tensorhub import run_log as _run_log
from tensorhub.errors import TensorHubError
from tensorhub.hub import TensorHub, _records_of
from tensorhub.runs import Run, plain_params

log = logging.getLogger(__name__)

#: metric name prefixes that make a row a validation or testing row (the prefix is dropped)
KIND_PREFIXES = (("validation", ("val_", "val/", "valid_", "valid/", "validation_", "validation/", "eval_",
                                 "eval/")),
                 ("testing", ("test_", "test/")))


def split_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``metrics`` as rows per log kind: ``{"training": {...}, "validation": {...}, "testing": {...}}``
    (kinds without a metric left out). Names with a validation/testing prefix
    (:data:`KIND_PREFIXES`) lose it; values that are not plain scalars are dropped with a debug line."""
    rows: dict[str, dict[str, Any]] = {}
    for name, value in metrics.items():
        kind, key = "training", str(name)
        for candidate, prefixes in KIND_PREFIXES:
            prefix = next((p for p in prefixes if key.startswith(p) and len(key) > len(p)), None)
            if prefix is not None:
                kind, key = candidate, key[len(prefix):]
                break
        number = plain_number(value)
        if number is None:
            log.debug("metric %r is not a scalar (%s): not logged", name, type(value).__name__)
            continue
        rows.setdefault(kind, {})[field_name(key)] = number
    return rows


def field_name(name: str) -> str:
    """A metric name as a record field: dots (MongoDB paths) and a leading ``$`` become ``_``."""
    name = name.replace(".", "_")
    return "_" + name[1:] if name.startswith("$") else name


def plain_number(value: Any) -> float | int | None:
    """A Python number from a scalar (Python, numpy, a one-element torch tensor), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    try:
        found = _run_log.scalar("metric", value)
    except TensorHubError:
        return None
    return found if isinstance(found, (int, float)) and not isinstance(found, bool) else None


def plain_value(value: Any) -> Any:
    """A hyper-parameter as a storable value: scalars as they are, lists/dicts recursively, anything else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    number = plain_number(value)
    if number is not None:
        return number
    if isinstance(value, Mapping):
        return {field_name(str(k)): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)


class RunBinding:
    """The run an integration logs to: the current run when it first needs one, else one it starts
    (named ``run_name``, with the parameters given so far) and ends when training ends."""

    def __init__(self, hub: TensorHub | None = None, run_name: str | None = None) -> None:
        self._hub = hub
        self.run_name = run_name
        self.run: _run_log.RunLogger | None = None
        self.owned = False  # whether this binding started the run (and so ends it)
        self._params: dict[str, Any] = {}

    @property
    def hub(self) -> TensorHub:
        """The hub given, else ``TensorHub()`` (in a task's script: the task's store and project)."""
        if self._hub is None:
            self._hub = TensorHub()
        return self._hub

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyper-parameters: those of a run this binding starts (it starts now, so its record has them
        from the start), or added to the current interactive run's (written when it ends). A task's
        parameters are its own (``hyper_parameters``): these are not added to them."""
        plain = {field_name(str(k)): plain_value(v) for k, v in params.items()}
        if self.run is None:
            self._params.update(plain)
            self.current()
        elif isinstance(self.run, Run) and not self.run.ended:
            self.run.log_params(plain)

    def current(self) -> _run_log.RunLogger:
        """The run to log to (found or started on the first call)."""
        if self.run is None or self.run.ended:
            found = _run_log.run_or_none(_records_of(self.hub))
            if found is None:
                self.run = self.hub.start_run(self.run_name, **plain_params(self._params))
                self.owned = True
                self._params = {}
            else:
                self.run, self.owned = found, False
                if self._params and isinstance(found, Run):
                    found.log_params(self._params)
                elif self._params:
                    log.debug("run %s is a task: its parameters are the task's; not adding %s", found.id,
                              sorted(self._params))
                self._params = {}
        return self.run

    @property
    def run_id(self) -> Any:
        """The id of the run (the last one, once ended: a new one starts only when something is logged)."""
        return self.run.id if self.run is not None else self.current().id

    def log(self, metrics: Mapping[str, Any], step: int | None, context: tuple[str, ...] = ()) -> None:
        """Log ``metrics`` (split into training/validation/testing rows by name) at ``step``; the names in
        ``context`` (e.g. ``epoch``) are no rows of their own but go on every row."""
        extra = {field_name(k): n for k, n in ((k, plain_number(metrics[k])) for k in context if k in metrics)
                 if n is not None}
        run = self.current()
        for kind, row in split_metrics({k: v for k, v in metrics.items() if k not in context}).items():
            run.log(step=step, kind=kind, **{**extra, **row})

    def log_kind(self, kind: str, metrics: Mapping[str, Any], step: int | None) -> None:
        """Log ``metrics`` as one ``kind`` row (names kept, non-scalars dropped)."""
        row = {field_name(str(k)): n for k, n in ((k, plain_number(v)) for k, v in metrics.items()) if n is not None}
        if row:
            self.current().log(step=step, kind=kind, **row)

    def checkpoint(self, model: Any, step: int, **fields: Any) -> Any:
        """Save ``model`` as a checkpoint of the run at ``step`` (``run.checkpoint``)."""
        return self.current().checkpoint(model, step, **fields)

    def end(self, failed: BaseException | None = None) -> None:
        """Training ended: end the run if this binding started it, else write what waits."""
        run = self.run  # kept (ended) so its id stays known; the next log starts or finds another
        if run is None or run.ended:
            return
        if self.owned and isinstance(run, Run):
            if failed is not None:
                run.fail(failed)
            else:
                run.end()
        else:
            run.flush(quiet=True)
        self.owned = False
