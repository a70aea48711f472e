"""Whether a document matches a filter: the filter's plan (:mod:`tensorhub.query.parse`), applied.

Inside one evaluation (:func:`tensorhub.query.regex_budget`, which every backend's scan opens) a
filter is parsed once and its plan reused for every document (keyed by the filter object). Outside
one, plans are kept by the filter's ``repr`` (which tells ``1``, ``1.0`` and ``True`` apart), each
compiled from a deep copy, so a caller changing its filter afterwards never meets a stale plan.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tensorhub.query.parse import Plan, compile_filter
from tensorhub.query.regexes import _current, current_evaluation

#: plans one evaluation keeps; a scan uses one or two, so more means filters built per document
_MAX_PLANS = 64
_by_text: dict[str, Plan] = {}


def _plan_by_text(query: Mapping[str, Any]) -> Plan:
    try:
        text = repr(query)
        plan = _by_text.get(text)
        if plan is not None:
            return plan
        frozen = copy.deepcopy(query)
    except Exception:  # noqa: BLE001 - an odd object in the filter: parse it uncached (and refuse it there)
        return compile_filter(query)
    plan = compile_filter(frozen)
    if len(_by_text) >= 4 * _MAX_PLANS:
        _by_text.clear()
    _by_text[text] = plan
    return plan


def plan_for(query: Mapping[str, Any]) -> Plan:
    """The plan of ``query``, parsed once per evaluation (the filter object is the key, held alive)."""
    evaluation = current_evaluation()
    if evaluation is None:
        return _plan_by_text(query)
    entry = evaluation.plans.get(id(query))
    if entry is not None and entry[0] is query:
        plan: Plan = entry[1]
        return plan
    plan = compile_filter(query)
    if len(evaluation.plans) >= _MAX_PLANS:
        evaluation.plans.clear()
    evaluation.plans[id(query)] = (query, plan)
    return plan


def matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``document`` matches the MongoDB filter ``query`` (InvalidQueryError if it is malformed)."""
    evaluation = _current.get()  # plan_for inlined: this runs once per document of a scan
    if evaluation is not None:
        entry = evaluation.plans.get(id(query))
        if entry is not None and entry[0] is query:
            return bool(entry[1](document))
    return plan_for(query)(document)
