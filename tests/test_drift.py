"""Fleet drift on the hub (hub/telemetry/drift.py, hub/api/routes/drift.py): the persistence
rule per
device, group and fleet scopes over real SQLite, and end to end with a real Mosquitto, a
real hub and simulated devices running the real agent, some with a covariate shift."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pg_schemas import hub_engine
from sqlalchemy import Engine
from waiting import wait_for

from agent.drift import DriftRecorder
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.ml.pipeline import baseline_stats
from hub.store.tables import DeviceTag, session
from hub.telemetry.drift import DriftMonitor
from hub.telemetry.drift_policy import Policy, open_alerts
from hub.transport.broker import Mosquitto
from shared.sensors import CLASSES, FEATURES, Shift, generate
from simulator.fleet import Fleet, FleetConfig

TEMP = FEATURES.index("temp_c")
HOT = Shift(offset=tuple(15.0 if j == TEMP else 0.0 for j in range(len(FEATURES))))


def _baseline() -> dict[str, Any]:
    x, y = generate(4000, seed=0)
    return baseline_stats(x, np.eye(len(CLASSES))[y], 10)


BASELINE = _baseline()


def window_body(seq: int, *, shifted: bool, rows: int = 600, seed: int = 0) -> dict[str, Any]:
    """A drift message body made by the agent's recorder from generated rows."""
    rec = DriftRecorder()
    rec.activate("m", 1, BASELINE)
    x, y = generate(rows, seed=seed * 1000 + seq, shift=HOT if shifted else None)
    rec.observe("m", 1, x, {"label": y})
    got = rec.drain()
    assert got is not None
    return {"seq": seq, "model": "m", "version": 1, "sketch": got.sketch.to_dict()}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = hub_engine(tmp_path)
    yield e
    e.dispose()


@pytest.fixture
def monitor(engine: Engine) -> DriftMonitor:
    return DriftMonitor(engine, baselines=lambda model, version: BASELINE)


def feed(monitor: DriftMonitor, device: str, seq: int, ts: float, **kw: Any) -> int:
    with session(monitor.engine) as s:
        dups = monitor.ingest(s, [(device, ts, window_body(seq, **kw))])
        s.commit()
    return dups


def device_alerts(monitor: DriftMonitor) -> dict[str, list[str]]:
    return {
        a.scope_id: list(a.features) for a in open_alerts(monitor.engine) if a.scope == "device"
    }


def test_a_shifted_device_alerts_after_k_of_n_windows_and_clears(monitor: DriftMonitor) -> None:
    # default policy: k=2 of n=3
    feed(monitor, "dev-1", 0, 10.0, shifted=True)
    assert device_alerts(monitor) == {}  # one window is not persistence
    feed(monitor, "dev-1", 1, 20.0, shifted=False)
    assert device_alerts(monitor) == {}
    feed(monitor, "dev-1", 2, 30.0, shifted=True)
    assert device_alerts(monitor) == {"dev-1": ["temp_c"]}  # 2 of the last 3
    alert = open_alerts(monitor.engine)[0]
    assert (alert.model, alert.version, alert.devices) == ("m", 1, ("dev-1",))
    # a replayed window is not counted twice
    assert feed(monitor, "dev-1", 2, 30.0, shifted=True) == 1
    feed(monitor, "dev-1", 3, 40.0, shifted=True)
    assert len(monitor.alerts(state="open")) == 1  # still one alert, updated
    feed(monitor, "dev-1", 4, 50.0, shifted=False)
    feed(monitor, "dev-1", 5, 60.0, shifted=False)
    assert device_alerts(monitor) == {}  # 1 of the last 3
    kinds = [(e.kind, e.scope_id, e.features) for e in monitor.events()]
    assert kinds == [("raised", "dev-1", ["temp_c"]), ("cleared", "dev-1", ["temp_c"])]


