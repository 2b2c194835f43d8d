"""A real webhook receiver for the alert tests: an ``http.server`` on a loopback port in a
thread, checking each request's signature the way docs/alerts.md tells a receiver to
(its own few lines of ``hmac``, not the hub's code) and recording what arrived.

It answers from a script of statuses (then 200), optionally after a delay, and 401 to a
request whose signature does not check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from waiting import wait_for


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature checked against the receiver's secret
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result

    @property
    def alert(self) -> dict[str, Any]:
        [alert] = self.payload["alerts"]
        return dict(alert)


def check(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """docs/alerts.md's check, line for line."""
    ts = headers.get("x-edgefleet-timestamp", "")
    sig = headers.get("x-edgefleet-signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance_s:
        return False  # missing, or a replay
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(sig, f"sha256={mac}")


class WebhookReceiver:
    def __init__(
        self, secret: str, answers: tuple[int, ...] = (), delay_s: float = 0.0, port: int = 0
    ) -> None:
        self.secret = secret
        self.answers = list(answers)
        self.delay_s = delay_s
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(headers, body)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        signed = check(self.secret, headers, body)
        with self._lock:
            status = (self.answers.pop(0) if self.answers else 200) if signed else 401
            self.received.append(Received(time.monotonic(), headers, body, signed, status))
        return status

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alerts(self, alertname: str | None = None) -> list[Received]:
        with self._lock:
            got = list(self.received)
        return [r for r in got if alertname is None or r.alert["labels"]["alertname"] == alertname]

    def wait(self, count: int, alertname: str | None = None, timeout: float = 20) -> list[Received]:
        """The first ``count`` requests (of ``alertname``), once they arrived."""
        wait_for(lambda: len(self.alerts(alertname)) >= count, timeout, f"{count} webhooks")
        return self.alerts(alertname)[:count]


def closed_port() -> int:
    """A loopback port nothing listens on (a receiver that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
