"""The drill's hub as replicas: ``edgefleet hub serve --dev --replicas N`` over a
PostgreSQL schema of the drill's own, the leader found through ``/health`` and killed.

:func:`start_replicas` creates the schema (``drill_<hex>``), starts the supervisor
(edgefleet/hub_replicas.py) with ``--db`` pointing into it, and waits until every replica
answers and one says it leads. :meth:`ReplicaSet.kill_leader` SIGKILLs the leader
replica's process (found under the supervisor by its ``--replica`` argument) and measures
``takeover_s``: from the kill until another replica's ``/health`` says ``leader``. The
supervisor starts the killed replica again (1 s later, as a follower, with the same MQTT
client ids); :meth:`ReplicaSet.tick` notes when it answers (``back_s``).
:meth:`ReplicaSet.stop` stops the supervisor and drops the schema, whatever happened.

:class:`FailoverClient` is the typed client (edgefleet/client.py) over every replica: a
call that cannot connect is made again on the next replica; any other connection failure
moves the next call there and is raised (the request may have been done; the caller's
retry decides).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from bench.drill_stage import WINDOW_QUERIES, Windows, collect
from edgefleet.client import HubClient
from edgefleet.connection import HubConnectionError
from hub.transport.broker import free_port

log = logging.getLogger("bench.drill")

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START_TIMEOUT_S = 120.0  # every replica answering and one of them the leader
TAKEOVER_TIMEOUT_S = 60.0  # the kill's wait for a new leader before it gives up
HEALTH_TIMEOUT_S = 1.0
ROOT = Path(__file__).resolve().parent.parent


def _psycopg_url(pg_url: str) -> str:
    """The SQLAlchemy URL without its driver, as psycopg takes it."""
    return pg_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _schema_url(pg_url: str, schema: str) -> str:
    """``pg_url`` whose connections use ``schema`` (the hub's tables go there)."""
    sep = "&" if "?" in pg_url else "?"
    return f"{pg_url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _sql(pg_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_url(pg_url), autocommit=True) as c:
        c.execute(statement)


def _free_ports(count: int) -> int:
    """A port ``p`` such that ``p .. p+count-1`` are free now."""
    while True:
        port = free_port()
        if all(_free(port + i) for i in range(1, count)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ReplicaSet:
    """The supervisor, its replicas and the schema they share."""

    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]
    port: int
    count: int
    pg_url: str
    schema: str
    kills: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "failover"
    keep_schema: bool = False  # --keep: left for a look, named in the report
    _returning: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    _last_tick: float = 0.0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port + i}" for i in range(self.count)]

    def health(self, i: int) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.urls[i]}/health", timeout=HEALTH_TIMEOUT_S)
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def leaders(self) -> list[int]:
        """The replicas whose ``/health`` says they lead (one, or none during a take-over)."""
        return [i for i in range(self.count) if (self.health(i) or {}).get("leader")]

    def pid(self, i: int) -> int:
        """The process of replica ``i`` under the supervisor.

        Raises:
            LookupError: the supervisor runs no replica ``i`` now.
        """
        import psutil

        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                args = child.cmdline()
                if "--replica" in args and args[args.index("--replica") + 1] == str(i):
                    return int(child.pid)
        raise LookupError(f"no replica {i} under the supervisor")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Raises: TimeoutError: not every replica answers, or none leads, in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub supervisor exited ({self.proc.returncode})")
            healths = [self.health(i) for i in range(self.count)]
            if all(healths) and any(h and h.get("leader") for h in healths):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub replicas not ready in {timeout_s:g} s: {healths}")
            time.sleep(0.25)

    def kill_leader(self) -> dict[str, Any]:
        """SIGKILL the leader replica; wait until another one leads.

        Returns:
            ``mode`` (``failover``), ``killed_replica`` and its ``pid``, ``new_leader``,
            ``takeover_s`` (None if no replica took over in 60 s: the report says so).
        """
        deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
        while not (leaders := self.leaders()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not leaders:
            record: dict[str, Any] = {"mode": self.mode, "error": "no leader to kill"}
            self.kills.append(record)
            return record
        killed = leaders[0]
        pid = self.pid(killed)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        new_leader, takeover_s = None, None
        while time.monotonic() - t0 < TAKEOVER_TIMEOUT_S:
            others = [i for i in self.leaders() if i != killed]
            if others:
                new_leader, takeover_s = others[0], round(time.monotonic() - t0, 2)
                break
            time.sleep(0.05)
        record = {
            "mode": self.mode,
            "replicas": self.count,
            "killed_replica": killed,
            "pid": pid,
            "new_leader": new_leader,
            "takeover_s": takeover_s,
        }
        self.kills.append(record)
        self._returning.append((killed, t0, record))
        return record

    def tick(self) -> None:
        """Note when a killed replica answers again (the supervisor restarted it)."""
        now = time.monotonic()
        if not self._returning or now - self._last_tick < 0.5:
            return
        self._last_tick = now
        for item in list(self._returning):
            index, t0, record = item
            h = self.health(index)
            if h is not None:
                record["back_s"] = round(time.monotonic() - t0, 2)
                record["back_as"] = "leader" if h.get("leader") else "follower"
                self._returning.remove(item)

    def wait_all_back(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every killed replica answers again: its session kept messages for it."""
        deadline = time.monotonic() + timeout_s
        while self._returning and time.monotonic() < deadline:
            self._last_tick = 0.0
            self.tick()
            time.sleep(0.25)
        for index, _t0, record in self._returning:
            record["back_s"] = None
            log.warning("replica %d did not come back in %g s", index, timeout_s)

    def accepted_windows(self) -> Windows:
        """The same queries as on SQLite, on the replicas' schema."""
        import psycopg

        with psycopg.connect(_psycopg_url(self.pg_url), autocommit=True) as c:
            c.execute(f'SET search_path TO "{self.schema}"')
            return collect(
                {kind: c.execute(q).fetchall() for kind, q in WINDOW_QUERIES.items()}  # type: ignore[arg-type]
            )

    def summary(self) -> dict[str, Any]:
        takeovers = [k.get("takeover_s") for k in self.kills]
        return {
            "mode": self.mode,
            "replicas": self.count,
            "database": "postgresql",
            "schema": self.schema,
            "schema_kept": self.keep_schema,
            "takeover_s": (
                None if not takeovers or None in takeovers else max(t for t in takeovers if t)
            ),
            "restarted_as": "follower, by the supervisor (edgefleet hub serve --replicas)",
            "kills": self.kills,
        }

    def stop(self) -> None:
        """Stop the supervisor (it stops the replicas), then drop the schema."""
        try:
            self._stop_processes()
        finally:
            self.log_file.close()
            try:
                if not self.keep_schema:
                    _sql(self.pg_url, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            except Exception as e:  # the report stands; the schema is named in it
                log.error("could not drop schema %s: %s", self.schema, e)

    def _stop_processes(self) -> None:
        import psutil

        if self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:  # none is left after a clean stop
            with contextlib.suppress(psutil.Error):
                child.kill()


def start_replicas(
    work: Path, broker_url: str, count: int, pg_url: str = "", keep: bool = False
) -> ReplicaSet:
    """``count`` replicas on a new schema of ``pg_url`` (default :data:`DEFAULT_PG`).

    Raises:
        psycopg.Error: the schema could not be created.
        TimeoutError, RuntimeError: the replicas did not start (stopped, schema dropped).
    """
    pg_url = pg_url or DEFAULT_PG
    schema = f"drill_{uuid.uuid4().hex[:10]}"
    _sql(pg_url, f'CREATE SCHEMA "{schema}"')
    data = work / "hub"
    data.mkdir(parents=True, exist_ok=True)
    port = _free_ports(count)
    cmd = [sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--dev", "--data", str(data)]
    cmd += ["--db", _schema_url(pg_url, schema), "--broker", broker_url]
    cmd += ["--port", str(port), "--replicas", str(count)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log_file = (work / "hub.log").open("ab")
    try:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    except OSError:
        log_file.close()
        _sql(pg_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        raise
    replicas = ReplicaSet(proc, log_file, port, count, pg_url, schema, keep_schema=keep)
    try:
        replicas.wait_ready()
    except BaseException:
        replicas.stop()
        raise
    return replicas


class FailoverClient:
    """:class:`HubClient` calls on whichever replica answers (see the module's text)."""

    def __init__(self, urls: list[str], **kw: Any) -> None:
        self.clients = [HubClient(u, **kw) for u in urls]
        self.current = 0

    @property
    def url(self) -> str:
        return self.clients[self.current].url

    def __getattr__(self, name: str) -> Any:
        if not callable(getattr(self.clients[0], name)):
            return getattr(self.clients[self.current], name)

        def call(*a: Any, **kw: Any) -> Any:
            last: HubConnectionError | None = None
            for _ in self.clients:
                try:
                    return getattr(self.clients[self.current], name)(*a, **kw)
                except HubConnectionError as e:
                    self.current = (self.current + 1) % len(self.clients)
                    if not isinstance(e.__cause__, httpx.ConnectError):
                        raise  # the request may have been done: not repeated here
                    last = e
            assert last is not None
            raise last

        return call

    def close(self) -> None:
        for c in self.clients:
            c.close()
