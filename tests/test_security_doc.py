"""docs/security.md names a test for every threat: each name must be a real test (and each
attack-table id a real row), so the page cannot drift from what is shown."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_attacks import ATTACKS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"


def _test_functions() -> dict[str, set[str]]:
    """Test function names per test file."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        out[path.name] = {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
        }
    return out


def test_every_test_the_security_page_names_exists() -> None:
    known = _test_functions()
    every = set().union(*known.values())
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("|")]
    named = 0
    for row in rows:
        for ref in re.findall(r"`([^`]*test_[^`]*)`", row):
            file, _, name = ref.rpartition("::")
            name = name or ref
            base, _, param = name.partition("[")
            if file:
                assert base in known[Path(file).name], f"{ref} (row: {row[:60]})"
            elif base.endswith(".py"):
                assert Path(base).name in known, ref
            else:
                assert base in every, f"{ref} names no test (row: {row[:60]})"
            if param:
                assert param.rstrip("]") in {a.name for a in ATTACKS}, f"no attack row {ref}"
            named += 1
    assert named >= 50  # the page's tables, not an empty file, were checked


def test_every_attack_row_is_on_the_security_page() -> None:
    text = DOC.read_text()
    missing = [a.name for a in ATTACKS if a.name not in text and a.name.split(": ")[0] not in text]
    assert not missing, missing
