#!/usr/bin/env python3
"""Build a device class's agent package: a ``.deb`` that installs with no network.

Usage (each class folder has the same entry point, ``firmware-images/<class>/build``)::

    firmware-images/generic-linux/build [--arch amd64] [--python 3.11] [--out dist/debs]

For each architecture of the class's ``profile.toml`` (or those named with ``--arch``):

1. the edgefleet wheel, built from this checkout (``pip wheel --no-deps .``);
2. a wheelhouse of its dependencies for that architecture and Python: the class's
   ``extras`` of edgefleet, its ``packages`` and its ``numpy`` bound, fetched with
   ``pip download --only-binary=:all: --platform manylinux_2_X_<machine>`` (cached under
   ``.cache/wheelhouse/``, or ``$EF_CACHE_DIR/wheelhouse/``: a second build reuses it);
3. ``dpkg-deb --build`` of: the wheelhouse and a requirements file under /opt/edgefleet,
   the systemd unit, the config template and the class's profile under /etc/edgefleet,
   and the maintainer scripts of ``firmware-images/debian/`` (postinst makes the venv
   from the wheelhouse; prerm/postrm remove it; purge removes the state).

An architecture for which some dependency has no wheel is not built: the build names each
such package and exits 1 (after building the others).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import importlib.util
import json
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEBIAN = HERE / "debian"  # the files every class's package shares
# $EF_CACHE_DIR keeps wheelhouses (and the tests' root file systems) out of the checkout
CACHE = Path(os.environ.get("EF_CACHE_DIR") or REPO / ".cache") / "wheelhouse"
PREFIX = "opt/edgefleet"
UNIT = "edgefleet-agent.service"
DEFAULT_PYTHON = "3.11"  # Debian 12's python3
# Debian architecture -> the machine in a wheel's platform tag
MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
GLIBC_MINOR = range(5, 37)  # manylinux_2_5 (manylinux1) .. 2_36 (Debian 12's glibc)
PROBES = 4  # pip downloads at once when finding which package lacks a wheel
UNREACHABLE = r"NewConnectionError|Failed to establish a new connection|Could not fetch URL"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


class BuildError(Exception):
    """A package that cannot be built; ``missing`` names packages with no wheel."""

    def __init__(self, detail: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.missing = missing


@dataclass(frozen=True)
class Target:
    """One package: a class, an architecture, a Python version."""

    device_class: str
    arch: str
    python: str  # "3.11"

    @property
    def platforms(self) -> list[str]:
        machine = MACHINES[self.arch]
        return [f"manylinux_2_{minor}_{machine}" for minor in GLIBC_MINOR]

    @property
    def package(self) -> str:
        return f"edgefleet-agent-{self.device_class}"


def _load(name: str, path: Path) -> ModuleType:
    """A module of the checkout by its file, without importing its package's __init__."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


classes = _load("edgefleet_build_classes", REPO / "hub" / "fleet" / "classes.py")
try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]


