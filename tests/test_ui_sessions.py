"""Dashboard sessions (hub/api/ui/sessions.py): the store with a frozen clock, then the
hub's real API (uvicorn on loopback) with a session cookie beside Bearer keys: sign-in,
cookie attributes (Secure behind a TLS proxy), the CSRF token on every change, roles, a
revoked key, sign-out, idle expiry, and the audit log naming the key behind a session.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from waiting import wait_for

from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Principal, Role, Unauthenticated
from hub.api.main import create_app
from hub.api.serving import server_config
from hub.api.ui.sessions import CsrfRefused, SessionPolicy, SessionStore, check_csrf
from hub.transport.broker import Mosquitto, free_port

pytestmark = [pytest.mark.broker]

ALICE = Principal("0123456789abcdef", "alice", Role.operator)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def store(active: set[str] | None = None) -> tuple[SessionStore, Clock]:
    clock = Clock()
    keys = {ALICE.keyid} if active is None else active
    return SessionStore(keys.__contains__, SessionPolicy(idle_s=60, absolute_s=300), clock), clock


# ------------------------------------------------------------------- the store


def test_a_session_stands_for_its_key_until_idle_for_too_long() -> None:
    sessions, clock = store()
    token, opened = sessions.open(ALICE)
    clock.t += 59
    assert sessions.get(token).principal == ALICE  # and this use resets the idle time
    clock.t += 59
    assert sessions.get(token) is opened
    clock.t += 61
    with pytest.raises(Unauthenticated, match="expired"):
        sessions.get(token)
    with pytest.raises(Unauthenticated, match="unknown session"):
        sessions.get(token)  # gone for good


def test_a_busy_session_still_ends_at_its_absolute_lifetime() -> None:
    sessions, clock = store()
    token, _ = sessions.open(ALICE)
    for _ in range(5):
        clock.t += 59
        sessions.get(token)
    clock.t += 6  # 301 s after it opened, 6 s after its last use
    with pytest.raises(Unauthenticated, match="expired"):
        sessions.get(token)


def test_a_revoked_key_ends_every_session_it_opened() -> None:
    active = {ALICE.keyid}
    sessions, _ = store(active)
    first, _ = sessions.open(ALICE)
    second, _ = sessions.open(ALICE)
    active.clear()
    with pytest.raises(Unauthenticated, match="revoked"):
        sessions.get(first)
    assert len(sessions) == 0
    active.add(ALICE.keyid)  # even were it usable again, the sessions are gone
    with pytest.raises(Unauthenticated, match="unknown session"):
        sessions.get(second)


@pytest.mark.parametrize("token", [None, "", "not-a-session"])
def test_no_token_or_a_made_up_one_is_not_a_session(token: str | None) -> None:
    sessions, _ = store()
    sessions.open(ALICE)
    with pytest.raises(Unauthenticated):
        sessions.get(token)


def test_sign_out_forgets_the_session_and_only_it() -> None:
    sessions, _ = store()
    mine, _ = sessions.open(ALICE)
    other, _ = sessions.open(ALICE)
    assert sessions.close(mine) and not sessions.close(mine)
    with pytest.raises(Unauthenticated):
        sessions.get(mine)
    assert sessions.get(other).principal == ALICE


@pytest.mark.parametrize(
    ("sent", "refused"),
    [(None, "missing CSRF token"), ("", "missing CSRF token"), ("x" * 43, "wrong CSRF token")],
    ids=["missing", "empty", "wrong"],
)
def test_a_change_needs_the_sessions_own_csrf_token(sent: str | None, refused: str) -> None:
    sessions, _ = store()
    _, s = sessions.open(ALICE)
    _, other = sessions.open(ALICE)
    with pytest.raises(CsrfRefused, match=refused):
        check_csrf(s, sent)
    with pytest.raises(CsrfRefused, match="wrong CSRF token"):
        check_csrf(s, other.csrf)  # another session's token is no good either
    check_csrf(s, s.csrf)


def test_the_policy_refuses_an_idle_time_beyond_the_lifetime() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        SessionPolicy(idle_s=10, absolute_s=5)


# ------------------------------------------------------------------- the API


@dataclass
class Stage:
    hub: Hub
    api: ApiServer
    keys: dict[Role, str]
    clients: list[httpx.Client] = field(default_factory=list)

    def browser(self) -> httpx.Client:
        """A client that keeps cookies, as a browser does (and sends no Bearer key)."""
        client = httpx.Client(base_url=self.api.url, timeout=10)
        self.clients.append(client)
        return client

    def signed_in(self, role: Role) -> tuple[httpx.Client, str]:
        """A cookie-holding client signed in with ``role``'s key, and its CSRF token."""
        c = self.browser()
        assert c.post("/ui/session", json={"key": self.keys[role]}).status_code == 200
        page = c.get("/ui").text
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        assert found, page[:300]
        return c, found.group(1)

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {self.keys[Role.admin]}"}
        r = httpx.get(f"{self.api.url}/audit", params=params, headers=headers)
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        return records


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("sessions")
    hub = Hub(
        HubConfig(data_dir=work / "hub", broker_url=mosquitto.address.url, client_id="hub-ui-s")
    ).start()
    keys = ApiKeys(hub.engine)
    made = {role: keys.create(f"{role.value}-ui", role, "test").key for role in Role}
    api = ApiServer(hub).start()
    stage = Stage(hub, api, made)
    try:
        yield stage
    finally:
        for client in stage.clients:
            client.close()
        api.stop()
        hub.stop()


