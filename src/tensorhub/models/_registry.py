"""The adapter registry: which adapter saves a network, and which one loads a record."""

from __future__ import annotations

from typing import Any

from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, SerializationError
from tensorhub.models._base import ModelAdapter
from tensorhub.models._params import ParamsAdapter
from tensorhub.models._sklearn import SklearnAdapter
from tensorhub.models._torch import TorchAdapter

#: tried in order; :func:`register_model_adapter` puts new adapters first
_adapters: list[ModelAdapter] = [TorchAdapter(), SklearnAdapter(), ParamsAdapter()]


def register_model_adapter(adapter: ModelAdapter) -> None:
    """Add an adapter; it is tried before the built-in ones, and replaces one of the same name."""
    if not isinstance(adapter, ModelAdapter) or not adapter.name:
        error = InvalidArgumentError if isinstance(adapter, ModelAdapter) else InvalidArgumentTypeError
        raise error("an adapter must be a ModelAdapter instance with a non-empty name")
    _adapters[:] = [adapter] + [a for a in _adapters if a.name != adapter.name]


def adapter_fields() -> frozenset[str]:
    """The record fields every registered adapter declares (:attr:`ModelAdapter.record_fields`), now."""
    return frozenset().union(*(frozenset(a.record_fields) for a in _adapters))


def adapter_for(network: Any) -> ModelAdapter:
    for adapter in _adapters:
        if adapter.can_save(network):
            return adapter
    raise SerializationError(
        f"no model adapter handles a {type(network).__module__}.{type(network).__qualname__}; save a "
        "torch.nn.Module, a list/dict of numpy arrays, a scikit-learn estimator, or register one with "
        "tensorhub.register_model_adapter()"
    )


def adapter_named(name: str) -> ModelAdapter:
    for adapter in _adapters:
        if adapter.name == name:
            return adapter
    raise SerializationError(f"this model was saved by the {name!r} adapter, which is not registered here; "
                             "install and register it before loading")
