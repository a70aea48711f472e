"""Issue 12 item 5: the docs that ship with the project cover the API, the CLI and the environment.

``help(TensorHub)`` is what users read first, so every public method documents each of its
parameters (Google style: an ``Args:`` section with one ``name:`` entry per parameter), and
``docs/API.md`` (in the repository: no link to files outside it) names every public method, CLI
command and ``TENSORHUB_*`` variable that ``src/`` reads. Reads files and signatures only: fast.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tensorhub import TensorHub
from tensorhub.cli import main as cli_main
from tensorhub.runs import Run
from tensorhub.worker import Worker, WorkerOptions

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "API.md"
PUBLIC_METHODS = sorted(name for name, value in vars(TensorHub).items()
                        if not name.startswith("_") and callable(value))


def _args_section(doc: str) -> str:
    """The text of a docstring's ``Args:`` section (up to the next section heading or the end)."""
    match = re.search(r"^\s*Args:\s*$(.*?)(?=^\s*(?:Returns|Raises|Example|Examples|Yields|Attributes)"
                      r":{1,2}\s*$|\Z)", doc, re.M | re.S)
    assert match, "no Args: section"
    return match.group(1)


def _documented(section: str) -> set[str]:
    """The names an ``Args:``/``Attributes:`` section has entries for (``name:``, ``**name:``)."""
    return set(re.findall(r"^\s*\**([A-Za-z_]\w*)(?: \([^)]*\))?:", section, re.M))


def _check_parameters(obj: object, doc: str | None, skip_first: bool) -> None:
    assert doc and doc.strip(), f"{obj} has no docstring"
    summary = doc.strip().splitlines()[0]
    assert len(summary) > 10, f"{obj}: no one-line summary"
    params = list(inspect.signature(obj).parameters.values())  # type: ignore[arg-type]
    if skip_first:
        params = params[1:]
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    section = _args_section(doc)
    missing = [n for n in named if n not in _documented(section)]
    assert not missing, f"{obj}: Args: section lacks {missing}"
    for var in (p.name for p in params if p.kind is p.VAR_KEYWORD):  # described in prose
        assert var in section or "query" in section, f"{obj}: Args: does not describe **{var}"


@pytest.mark.parametrize("name", PUBLIC_METHODS)
def test_item05_public_method_documents_each_parameter(name: str) -> None:
    _check_parameters(getattr(TensorHub, name), getattr(TensorHub, name).__doc__, skip_first=True)


def test_item05_constructor_documents_each_parameter() -> None:
    _check_parameters(TensorHub.__init__, TensorHub.__doc__, skip_first=True)


@pytest.mark.parametrize("method", [Run.end, Run.fail, Run.log, Run.flush, Run.checkpoint, Run.log_params, Worker])
def test_item05_run_and_worker_document_each_parameter(method: object) -> None:
    _check_parameters(method, method.__doc__, skip_first=not isinstance(method, type))


def test_item05_worker_options_document_each_field() -> None:
    doc = WorkerOptions.__doc__ or ""
    match = re.search(r"^\s*Attributes:\s*$(.*?)(?=^\s*\w+:\s*$|\Z)", doc, re.M | re.S)
    assert match, "WorkerOptions has no Attributes: section"
    fields = set(inspect.signature(WorkerOptions).parameters)
    assert fields <= _documented(match.group(1)), fields - _documented(match.group(1))


def test_item05_api_md_names_every_public_method() -> None:
    text = API_MD.read_text()
    missing = [n for n in PUBLIC_METHODS if not re.search(rf"\b{n}\b", text)]
    assert not missing, f"docs/API.md does not mention {missing}"


def test_item05_api_md_names_every_cli_command_and_option() -> None:
    text = API_MD.read_text()
    assert "--version" in text
    for name, command in cli_main.commands.items():
        assert re.search(rf"tensorhub {re.escape(name)}\b", text), f"docs/API.md lacks `tensorhub {name}`"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-") and opt != "--help":
                    assert opt in text, f"docs/API.md lacks {name}'s option {opt}"


def test_item05_api_md_names_every_environment_variable() -> None:
    text = API_MD.read_text()
    read = set()
    for path in (ROOT / "src").rglob("*.py"):
        read |= set(re.findall(r"\bTENSORHUB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert {"TENSORHUB_URI", "TENSORHUB_PROJECT", "TENSORHUB_TASK_ID"} <= read  # the scan itself works
    missing = sorted(v for v in read if v not in text)
    assert not missing, f"docs/API.md does not document {missing}"


def test_item05_docs_link_nothing_outside_the_repository() -> None:
    for doc in (ROOT / "README.md", API_MD, ROOT / "docs" / "ARCHITECTURE.md"):
        text = doc.read_text()
        assert "../shared" not in text and "/work/shared" not in text, doc
    readme = (ROOT / "README.md").read_text()
    assert "docs/API.md" in readme and "docs/ARCHITECTURE.md" in readme
    assert (ROOT / "src" / "tensorhub" / "py.typed").exists()
