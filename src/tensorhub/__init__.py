"""tensorhub: one queryable store for a machine-learning team's datasets, models, logs and tasks.

Example::

    from tensorhub import TensorHub
    hub = TensorHub("file://./tensorhub-data", project_name="tutorial")
    hub.save_dataset([X, y], "mnist", version="1.0")
"""

from tensorhub.errors import (
    BackendNotInstalledError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptDataError,
    DuplicateKeyError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidQueryError,
    NoActiveRunError,
    NotFoundError,
    QueryTimeoutError,
    ScriptError,
    ScriptNotFoundError,
    ScriptSyntaxError,
    SerializationError,
    TaskTimeoutError,
    TensorHubError,
    UnknownSchemeError,
    UnsupportedOperationError,
)
from tensorhub.hub import TensorHub
from tensorhub.models import ModelAdapter, register_model_adapter
from tensorhub.registry import register_backend

__version__ = "0.1.0"

__all__ = [
    "TensorHub",
    "TensorHubError",
    "ConfigurationError",
    "UnknownSchemeError",
    "BackendNotInstalledError",
    "BackendUnavailableError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidQueryError",
    "QueryTimeoutError",
    "SerializationError",
    "NotFoundError",
    "CorruptDataError",
    "ConflictError",
    "DuplicateKeyError",
    "ScriptError",
    "ScriptNotFoundError",
    "ScriptSyntaxError",
    "TaskTimeoutError",
    "NoActiveRunError",
    "UnsupportedOperationError",
    "ModelAdapter",
    "register_model_adapter",
    "register_backend",
    "__version__",
]
