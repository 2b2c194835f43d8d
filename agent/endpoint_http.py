"""HTTP plumbing of the local endpoint (agent/endpoint.py): servers, the request
handler, body reading and JSON answers. Standard library only (``http.server``).

The handler asks its server's endpoint (:class:`Routes`) for the answer to a method, a
path and a body; a :class:`RequestError` becomes a JSON ``{"error", "detail"}`` with its
status, anything else a 500, and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import socketserver
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_DISCARD_BYTES",
    "RequestError",
    "Routes",
    "TCPHandler",
    "TCPServer",
    "UnixHandler",
    "UnixServer",
    "parse_json",
]

log = logging.getLogger("agent.endpoint")

# bytes of an oversized body read and dropped so the client gets its 413 cleanly (closing
# with unread data would reset the connection under the response); beyond: just close.
MAX_DISCARD_BYTES = 16 * 2**20
IDLE_TIMEOUT_S = 30.0  # a kept-alive connection idle this long is closed


class RequestError(Exception):
    """A refused request: HTTP status, stable code, detail (and ``extra`` fields of the
    answer, e.g. the models a 409 names)."""

    def __init__(
        self,
        status: HTTPStatus,
        code: str,
        detail: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status.value} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra or {}


class Routes(Protocol):
    """What the handler needs of the endpoint it serves."""

    requests: int
    errors: Counter[str]
    max_body_bytes: int

    def answer(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        """The JSON answer (200) to a request.

        Raises:
            RequestError: the request is refused.
        """
        ...

    def refused(self, error: RequestError) -> None:
        """Count (and log the first of) a refusal."""
        ...


class TCPServer(ThreadingHTTPServer):  # daemon handler threads
    endpoint: Routes


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    endpoint: Routes


class TCPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: an application may send many requests
    # Headers and body go out in two writes: with Nagle on, the client's delayed ACK
    # holds the second one back ~40 ms per request.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server_version = "edgefleet-agent"

    @property
    def endpoint(self) -> Routes:
        return cast("TCPServer | UnixServer", self.server).endpoint

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        endpoint = self.endpoint
        endpoint.requests += 1
        try:
            # Read any body first, whatever the route: left unread, it would be parsed as
            # the next request on this kept-alive connection.
            body = self._read_body(endpoint, required=method in ("POST", "PUT"))
            path = self.path.split("?", 1)[0]
            self._send(HTTPStatus.OK, endpoint.answer(method, path, body))
        except RequestError as e:
            endpoint.refused(e)
            self._send(e.status, {"error": e.code, "detail": e.detail, **e.extra})
        except Exception:  # a bug of ours: answer 500, keep serving
            log.exception("local endpoint: %s %s failed", method, self.path)
            endpoint.errors["internal"] += 1
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal", "detail": "see agent log"}
            )

    def _read_body(self, endpoint: Routes, *, required: bool) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send a Content-Length, not chunks"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            if not required:
                return b""
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "length_required", "no Content-Length")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad_request", f"Content-Length {raw!r}")
        if length > endpoint.max_body_bytes:
            if length <= MAX_DISCARD_BYTES:
                self._discard(length)
            else:
                self.close_connection = True  # the body stays unread: the connection is done
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"body of {length} bytes > {endpoint.max_body_bytes}",
            )
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad_request", "body shorter than declared")
        return body

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 2**16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(status.value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local endpoint %s: " + format, self.address_string(), *args)


class UnixHandler(TCPHandler):
    disable_nagle_algorithm = False  # a TCP option: setting it on a Unix socket fails


def parse_json(body: bytes) -> dict[str, Any]:
    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number in JSON")

    try:
        request = json.loads(body, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, "bad_json", str(e)[:200]) from e
    if not isinstance(request, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "bad_json", "the body must be a JSON object")
    return request
