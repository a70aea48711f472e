"""The ``sklearn`` adapter: scikit-learn estimators through skops (no pickle)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tensorhub.errors import ConfigurationError, SerializationError
from tensorhub.models._arrays import ModelReader
from tensorhub.models._base import ModelAdapter, SavedModel
from tensorhub.models._trust import check_trusted, is_trusted


class SklearnAdapter(ModelAdapter):
    """scikit-learn estimators through skops (a zip of JSON and arrays; no pickle).

    skops rebuilds only the types it trusts by default (scikit-learn's, numpy's, ...); any
    other type in the file is refused before anything is built, unless the caller trusts it:
    ``find_model(..., trusted=True)`` (every type), or ``trusted=["mypkg", "mypkg.models.MyEst"]``
    (types under those module prefixes, or exactly those type names). Needs ``pip install skops``.
    """

    name = "sklearn"
    record_fields = frozenset({"estimator_class", "sklearn_version"})

    def can_save(self, network: Any) -> bool:
        sklearn_base = sys.modules.get("sklearn.base")
        return sklearn_base is not None and isinstance(network, sklearn_base.BaseEstimator)

    def save(self, network: Any, **options: Any) -> SavedModel:
        import sklearn

        skops_io = _import_skops()
        data = skops_io.dumps(network)
        cls = type(network)
        return SavedModel({"format": "skops", "estimator_class": f"{cls.__module__}:{cls.__qualname__}",
                           "sklearn_version": sklearn.__version__}, arrays=[("skops", np.frombuffer(data, np.uint8))])

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        skops_io = _import_skops()
        data = reader.array("skops").tobytes()
        trust = check_trusted(options.get("trusted"))
        untrusted = skops_io.get_untrusted_types(data=data)
        missing = [t for t in untrusted if not is_trusted(t, trust)]
        if missing:
            raise SerializationError(
                f"{reader.describe()} holds types skops does not trust by default: {missing}; loading them could run "
                "their code. Pass trusted=[...those names or their module prefixes...] (or trusted=True) to "
                "find_model only if you trust whoever saved it; into= does not apply to scikit-learn models")
        return skops_io.loads(data, trusted=list(untrusted) or None)


def _import_skops() -> Any:
    try:
        import skops.io
    except ImportError as exc:
        raise ConfigurationError("scikit-learn models are stored with skops (no pickle): pip install skops") from exc
    return skops.io