def test_sign_in_answers_a_strict_http_only_cookie_and_the_key_is_nowhere(stage: Stage) -> None:
    c = stage.browser()
    r = c.post("/ui/session", json={"key": stage.keys[Role.viewer]})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    cookie = r.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert cookie.startswith("ef_session=")
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower() and "Max-Age=43200" in cookie
    assert "secure" not in attributes  # plain http; https below
    assert stage.keys[Role.viewer] not in cookie
    page = c.get("/ui")
    assert 'name="ef-role" content="viewer"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert stage.keys[Role.viewer] not in page.text
    assert c.get("/devices").status_code == 200  # the cookie alone lets it read


def test_over_https_the_cookie_is_secure(stage: Stage) -> None:
    # A TLS proxy on the hub's machine says so (uvicorn trusts X-Forwarded-Proto from
    # 127.0.0.1): the request came over https.
    r = stage.browser().post(
        "/ui/session", json={"key": stage.keys[Role.viewer]}, headers={"x-forwarded-proto": "https"}
    )
    assert r.status_code == 200
    assert "; secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("key", "status"),
    [("ef_0123456789abcdef_wrong", 401), ("not-a-key", 401), ("", 422)],
    ids=["wrong", "malformed", "empty"],
)
def test_a_bad_key_opens_no_session(stage: Stage, key: str, status: int) -> None:
    c = stage.browser()
    r = c.post("/ui/session", json={"key": key})
    assert r.status_code == status, r.text
    assert "set-cookie" not in r.headers
    assert "Sign in to the fleet dashboard" in c.get("/ui").text
    assert c.get("/devices").status_code == 401


def test_a_sign_in_posted_from_another_site_is_refused(stage: Stage) -> None:
    r = stage.browser().post(
        "/ui/session",
        json={"key": stage.keys[Role.admin]},
        headers={"origin": "https://evil.example"},
    )
    assert r.status_code == 403 and "another origin" in r.json()["detail"]
    assert "set-cookie" not in r.headers


def test_a_change_by_cookie_needs_the_csrf_token_and_a_bearer_key_does_not(stage: Stage) -> None:
    c, csrf = stage.signed_in(Role.operator)
    pause = "/rollouts/nosuchrollout/pause"
    missing = c.post(pause)
    assert missing.status_code == 403 and "missing CSRF token" in missing.json()["detail"]
    wrong = c.post(pause, headers={"x-csrf-token": "a" * len(csrf)})
    assert wrong.status_code == 403 and "wrong CSRF token" in wrong.json()["detail"]
    # with the token the request is let through to the route: no such rollout
    assert c.post(pause, headers={"x-csrf-token": csrf}).status_code == 404
    assert c.get("/rollouts").status_code == 200  # reading needs no token
    bearer = httpx.post(
        f"{stage.api.url}{pause}", headers={"authorization": f"Bearer {stage.keys[Role.operator]}"}
    )
    assert bearer.status_code == 404  # a key: no cookie, no token needed
    denied = stage.audit(action="rollout.pause", outcome="denied")
    assert any("CSRF" in (r["detail"] or "") and r["role"] == "operator" for r in denied)


def test_a_viewers_cookie_with_a_valid_token_still_cannot_change_anything(stage: Stage) -> None:
    c, csrf = stage.signed_in(Role.viewer)
    r = c.post("/rollouts/nosuchrollout/pause", headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and "role operator required" in r.json()["detail"]
    assert c.get("/audit").status_code == 403  # the audit log needs admin


def test_the_audit_log_names_the_key_behind_a_session(stage: Stage) -> None:
    c, csrf = stage.signed_in(Role.operator)
    c.post("/rollouts/audited/abort", headers={"x-csrf-token": csrf}, json={})
    keyid = stage.keys[Role.operator].split("_")[1]
    (record,) = stage.audit(action="rollout.abort")
    assert record["actor_keyid"] == keyid and record["actor_name"] == "operator-ui"
    assert record["target"] == "audited" and record["status"] == 404
    signed_in = stage.audit(action="ui.sign_in", actor=keyid)
    assert signed_in and signed_in[0]["outcome"] == "ok"


def test_revoking_a_key_ends_its_sessions(stage: Stage) -> None:
    made = ApiKeys(stage.hub.engine).create("short-lived", Role.operator, "test")
    c = stage.browser()
    assert c.post("/ui/session", json={"key": made.key}).status_code == 200
    assert c.get("/devices").status_code == 200
    admin = {"authorization": f"Bearer {stage.keys[Role.admin]}"}
    r = httpx.delete(f"{stage.api.url}/api-keys/{made.record.keyid}", headers=admin)
    assert r.status_code == 200, r.text
    after = c.get("/devices")
    assert after.status_code == 401 and "revoked" in after.json()["detail"]
    assert "Sign in to the fleet dashboard" in c.get("/ui").text


def test_sign_out_ends_the_session(stage: Stage) -> None:
    c, csrf = stage.signed_in(Role.viewer)
    assert c.post("/ui/session/end").status_code == 403  # sign-out is a change: CSRF too
    r = c.post("/ui/session/end", headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and r.json() == {"signed_out": True}
    assert 'ef_session=""' in r.headers["set-cookie"]
    assert c.get("/devices").status_code == 401


def test_an_idle_session_ends_on_the_hub_it_was_configured_for(stage: Stage) -> None:
    server = uvicorn.Server(
        server_config(
            create_app(stage.hub, sessions=SessionPolicy(idle_s=0.5, absolute_s=10)),
            "127.0.0.1",
            port := free_port(),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "the second API server")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            r = c.post("/ui/session", json={"key": stage.keys[Role.viewer]})
            assert r.status_code == 200 and "Max-Age=10" in r.headers["set-cookie"]
            assert c.get("/devices").status_code == 200
            time.sleep(0.7)
            r = c.get("/devices")
            assert r.status_code == 401 and "expired" in r.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(10)