def build_wheel(out: Path) -> Path:
    """The edgefleet wheel of this checkout (no dependencies) in ``out``.

    Built from a copy of what the wheel holds: an in-tree build would leave build/ in the
    checkout, and a module deleted since the last build would ride along from it.
    """
    src = out / "src"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    src.mkdir(parents=True)
    for name in ["pyproject.toml", project["project"]["readme"]]:
        shutil.copy2(REPO / name, src / name)
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    # the checkout's own setuptools when it has one: no index needed for the build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([*PIP, "wheel", "--no-deps", *isolation, "-w", str(out), str(src)])
    wheels = sorted(out.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pip wheel left {len(wheels)} edgefleet wheels in {out}")
    return wheels[0]


def requirements(wheel: Path, cls: classes.DeviceClass) -> list[str]:
    """What the device installs besides edgefleet: its extras' and the class's packages."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        parsed = email.parser.BytesParser().parsebytes(z.read(meta))
    out = []
    for line in parsed.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extras = [{"extra": e} for e in ("", *cls.extras)]
        if req.marker is None or any(req.marker.evaluate(env) for env in extras):
            req.marker = None
            out.append(str(req))
    out += list(cls.packages)
    if cls.numpy:
        out.append(f"numpy{cls.numpy}")
    return sorted(set(out))


def wheelhouse(target: Target, reqs: list[str]) -> Path:
    """The dependencies' wheels for ``target``: cached, or fetched from the index.

    Raises:
        BuildError: some requirement has no wheel for the platform (each one named).
    """
    tag = "\n".join([*reqs, *target.platforms, target.python])
    key = hashlib.sha256(tag.encode()).hexdigest()[:12]
    where = CACHE / f"{target.arch}-py{target.python}-{key}"
    if (where / "complete").exists():
        return where
    shutil.rmtree(where, ignore_errors=True)
    done = _download(target, reqs, where)
    if done.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        raise _no_wheel(target, reqs, done.stderr)
    (where / "complete").write_text(json.dumps(reqs) + "\n")
    return where


def _no_wheel(target: Target, reqs: list[str], stderr: str) -> BuildError:
    """Why ``pip download`` failed: each requirement with no wheel, or pip's own words."""
    named = re.findall(r"No matching distribution found for (\S+)", stderr)
    # pip reports an unreachable index as "no versions" too: its warnings tell them apart
    if not named or re.search(UNREACHABLE, stderr):
        return BuildError(f"pip download for {target.arch} failed:\n{stderr.strip()[-2000:]}")
    with ThreadPoolExecutor(PROBES) as pool:  # each requirement alone: which lack a wheel
        alone = pool.map(lambda r: _download(target, [r], None, deps=False).returncode, reqs)
        missing = tuple(r for r, code in zip(reqs, alone, strict=True) if code)
    # none alone: a dependency of theirs lacks one, and pip named it
    missing = missing or tuple(named)
    hint = " (all of them: is the package index reachable?)" if len(missing) == len(reqs) else ""
    return BuildError(
        f"no {target.arch} wheel for Python {target.python} of: {', '.join(missing)}{hint}",
        missing,
    )


def _download(
    target: Target, reqs: list[str], dest: Path | None, deps: bool = True
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [*PIP, "download", "--only-binary=:all:", "--dest", str(dest or scratch)]
        cmd += ["--python-version", target.python, "--implementation", "cp"]
        for platform in target.platforms:
            cmd += ["--platform", platform]
        cmd += [] if deps else ["--no-deps"]
        return subprocess.run([*cmd, *reqs], capture_output=True, text=True)


def stage(target: Target, cls: classes.DeviceClass, wheel: Path, wheels: Path, root: Path) -> None:
    """The package's file tree under ``root`` (DEBIAN/ included)."""
    house = root / PREFIX / "wheelhouse"
    house.mkdir(parents=True)
    for whl in [wheel, *sorted(wheels.glob("*.whl"))]:
        shutil.copy2(whl, house / whl.name)
    version = wheel.name.split("-")[1]
    extras = f"[{','.join(cls.extras)}]" if cls.extras else ""
    reqs = [f"edgefleet{extras}=={version}", *cls.packages]
    reqs += [f"numpy{cls.numpy}"] if cls.numpy else []
    (root / PREFIX / "requirements.txt").write_text("\n".join(reqs) + "\n")
    etc = root / "etc" / "edgefleet"
    etc.mkdir(parents=True)
    template = string.Template((DEBIAN / "agent.toml.template").read_text())
    budget = f"{cls.memory_budget_mb:g}"  # 64.0 -> 64
    values = {"DEVICE_CLASS": cls.name, "RUNTIME": cls.runtime, "MEMORY_BUDGET_MB": budget}
    (etc / "agent.toml.template").write_text(template.safe_substitute(values))
    shutil.copy2(HERE / cls.name / "profile.toml", etc / "profile.toml")
    units = root / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy2(DEBIAN / UNIT, units / UNIT)
    control = root / "DEBIAN"
    control.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy2(DEBIAN / script, control / script)
        (control / script).chmod(0o755)
    (control / "control").write_text(_control(target, cls, version, root))


def _control(target: Target, cls: classes.DeviceClass, version: str, root: Path) -> str:
    size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024 + 1
    major, minor = (int(n) for n in target.python.split("."))
    return (
        f"Package: {target.package}\n"
        f"Version: {version}\n"
        f"Architecture: {target.arch}\n"
        "Maintainer: edgefleet <edgefleet@localhost>\n"
        f"Depends: python3 (>= {major}.{minor}~), python3 (<< {major}.{minor + 1}~), python3-venv\n"
        "Provides: edgefleet-agent\nConflicts: edgefleet-agent\nReplaces: edgefleet-agent\n"
        f"Installed-Size: {size_kib}\n"
        "Section: misc\nPriority: optional\n"
        f"Description: edgefleet agent for {cls.name} devices, installed offline\n"
        f" {cls.description or cls.name}.\n"
        " The agent and its dependencies come as wheels in the package: postinst makes\n"
        " /opt/edgefleet/venv from them with no network.\n"
    )


def build(target: Target, cls: classes.DeviceClass, wheel: Path, out: Path) -> Path:
    """One .deb in ``out``; prints its wheelhouse."""
    reqs = requirements(wheel, cls)
    wheels = wheelhouse(target, reqs)
    deb = out / f"{target.package}_{wheel.name.split('-')[1]}_{target.arch}.deb"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        stage(target, cls, wheel, wheels, root)
        # wheels are zip files already: gzip -1 keeps the build quick for ~the same size
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb)])
    print(f"{deb} ({deb.stat().st_size / 2**20:.1f} MiB), wheelhouse for {target.arch}:")
    for whl in [wheel, *sorted(wheels.glob("*.whl"))]:
        print(f"  {whl.name:<72} {whl.stat().st_size / 2**20:6.1f} MiB")
    return deb


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device_class", help="a folder of firmware-images/")
    parser.add_argument("--arch", action="append", choices=sorted(MACHINES))
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="the device's X.Y")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "debs")
    args = parser.parse_args(argv)
    try:
        cls = classes.parse_profile(HERE / args.device_class / "profile.toml")
    except classes.ClassError as e:
        print(f"build: {e}", file=sys.stderr)
        return 2
    if not SpecifierSet(cls.python).contains(args.python):
        print(f"build: {cls.name} wants Python {cls.python}, not {args.python}", file=sys.stderr)
        return 2
    foreign = sorted(set(args.arch or ()) - set(cls.architectures))
    if foreign:
        print(f"build: {cls.name} is not built for {', '.join(foreign)}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        for arch in args.arch or cls.architectures:
            try:
                build(Target(cls.name, arch, args.python), cls, wheel, args.out)
            except BuildError as e:
                print(f"build: {cls.name} {arch}: {e}", file=sys.stderr)
                failed += 1
    print(f"built in {time.monotonic() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
