"""Every route of the admin API has a method on both Python clients and declares its
response model, the one the clients return (docs/client.md).

The app's routes are walked on a real hub (real Mosquitto, SQLite): a route added
without a client method, or without a response model, fails here by name. Each client
method's description is built with sample arguments and must name its route.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from edgefleet.calls import ROUTES, Call, endpoint
from edgefleet.client import HubClient
from edgefleet.client_async import AsyncHubClient
from hub import Hub, HubConfig, create_app
from hub.api.views.base import View
from hub.transport.broker import Mosquitto

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[1]

# Routes the clients leave alone: the dashboard's own (a browser's session cookie and
# CSRF token, the pages' data), not a script's.
NOT_FOR_CLIENTS = {"ui.sign_in", "ui.sign_out", "ui.drift_series", "ui.groups"}

# Routes without a response model, and why.
NO_MODEL = {
    "metrics": "the Prometheus text format, not JSON",
    "dataset.download": "the file's bytes as uploaded",
    "ui.sign_in": "the dashboard's: a session cookie",
    "ui.sign_out": "the dashboard's: ends the session cookie",
    "ui.drift_series": "the dashboard's chart data",
    "ui.groups": "the dashboard's group list",
}

# operationId -> (client method, sample arguments): the method's call names the route.
METHODS: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
    "stats": ("stats", (), {}),
    "metrics": ("metrics", (), {}),
    "device.enrol": ("enrol", ("d1", "tok"), {}),
    "device.list": ("devices", (), {}),
    "device.get": ("device", ("d1",), {}),
    "device.reenrol": ("reenrol", ("d1",), {}),
    "device.revoke": ("revoke_device", ("d1",), {}),
    "device.tags": ("set_tags", ("d1", ["a"]), {}),
    "enrol_token.create": ("create_enrol_token", (), {}),
    "enrol_token.list": ("enrol_tokens", (), {}),
    "enrol_token.revoke": ("revoke_enrol_token", ("t1",), {}),
    "classes.list": ("device_classes", (), {}),
    "classes.get": ("device_class", ("gateway",), {}),
    "signing_key.list": ("signing_keys", (), {}),
    "signing_key.rotate": ("rotate_signing_key", ("targets",), {}),
    "ca.show": ("ca", (), {}),
    "ca.rotate": ("begin_ca_rotation", (), {"name": "next CA"}),
    "ca.prompt": ("prompt_ca_rotation", (), {}),
    "ca.finish": ("finish_ca_rotation", (), {"force": True}),
    "broker.certificate.renew": ("renew_broker_certificate", (), {}),
    "api_key.create": ("create_api_key", ("k", "viewer"), {}),
    "api_key.list": ("api_keys", (), {}),
    "api_key.revoke": ("revoke_api_key", ("k1",), {}),
    "audit.list": ("audit", (), {}),
    "model.train": ("train", (), {}),
    "model.upload": ("upload", ("m", b"x"), {}),
    "model.retrain": ("retrain", ("m", ["d"]), {}),
    "model.list": ("models", (), {}),
    "model.versions": ("models", ("m",), {}),
    "model.runs": ("runs", ("m",), {}),
    "model.lineage": ("lineage", ("m", 1), {}),
    "job.get": ("job", ("j1",), {}),
    "dataset.upload": ("upload_dataset", ("d", Path("d.csv")), {}),
    "dataset.list": ("datasets", (), {}),
    "dataset.get": ("dataset", ("d:1",), {}),
    "deployment.create": ("create_deployment", ("m",), {}),
    "deployment.list": ("deployments", (), {}),
    "deployment.get": ("deployment", ("x",), {}),
    "deployment.events": ("events", ("x",), {}),
    "rollout.create": ("create_rollout", ("m",), {}),
    "rollout.list": ("rollouts", (), {}),
    "rollout.get": ("rollout", ("r",), {}),
    "rollout.devices": ("rollout_devices", ("r",), {}),
    "rollout.events": ("rollout_events", ("r",), {}),
    "rollout.pause": ("rollout_action", ("r", "pause"), {}),
    "rollout.resume": ("rollout_action", ("r", "resume"), {}),
    "rollout.abort": ("rollout_action", ("r", "abort"), {}),
    "fleet.diff": ("fleet_diff", ({},), {}),
    "fleet.apply": ("fleet_apply", ({},), {}),
    "alert_receiver.create": ("create_receiver", ("r", "http://x"), {}),
    "alert_receiver.list": ("receivers", (), {}),
    "alert_receiver.get": ("receiver", ("r",), {}),
    "alert_receiver.delete": ("delete_receiver", ("r",), {}),
    "alert_receiver.test": ("send_test_alert", ("r",), {}),
    "alert_delivery.list": ("deliveries", (), {}),
    "telemetry.device": ("telemetry", (), {"device": "d1"}),
    "telemetry.group": ("telemetry", (), {"group": "g"}),
    "telemetry.performance": ("performance", ("m",), {}),
    "drift.get": ("drift", ("m",), {}),
    "drift.alerts": ("drift_alerts", (), {}),
    "drift.events": ("drift_events", (), {}),
    "drift.policy": ("drift_policy", ("m",), {}),
    "drift.set_policy": ("set_drift_policy", ("m",), {}),
    "capture.create": ("start_capture", ("m",), {}),
    "capture.get": ("capture", ("c",), {}),
    "capture.datasets": ("capture_datasets", (), {}),
    "capture.dataset": ("capture_dataset", ("c",), {}),
    "capture.label": ("label_capture", ("c", [(0, 1)]), {}),
    "loop.policy.get": ("loop_policy", ("m",), {}),
    "loop.policy.set": ("set_loop_policy", ("m",), {}),
    "loop.runs": ("loop_runs", (), {}),
    "loop.run": ("loop_run", ("x",), {}),
}
# Calls that are more than one request (a stream, polling): methods of each client.
COMPOUND = {"health": "health", "dataset.download": "download_dataset"}


@pytest.fixture(scope="module")
def app(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data = tmp_path_factory.mktemp("client-routes") / "hub"
    hub = Hub(HubConfig(data_dir=data, broker_url=mosquitto.address.url, client_id="hub-cr"))
    hub.start()
    yield create_app(hub)
    hub.stop()


def routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in app.routes if isinstance(r, APIRoute)]


def test_every_route_is_a_call_of_the_clients_at_its_own_path(app: FastAPI) -> None:
    served = {
        r.name: f"{method} {r.path}"
        for r in routes(app)
        for method in r.methods
        if r.name not in NOT_FOR_CLIENTS
    }
    assert served == ROUTES, "a route was added, moved or removed: describe it in ROUTES"
    for op in ROUTES:
        assert op in METHODS or op in COMPOUND, f"{op}: no client method"


def test_each_method_describes_the_call_of_its_route() -> None:
    for op, (name, args, kwargs) in METHODS.items():
        for client in (HubClient, AsyncHubClient):
            described = getattr(client, name)
            assert isinstance(described, endpoint), f"{client.__name__}.{name}"
            call = described.describe(None, *args, **kwargs)
            assert isinstance(call, Call) and call.op == op, (op, name, call)
    for name in COMPOUND.values():
        assert callable(getattr(HubClient, name)) and callable(getattr(AsyncHubClient, name))


def test_every_route_declares_the_response_model_its_call_reads(app: FastAPI) -> None:
    declared = {r.name: r.response_model for r in routes(app)}
    assert {n for n, m in declared.items() if not is_view(m)} == set(NO_MODEL)
    for op, (name, args, kwargs) in METHODS.items():
        model = declared[op]
        if op in NO_MODEL:
            continue
        answer = getattr(HubClient, name).describe(None, *args, **kwargs).answer
        inner = (get_args(model) or (model,))[0]
        # the client reads the route's model (or, for an upload, a subclass of it)
        wanted = (get_args(answer) or (answer,))[0]
        assert issubclass(wanted, inner), (op, answer, model)
        assert (get_args(model) == ()) == (get_args(answer) == ()), (op, "list or one")


def is_view(model: Any) -> bool:
    """A view, or a list of one (a route's own annotation, a dict, is not)."""
    inner = (get_args(model) or (model,))[0]
    return isinstance(inner, type) and issubclass(inner, View)


def test_the_views_import_neither_fastapi_nor_sqlmodel() -> None:
    code = (
        "import sys, importlib, pkgutil, hub.api.views as v\n"
        "for m in pkgutil.iter_modules(v.__path__):\n"
        "    importlib.import_module(f'{v.__name__}.{m.name}')\n"
        "print(sorted(n for n in ('fastapi', 'sqlmodel', 'sqlalchemy') if n in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.strip() == "[]"
