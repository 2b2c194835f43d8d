"""How uvicorn serves the admin API: the connection limits against slow and idle clients
(issue 11, item 6), used by ``edgefleet hub serve`` and the demo's in-process server.

uvicorn (0.55) times out an idle keep-alive connection but has no timeout for reading a
request head: a client that sends one byte every few seconds holds its connection for
ever. :class:`HeadTimeoutH11Protocol` adds one (:data:`HEAD_TIMEOUT_S`). When descriptors
run out anyway, asyncio logs a traceback for every failed accept (thousands a second):
:class:`RateLimitedLog` lets one line per message through per interval, with a count.

The API's socket is bound before anything else starts (:func:`bind_api`), so a taken
port is said at once, with its number and the option to pick another; access logs are
off unless asked for (``server_config(access_log=...)``): ``hub serve &`` in a terminal
would otherwise print a line per request.

For exposure beyond a trusted network put a reverse proxy in front (docs/security.md).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_TIMEOUT_S = 5  # seconds an idle keep-alive connection is kept
HEAD_TIMEOUT_S = 10.0  # seconds a client has to send a whole request head
MAX_HEAD_BYTES = 16 * 2**10  # bytes of a request head (h11's incomplete event size)
MAX_CONNECTIONS = 2000  # open connections (and requests) before new requests get 503
LOG_INTERVAL_S = 10.0  # seconds between two log lines of the same repeated message
FLOODED_LOGGERS = ("asyncio", "uvicorn.error")  # where accept failures are logged


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head has not fully
    arrived within :data:`HEAD_TIMEOUT_S` (a new connection, or a keep-alive one that has
    started its next request)."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a whole request head
            self._arm_head_timer()
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class RateLimitedLog(logging.Filter):
    """Lets through one record per (logger, message) every ``interval_s`` seconds; the
    next one let through says how many were dropped in between."""

    def __init__(
        self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        if dropped := self._dropped.pop(key, 0):
            record.msg = f"{record.msg} ({dropped} more like this not logged)"
        return True


def limit_repeated_logs(interval_s: float = LOG_INTERVAL_S) -> None:
    """Put a :class:`RateLimitedLog` on the loggers where accept failures flood."""
    for name in FLOODED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(RateLimitedLog(interval_s))


class ApiPortTaken(OSError):
    """The API's port is in use (another hub, or another program)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} on {host} is taken (another hub?): stop what uses it, or pick"
            " another port with --port N",
        )
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def bind_api(host: str, port: int) -> socket.socket:
    """A listening socket for the admin API on ``host:port`` (``port`` 0: any free one).

    Raises:
        ApiPortTaken: something else holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ApiPortTaken(host, port) from e
        raise
    sock.listen(2048)  # uvicorn's default backlog
    sock.set_inheritable(True)
    return sock


def server_config(
    app: Any, host: str, port: int, *, access_log: bool | Path = False, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn's configuration for the admin API, with the limits above.

    Args:
        access_log: a line per request: False (default) none, True on uvicorn's stream
            (stdout), a path: appended to that file.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=HeadTimeoutH11Protocol,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        access_log=access_log is not False,
        **kwargs,
    )
    # after the Config, which applies uvicorn's logging config
    limit_repeated_logs()
    if isinstance(access_log, Path):
        _log_access_to(access_log)
    return config


def _log_access_to(path: Path) -> None:
    logger = logging.getLogger("uvicorn.access")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
