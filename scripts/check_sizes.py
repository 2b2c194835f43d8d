#!/usr/bin/env python3
"""The house's size rules: no module over 500 lines, no function over 80 (docs/architecture.md).

Checks the packages (shared, agent, hub, simulator, edgefleet); tests and benchmarks are
exempt. Prints each breach and exits 1 if there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("shared", "agent", "hub", "simulator", "edgefleet")
MODULE_MAX = 500  # lines
FUNCTION_MAX = 80  # lines, decorators and docstring included


def breaches(root: Path) -> list[str]:
    out: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            lines = text.count("\n") + (not text.endswith("\n") and bool(text))
            rel = path.relative_to(root)
            if lines > MODULE_MAX:
                out.append(f"{rel}: {lines} lines (over {MODULE_MAX})")
            for node in ast.walk(ast.parse(text, str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    size = (node.end_lineno or node.lineno) - first + 1
                    if size > FUNCTION_MAX:
                        out.append(
                            f"{rel}:{node.lineno}: {node.name}() {size} lines (over {FUNCTION_MAX})"
                        )
    return out


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    found = breaches(root)
    for line in found:
        print(line)
    print(f"sizes: {len(found)} breach(es)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
