"""API keys, roles, the audit log and one-time enrolment tokens, against a real hub
served by uvicorn on loopback (httpx as the client) and a real Mosquitto."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from fastapi.routing import APIRoute

from agent.identity import DeviceIdentity
from edgefleet.cli import main as cli
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig, create_app
from hub.access.keys import DEV_KEY, ApiKeys, Role
from hub.store.tables import Device, session
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker]

# Every route of the app and the least role it needs; None: public. A route missing here
# fails test_the_role_table_covers_every_route; one whose check is missing or wrong fails
# test_each_role_can_do_what_it_should_and_no_more.
ROUTES: dict[tuple[str, str], Role | None] = {
    ("GET", "/health"): None,  # liveness probe
    ("POST", "/enrol"): None,  # the one-time enrolment token is its credential
    ("GET", "/stats"): Role.viewer,
    ("GET", "/devices"): Role.viewer,
    ("GET", "/devices/{device_id}"): Role.viewer,
    ("POST", "/devices/{device_id}/reenrol"): Role.admin,
    ("POST", "/devices/{device_id}/revoke"): Role.admin,
    ("GET", "/signing-keys"): Role.admin,
    ("POST", "/signing-keys/{role}/rotate"): Role.admin,
    ("GET", "/ca"): Role.admin,
    ("POST", "/ca/rotation"): Role.admin,
    ("POST", "/ca/rotation/prompt"): Role.admin,
    ("POST", "/ca/rotation/finish"): Role.admin,
    ("POST", "/broker/certificate"): Role.admin,
    ("POST", "/enrol-tokens"): Role.operator,
    ("GET", "/enrol-tokens"): Role.operator,
    ("DELETE", "/enrol-tokens/{token_id}"): Role.operator,
    ("POST", "/models/train"): Role.operator,
    ("POST", "/models/{name}/upload"): Role.operator,
    ("GET", "/jobs/{job_id}"): Role.viewer,
    ("GET", "/models"): Role.viewer,
    ("GET", "/models/{name}"): Role.viewer,
    ("POST", "/deployments"): Role.operator,
    ("GET", "/deployments"): Role.viewer,
    ("GET", "/deployments/{deployment_id}"): Role.viewer,
    ("GET", "/deployments/{deployment_id}/events"): Role.viewer,
    ("POST", "/api-keys"): Role.admin,
    ("GET", "/api-keys"): Role.admin,
    ("DELETE", "/api-keys/{keyid}"): Role.admin,
    ("GET", "/audit"): Role.admin,
    ("POST", "/rollouts"): Role.operator,
    ("GET", "/rollouts"): Role.viewer,
    ("GET", "/rollouts/{rollout_id}"): Role.viewer,
    ("GET", "/rollouts/{rollout_id}/devices"): Role.viewer,
    ("GET", "/rollouts/{rollout_id}/events"): Role.viewer,
    ("POST", "/rollouts/{rollout_id}/pause"): Role.operator,
    ("POST", "/rollouts/{rollout_id}/resume"): Role.operator,
    ("POST", "/rollouts/{rollout_id}/abort"): Role.operator,
    ("PUT", "/devices/{device_id}/tags"): Role.operator,
    ("GET", "/telemetry/devices/{device_id}"): Role.viewer,
    ("GET", "/telemetry/groups/{group}"): Role.viewer,
    ("GET", "/telemetry/performance"): Role.viewer,
    ("GET", "/drift/models/{model}"): Role.viewer,
    ("GET", "/drift/alerts"): Role.viewer,
    ("GET", "/drift/events"): Role.viewer,
    ("GET", "/drift/policies/{model}"): Role.viewer,
    ("PUT", "/drift/policies/{model}"): Role.operator,
    ("POST", "/captures"): Role.operator,
    ("GET", "/captures/{capture_id}"): Role.viewer,
    ("GET", "/captures/datasets"): Role.viewer,
    ("GET", "/captures/datasets/{dataset_id}"): Role.viewer,
    ("POST", "/captures/datasets/{dataset_id}/labels"): Role.operator,
    ("POST", "/datasets/{name}"): Role.operator,
    ("GET", "/datasets"): Role.viewer,
    ("GET", "/datasets/{ref}"): Role.viewer,
    ("GET", "/datasets/{ref}/file"): Role.viewer,
    ("GET", "/models/{name}/runs"): Role.viewer,
    ("GET", "/device-classes"): Role.viewer,
    ("GET", "/metrics"): Role.viewer,
    ("GET", "/device-classes/{name}"): Role.viewer,
    ("GET", "/models/{name}/versions/{version}/lineage"): Role.viewer,
    ("POST", "/models/{name}/retrain"): Role.operator,
    ("GET", "/loop/policies/{name}"): Role.viewer,
    ("PUT", "/loop/policies/{name}"): Role.operator,
    ("POST", "/fleet/diff"): Role.viewer,
    ("POST", "/fleet/apply"): Role.operator,
    ("GET", "/loop/runs"): Role.viewer,
    ("GET", "/loop/runs/{run_id}"): Role.viewer,
    ("POST", "/alert-receivers"): Role.admin,
    ("GET", "/alert-receivers"): Role.admin,  # a receiver's URL may carry a token
    ("GET", "/alert-receivers/{name}"): Role.admin,
    ("DELETE", "/alert-receivers/{name}"): Role.admin,
    ("POST", "/alert-receivers/{name}/test"): Role.admin,
    ("GET", "/alert-deliveries"): Role.viewer,
    ("POST", "/ui/session"): None,  # the dashboard's sign-in: the key is in the body
    ("POST", "/ui/session/end"): Role.viewer,
    ("GET", "/ui/data/drift-series"): Role.viewer,
    ("GET", "/ui/data/groups"): Role.viewer,
}


@dataclass
class Stage:
    hub: Hub
    api: ApiServer
    keys: dict[Role, str]  # one key per role
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api.url

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=10)
        self.clients.append(client)
        return client

    def as_role(self, role: Role | None) -> httpx.Client:
        return self.http(self.keys[role] if role else None)

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        r = self.as_role(Role.admin).get("/audit", params=params)
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        return records


def start_stage(
    mosquitto: Mosquitto, tmp_path: Path, *, dev_mode: bool = False, **config: Any
) -> Stage:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=mosquitto.address.url,
            client_id=f"hub-auth-{tmp_path.name}",
            dev_mode=dev_mode,
            **config,
        )
    ).start()
    keys = ApiKeys(hub.engine)
    made = {role: keys.create(f"{role}-key", role, "test").key for role in Role}
    return Stage(hub, ApiServer(hub).start(), made)


def stop_stage(stage: Stage) -> None:
    for c in stage.clients:
        c.close()
    stage.api.stop()
    stage.hub.stop()


@pytest.fixture(scope="module")
def shared(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """One hub for the read-mostly role matrix."""
    stage = start_stage(mosquitto, tmp_path_factory.mktemp("roles"))
    yield stage
    stop_stage(stage)


@pytest.fixture
def stage(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    """A hub of this test's own."""
    s = start_stage(mosquitto, tmp_path)
    yield s
    stop_stage(s)


