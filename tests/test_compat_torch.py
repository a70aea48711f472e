"""Issue 11 item 8: torch's private API is used only through ``tensorhub/_compat/torch.py``.

One test per private API (see that module's docstring): each fails loudly when a torch upgrade
changes what tensorhub relies on.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest

import tensorhub

torch = pytest.importorskip("torch")

SRC = Path(tensorhub.__file__).parent


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: Any) -> Any:
        return self.linear(x).relu()


def _exported(dynamic: bool) -> Any:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    return torch.export.export(_Net().eval(), (torch.randn(3, 4),), dynamic_shapes=shapes)


def test_item08_torch_program_serde_round_trips() -> None:
    """``torch._export.serde``: the graph as JSON without pickles, and the program rebuilt from it."""
    from tensorhub._compat import torch as compat

    exported = _exported(dynamic=False)
    graph = compat.serialize_program_graph(exported)
    assert isinstance(graph, bytes) and graph.startswith(b"{"), f"torch {torch.__version__}: serde output changed"
    version = compat.program_schema_version()
    assert len(version) == 2 and all(isinstance(v, int) for v in version)
    rebuilt = compat.program_deserializer()(graph, dict(exported.state_dict), dict(exported.constants))
    x = torch.randn(3, 4)
    assert torch.equal(rebuilt.module()(x), exported.module()(x))


def test_item08_torch_program_json_keys() -> None:
    """The keys the program check relies on: torch evaluates ``expr_str`` and may exec ``guards_code``.

    If torch renames them, ``models/_program_check.py`` would check nothing while torch still
    evaluates the renamed fields: this must fail first.
    """
    from tensorhub._compat import torch as compat

    text = compat.serialize_program_graph(_exported(dynamic=True)).decode()
    assert f'"{compat.EXPRESSION_KEY}"' in text, f"torch {torch.__version__} no longer writes expr_str"
    assert f'"{compat.GUARDS_KEY}"' in text, f"torch {torch.__version__} no longer writes guards_code"
    assert "sympify" in inspect.getsource(sys.modules["torch._export.serde.serialize"])


def test_item08_torch_symbolic_shape_functions() -> None:
    import sympy

    from tensorhub._compat import torch as compat
    from tensorhub.models._program_check import _callable_names

    functions = compat.symbolic_shape_functions()
    for name in ("FloorDiv", "ModularIndexing", "CeilDiv"):
        assert issubclass(getattr(functions, name), sympy.Basic), f"torch {torch.__version__}: {name} moved"
        assert name in _callable_names()


def test_item08_torch_load_state_dict_hook_dicts() -> None:
    from tensorhub._compat import torch as compat

    plain, pre, post = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    pre.register_load_state_dict_pre_hook(lambda *args: None)
    post.register_load_state_dict_post_hook(lambda *args: None)
    assert [compat.has_load_state_dict_hooks(m) for m in (plain, pre, post)] == [False, True, True]


def test_item08_torch_custom_state_loaders() -> None:
    from tensorhub._compat import torch as compat

    class Migrating(torch.nn.Linear):
        def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
            super()._load_from_state_dict(*args, **kwargs)

    assert compat.has_custom_state_loader(torch.nn.Linear(2, 2)) is False
    assert compat.has_custom_state_loader(torch.nn.BatchNorm1d(2)) is False
    assert compat.has_custom_state_loader(Migrating(2, 2)) is True


#: torch's private names tensorhub uses, all in tensorhub/_compat/torch.py
_PRIVATE_ATTRIBUTES = {"_export", "_sympy", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                       "_load_from_state_dict", "_bytes_to_dataclass"}


def test_item08_no_private_torch_name_outside_the_compat_module() -> None:
    """Code (not docstrings) outside ``_compat/torch.py`` imports no ``torch._*`` module nor uses the names."""
    users = set()
    for path in SRC.rglob("*.py"):
        if path == SRC / "_compat" / "torch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.startswith("torch.") and "._" in f".{m}" for m in modules) or \
                    (isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ATTRIBUTES
                     and not (isinstance(node.value, ast.Name) and node.value.id == "self")):  # our own methods
                users.add(str(path.relative_to(SRC)))
    assert users == set()
