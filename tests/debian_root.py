"""A clean Debian root file system for package tests, made once with debootstrap and cached.

The cache is ``.cache/rootfs-<suite>`` in the checkout (git-ignored; ``$EF_CACHE_DIR``
moves it, e.g. for CI runs on fresh clones); each test works on a copy of it
(:func:`fresh_root`), so a failed test never dirties the next one. Entering it needs
root (``chroot``); loopback is shared with the host, so a hub and broker started by the
test on 127.0.0.1 are reachable from inside.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EF_CACHE_DIR") or ROOT / ".cache")  # as firmware-images' build
SUITE = "bookworm"  # Debian 12, the machine's own (DESIGN §8): python3 is 3.11
MIRROR = "http://deb.debian.org/debian"
# python3 and its venv for the agent; systemd so that `systemd-analyze verify --root`
# finds the targets a unit names (a device image has it too)
PACKAGES = ("python3", "python3-venv", "systemd")
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


class RootfsError(Exception):
    """No root file system could be made (no debootstrap, no mirror)."""


def cached_root(suite: str = SUITE) -> Path:
    """The cached root file system of ``suite``, made on first use (about a minute).

    Raises:
        RootfsError: debootstrap is missing and cannot be installed, or failed.
    """
    target = CACHE / f"rootfs-{suite}"
    ready = CACHE / f"rootfs-{suite}.ready"  # beside it: the root's files stay the suite's
    want = " ".join(PACKAGES)
    CACHE.mkdir(exist_ok=True)
    with (CACHE / f"rootfs-{suite}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time
        if ready.exists() and ready.read_text() == want and target.is_dir():
            return target
        _debootstrap(suite, target)
        ready.write_text(want)
    return target


def _debootstrap(suite: str, target: Path) -> None:
    if shutil.which("debootstrap") is None:
        done = _run(["apt-get", "install", "-y", "-q", "debootstrap"])
        if done.returncode != 0:  # stale package lists
            _run(["apt-get", "update", "-q"])
            done = _run(["apt-get", "install", "-y", "-q", "debootstrap"])
        if done.returncode != 0 or shutil.which("debootstrap") is None:
            raise RootfsError(f"no debootstrap, and apt-get could not install it:\n{done.stderr}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    done = _run([*cmd, suite, str(partial), MIRROR])
    if done.returncode != 0:
        raise RootfsError(f"debootstrap {suite} from {MIRROR} failed:\n{done.stdout[-2000:]}")
    partial.rename(target)


@contextmanager
def fresh_root(into: Path, suite: str = SUITE) -> Iterator[Path]:
    """A copy of the cached root at ``into`` with /proc mounted; removed afterwards."""
    cached = cached_root(suite)
    done = _run(["cp", "-a", "--reflink=auto", str(cached), str(into)])
    if done.returncode != 0:
        raise RootfsError(f"cannot copy {cached}: {done.stderr}")
    proc = into / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield into
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], check=False)
        if not os.path.ismount(proc):  # never delete through a mount
            # and rm stays on this file system even so
            subprocess.run(["rm", "-rf", "--one-file-system", str(into)], check=False)


def chroot(root: Path, *argv: str, offline: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``root``; ``offline``: in a network namespace of its own."""
    cmd = ["chroot", str(root), *argv]
    if offline:
        cmd = ["unshare", "--net", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=CHROOT_ENV, timeout=600)


def python_version(root: Path) -> str:
    """The root's python3 as "X.Y"."""
    done = chroot(root, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    return done.stdout.strip()


def files(root: Path, skip: tuple[str, ...]) -> set[str]:
    """Every path under ``root`` (relative, with a leading /), less the trees in ``skip``."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).removeprefix(".").lstrip("/")
        dirnames[:] = [d for d in dirnames if f"{rel.rstrip('/')}/{d}" not in skip]
        out.update(f"{rel.rstrip('/')}/{n}" for n in [*dirnames, *filenames])
    return out


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
