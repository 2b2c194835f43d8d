"""A device installs the agent extra only: it must not need the hub's dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUB_ONLY = ("fastapi", "sqlmodel", "scikit-learn", "sklearn", "tensorflow", "skl2onnx")


def test_agent_extra_pulls_no_hub_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["agent"]]
    assert not [n for n in names if any(n.lower().startswith(h) for h in HUB_ONLY)]


def test_agent_imports_nothing_from_the_hub() -> None:
    code = (
        "import sys, agent.daemon, agent.device, simulator.fleet\n"
        f"bad = [m for m in {(*HUB_ONLY, 'hub', 'uvicorn', 'onnx')!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"the agent imported: {out.stdout.strip()}"
