"""Whether a document matches a filter: the filter's plan (:mod:`tensorhub.query.parse`), applied.

Inside one evaluation (:func:`tensorhub.query.regex_budget`, which every backend's scan opens) a
filter is parsed once and its plan reused for every document; outside one it is parsed per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tensorhub.query.parse import Plan, compile_filter
from tensorhub.query.regexes import _current, current_evaluation

#: plans one evaluation keeps; a scan uses one or two, so more means filters built per document
_MAX_PLANS = 64


def plan_for(query: Mapping[str, Any]) -> Plan:
    """The plan of ``query``, parsed once per evaluation (the filter object is the key, held alive)."""
    evaluation = current_evaluation()
    if evaluation is None:
        return compile_filter(query)
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