def fill(path: str) -> str:
    """A route's path with its parameters replaced by ids that exist nowhere."""
    return re.sub(r"\{[^}]+\}", "nothing-here", path)


# ---------------------------------------------------------------- roles


def test_the_role_table_covers_every_route(shared: Stage) -> None:
    app = create_app(shared.hub)
    routes = {
        (method, r.path) for r in app.routes if isinstance(r, APIRoute) for method in r.methods
    }
    assert routes == set(ROUTES), "a route was added or removed: give it a row in ROUTES"


@pytest.mark.parametrize("role", [None, *Role], ids=["no-key", *[r.value for r in Role]])
def test_each_role_can_do_what_it_should_and_no_more(shared: Stage, role: Role | None) -> None:
    http = shared.as_role(role)
    for (method, path), needed in ROUTES.items():
        # No body and ids that do not exist: an allowed call gets a 2xx, 400, 404 or 422
        # and changes nothing.
        r = http.request(method, fill(path))
        what = f"{method} {path} as {role or 'no key'}: {r.status_code} {r.text[:200]}"
        assert r.status_code < 500, what
        if needed is None:
            assert r.status_code not in (401, 403), what
        elif role is None:
            assert r.status_code == 401, what
            assert r.headers["www-authenticate"] == "Bearer", what
        elif role.allows(needed):
            assert r.status_code not in (401, 403), what
        else:
            assert r.status_code == 403, what
            assert f"role {needed.value} required" in r.json()["detail"], what


