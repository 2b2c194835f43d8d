"""Locks on the TUF repository's directory, for one process or for hub replicas sharing it.

Two ways to hold a repository (hub/trust/repository.py):

- **exclusive** (a single hub, ``edgefleet keys``): an ``flock`` on ``.lock`` for the whole
  life of the process, taken without waiting, so a running hub and the key commands never
  sign over each other's metadata.
- **shared** (hub replicas on one data directory, ADR 0032): each replica holds ``.lock``
  shared for its life (so ``edgefleet keys`` is still refused while any runs), and every
  write holds ``.write.lock`` exclusively, waiting its turn. A reader that sees the
  metadata files change on disk (:func:`stamp`) reloads them under ``.write.lock`` held
  shared, so it never loads a chain half-written by another replica.

The write lock is re-entrant within a process (a registry publishing a version holds it
around the target it adds), and is always taken before the repository's thread lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hub.trust.roles import RepositoryError

__all__ = ["DirectoryAccess", "DirectoryLock", "SharedFileLock", "WriteLock", "stamp"]

WATCHED = ("root.json", "targets.json", "snapshot.json", "timestamp.json")

Stamp = tuple[tuple[int, int, int], ...]


def stamp(meta_dir: Path) -> Stamp:
    """What changes when any top-level metadata file is replaced (inode, mtime, size)."""
    out = []
    for name in WATCHED:
        try:
            st = os.stat(meta_dir / name)
        except FileNotFoundError:
            out.append((0, 0, 0))
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class DirectoryLock:
    """``.lock`` held for the life of the process: exclusively, or shared by replicas."""

    def __init__(self, root_dir: Path, *, shared: bool) -> None:
        root_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(root_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = "a single hub or `edgefleet keys`" if shared else "a running hub?"
            raise RepositoryError(
                f"{root_dir} is in use by another process ({who}): stop it first"
            ) from None
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WriteLock:
    """``.write.lock``: exclusive around each write, shared around a reload (replicas);
    in-process only when the repository is not shared."""

    def __init__(self, root_dir: Path, *, shared: bool) -> None:
        self._path = root_dir / ".write.lock"
        self._shared = shared
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._mutex:
            if self._shared and self._depth == 0:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits for another replica's write
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the descriptor releases the flock
                    self._fd = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Held shared while a replica reloads what another wrote (a no-op within a
        write of this process, which already holds it)."""
        with self._mutex:
            if not self._shared or self._depth:
                yield
                return
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)


class DirectoryAccess:
    """How one process holds a repository directory: privately (tests, tools), with the
    ``exclusive`` lock, or ``shared`` with replicas (then reads reload what changed)."""

    def __init__(
        self, root_dir: Path, meta_dir: Path, *, exclusive: bool = False, shared: bool = False
    ) -> None:
        self.shared = shared
        self._meta_dir = meta_dir
        held = exclusive or shared
        self._dir_lock = DirectoryLock(root_dir, shared=shared) if held else None
        self._write = WriteLock(root_dir, shared=shared)
        self._stamp = stamp(meta_dir)

    def close(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The write lock (re-entrant in this process)."""
        return self._write.exclusive()

    def mark(self) -> None:
        """What is on disk now is what this process holds in memory."""
        self._stamp = stamp(self._meta_dir)

    @contextmanager
    def reading(self, lock: threading.Lock, reload: Callable[[], None]) -> Iterator[None]:
        """``lock`` held, after reloading (``reload``) what another replica wrote."""
        if self.shared and stamp(self._meta_dir) != self._stamp:
            with self._write.reading(), lock:
                self._refresh(reload)
        with lock:
            yield

    @contextmanager
    def writing(self, lock: threading.Lock, reload: Callable[[], None]) -> Iterator[None]:
        """The write lock and ``lock`` held, over what is on disk now."""
        with self._write.exclusive(), lock:
            if self.shared:
                self._refresh(reload)
            yield
            if self.shared:
                self.mark()

    def _refresh(self, reload: Callable[[], None]) -> None:
        now = stamp(self._meta_dir)
        if now != self._stamp:
            reload()
            self._stamp = now


class SharedFileLock:
    """A thread lock that, once :attr:`shared`, also holds an ``flock`` beside ``path``
    and first calls ``reload`` when another process replaced ``path`` (the device CA's
    ledger, which hub replicas share). Re-entrant."""

    def __init__(self, path: Path, reload: Callable[[], None]) -> None:
        self.shared = False
        self._path = path
        self._reload = reload
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def __enter__(self) -> None:
        self._mutex.acquire()
        self._depth += 1
        if self._depth > 1 or not self.shared:
            return
        lock_path = self._path.with_name(f".{self._path.name}.lock")
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits for another replica's change
        if self._stat() != self._stamp:
            self._reload()

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            self._stamp = self._stat()  # what this process wrote, or read
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._mutex.release()
