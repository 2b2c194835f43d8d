"""The dashboard ships inside the hub's wheel: its pages and static files are package
data (pyproject.toml), so a hub installed from the wheel serves /ui with nothing else.
So do the database migrations (hub/store/migrations/): an installed hub upgrades its
database at start."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "hub" / "api" / "ui"
MIGRATIONS = ROOT / "hub" / "store" / "migrations"
SOURCES = ("pyproject.toml", "README.md", "shared", "agent", "hub", "simulator", "edgefleet")


def test_the_wheel_carries_every_page_and_static_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info beside the sources
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("edgefleet-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(p.relative_to(ROOT))
        for folder in ("static", "templates")
        for p in (UI / folder).rglob("*")
        if p.is_file()
    }
    assert len(wanted) >= 15  # the pages, the modules, the style sheet
    migrations = {
        str(p.relative_to(ROOT))
        for p in MIGRATIONS.rglob("*")
        if p.is_file() and p.suffix in (".py", ".mako")
    }
    assert {"env.py", "script.py.mako", "0001_baseline.py"} <= {Path(m).name for m in migrations}
    wanted |= migrations
    assert wanted <= shipped, f"not in the wheel: {sorted(wanted - shipped)}"