def test_a_stationary_device_and_small_windows_never_alert(monitor: DriftMonitor) -> None:
    for seq in range(8):
        feed(monitor, "calm", seq, 10.0 * seq, shifted=False)
    for seq in range(4):  # shifted but below min_rows (500): not evidence
        feed(monitor, "tiny", seq, 10.0 * seq, shifted=True, rows=400)
    assert open_alerts(monitor.engine) == []
    report = monitor.report("m", "device", "calm", None, None)
    (v,) = report["versions"]
    assert v["windows"] == 8 and v["rows"] == 8 * 600 and v["drifted"] == []
    assert max(s["psi"] for s in v["scores"].values()) < Policy().psi_threshold


def test_policy_thresholds_and_persistence_are_per_model(monitor: DriftMonitor) -> None:
    monitor.set_policy("m", Policy(k=1, n=1))
    feed(monitor, "dev-1", 0, 10.0, shifted=True)
    assert device_alerts(monitor) == {"dev-1": ["temp_c"]}  # k=1: at once
    monitor.set_policy("m", Policy(psi_threshold=50.0, js_threshold=1.0, k=1, n=1))
    feed(monitor, "dev-1", 1, 20.0, shifted=True)
    assert device_alerts(monitor) == {}  # nothing reaches those thresholds


def test_group_and_fleet_scopes_merge_devices(monitor: DriftMonitor) -> None:
    monitor.set_policy("m", Policy(scope_window_s=10.0))
    with session(monitor.engine) as s:
        for dev, tag in (("a1", "line-a"), ("a2", "line-a"), ("b1", "line-b"), ("b2", "line-b")):
            s.add(DeviceTag(device_id=dev, tag=tag))
        s.commit()
    # one window per device per 10 s bucket; only line-a's devices are hot, and each of
    # them only in alternate buckets, so no device alone reaches 2 of its last 3
    for b in range(3):
        t = 100.0 + 10 * b + 1
        feed(monitor, "a1", b, t, shifted=b % 2 == 0, seed=1)
        feed(monitor, "a2", b, t, shifted=b % 2 == 1, seed=2)
        feed(monitor, "b1", b, t, shifted=False, seed=3)
        feed(monitor, "b2", b, t, shifted=False, seed=4)
    assert device_alerts(monitor) == {"a1": ["temp_c"]}  # buckets 0 and 2
    monitor.evaluate_scopes(now=125.0)
    scopes = {(a.scope, a.scope_id): a for a in open_alerts(monitor.engine)}
    assert ("group", "line-a") in scopes and ("group", "line-b") not in scopes
    assert scopes[("group", "line-a")].features == ("temp_c",)
    assert set(scopes[("group", "line-a")].devices) == {"a1", "a2"}
    assert ("fleet", "*") in scopes  # half the fleet hot shows in the fleet's merge
    assert scopes[("fleet", "*")].devices == ("a1", "a2")  # line-b's devices did not drift
    group_a = monitor.report("m", "group", "line-a", 100.0, 130.0)["versions"][0]
    group_b = monitor.report("m", "group", "line-b", 100.0, 130.0)["versions"][0]
    assert group_a["devices"] == ["a1", "a2"] and "temp_c" in group_a["drifted"]
    assert group_b["drifted"] == [] and group_b["rows"] == 6 * 600
    # later, quiet buckets clear the group and fleet alerts
    for b in range(3, 6):
        for i, dev in enumerate(("a1", "a2", "b1", "b2")):
            feed(monitor, dev, b, 100.0 + 10 * b + 1, shifted=False, seed=i)
    monitor.evaluate_scopes(now=155.0)
    assert open_alerts(monitor.engine) == []