def test_every_mutating_call_is_audited(stage: Stage) -> None:
    """Every POST, PUT, PATCH and DELETE route leaves a record of the call (who, what,
    when, the outcome), whether it succeeded, was refused or failed."""
    app = create_app(stage.hub)
    mutating = [
        (method, r.path, r.name)
        for r in app.routes
        if isinstance(r, APIRoute)
        for method in r.methods
        if method in ("POST", "PUT", "PATCH", "DELETE")
    ]
    assert len(mutating) >= 20
    admin = stage.as_role(Role.admin)
    for method, path, name in mutating:
        r = admin.request(method, fill(path))
        assert r.status_code < 500, (method, path, r.text)
        records = [a for a in stage.audit(action=name, limit=500) if a["path"] == fill(path)]
        assert records, f"{method} {path}: no audit record"
        latest = records[0]
        assert latest["method"] == method and latest["status"] == r.status_code, latest
        assert latest["ts"] > 0 and latest["outcome"] in ("ok", "denied", "error"), latest
        if path != "/enrol":  # (its credential is the token, recorded by its id)
            assert latest["role"] == "admin" and latest["actor_keyid"], latest


def test_health_is_public_and_says_nothing_sensitive(shared: Stage) -> None:
    r = shared.http().get("/health")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "broker_connected": True, "leader": True, "replica": None}


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "missing API key"),
        ("not-a-key", "malformed API key"),
        ("ef_0123456789abcdef", "malformed API key"),
        ("ef_0123456789abcdef_wrongsecret", "invalid API key"),
        ("ef_NOTHEX_secret", "malformed API key"),
        (DEV_KEY, "the development key is refused outside development mode"),
    ],
    ids=["missing", "garbage", "no-secret", "unknown", "bad-keyid", "dev-key"],
)
def test_unusable_keys_get_401(shared: Stage, key: str | None, message: str) -> None:
    r = shared.http(key).get("/devices")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert message in r.json()["detail"]


def test_wrong_secret_of_a_real_key_gets_401(shared: Stage) -> None:
    keyid = shared.keys[Role.admin].split("_")[1]
    r = shared.http(f"ef_{keyid}_{'A' * 43}").get("/devices")
    assert r.status_code == 401
    assert r.json()["detail"] == "invalid API key"


