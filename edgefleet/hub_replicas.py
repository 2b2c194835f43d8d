"""``edgefleet hub serve --replicas N``: N hub processes over one PostgreSQL, supervised.

Each replica is ``edgefleet hub serve --replica I --port PORT+I`` with the rest of the
command line as given (the same ``--db``, ``--broker`` and ``--data``): any of them
answers the API, they share the ingest and the fetch answers, and one of them, elected
through PostgreSQL, runs the leader's work (ADR 0032, docs/operations.md). The supervisor
starts them, starts again one that exits (a replica that lost the leader's lock exits on
purpose; one killed keeps its client id, so it collects the messages the broker kept for
its session), and on SIGTERM or Ctrl-C stops them all.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger("edgefleet.replicas")

__all__ = ["Supervisor", "replica_argv"]

POLL_S: Final = 0.5  # seconds between looks at the replicas
RESTART_MIN_S: Final = 1.0  # seconds before a replica is started again
RESTART_MAX_S: Final = 30.0  # the longest wait, for a replica that keeps failing at start
STABLE_S: Final = 30.0  # a replica that ran this long starts again without backing off
STOP_TIMEOUT_S: Final = 30.0  # seconds the replicas get to stop before they are killed


def replica_argv(argv: Sequence[str], index: int, port: int) -> list[str]:
    """The command line of replica ``index``: ``argv`` (the arguments after the program)
    without ``--replicas`` and ``--port``, with this replica's index and port."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--replicas", "--port"):
            skip = True
            continue
        if arg.startswith(("--replicas=", "--port=")):
            continue
        out.append(arg)
    return [*out, "--replica", str(index), "--port", str(port)]


@dataclass
class _Replica:
    index: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = RESTART_MIN_S
    due: float = 0.0  # when to start it again
    starts: int = 0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Runs the replicas until SIGTERM or SIGINT; restarts one that exits."""

    def __init__(self, argv: Sequence[str], replicas: int, port: int) -> None:
        if replicas < 1:
            raise ValueError(f"--replicas must be 1 or more, not {replicas}")
        program = [sys.executable, "-m", "edgefleet.cli"]
        self.replicas = [
            _Replica(i, [*program, *replica_argv(argv, i, port + i)]) for i in range(replicas)
        ]
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for r in self.replicas:
            self._start(r)
        while not self._stopping:
            now = time.monotonic()
            for r in self.replicas:
                self._look_after(r, now)
            time.sleep(POLL_S)
        return self._stop_all()

    def _look_after(self, r: _Replica, now: float) -> None:
        if r.proc is None:
            if now >= r.due:
                self._start(r)
            return
        code = r.proc.poll()
        if code is None:
            return
        r.exits.append(code)
        r.proc = None
        ran = now - r.started
        r.backoff_s = RESTART_MIN_S if ran >= STABLE_S else min(r.backoff_s * 2, RESTART_MAX_S)
        r.due = now + r.backoff_s
        print(
            f"replicas: replica {r.index} exited ({code}) after {ran:.0f} s; "
            f"starting it again in {r.backoff_s:.0f} s",
            flush=True,
        )

    def _start(self, r: _Replica) -> None:
        r.proc = subprocess.Popen(r.argv)
        r.started = time.monotonic()
        r.starts += 1
        print(f"replicas: replica {r.index} started (pid {r.proc.pid})", flush=True)

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _stop_all(self) -> int:
        running = [r.proc for r in self.replicas if r.proc is not None]
        for p in running:
            p.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in running:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        print("replicas: all stopped", flush=True)
        return 0
