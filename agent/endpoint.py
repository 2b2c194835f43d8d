"""The local inference endpoint: HTTP on loopback (or a Unix socket) for device apps.

Standard library only (``http.server``, agent/endpoint_http.py): a device installs
nothing more for it.

    POST /v1/predict   {"inputs": [row, ...], "labels": [int, ...]?}
                       -> 200 {"id", "model", "version",
                               "outputs": {"label": [...], "class": [...], ...}}
    POST /v1/labels    {"labels": [{"id": str, "row": int?, "label": int | str | number}]}
                       -> 200 {"joined", "unknown", "duplicate", "invalid", "errors": [...]}
    GET  /v1/model     -> 200 {"model", "version", "inputs", "outputs", "classes",
                               "features"} or 503
    POST /v1/models/{name}/predict, GET /v1/models/{name}
                       -> the same, for the model ``name`` (404 ``unknown_model``)
    GET  /v1/status    -> 200 {"device_id", "connection", "models", "serving", "update",
                               "spool"} (the daemon's, docs/agent.md)

A row has the model's row shape: ``[16 numbers]`` for a tabular model, nested ``[H][W]``
or ``[H][W][C]`` for images, ``[T][C]`` for windows, or those flattened to H*W*C numbers.
``id`` names the call's predictions (one id per call; its rows by their index, ``row``).
A classifier whose manifest names its classes answers ``class`` (the names) beside
``label`` (the indices). ``labels`` in a predict request (optional, one class index per
row) are the true labels when the application knows them at once; when they come later,
``POST /v1/labels`` joins them to the prediction (agent/labels.py): a class index or
name for a classifier, a number for a regressor, counted for the model version that
made the prediction. The answer counts each outcome and lists why each item that was
not joined was not (``{"index", "error", "detail"}``, the first 100). docs/endpoint.md
has the details.

A device may serve several models. ``/v1/models/{name}/...`` names the model; the bare
``/v1/predict`` and ``/v1/model`` serve a device with one model, and with several answer
409 ``several_models``, listing the models (``models``) and their routes (``routes``).

Every refusal of a request is a JSON ``{"error": code, "detail": text}`` with a 4xx
status (503 when no model is active, 500 when the runtime fails on an input that passed
validation); the server never crashes on bad input and counts each code in
:attr:`LocalEndpoint.errors`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import numpy as np

from agent.endpoint_http import (
    MAX_DISCARD_BYTES,
    RequestError,
    TCPHandler,
    TCPServer,
    UnixHandler,
    UnixServer,
    parse_json,
)
from agent.labels import MAX_LABELS, Task, parse_labels
from agent.predictor import Predictor, ServedModel, SeveralModelsError
from agent.runtime import Array, InferenceError, NoModelError
from shared.manifest import TensorSpec

__all__ = ["MAX_BODY_BYTES", "MAX_DISCARD_BYTES", "MAX_ROWS", "LocalEndpoint", "RequestError"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20  # bytes of a request body (4096 rows of 16 numbers fit easily)
MAX_ROWS = 4096  # rows per request
SOCKET_MODE = 0o660  # a Unix socket: the agent's user and group may connect
SHUTDOWN_POLL_S = 0.05  # seconds: how soon stop() is noticed by the serving loop
ROUTES = ("/v1/predict", "/v1/labels", "/v1/model", "/v1/status")
MODELS_PREFIX = "/v1/models/"  # /v1/models/{name} and /v1/models/{name}/predict

StatusFn = Callable[[], dict[str, Any]]


class LocalEndpoint:
    """Serves a :class:`~agent.predictor.Predictor` to applications on the device.

    Args:
        predictor: the device's predictor (the active model is read per request).
        host / port: where to listen; loopback by default, port 0 picks a free port.
        unix_socket: listen on this Unix socket path instead of TCP.
        max_rows / max_body_bytes / max_labels: request caps.
        status: the body of ``GET /v1/status`` (the daemon's); None: no such route.
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
        status: StatusFn | None = None,
    ) -> None:
        self.predictor = predictor
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.max_labels = max_labels
        self.status = status
        self.errors: Counter[str] = Counter()  # refusal code -> count
        self.labels: Counter[str] = Counter()  # late label outcome -> count
        self.requests = 0
        self.address: tuple[str, int] = ("", 0)  # bound by start()
        self._server: TCPServer | UnixServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Start serving in a background thread.

        Returns:
            ``(host, port)`` bound, or ``(socket path, 0)`` for a Unix socket.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        server: TCPServer | UnixServer
        if self.unix_socket is not None:
            path = Path(self.unix_socket)
            path.unlink(missing_ok=True)  # a stale socket from a previous run
            server = UnixServer(str(path), UnixHandler)
            os.chmod(path, SOCKET_MODE)
            bound = (str(path), 0)
        else:
            server = TCPServer((self.host, self.port), TCPHandler)
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

    def answer(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        """The answer to one request (agent/endpoint_http.py calls this).

        Raises:
            RequestError: the request is refused.
        """
        if path.startswith(MODELS_PREFIX):
            return self._model_route(method, path, body)
        if (method, path) == ("POST", "/v1/predict"):
            return self.predict(body)
        if (method, path) == ("POST", "/v1/labels"):
            return self.join_labels(body)
        if (method, path) == ("GET", "/v1/model"):
            return self.model_info()
        if (method, path) == ("GET", "/v1/status") and self.status is not None:
            return self.status()
        if path in ROUTES and (path != "/v1/status" or self.status is not None):
            raise RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{method} {path}"
            )
        raise RequestError(HTTPStatus.NOT_FOUND, "not_found", f"no route {path!r}")

    def _model_route(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        """``/v1/models/{name}`` (GET) and ``/v1/models/{name}/predict`` (POST)."""
        name, _, rest = path[len(MODELS_PREFIX) :].partition("/")
        if not name or rest not in ("", "predict"):
            raise RequestError(HTTPStatus.NOT_FOUND, "not_found", f"no route {path!r}")
        want = "POST" if rest else "GET"
        if method != want:
            raise RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{method} {path}"
            )
        if name not in self.predictor.models:
            served = ", ".join(sorted(self.predictor.models)) or "none"
            raise RequestError(
                HTTPStatus.NOT_FOUND,
                "unknown_model",
                f"no model {name!r} on this device (it serves: {served})",
                {"models": sorted(self.predictor.models)},
            )
        return self.predict(body, name) if rest else self.model_info(name)

    def _served(self, model: str | None) -> ServedModel:
        """What serves ``model`` (None: the only one).

        Raises:
            RequestError: 409 with several models and none named; 503 with none.
        """
        served = self.predictor.served(model)
        if served is not None:
            return served
        models = sorted(self.predictor.models)
        if model is None and len(models) > 1:
            raise _several(models)
        what = "no model is active" if model is None else f"model {model!r} is not active"
        raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", what)

    def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Body of ``GET /v1/model`` (``model`` None) or ``GET /v1/models/{model}``.

        Raises:
            RequestError: 503 when no model is active, 409 when several are and none is
                named.
        """
        served = self._served(model)
        session, task, features = served.session, served.task, served.features
        active = (served.model, served.version)
        inputs = [_spec_json(s) for s in session.inputs]
        if features and len(inputs) == 1:
            inputs[0]["features"] = list(features)
        outputs = [_spec_json(s) for s in session.outputs]
        for out in outputs:
            if task.classes and out["name"] in ("label", task.output):
                out["classes"] = list(task.classes)
        return {
            "model": active[0],
            "version": active[1],
            "task": "regression" if task.regression else "classification",
            "inputs": inputs,
            "outputs": outputs,
            "classes": list(task.classes),
            "features": list(features),
        }

    def predict(self, body: bytes, model: str | None = None) -> dict[str, Any]:
        """Body of ``POST /v1/predict`` (``model`` None: the only model) or of
        ``POST /v1/models/{model}/predict`` for a request body.

        Raises:
            RequestError: the request is refused (see the module docstring).
        """
        request = parse_json(body)
        served = self._served(model)
        session, task = served.session, served.task
        x = self._inputs(request, session.inputs[0].shape, session.inputs[0].dtype)
        labels = self._labels(request, len(x))
        try:
            model, version, outputs, pid = self.predictor.predict_versioned(x, served.model)
        except NoModelError as e:  # deactivated since we looked
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no_model", str(e)) from e
        except SeveralModelsError as e:  # cannot happen: the call names its model
            raise _several(list(e.models)) from e
        except InferenceError as e:
            raise RequestError(
                HTTPStatus.INTERNAL_SERVER_ERROR, "inference_failed", e.detail[:500]
            ) from e
        if labels is not None:
            same = task is not None and (task.model, task.version) == (model, version)
            predicted = _predicted_labels(outputs, task if same else None)
            if predicted is None:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, "bad_labels", "the model has no 'label' output"
                )
            self.predictor.record_labels(predicted, labels, model=model, version=version)
            self.predictor.predictions.mark_labelled(pid)  # a later label is a duplicate
        answer = {name: _to_json(arr) for name, arr in outputs.items()}
        if task is not None and (task.model, task.version) == (model, version):
            names = _class_names(outputs, task.classes, task.output)
            if names is not None:
                answer["class"] = names
        return {"id": pid, "model": model, "version": version, "outputs": answer}

    def join_labels(self, body: bytes) -> dict[str, Any]:
        """Body of ``POST /v1/labels`` for a request body.

        Raises:
            RequestError: the request as a whole is refused (bad items are not: the
                answer lists them).
        """
        raw = parse_json(body).get("labels")
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

    def refused(self, error: RequestError) -> None:
        first = error.code not in self.errors
        self.errors[error.code] += 1
        # Log the first of each kind where an operator sees it, the rest at debug level.
        log.log(logging.WARNING if first else logging.DEBUG, "local endpoint: %s", error)


def _several(models: list[str]) -> RequestError:
    """409: several models are served, and the request named none."""
    routes = {m: f"{MODELS_PREFIX}{m}/predict" for m in models}
    return RequestError(
        HTTPStatus.CONFLICT,
        "several_models",
        f"this device serves several models ({', '.join(models)}): name one,"
        f" POST {MODELS_PREFIX}{{name}}/predict (GET {MODELS_PREFIX}{{name}} describes it)",
        {"models": models, "routes": routes},
    )


def _predicted_labels(outputs: dict[str, Array], task: Task | None) -> Array | None:
    """The class each row was given: ``label``, else the argmax of a classifier's scores
    (a .tflite classifier has no label output); None for a model with neither."""
    if "label" in outputs:
        return outputs["label"]
    if task is None or task.regression or task.output not in outputs:
        return None
    scores = outputs[task.output]
    return np.argmax(scores, axis=1) if scores.ndim == 2 else None


def _class_names(
    outputs: dict[str, Array], classes: tuple[str, ...], scores: str | None
) -> list[str | None] | None:
    """A classifier's predicted class names, one per row (from ``label``, else the argmax
    of its class scores, the output ``scores``); None when the model names no classes.
    An index out of range (a model that disagrees with its manifest) is null."""
    if not classes or "class" in outputs:
        return None
    if "label" in outputs:
        idx = np.asarray(outputs["label"]).reshape(len(outputs["label"]), -1)[:, 0]
    elif scores is not None and scores in outputs and outputs[scores].ndim == 2:
        idx = np.argmax(outputs[scores], axis=1)
    else:
        return None
    return [classes[i] if 0 <= i < len(classes) else None for i in idx.astype(np.int64).tolist()]


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
