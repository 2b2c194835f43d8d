"""The hub's data directory: private to the account the hub runs as.

It holds ``hub.db`` (API key hashes, the audit log, telemetry), the TUF and CA keys and
the artifacts. The directory is made 0700 and the files the hub creates 0600 (a umask of
0077 while it opens its storage; SQLite gives ``-wal`` and ``-shm`` the database file's
mode). A directory or database left looser by an older hub or by hand is not changed
behind the operator's back: :func:`check_private` says which, with its mode.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "check_private", "create_private_file", "private_umask"]

log = logging.getLogger(__name__)

DIR_MODE = 0o700  # the data directory: the hub's account only
FILE_MODE = 0o600  # hub.db, keys, artifacts
PRIVATE_UMASK = 0o077  # what the hub creates while it opens its storage: no group, no other


@contextmanager
def private_umask() -> Iterator[None]:
    """Create files and directories for the hub's account only (the process's umask:
    hold it only while the hub creates its storage)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (before SQLite opens it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def check_private(paths: list[Path]) -> list[str]:
    """A warning for each of ``paths`` that exists and lets group or others in.

    Returns:
        The warnings, also logged: each names the path, its mode and the fix.
    """
    warnings = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            want = DIR_MODE if path.is_dir() else FILE_MODE
            warnings.append(
                f"{path} is mode {mode:04o}: group or others can read the hub's data"
                f" (key hashes, audit log, telemetry); chmod {want:o} {path}"
            )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
