"""A device installs the agent extra only: it must not need the hub's dependencies.

And the simulator, which runs the real agent code, stays on the device side (DESIGN §2:
simulator -> agent, shared); composing it with the hub is edgefleet/'s job.
"""

from __future__ import annotations

import ast
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


def test_the_client_extra_and_the_client_need_nothing_of_the_hubs() -> None:
    """An operator's machine installs the client extra: the typed clients and their views
    import no FastAPI, SQLModel, scikit-learn or hub service module."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["optional-dependencies"]["client"]
    assert not [n for n in names if any(n.lower().startswith(h) for h in HUB_ONLY)]
    unwanted = (*HUB_ONLY, "hub.app", "sqlalchemy", "uvicorn")
    code = (
        "import sys, edgefleet.client, edgefleet.client_async, hub.api.views.devices\n"
        f"bad = [m for m in {unwanted!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"the client imported: {out.stdout.strip()}"


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


SIMULATOR_MODULES = sorted(
    f"simulator.{p.stem}" for p in (ROOT / "simulator").glob("*.py") if p.stem != "__init__"
)
NOT_FOR_THE_SIMULATOR = ("hub", "edgefleet")


def test_importing_the_simulator_loads_neither_the_hub_nor_the_cli() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {SIMULATOR_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {NOT_FOR_THE_SIMULATOR!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert len(SIMULATOR_MODULES) >= 5
    assert out.stdout.strip() == "", f"the simulator imported: {out.stdout.strip()}"


def test_no_simulator_module_names_the_hub_or_the_cli() -> None:
    """Imports inside functions and under TYPE_CHECKING count too."""
    bad = []
    for path in sorted((ROOT / "simulator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [
                f"{path.name}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in NOT_FOR_THE_SIMULATOR
            ]
    assert bad == []


def test_the_hub_public_surface_resolves_without_starting_fastapi() -> None:
    code = (
        "import sys, hub\n"
        "light = 'fastapi' not in sys.modules\n"
        "names = [n for n in hub.__all__ if getattr(hub, n, None) is None]\n"
        "print(light, ','.join(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True"], out.stdout
