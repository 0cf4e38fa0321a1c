"""docs/reliability.md names, for each claim, the test that shows it: every one it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# `tests/.../file.py` or `tests/.../file.py::test_name` in backticks.
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
BARE_TEST = re.compile(r"`(test_\w+)`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_reliability_doc_names_exists() -> None:
    text = DOC.read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 40  # the pattern still matches how the doc names tests
    missing = []
    for file, name in references:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif name and name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_the_reliability_doc_names_tests_with_their_file() -> None:
    assert BARE_TEST.findall(DOC.read_text()) == []