def test_scope_alerts_name_the_devices_that_drifted_not_every_reporter(
    monitor: DriftMonitor,
) -> None:
    monitor.set_policy("m", Policy(scope_window_s=10.0))
    tags = {"a1": "line-a", "a2": "line-a", "a3": "line-a", "b1": "line-b", "b2": "line-b"}
    with session(monitor.engine) as s:
        s.add_all(DeviceTag(device_id=dev, tag=tag) for dev, tag in tags.items())
        s.commit()
    # a1 and a2 are hot in every bucket; a2 (and the calm a3) send two windows of 300 rows
    # per bucket: under min_rows each, judged on their merge (600 rows)
    for b in range(3):
        t = 100.0 + 10 * b + 1
        feed(monitor, "a1", b, t, shifted=True, seed=1)
        for half in range(2):
            feed(monitor, "a2", 2 * b + half, t + half, shifted=True, rows=300, seed=2)
            feed(monitor, "a3", 2 * b + half, t + half, shifted=False, rows=300, seed=3)
        feed(monitor, "b1", b, t, shifted=False, seed=4)
        feed(monitor, "b2", b, t, shifted=False, seed=5)
    monitor.evaluate_scopes(now=125.0)
    scopes = {(a.scope, a.scope_id): a for a in open_alerts(monitor.engine)}
    assert set(scopes) == {("device", "a1"), ("group", "line-a"), ("fleet", "*")}
    assert scopes[("group", "line-a")].devices == ("a1", "a2")  # not a3
    assert scopes[("fleet", "*")].devices == ("a1", "a2")  # not a3, b1, b2
    assert scopes[("fleet", "*")].features == ("temp_c",)
    raised = {(e.scope, e.scope_id): e.devices for e in monitor.events() if e.kind == "raised"}
    assert raised[("fleet", "*")] == ["a1", "a2"]
    # the device list follows the buckets: once a2 cools down and a3 heats up, the
    # buckets still in the last n name a3 too, a2 while its hot buckets are in them
    for b in range(3, 5):
        t = 100.0 + 10 * b + 1
        feed(monitor, "a1", b, t, shifted=True, seed=1)
        for half in range(2):
            feed(monitor, "a2", 2 * b + half, t + half, shifted=False, rows=300, seed=2)
            feed(monitor, "a3", 2 * b + half, t + half, shifted=True, rows=300, seed=3)
    monitor.evaluate_scopes(now=145.0)  # buckets 2, 3, 4
    scopes = {(a.scope, a.scope_id): a for a in open_alerts(monitor.engine)}
    assert scopes[("fleet", "*")].devices == ("a1", "a2", "a3")
    assert ("group", "line-b") not in scopes


def test_a_scope_drifting_only_in_its_merge_names_the_devices_carrying_it(
    monitor: DriftMonitor,
) -> None:
    # windows of 120 rows: no device is ever judged on its own (min_rows 500), but a
    # bucket of the fleet merges 12 of them; 4 devices are hot, 8 calm
    monitor.set_policy("m", Policy(scope_window_s=10.0))
    hot, calm = [f"h{i}" for i in range(4)], [f"c{i}" for i in range(8)]
    for b in range(3):
        for i, dev in enumerate(hot + calm):
            feed(monitor, dev, b, 100.0 + 10 * b + 1, shifted=dev in hot, rows=120, seed=i)
    monitor.evaluate_scopes(now=125.0)
    (alert,) = open_alerts(monitor.engine)
    assert (alert.scope, alert.features) == ("fleet", ("temp_c",))
    assert alert.devices == tuple(hot)


def test_windows_without_a_baseline_are_kept_unscored(engine: Engine) -> None:
    monitor = DriftMonitor(engine, baselines=lambda model, version: None)
    for seq in range(3):
        feed(monitor, "dev-1", seq, 10.0 * seq, shifted=True)
    assert open_alerts(engine) == []
    assert monitor.counts["no_baseline"] == 3
    assert monitor.report("m", "fleet", None, None, None)["versions"][0]["scores"] is None


# ------------------------------------------------------------------ end to end

DEVICES = 4


