"""Checks a stored ``torch.export`` program (its JSON graph) before torch deserialises it.

torch's deserialiser trusts its input: every symbolic-shape expression (``expr_str``) goes
through ``sympy.sympify``, which ``eval``s the string, and ``guards_code`` holds Python that
``ExportedProgram.module()`` may ``exec``. A program read from a shared store is hostile input,
so each expression must be a plain sympy ``srepr`` (or the older ``str``) form: calls of sympy
and torch symbolic-shape classes on numbers, plain names and quoted names, nothing else (no
attribute access, subscripts, dunders, builtins or non-class sympy functions). Guards code is
dropped: tensorhub's loads never run it (the program is rebuilt without example inputs), and
it is not stored for anything else. Node targets need no check here: torch's verifier accepts
only operator overloads and a fixed set of builtin operators when the program is built.
"""

from __future__ import annotations

import builtins
import functools
import json
import keyword
import re
from typing import Any

from tensorhub._compat import torch as torch_compat
from tensorhub.errors import CorruptDataError, SerializationError

#: one token of an expression; anything else (``.``, ``[``, ``"``, ``;``...) is refused
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'[A-Za-z0-9_+\-.]*')
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|==|!=|<=|>=|[-+*/%()<>,=&|~])
""", re.VERBOSE)
_QUOTED_OK = re.compile(r"[A-Za-z][A-Za-z0-9_]*|[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|nan)\Z")
MAX_EXPRESSION = 20_000  # characters: real shape expressions are far shorter


@functools.lru_cache(maxsize=1)
def _callable_names() -> frozenset[str]:
    """Names an expression may use: sympy and torch symbolic-shape classes and constants (all inert)."""
    import sympy

    shape_functions = torch_compat.symbolic_shape_functions()
    names = set()
    for namespace in (vars(sympy), vars(shape_functions)):
        for name, value in namespace.items():
            if name.startswith("_"):
                continue
            if (isinstance(value, type) and issubclass(value, sympy.Basic)) or isinstance(value, sympy.Basic):
                names.add(name)
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def _sympy_names() -> frozenset[str]:
    import sympy

    return frozenset(vars(sympy))


def check_expression(expr: Any, where: str) -> None:
    """Refuse ``expr`` unless it is an inert sympy expression (see the module docstring)."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPRESSION:
        raise _refused(where, f"an expression of {type(expr).__name__} or over {MAX_EXPRESSION} characters")
    allowed = _callable_names()
    position = 0
    tokens = []
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise _refused(where, f"{expr[position:position + 20]!r} in expression {expr[:200]!r}")
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
    for i, (kind, text) in enumerate(tokens):
        if kind == "string" and not _QUOTED_OK.fullmatch(text[1:-1]):
            raise _refused(where, f"the quoted name {text} in expression {expr[:200]!r}")
        if kind != "name" or text in allowed or text in ("True", "False", "None"):
            continue
        keyword_argument = i + 1 < len(tokens) and tokens[i + 1] == ("op", "=") and i > 0 and \
            tokens[i - 1][1] in ("(", ",")
        plain_symbol = not (text in _sympy_names() or hasattr(builtins, text) or keyword.iskeyword(text)) \
            and "__" not in text
        if not plain_symbol and not (keyword_argument and "__" not in text and not keyword.iskeyword(text)):
            raise _refused(where, f"the name {text!r} in expression {expr[:200]!r}")


def _refused(where: str, what: str) -> SerializationError:
    return SerializationError(f"{where}: its exported program holds {what}, which is no symbolic-shape expression "
                              "torch writes; loading it could run code, so it is refused (the store may be "
                              "hostile). Pass into=<a built module> to load the parameters only")


def checked_program(graph: bytes, where: str) -> bytes:
    """The program's JSON with every expression checked and the guards code dropped; else a clear error."""
    try:
        program = json.loads(graph)
    except (ValueError, RecursionError) as exc:
        raise CorruptDataError(f"{where}: its exported program is not readable JSON ({type(exc).__name__}); "
                               "save the model again") from exc
    if not isinstance(program, dict):
        raise CorruptDataError(f"{where}: its exported program is not a JSON object; save the model again")
    program.pop(torch_compat.GUARDS_KEY, None)
    stack: list[Any] = [program]
    while stack:  # iterative: a hostile program may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == torch_compat.EXPRESSION_KEY:
                    check_expression(value, where)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return json.dumps(program).encode()
