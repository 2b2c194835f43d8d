"""The local inference endpoint: HTTP on loopback (or a Unix socket) for device apps.

Standard library only (``http.server``): a device installs nothing more for it.

    POST /v1/predict   {"inputs": [row, ...], "labels": [int, ...]?}
                       -> 200 {"id", "model", "version", "outputs": {"label": [...], ...}}
    POST /v1/labels    {"labels": [{"id": str, "row": int?, "label": int | str | number}]}
                       -> 200 {"joined", "unknown", "duplicate", "invalid", "errors": [...]}
    GET  /v1/model     -> 200 {"model", "version", "inputs", "outputs"} or 503

A row has the model's row shape: ``[16 numbers]`` for a tabular model, nested ``[H][W]``
or ``[H][W][C]`` for images, ``[T][C]`` for windows, or those flattened to H*W*C numbers.
``id`` names the call's predictions (one id per call; its rows by their index, ``row``).
``labels`` in a predict request (optional, one class index per row) are the true labels
when the application knows them at once; when they come later, ``POST /v1/labels`` joins
them to the prediction (agent/labels.py): a class index or name for a classifier, a
number for a regressor, counted for the model version that made the prediction. The
answer counts each outcome and lists why each item that was not joined was not
(``{"index", "error", "detail"}``, the first 100). docs/endpoint.md has the details.

Every refusal of a request is a JSON ``{"error": code, "detail": text}`` with a 4xx
status (503 when no model is active, 500 when the runtime fails on an input that passed
validation); the server never crashes on bad input and counts each code in
:attr:`LocalEndpoint.errors`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socketserver
import threading
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import numpy as np

from agent.labels import MAX_LABELS, parse_labels
from agent.predictor import Predictor
from agent.runtime import Array, InferenceError, NoModelError
from shared.manifest import TensorSpec

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20  # bytes of a request body (4096 rows of 16 numbers fit easily)
# bytes of an oversized body read and dropped so the client gets its 413 cleanly (closing
# with unread data would reset the connection under the response); beyond: just close.
MAX_DISCARD_BYTES = 16 * 2**20
MAX_ROWS = 4096  # rows per request
IDLE_TIMEOUT_S = 30.0  # a kept-alive connection idle this long is closed
SOCKET_MODE = 0o660  # a Unix socket: the agent's user and group may connect
SHUTDOWN_POLL_S = 0.05  # seconds: how soon stop() is noticed by the serving loop


class RequestError(Exception):
    """A refused request: HTTP status, stable code, detail."""

    def __init__(self, status: HTTPStatus, code: str, detail: str) -> None:
        super().__init__(f"{status.value} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class LocalEndpoint:
    """Serves a :class:`~agent.predictor.Predictor` to applications on the device.

    Args:
        predictor: the device's predictor (the active model is read per request).
        host / port: where to listen; loopback by default, port 0 picks a free port.
        unix_socket: listen on this Unix socket path instead of TCP.
        max_rows / max_body_bytes / max_labels: request caps.
    """

    def __init__(
        self,
        predictor: Predictor,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix_socket: Path | None = None,
        max_rows: int = MAX_ROWS,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_labels: int = MAX_LABELS,
    ) -> None:
        self.predictor = predictor
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.max_labels = max_labels
        self.errors: Counter[str] = Counter()  # refusal code -> count
        self.labels: Counter[str] = Counter()  # late label outcome -> count
        self.requests = 0
        self.address: tuple[str, int] = ("", 0)  # bound by start()
        self._server: _TCPServer | _UnixServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Start serving in a background thread.

        Returns:
            ``(host, port)`` bound, or ``(socket path, 0)`` for a Unix socket.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        server: _TCPServer | _UnixServer
        if self.unix_socket is not None:
            path = Path(self.unix_socket)
            path.unlink(missing_ok=True)  # a stale socket from a previous run
            server = _UnixServer(str(path), _UnixHandler)
            os.chmod(path, SOCKET_MODE)
            bound = (str(path), 0)
        else:
            server = _TCPServer((self.host, self.port), _Handler)
            host, port = server.server_address[:2]
            bound = (str(host), int(port))
        server.endpoint = self  # the handler's way back to us
        self._server = server
        self.address = bound
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="local-endpoint",
            daemon=True,
        )
        self._thread.start()
        return bound

    def stop(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        if self.unix_socket is not None:
            Path(self.unix_socket).unlink(missing_ok=True)

    def __enter__(self) -> LocalEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- requests

    def model_info(self) -> dict[str, Any]:
        """Body of ``GET /v1/model``.

        Raises:
            RequestError: 503 when no model is active.
        """
        session, active = self.predictor.session, self.predictor.active
        if session is None or active is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is active")
        return {
            "model": active[0],
            "version": active[1],
            "inputs": [_spec_json(s) for s in session.inputs],
            "outputs": [_spec_json(s) for s in session.outputs],
        }

    def predict(self, body: bytes) -> dict[str, Any]:
        """Body of ``POST /v1/predict`` for a request body.

        Raises:
            RequestError: the request is refused (see the module docstring).
        """
        request = _parse_json(body)
        session = self.predictor.session
        if session is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", "no model is active")
        x = self._inputs(request, session.inputs[0].shape, session.inputs[0].dtype)
        labels = self._labels(request, len(x))
        try:
            model, version, outputs, pid = self.predictor.predict_versioned(x)
        except NoModelError as e:  # deactivated since we looked
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", str(e)) from e
        except InferenceError as e:
            raise RequestError(
                HTTPStatus.INTERNAL_SERVER_ERROR, "inference_failed", e.detail[:500]
            ) from e
        if labels is not None:
            if "label" not in outputs:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, "bad_labels", "the model has no 'label' output"
                )
            self.predictor.record_labels(outputs["label"], labels, model=model, version=version)
            self.predictor.predictions.mark_labelled(pid)  # a later label is a duplicate
        return {
            "id": pid,
            "model": model,
            "version": version,
            "outputs": {name: _to_json(arr) for name, arr in outputs.items()},
        }

    def join_labels(self, body: bytes) -> dict[str, Any]:
        """Body of ``POST /v1/labels`` for a request body.

        Raises:
            RequestError: the request as a whole is refused (bad items are not: the
                answer lists them).
        """
        raw = _parse_json(body).get("labels")
        if not isinstance(raw, list) or not raw:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "bad_labels",
                '"labels" must be a non-empty list of {"id", "row"?, "label"}',
            )
        if len(raw) > self.max_labels:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_many_labels",
                f"{len(raw)} labels > {self.max_labels} per request",
            )
        answer = self.predictor.join_labels(parse_labels(raw)).to_json()
        for outcome in ("joined", "unknown", "duplicate", "invalid"):
            self.labels[outcome] += answer[outcome]
        return answer

    def _inputs(self, request: dict[str, Any], shape: tuple[int | None, ...], dtype: str) -> Array:
        rows = request.get("inputs")
        if not isinstance(rows, list) or not rows:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "bad_inputs", '"inputs" must be a non-empty list of rows'
            )
        if len(rows) > self.max_rows:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_many_rows",
                f"{len(rows)} rows > {self.max_rows} per request",
            )
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # inf is refused just below
                x = np.asarray(rows, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as e:  # ragged, strings, nulls, 1e400
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "bad_inputs", f"inputs are not rows of numbers: {e}"
            ) from e
        row_shape = tuple(shape[1:])
        if x.ndim == 2 and len(row_shape) > 1 and x.shape[1] == _size(row_shape):
            x = x.reshape(len(x), *cast("tuple[int, ...]", row_shape))  # rows sent flattened
        if x.ndim != len(shape) or any(
            want is not None and got != want
            for got, want in zip(x.shape[1:], row_shape, strict=True)
        ):
            width = ", ".join("any" if d is None else str(d) for d in row_shape)
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "wrong_width",
                f"each row must have shape [{width}], got rows of shape {list(x.shape[1:])}",
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():  # e.g. 1e39 overflows float32
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad_inputs", "inputs must be finite")
        return x

    def _labels(self, request: dict[str, Any], rows: int) -> Array | None:
        labels = request.get("labels")
        if labels is None:
            return None
        if (
            not isinstance(labels, list)
            or len(labels) != rows
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
        ):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "bad_labels",
                f'"labels" must be a list of {rows} integers, one per row',
            )
        try:
            return np.asarray(labels, dtype=np.int64)
        except OverflowError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad_labels", str(e)) from e

    def _refused(self, error: RequestError) -> None:
        first = error.code not in self.errors
        self.errors[error.code] += 1
        # Log the first of each kind where an operator sees it, the rest at debug level.
        log.log(logging.WARNING if first else logging.DEBUG, "local endpoint: %s", error)


# --------------------------------------------------------------------------- HTTP plumbing


class _TCPServer(ThreadingHTTPServer):  # daemon handler threads
    endpoint: LocalEndpoint


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    endpoint: LocalEndpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: an application may send many requests
    # Headers and body go out in two writes: with Nagle on, the client's delayed ACK
    # holds the second one back ~40 ms per request.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server_version = "edgefleet-agent"

    @property
    def endpoint(self) -> LocalEndpoint:
        return cast("_TCPServer | _UnixServer", self.server).endpoint

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
            if path == "/v1/predict" and method == "POST":
                self._send(HTTPStatus.OK, endpoint.predict(body))
            elif path == "/v1/labels" and method == "POST":
                self._send(HTTPStatus.OK, endpoint.join_labels(body))
            elif path == "/v1/model" and method == "GET":
                self._send(HTTPStatus.OK, endpoint.model_info())
            elif path in ("/v1/predict", "/v1/labels", "/v1/model"):
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{method} {path}"
                )
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, "not_found", f"no route {path!r}")
        except RequestError as e:
            endpoint._refused(e)
            self._send(e.status, {"error": e.code, "detail": e.detail})
        except Exception:  # a bug of ours: answer 500, keep serving
            log.exception("local endpoint: %s %s failed", method, self.path)
            endpoint.errors["internal"] += 1
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal", "detail": "see agent log"}
            )

    def _read_body(self, endpoint: LocalEndpoint, *, required: bool) -> bytes:
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


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # a TCP option: setting it on a Unix socket fails


def _parse_json(body: bytes) -> dict[str, Any]:
    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number in JSON")

    try:
        request = json.loads(body, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, "bad_json", str(e)[:200]) from e
    if not isinstance(request, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "bad_json", "the body must be a JSON object")
    return request


def _to_json(arr: Array) -> Any:
    """An output as JSON: non-finite floats (a failing model) become null."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return [_finite_or_none(v) for v in arr.tolist()]
    return arr.tolist()


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, list):
        return [_finite_or_none(u) for u in v]
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _size(row_shape: tuple[int | None, ...]) -> int | None:
    """Values in one row, None when a dimension is dynamic."""
    size = 1
    for d in row_shape:
        if d is None:
            return None
        size *= d
    return size


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}
