"""Telemetry and drift answers an operator can read (issue "The first hour of a new
operator", items 11a/b): times as typed (ISO 8601, ``-2h``), a 422 naming the accepted
forms, 404 for a device the hub never saw, and "not enough data" instead of a PSI from
one row.

Against a real hub (its MQTT consumer, ingest, SQLite) behind a real uvicorn, fed over a
real Mosquitto as devices feed it; the parser's table of forms on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from waiting import wait_for

from agent.drift import DriftRecorder
from edgefleet.cli import main
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.ml.pipeline import baseline_stats
from hub.telemetry.instants import InstantError, parse_instant
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.sensors import CLASSES, generate

pytestmark = [pytest.mark.broker]

NOW = 1_765_015_200.0  # 2025-12-06T10:00:00Z
FORMS_SAID = "epoch seconds (1796551200), ISO 8601 (2026-12-06T10:00:00Z) or relative"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1765015200", NOW),
        ("1765015200.5", NOW + 0.5),
        ("2025-12-06T10:00:00Z", NOW),
        ("2025-12-06T11:00:00+01:00", NOW),
        ("2025-12-06T10:00:00", NOW),  # no zone: UTC
        ("2025-12-06", NOW - 10 * 3600),
        ("-10m", NOW - 600),
        ("-2h", NOW - 7200),
        ("-1d", NOW - 86400),
        ("-1.5h", NOW - 5400),
        ("now", NOW),
    ],
)
def test_the_accepted_forms_of_a_time(text: str, seconds: float) -> None:
    assert parse_instant("start", text, now=NOW) == seconds


@pytest.mark.parametrize("text", ["yesterday", "-2x", "10m", "-1", "nan", "inf", "2025-13-01"])
def test_anything_else_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(InstantError, match=r"start: .* is not a time: give epoch seconds"):
        parse_instant("start", text, now=NOW)


# ------------------------------------------------------------------ the API


def _baseline() -> dict[str, Any]:
    x, y = generate(4000, seed=0)
    return baseline_stats(x, np.eye(len(CLASSES))[y], 10)


BASELINE = _baseline()


@pytest.fixture(scope="module")
def stage(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Hub, HubClient]]:
    tmp = tmp_path_factory.mktemp("telemetry-readable")
    hub = Hub(
        HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url, client_id="hub-readable")
    ).start()
    hub.drift.use_baselines(lambda model, version: BASELINE if model == "rd" else None)
    api = ApiServer(hub).start()
    viewer = HubClient(api.url, api_key=ApiKeys(hub.engine).create("v", Role.viewer, "t").key)
    yield hub, viewer
    viewer.close()
    api.stop()
    hub.stop()


def publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="readable-pub")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for info in [client.publish(t, p, qos=1) for t, p in messages]:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def drift_window(device: str, seq: int, rows: int) -> tuple[str, bytes]:
    """A drift message as the agent's recorder makes it, of ``rows`` generated rows."""
    rec = DriftRecorder()
    rec.activate("rd", 1, BASELINE)
    x, y = generate(rows, seed=seq)
    rec.observe("rd", 1, x, {"label": y})
    got = rec.drain()
    assert got is not None
    body = {"seq": seq, "model": "rd", "version": 1, "sketch": got.sketch.to_dict()}
    return protocol.topic(device, "drift"), protocol.encode("drift", body, ts=time.time())


@pytest.fixture(scope="module")
def known_device(stage: tuple[Hub, HubClient], mosquitto: Mosquitto) -> str:
    _, viewer = stage
    state = protocol.encode("state", {"status": "online"}, ts=time.time())
    publish(mosquitto, [(protocol.topic("rd-1", "state"), state), drift_window("rd-1", 0, 1)])
    wait_for(lambda: any(d["id"] == "rd-1" for d in viewer.devices()), 20, "rd-1 known")
    wait_for(lambda: viewer.drift("rd", "device", "rd-1")["versions"], 20, "its drift window")
    return "rd-1"