@pytest.mark.broker
@pytest.mark.slow
def test_shifted_simulated_devices_raise_alerts_end_to_end(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            chunk_size=4096,
            client_id="hub-drift",
        )
    ).start()
    api = ApiServer(hub).start()
    keys = ApiKeys(hub.engine)
    client = HubClient(api.url, api_key=keys.create("op", Role.operator, "test").key)
    viewer = httpx.Client(
        base_url=api.url,
        headers={"authorization": f"Bearer {keys.create('v', Role.viewer, 'test').key}"},
    )
    fleet = None
    thread: Any = None
    try:
        root = client.enrol("image", client.create_enrol_token()["token"])["root"].encode()
        fleet = Fleet(
            FleetConfig(
                devices=DEVICES,
                host=private_mosquitto.address.host,
                port=private_mosquitto.address.port,
                work_dir=tmp_path / "devices",
                pinned_root=root,
                id_prefix="drift",
                rows_per_s=300.0,
                batch=10,
                tick_s=0.25,
                window_s=2.0,
                fetch_timeout_s=3.0,
            )
        ).start()
        thread = fleet.loop.start_thread()
        wait_for(lambda: len(client.devices(status="online")) == DEVICES, 30, "devices online")
        job = client.train(
            n_train=3000, probation_s=0.5, probation_min_inferences=5, latency_budget_us=50_000.0
        )
        model = client.wait_job(job["id"], timeout=120)["result"]
        name = model["name"]
        # a viewer cannot change the policy; an operator can, and it is audited
        policy = {"min_rows": 400, "k": 2, "n": 3}  # ~600 rows per 2 s window
        assert viewer.put(f"/drift/policies/{name}", json=policy).status_code == 403
        assert client.set_drift_policy(name, **policy)["min_rows"] == 400
        assert client.drift_policy(name)["psi_threshold"] == 0.2
        dep = client.deploy(name, model["version"])
        wait_for(lambda: client.deployment(dep["id"], devices=False)["finished"], 60, "deploy")
        ids = sorted(d.device_id for d in fleet.devices)
        hot_devices, calm = set(ids[:2]), ids[2]
        for d in fleet.devices:
            if d.device_id in hot_devices:
                d.stream.shift = HOT

        def device_alerts() -> set[str]:
            return {
                a["scope_id"]
                for a in client.drift_alerts(state="open", model=name)
                if a["scope"] == "device"
            }

        wait_for(lambda: device_alerts() >= hot_devices, 40, "alerts for the hot devices")
        wait_for(
            lambda: (
                client.drift(name, "device", calm)["versions"]
                and client.drift(name, "device", calm)["versions"][0]["windows"] >= 4
            ),
            20,
            "windows of a calm device",
        )
        assert device_alerts() == hot_devices
        alert = next(a for a in client.drift_alerts(state="open") if a["scope_id"] == ids[0])
        assert "temp_c" in alert["features"]
        hot = client.drift(name, "device", ids[0])["versions"][0]
        assert hot["scores"]["temp_c"]["psi"] > 1.0 and "temp_c" in hot["drifted"]
        cold = client.drift(name, "device", calm)["versions"][0]
        assert cold["drifted"] == [] and cold["scores"]["temp_c"]["psi"] < 0.2
        raised = {e["scope_id"] for e in client.drift_events() if e["kind"] == "raised"}
        assert hot_devices <= raised and calm not in raised
        audit = [r for r in hub_audit(hub) if r.action == "drift.set_policy"]
        assert audit and audit[0].after is not None and audit[0].after["min_rows"] == 400
    finally:
        if fleet is not None:
            fleet.loop.stop()
            thread.join(10)
            fleet.close()
        viewer.close()
        client.close()
        api.stop()
        hub.stop()


def hub_audit(hub: Hub) -> list[Any]:
    from hub.access.audit import AuditLog

    return AuditLog(hub.engine).query(action="drift.set_policy")