def test_malformed_json_without_a_key_gets_401_not_422(shared: Stage) -> None:
    r = shared.http().post(
        "/deployments", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 401
    r = shared.as_role(Role.viewer).post(
        "/deployments", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 403
    r = shared.as_role(Role.operator).post(
        "/deployments", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


def test_key_lifecycle_create_list_revoke(stage: Stage) -> None:
    admin = stage.as_role(Role.admin)
    r = admin.post("/api-keys", json={"name": "ci bot", "role": "operator"})
    assert r.status_code == 201
    new = r.json()
    key, keyid = new["key"], new["keyid"]
    assert re.fullmatch(r"ef_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(f"ef_{keyid}_")
    assert new["role"] == "operator" and new["revoked_at"] is None
    assert stage.http(key).get("/devices").status_code == 200
    # Listing shows no secret and no hash.
    listing = admin.get("/api-keys")
    assert listing.status_code == 200
    assert keyid in {k["keyid"] for k in listing.json()}
    secret = key.split("_", 2)[2]
    assert secret not in listing.text
    assert all(
        set(k) == {"keyid", "name", "role", "created_at", "created_by", "revoked_at"}
        for k in listing.json()
    )
    # Revoked: refused at once.
    r = admin.delete(f"/api-keys/{keyid}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = stage.http(key).get("/devices")
    assert r.status_code == 401
    assert r.json()["detail"] == f"API key {keyid} was revoked"
    assert admin.delete(f"/api-keys/{keyid}").status_code == 409
    assert admin.delete("/api-keys/0000000000000000").status_code == 404
    assert admin.post("/api-keys", json={"name": "x", "role": "root"}).status_code == 422


def test_the_last_admin_key_cannot_be_revoked(stage: Stage) -> None:
    admin = stage.as_role(Role.admin)
    first = stage.keys[Role.admin].split("_")[1]
    second = admin.post("/api-keys", json={"name": "admin 2", "role": "admin"}).json()
    assert admin.delete(f"/api-keys/{second['keyid']}").status_code == 200
    r = admin.delete(f"/api-keys/{first}")
    assert r.status_code == 409
    assert "last active admin key" in r.json()["detail"]
    assert admin.get("/api-keys").status_code == 200  # still an admin


def test_dev_key_is_accepted_in_dev_mode_only(
    mosquitto: Mosquitto, tmp_path: Path, shared: Stage
) -> None:
    assert shared.http(DEV_KEY).get("/api-keys").status_code == 401
    dev = start_stage(mosquitto, tmp_path, dev_mode=True)
    try:
        r = dev.http(DEV_KEY).get("/api-keys")
        assert r.status_code == 200
        r = dev.http(DEV_KEY).post("/api-keys", json={"name": "made in dev", "role": "viewer"})
        assert r.status_code == 201 and r.json()["created_by"] == "dev"
    finally:
        stop_stage(dev)


# ---------------------------------------------------------------- audit


def test_mutations_are_audited_with_before_after_and_no_secrets(stage: Stage) -> None:
    admin, viewer = stage.as_role(Role.admin), stage.as_role(Role.viewer)
    stage.hub.build_and_publish = lambda *a, **kw: {"stub": True}  # type: ignore[method-assign]
    created = admin.post("/api-keys", json={"name": "audited", "role": "viewer"}).json()
    assert admin.delete(f"/api-keys/{created['keyid']}").status_code == 200
    job = stage.as_role(Role.operator).post("/models/train", json={"n_train": 500}).json()
    token = admin.post("/enrol-tokens", json={"device_id": "press-1"}).json()
    assert stage.http().post("/enrol", json={"device_id": "press-1", "token": token["token"]})
    assert viewer.post("/deployments", json={"model": "m"}).status_code == 403
    assert stage.http("ef_0123456789abcdef_nope").delete("/api-keys/x").status_code == 401
    assert admin.post("/deployments", json={"model": "no-such-model"}).status_code == 404
    assert admin.get("/devices").status_code == 200  # reads are not audited

    records = stage.audit()
    by_action = {(r["action"], r["outcome"]): r for r in records}
    assert [r["action"] for r in records] == [
        "deployment.create",
        "api_key.revoke",
        "deployment.create",
        "device.enrol",
        "enrol_token.create",
        "model.train",
        "api_key.revoke",
        "api_key.create",
    ]
    admin_keyid = stage.keys[Role.admin].split("_")[1]
    made = by_action["api_key.create", "ok"]
    assert made["actor_keyid"] == admin_keyid and made["actor_name"] == "admin-key"
    assert made["role"] == "admin" and made["method"] == "POST" and made["path"] == "/api-keys"
    assert made["target"] == created["keyid"] and made["before"] is None
    assert made["after"]["role"] == "viewer" and made["status"] == 201
    revoked = by_action["api_key.revoke", "ok"]
    assert revoked["before"] == {"revoked_at": None}
    assert isinstance(revoked["after"]["revoked_at"], float)
    assert by_action["model.train", "ok"]["after"]["job"] == job["id"]
    assert by_action["model.train", "ok"]["target"] == job["id"]
    enrolled = by_action["device.enrol", "ok"]
    assert enrolled["actor_keyid"] == f"enrol-token:{token['id']}"
    assert enrolled["target"] == "press-1"
    denied = by_action["deployment.create", "denied"]
    assert denied["status"] == 403 and denied["role"] == "viewer"
    assert "role operator required" in denied["detail"] and denied["after"] is None
    anonymous = by_action["api_key.revoke", "denied"]
    assert anonymous["status"] == 401 and anonymous["actor_keyid"] == "unauthenticated"
    assert anonymous["claimed_keyid"] == "0123456789abcdef"  # unverified, not the actor
    assert anonymous["role"] is None and anonymous["target"] == "x"
    failed = by_action["deployment.create", "error"]
    assert failed["status"] == 404 and "no-such-model" in failed["detail"]
    assert all(r["client"] == "127.0.0.1" for r in records)
    # No key or token, nor any secret part of one, is in the log.
    text = json.dumps(records)
    # The secret part follows the fixed prefix and may itself contain "_" or "-".
    keys = [*stage.keys.values(), created["key"]]
    secrets = [k.split("_", 2)[2] for k in keys] + [token["token"].removeprefix("eft_")]
    for secret in [*keys, token["token"], *secrets]:
        assert secret not in text


def test_a_call_that_crashes_is_recorded_as_a_500(stage: Stage) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    stage.hub.issue_enrol_token = broken  # type: ignore[method-assign]
    r = stage.as_role(Role.operator).post("/enrol-tokens", json={})
    assert r.status_code == 500
    [record] = stage.audit(action="enrol_token.create")
    assert (record["outcome"], record["status"]) == ("error", 500)
    assert record["actor_name"] == "operator-key" and record["after"] is None


def test_audit_query_filters_and_limits(stage: Stage) -> None:
    admin = stage.as_role(Role.admin)
    for i in range(3):
        admin.post("/api-keys", json={"name": f"k{i}", "role": "viewer"})
    stage.as_role(Role.viewer).post("/api-keys", json={"name": "nope", "role": "admin"})
    everything = stage.audit()
    assert [r["ts"] for r in everything] == sorted((r["ts"] for r in everything), reverse=True)
    assert len(stage.audit(limit=2)) == 2
    assert {r["actor_name"] for r in stage.audit(actor="viewer-key")} == {"viewer-key"}
    assert len(stage.audit(actor=stage.keys[Role.admin].split("_")[1])) == 3
    assert [r["outcome"] for r in stage.audit(outcome="denied")] == ["denied"]
    assert len(stage.audit(action="api_key.create")) == 4
    assert stage.audit(since=everything[0]["ts"] + 1) == []
    assert stage.as_role(Role.admin).get("/audit", params={"limit": 10**6}).status_code == 422
    assert stage.as_role(Role.operator).get("/audit").status_code == 403


# ---------------------------------------------------------------- enrolment tokens


def enrol(stage: Stage, device_id: str, token: str) -> httpx.Response:
    return stage.http().post("/enrol", json={"device_id": device_id, "token": token})


def test_enrolment_token_is_single_use(stage: Stage) -> None:
    new = stage.as_role(Role.operator).post("/enrol-tokens", json={}).json()
    assert new["token"].startswith("eft_") and new["device_id"] is None
    first = enrol(stage, "gw-1", new["token"])
    assert first.status_code == 200
    assert first.json()["root"] and first.json()["broker"] == stage.hub.broker.url
    again = enrol(stage, "gw-1", new["token"])
    assert again.status_code == 403
    assert again.json()["detail"] == "enrolment token refused (used): the token was already used"
    listed = stage.as_role(Role.operator).get("/enrol-tokens").json()
    assert listed[0]["used_by_device"] == "gw-1"
    assert not {"token", "token_sha256"} & set(listed[0])


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown", "unknown"),
        ("expired", "expired"),
        ("other-device", "wrong_device"),
        ("revoked", "revoked"),
    ],
)
def test_enrolment_refusals_say_why(stage: Stage, case: str, reason: str) -> None:
    operator = stage.as_role(Role.operator)
    new = operator.post("/enrol-tokens", json={"device_id": "press-9", "ttl_s": 60}).json()
    token, device = new["token"], "press-9"
    if case == "unknown":
        token = "eft_" + "x" * 43
    elif case == "expired":  # a frozen clock past the expiry
        stage.hub.enrol_tokens.clock = lambda: new["expires_at"] + 1
    elif case == "other-device":
        device = "press-10"
    elif case == "revoked":
        assert operator.delete(f"/enrol-tokens/{new['id']}").status_code == 200
    r = enrol(stage, device, token)
    assert r.status_code == 403
    assert r.json()["detail"].startswith(f"enrolment token refused ({reason}):")
    assert "press-9" not in r.json()["detail"]  # the bound id is not revealed


def test_concurrent_uses_of_one_token_have_one_winner(stage: Stage) -> None:
    token = stage.as_role(Role.operator).post("/enrol-tokens", json={}).json()["token"]
    n = 8
    barrier = threading.Barrier(n)
    codes: list[int] = []

    def use(i: int) -> None:
        with httpx.Client(base_url=stage.url, timeout=10) as c:
            barrier.wait()
            r = c.post("/enrol", json={"device_id": f"racer-{i}", "token": token})
            codes.append(r.status_code)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(codes) == [200] + [403] * (n - 1)
    assert len(stage.audit(action="device.enrol", outcome="ok")) == 1


def test_reenrol_issues_a_token_bound_to_the_device(stage: Stage) -> None:
    admin = stage.as_role(Role.admin)
    assert admin.post("/devices/press-3/reenrol").status_code == 404
    with session(stage.hub.engine) as s:
        s.add(Device(id="press-3"))
        s.commit()
    r = admin.post("/devices/press-3/reenrol")
    assert r.status_code == 201 and r.json()["device_id"] == "press-3"
    assert enrol(stage, "press-4", r.json()["token"]).status_code == 403
    assert enrol(stage, "press-3", r.json()["token"]).status_code == 200
    [record] = stage.audit(action="device.reenrol", outcome="ok")
    assert record["target"] == "press-3" and record["after"]["token_id"] == r.json()["id"]


def enrol_with_key(stage: Stage, tmp: Path, device_id: str, token: str) -> httpx.Response:
    """Enrol as a device does: its own key, a CSR, the token."""
    csr = DeviceIdentity.load_or_create(tmp / device_id, device_id).csr_pem().decode()
    return stage.http().post("/enrol", json={"device_id": device_id, "token": token, "csr": csr})


def test_only_an_admin_can_replace_an_enrolled_or_revoked_identity(
    stage: Stage, tmp_path: Path
) -> None:
    operator, admin = stage.as_role(Role.operator), stage.as_role(Role.admin)
    first = operator.post("/enrol-tokens", json={"device_id": "press-7"}).json()["token"]
    assert enrol_with_key(stage, tmp_path / "1", "press-7", first).status_code == 200
    old_serials = stage.hub.identities.ca.serials_for("press-7")

    # an operator cannot bind a token to an enrolled id ...
    r = operator.post("/enrol-tokens", json={"device_id": "press-7"})
    assert r.status_code == 409 and "already enrolled" in r.json()["detail"]
    # ... and an unbound token cannot take the id over; the token is not used up by it
    spare = operator.post("/enrol-tokens", json={}).json()["token"]
    r = enrol_with_key(stage, tmp_path / "2", "press-7", spare)
    assert r.status_code == 409 and "admin must re-enrol" in r.json()["detail"]
    assert stage.hub.identities.ca.serials_for("press-7") == old_serials
    assert enrol_with_key(stage, tmp_path / "2", "press-8", spare).status_code == 200

    # revoked: the same holds, and the operator cannot issue a re-enrolment
    assert admin.post("/devices/press-7/revoke", json={}).status_code == 200
    assert operator.post("/enrol-tokens", json={"device_id": "press-7"}).status_code == 409
    assert operator.post("/devices/press-7/reenrol").status_code == 403
    spare = operator.post("/enrol-tokens", json={}).json()["token"]
    r = enrol_with_key(stage, tmp_path / "3", "press-7", spare)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    assert "press-7" in stage.hub.identities.revoked

    # the admin's re-enrolment lifts it and audits the change
    token = admin.post("/devices/press-7/reenrol").json()["token"]
    assert enrol_with_key(stage, tmp_path / "3", "press-7", token).status_code == 200
    assert "press-7" not in stage.hub.identities.revoked
    record = stage.audit(action="device.enrol", outcome="ok")[0]
    assert record["target"] == "press-7"
    assert (record["before"]["revoked"], record["after"]["revoked"]) == (True, False)


def test_reenrolling_a_live_device_supersedes_its_old_certificate(
    stage: Stage, tmp_path: Path
) -> None:
    token = stage.as_role(Role.operator).post("/enrol-tokens", json={}).json()["token"]
    assert enrol_with_key(stage, tmp_path / "old", "cam-2", token).status_code == 200
    [old] = stage.hub.identities.ca.serials_for("cam-2")
    token = stage.as_role(Role.admin).post("/devices/cam-2/reenrol").json()["token"]
    assert enrol_with_key(stage, tmp_path / "new", "cam-2", token).status_code == 200
    # the old key (it may have leaked) is on the CRL; the device itself is not revoked
    revoked = stage.hub.identities.ca.crl_pem()
    crl = x509.load_pem_x509_crl(revoked)
    entry = crl.get_revoked_certificate_by_serial_number(old)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.superseded
    )
    assert "cam-2" not in stage.hub.identities.revoked
    assert len(stage.hub.identities.ca.serials_for("cam-2")) == 2


def test_token_ttl_and_device_id_are_checked(stage: Stage) -> None:
    operator = stage.as_role(Role.operator)
    assert operator.post("/enrol-tokens", json={"ttl_s": 0}).status_code == 422
    assert operator.post("/enrol-tokens", json={"ttl_s": 8 * 86400}).status_code == 422
    assert operator.post("/enrol-tokens", json={"device_id": "a b"}).status_code == 422


# ---------------------------------------------------------------- CLI


def test_cli_bootstraps_an_admin_key_and_reports_refusals_in_one_line(
    stage: Stage, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_API_KEY", raising=False)
    data = str(stage.hub.config.data_dir)
    assert (
        cli(["hub", "apikey", "create", "--data-dir", data, "--role", "admin", "--name", "me"]) == 0
    )
    key = capsys.readouterr().out.strip()
    assert stage.http(key).get("/api-keys").status_code == 200
    assert cli(["hub", "apikey", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    keyid = key.split("_")[1]
    assert keyid in listing and key.split("_", 2)[2] not in listing
    assert cli(["devices", "--hub", stage.url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401" in err and "--api-key" in err
    assert cli(["devices", "--hub", stage.url, "--api-key", key]) == 0
    monkeypatch.setenv("EDGEFLEET_API_KEY", stage.keys[Role.viewer])
    assert cli(["enrol-token", "--hub", stage.url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "403" in err and "role operator required" in err
    assert cli(["hub", "apikey", "revoke", keyid, "--data-dir", data]) == 0
    capsys.readouterr()
    assert stage.http(key).get("/api-keys").status_code == 401
    [made] = stage.audit(action="api_key.create", actor="cli")
    assert made["method"] == "CLI" and made["target"] == keyid