def test_telemetry_takes_iso_and_relative_times(
    stage: tuple[Hub, HubClient], known_device: str
) -> None:
    _, viewer = stage
    iso = viewer.telemetry(device=known_device, start="2025-12-06T10:00:00Z", end=NOW + 3600)
    assert (iso["start"], iso["end"]) == (NOW, NOW + 3600)
    before = time.time()
    rel = viewer.telemetry(device=known_device, start="-2h")
    assert before - 7200 <= rel["start"] <= time.time() - 7200
    assert rel["end"] - rel["start"] == pytest.approx(7200, abs=1)
    group = viewer.telemetry(group="nowhere", start="-1d", end="now")
    assert group["end"] - group["start"] == pytest.approx(86400, abs=1)


@pytest.mark.parametrize("query", ["start=yesterday", "end=10m", "start=-2x"])
def test_a_bad_time_gets_a_422_naming_the_forms(
    stage: tuple[Hub, HubClient], known_device: str, query: str
) -> None:
    _, viewer = stage
    name, value = query.split("=")
    with pytest.raises(HubClientError) as e:
        viewer.telemetry(device=known_device, **{name: value})
    assert e.value.status == 422
    assert e.value.message == f"{name}: {value!r} is not a time: give {FORMS_SAID} (-10m, -2h, -1d)"
    with pytest.raises(HubClientError) as e:
        viewer.drift("rd", since="soon")
    assert e.value.message.startswith(f"since: 'soon' is not a time: give {FORMS_SAID}")


def test_an_unknown_device_is_404_not_an_empty_series(stage: tuple[Hub, HubClient]) -> None:
    _, viewer = stage
    with pytest.raises(HubClientError) as e:
        viewer.telemetry(device="nosuch")
    assert (e.value.status, e.value.message) == (404, "no device 'nosuch'")


def test_drift_of_one_row_says_not_enough_data_instead_of_a_psi(
    stage: tuple[Hub, HubClient], known_device: str
) -> None:
    _, viewer = stage
    report: dict[str, Any] = viewer.drift("rd", "device", known_device, since="-1h")
    assert (report["enough_data"], report["rows"], report["min_rows"]) == (False, 1, 500)
    assert report["note"].startswith("not enough data: 1 row(s) < min_rows 500")
    (v,) = report["versions"]
    assert v["enough_data"] is False and v["drifted"] == [] and v["rows"] == 1
    assert v["note"] == report["note"]
    assert {s["psi"] for s in v["scores"].values()} == {None}
    assert {s["js"] for s in v["scores"].values()} == {None}


def test_drift_with_enough_rows_gives_its_figures(
    stage: tuple[Hub, HubClient], known_device: str, mosquitto: Mosquitto
) -> None:
    _, viewer = stage
    publish(mosquitto, [drift_window("rd-2", 0, 800)])
    wait_for(lambda: viewer.drift("rd", "device", "rd-2")["versions"], 20, "rd-2's window")
    report = viewer.drift("rd", "device", "rd-2")
    assert report["enough_data"] is True and "note" not in report
    (v,) = report["versions"]
    assert all(s["psi"] < 0.2 for s in v["scores"].values()) and v["drifted"] == []
    # a range that ends before any window: no data, said so
    empty = viewer.drift("rd", "device", "rd-2", until=datetime(2020, 1, 1, tzinfo=UTC).isoformat())
    assert empty["versions"] == [] and empty["enough_data"] is False and empty["rows"] == 0


def test_models_performance_since_takes_the_same_forms(
    stage: tuple[Hub, HubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    hub, viewer = stage
    key = ApiKeys(hub.engine).create("cli", Role.viewer, "t").key
    api = ["--hub", viewer.url, "--api-key", key]
    assert main(["models", "performance", "rd", "--since", "2h", "--json", *api]) == 0
    perf = json.loads(capsys.readouterr().out)
    assert perf["end"] - perf["start"] == pytest.approx(7200, abs=5)
    assert main(["models", "performance", "rd", "--since=2020-01-01T00:00:00Z", *api]) == 0
    assert "no labelled predictions in this range" in capsys.readouterr().out
    assert main(["models", "performance", "rd", "--since", "7200", "--json", *api]) == 0
    perf = json.loads(capsys.readouterr().out)
    assert perf["end"] - perf["start"] == pytest.approx(7200, abs=5)
    assert main(["models", "performance", "rd", "--since", "yesterday", *api]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "edgefleet: error: hub answered 422: start: 'yesterday' is not a time: give"
        f" {FORMS_SAID} (-10m, -2h, -1d)"
    )
