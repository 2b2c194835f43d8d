"""The local inference endpoint: a real ThreadingHTTPServer on loopback, real onnxruntime."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import make_conv_onnx, make_log_onnx, make_mlp_onnx  # tests/models.py

from agent.endpoint import MAX_DISCARD_BYTES, LocalEndpoint
from agent.predictor import Predictor
from agent.runtime import ModelSession, OnnxBackend
from shared.sensors import CLASSES, FEATURES, generate

MAX_ROWS = 32
MAX_BODY = 64 * 2**10  # bytes: small caps keep the oversized requests small


@pytest.fixture(scope="module")
def mlp() -> ModelSession:
    return OnnxBackend().load_bytes(make_mlp_onnx(hidden=(16,), n=500))


@pytest.fixture
def predictor(mlp: ModelSession) -> Predictor:
    p = Predictor()
    p.swap(mlp, "vibration", 7)
    return p


@pytest.fixture
def endpoint(predictor: Predictor) -> Iterator[LocalEndpoint]:
    with LocalEndpoint(predictor, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY) as ep:
        yield ep


@pytest.fixture
def conn(endpoint: LocalEndpoint) -> Iterator[http.client.HTTPConnection]:
    host, port = endpoint.address
    c = http.client.HTTPConnection(host, port, timeout=10)
    yield c
    c.close()


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def good_request(conn: http.client.HTTPConnection) -> None:
    status, reply = call(conn, "POST", "/v1/predict", {"inputs": [[1.0] * 16]})
    assert status == 200, reply
    assert reply["version"] == 7 and len(reply["outputs"]["label"]) == 1


def test_predict_returns_the_models_outputs(
    conn: http.client.HTTPConnection, mlp: ModelSession
) -> None:
    x, _ = generate(5, seed=31)
    status, reply = call(conn, "POST", "/v1/predict", {"inputs": x.tolist()})
    assert status == 200
    assert (reply["model"], reply["version"]) == ("vibration", 7)
    label, probs = mlp.native.run(None, {"input": x})
    assert reply["outputs"]["label"] == label.tolist()
    np.testing.assert_array_equal(np.asarray(reply["outputs"]["probabilities"], np.float32), probs)


def test_labels_are_recorded(
    conn: http.client.HTTPConnection, predictor: Predictor, mlp: ModelSession
) -> None:
    x, y = generate(MAX_ROWS, seed=32)
    status, reply = call(conn, "POST", "/v1/predict", {"inputs": x.tolist(), "labels": y.tolist()})
    assert status == 200
    window = predictor.recorder.drain().summary("vibration", 7)  # for the version that ran
    assert (window["count"], window["rows"], window["labelled"]) == (1, MAX_ROWS, MAX_ROWS)
    assert window["correct"] == sum(
        a == b for a, b in zip(reply["outputs"]["label"], y.tolist(), strict=True)
    )


def test_model_info(conn: http.client.HTTPConnection) -> None:
    status, reply = call(conn, "GET", "/v1/model")
    assert status == 200
    assert reply == {  # swapped in without names: indices only, and no class key in answers
        "model": "vibration",
        "version": 7,
        "task": "classification",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 16]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [None]},
            {"name": "probabilities", "dtype": "float32", "shape": [None, 4]},
        ],
        "classes": [],
        "features": [],
    }
    status, reply = call(conn, "POST", "/v1/predict", {"inputs": [ROW]})
    assert status == 200 and "class" not in reply["outputs"]


def test_predictions_name_their_classes_and_the_model_its_features(
    mlp: ModelSession,
) -> None:
    """What an application sees when the manifest names classes and features."""
    p = Predictor()
    p.swap(mlp, "vibration", 8, CLASSES, FEATURES)
    x, _ = generate(6, seed=33)
    with LocalEndpoint(p) as ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        status, reply = call(c, "POST", "/v1/predict", {"inputs": x.tolist()})
        assert status == 200
        labels = reply["outputs"]["label"]
        assert reply["outputs"]["class"] == [CLASSES[i] for i in labels]
        status, info = call(c, "GET", "/v1/model")
        c.close()
    assert status == 200
    assert info["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": [None, 16], "features": list(FEATURES)}
    ]
    assert info["outputs"][0] == {
        "name": "label",
        "dtype": "int64",
        "shape": [None],
        "classes": list(CLASSES),
    }
    assert (info["classes"], info["features"]) == (list(CLASSES), list(FEATURES))


ROW = [1.0] * 16

BAD_REQUESTS: list[tuple[str, str, str, bytes | dict[str, Any] | None, int, str]] = [
    # (id, method, path, body, status, error code)
    ("not json", "POST", "/v1/predict", b"{inputs: nope", 400, "bad_json"),
    ("not utf-8", "POST", "/v1/predict", b"\xff\xfe{}", 400, "bad_json"),
    ("not an object", "POST", "/v1/predict", b"[[1, 2]]", 400, "bad_json"),
    ("NaN literal", "POST", "/v1/predict", b'{"inputs": [[NaN]]}', 400, "bad_json"),
    ("deep nesting", "POST", "/v1/predict", b"[" * 3000 + b"]" * 3000, 400, "bad_json"),
    ("no inputs", "POST", "/v1/predict", {"rows": [ROW]}, 400, "bad_inputs"),
    ("empty inputs", "POST", "/v1/predict", {"inputs": []}, 400, "bad_inputs"),
    ("inputs not a list", "POST", "/v1/predict", {"inputs": "ROW"}, 400, "bad_inputs"),
    ("ragged rows", "POST", "/v1/predict", {"inputs": [ROW, ROW[:5]]}, 400, "bad_inputs"),
    ("strings", "POST", "/v1/predict", {"inputs": [["a"] * 16]}, 400, "bad_inputs"),
    ("nulls", "POST", "/v1/predict", {"inputs": [[None] * 16]}, 400, "bad_inputs"),
    ("float32 overflow", "POST", "/v1/predict", {"inputs": [[1e39] * 16]}, 400, "bad_inputs"),
    ("huge int", "POST", "/v1/predict", {"inputs": [[10**400] * 16]}, 400, "bad_inputs"),
    ("wrong width", "POST", "/v1/predict", {"inputs": [[1.0] * 15]}, 400, "wrong_width"),
    ("a bare row", "POST", "/v1/predict", {"inputs": ROW}, 400, "wrong_width"),
    ("3-d", "POST", "/v1/predict", {"inputs": [[ROW]]}, 400, "wrong_width"),
    (
        "too many rows",
        "POST",
        "/v1/predict",
        {"inputs": [ROW] * (MAX_ROWS + 1)},
        413,
        "too_many_rows",
    ),
    ("body too large", "POST", "/v1/predict", b" " * (MAX_BODY + 1), 413, "too_large"),
    (
        "labels count",
        "POST",
        "/v1/predict",
        {"inputs": [ROW, ROW], "labels": [1]},
        400,
        "bad_labels",
    ),
    ("labels type", "POST", "/v1/predict", {"inputs": [ROW], "labels": ["x"]}, 400, "bad_labels"),
    ("labels bool", "POST", "/v1/predict", {"inputs": [ROW], "labels": [True]}, 400, "bad_labels"),
    ("labels huge", "POST", "/v1/predict", {"inputs": [ROW], "labels": [2**70]}, 400, "bad_labels"),
    ("unknown path", "GET", "/v2/anything", None, 404, "not_found"),
    ("GET predict", "GET", "/v1/predict", None, 405, "method_not_allowed"),
    ("POST model", "POST", "/v1/model", {}, 405, "method_not_allowed"),
    ("DELETE", "DELETE", "/v1/model", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [row[1:] for row in BAD_REQUESTS],
    ids=[row[0] for row in BAD_REQUESTS],
)
def test_bad_requests_get_their_4xx_and_the_server_keeps_serving(
    conn: http.client.HTTPConnection,
    endpoint: LocalEndpoint,
    predictor: Predictor,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    got_status, reply = call(conn, method, path, body)
    assert (got_status, reply["error"]) == (status, code), reply
    assert reply["detail"]
    assert endpoint.errors[code] == 1
    stats = predictor.recorder.drain()
    assert stats.count == 0  # refused before inference: nothing counted against the model
    good_request(conn)  # same connection (keep-alive), still served


def test_missing_content_length_is_411(endpoint: LocalEndpoint) -> None:
    host, port = endpoint.address
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.putrequest("POST", "/v1/predict")
    c.endheaders()
    response = c.getresponse()
    assert response.status == 411 and json.loads(response.read())["error"] == "length_required"
    c.close()
    c = http.client.HTTPConnection(host, port, timeout=10)
    good_request(c)
    c.close()


def test_a_huge_declared_body_is_refused_unread(endpoint: LocalEndpoint) -> None:
    host, port = endpoint.address
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {MAX_DISCARD_BYTES + 1}\r\n\r\n".encode()
        )
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413 ") and "Connection: close" in head
    c = http.client.HTTPConnection(host, port, timeout=10)
    good_request(c)
    c.close()


def test_garbage_on_the_socket_does_not_stop_the_server(endpoint: LocalEndpoint) -> None:
    host, port = endpoint.address
    for junk in (b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"POST /v1/predict HTTP/1.1\r\n"):
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.recv(65536)
    c = http.client.HTTPConnection(host, port, timeout=10)
    good_request(c)
    c.close()


def test_no_active_model_is_503(conn: http.client.HTTPConnection, predictor: Predictor) -> None:
    predictor.deactivate()
    assert call(conn, "GET", "/v1/model") == (
        503,
        {"error": "no_model", "detail": "no model is active"},
    )
    status, reply = call(conn, "POST", "/v1/predict", {"inputs": [ROW]})
    assert (status, reply["error"]) == (503, "no_model")


def test_non_finite_outputs_are_null_in_json() -> None:
    p = Predictor()
    p.swap(OnnxBackend().load_bytes(make_log_onnx(16)), "log", 1)
    with LocalEndpoint(p) as ep:
        host, port = ep.address
        c = http.client.HTTPConnection(host, port, timeout=10)
        row = [1.0] * 16
        row[3] = -1.0  # log(-1) = NaN
        status, reply = call(c, "POST", "/v1/predict", {"inputs": [row]})
        c.close()
    assert status == 200
    assert reply["outputs"]["probabilities"][0][3] is None
    assert reply["outputs"]["probabilities"][0][0] == 0.0
    assert p.recorder.drain().nonfinite == 1


def test_concurrent_clients(endpoint: LocalEndpoint, predictor: Predictor) -> None:
    host, port = endpoint.address
    failures: list[BaseException] = []

    def client() -> None:
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            for _ in range(20):
                good_request(c)
            c.close()
        except BaseException as e:  # collected for the assertion below
            failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert predictor.recorder.drain().count == 80


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def test_unix_socket(tmp_path: Path, predictor: Predictor) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("stale")  # a leftover from a crashed run is replaced
    ep = LocalEndpoint(predictor, unix_socket=path)
    assert ep.start() == (str(path), 0)
    try:
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o660
        c = _UnixConnection(str(path))
        good_request(c)
        status, reply = call(c, "POST", "/v1/predict", b"nope")
        assert (status, reply["error"]) == (400, "bad_json")
        good_request(c)
        c.close()
    finally:
        ep.stop()
    assert not path.exists()
    ep.stop()  # idempotent


# ------------------------------------------------------------ conv nets and regressors


@pytest.fixture(scope="module")
def conv() -> ModelSession:
    return OnnxBackend().load_bytes(make_conv_onnx((6, 6, 3), task="regression"))


def serve(session: ModelSession, model: str = "conv") -> tuple[Predictor, LocalEndpoint]:
    p = Predictor()
    p.swap(session, model, 1)
    return p, LocalEndpoint(p, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)


def test_an_image_regressor_takes_nested_or_flattened_rows(conv: ModelSession) -> None:
    x = np.random.default_rng(9).normal(size=(4, 6, 6, 3)).astype(np.float32)
    (want,) = conv.native.run(None, {"input": x})
    p, ep = serve(conv)
    with ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        nested = call(c, "POST", "/v1/predict", {"inputs": x.tolist()})
        flat = call(c, "POST", "/v1/predict", {"inputs": x.reshape(4, -1).tolist()})
        status, info = call(c, "GET", "/v1/model")
        c.close()
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 6, 6, 3]}]
    assert info["outputs"] == [{"name": "value", "dtype": "float32", "shape": [None, 1]}]
    for status, reply in (nested, flat):
        assert status == 200, reply
        assert list(reply["outputs"]) == ["value"]
        np.testing.assert_array_equal(np.asarray(reply["outputs"]["value"], np.float32), want)
    assert p.recorder.drain().rows == 8


IMAGE = np.zeros((6, 6, 3)).tolist()


@pytest.mark.parametrize(
    ("inputs", "code", "detail"),
    [
        ([np.zeros((6, 6)).tolist()], "wrong_width", "[6, 6, 3], got rows of shape [6, 6]"),
        ([np.zeros((6, 6, 4)).tolist()], "wrong_width", "got rows of shape [6, 6, 4]"),
        ([[0.0] * 107], "wrong_width", "got rows of shape [107]"),  # flattened, one short
        ([IMAGE, np.zeros((6, 5, 3)).tolist()], "bad_inputs", "not rows of numbers"),  # ragged
        (IMAGE, "wrong_width", "[6, 6, 3]"),  # one bare image, not a list of them
    ],
    ids=["grey", "4 channels", "flat short", "ragged", "bare image"],
)
def test_rows_that_are_not_the_models_image_are_refused(
    conv: ModelSession, inputs: Any, code: str, detail: str
) -> None:
    p, ep = serve(conv)
    with ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        status, reply = call(c, "POST", "/v1/predict", {"inputs": inputs})
        ok, _ = call(c, "POST", "/v1/predict", {"inputs": [IMAGE]})
        c.close()
    assert (status, reply["error"]) == (400, code), reply
    assert detail in reply["detail"]
    assert ok == 200 and p.recorder.drain().count == 1


def test_status_is_served_when_the_agent_gives_one(predictor: Predictor) -> None:
    with LocalEndpoint(predictor) as bare:  # an endpoint without a daemon: no such route
        c = http.client.HTTPConnection(*bare.address, timeout=10)
        assert call(c, "GET", "/v1/status")[0] == 404
        c.close()
    with LocalEndpoint(predictor, status=lambda: {"connection": {"connected": True}}) as ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        assert call(c, "GET", "/v1/status") == (200, {"connection": {"connected": True}})
        assert call(c, "POST", "/v1/status", {})[1]["error"] == "method_not_allowed"
        c.close()
