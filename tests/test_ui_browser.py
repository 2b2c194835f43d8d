"""The dashboard in a real browser: Debian's headless chromium (Playwright) against a real
hub with simulated devices on a real Mosquitto (tests/ui_stage.py). One stage for the
module: the tests look at it and change only what they make themselves (a rollout, a
drift on two devices).

``EF_SCREENSHOTS=docs/screenshots`` (scripts/screenshots) keeps the screenshot of each
page there; otherwise they go to a temporary directory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright
from ui_stage import CHROMIUM, HOT, UiStage, launch, sign_in, ui_stage
from waiting import wait_for

from agent.drift import DriftRecorder
from hub.access.keys import ApiKeys, Role
from hub.api.ui.headers import CSP
from hub.ingest.report import Report
from hub.telemetry.drift import trust_baselines
from hub.telemetry.drift_policy import Policy
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.sensors import generate

pytestmark = [pytest.mark.broker]

DEVICES = 6
PAGES = ("fleet", "device", "rollouts", "rollout", "models", "drift", "audit")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStage]:
    """A broker of its own: the session's shared one holds other tests' retained device
    states, which this hub would count among its fleet's online devices."""
    with Mosquitto() as broker, ui_stage(broker, tmp_path_factory.mktemp("ui"), DEVICES) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("EF_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def widest_rollout(stage: UiStage) -> str:
    """The rollout with the most waves (the operator's, when that test ran; else a new one)."""
    made = stage.client.rollouts()
    if not made:
        new = stage.train()
        made = [stage.client.create_rollout(new["name"], version=new["version"], waves=3)]
    return str(max(made, key=lambda r: r["waves"])["id"])


def test_chromium_is_installed_and_starts() -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium"
    with sync_playwright() as p:
        b = launch(p)
        assert b.version, "chromium started but reported no version"
        b.close()


def test_sign_in_refuses_a_wrong_key_then_opens_a_session(stage: UiStage, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    answer = page.goto(f"{stage.url}/ui")
    assert answer is not None and answer.headers["content-security-policy"] == CSP
    expect(page.locator("h1")).to_have_text("Sign in to the fleet dashboard")
    page.fill("#key", "ef_0123456789abcdef_wrong")
    page.click("button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    assert not context.cookies()

    page.fill("#key", stage.keys[Role.operator])
    page.click("button[type=submit]")
    expect(page.locator(".who-name")).to_have_text("operator key")
    expect(page.locator(".stat").first).to_contain_text(f"{DEVICES}online")
    (cookie,) = context.cookies()
    assert cookie["name"] == "ef_session" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain http on loopback; https gets Secure (test_ui_sessions)
    assert stage.keys[Role.operator] not in page.content()  # the key is nowhere in the page

    page.click("#sign-out")
    expect(page.locator("h1")).to_have_text("Sign in to the fleet dashboard")
    context.close()


def test_an_operator_watches_a_rollout_pauses_resumes_it_and_sees_it_converge(
    stage: UiStage, browser: Browser, shots: Path
) -> None:
    v2 = stage.train()
    page, console = sign_in(browser, stage.url, stage.keys[Role.operator])
    rollout = stage.client.create_rollout(
        v2["name"],
        version=v2["version"],
        waves=3,
        min_sample=1,
        probation_s=1.0,
        probation_min_inferences=0,
    )
    page.goto(f"{stage.url}/ui#/rollouts/{rollout['id']}")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#title")).to_contain_text(f"v{v2['version']}")
    page.click("button[data-action=pause]")
    expect(page.locator("[data-rollout-state]")).to_have_attribute("data-rollout-state", "paused")
    expect(page.locator(".action-note")).to_have_text("Done: the rollout is paused.")
    assert stage.client.rollout(rollout["id"])["state"] == "paused"
    expect(page.locator("button[data-action=resume]")).to_be_visible()
    page.screenshot(path=str(shots / "rollout.png"))  # paused mid-way, its buttons shown
    page.click("button[data-action=resume]")
    expect(page.locator("#converged")).to_have_text(f"{DEVICES} / {DEVICES}", timeout=45_000)
    expect(page.locator("[data-rollout-state]")).to_have_attribute(
        "data-rollout-state", "completed"
    )
    expect(page.locator(".wave")).to_have_count(3)
    assert page.evaluate("window.notReloaded") is True  # it moved without a reload
    actions = [r["action"] for r in stage.client.audit(actor="operator key")]
    assert {"rollout.pause", "rollout.resume", "ui.sign_in"} <= set(actions)
    assert console.errors == []
    page.context.close()


def test_a_drift_alert_appears_on_the_drift_page(
    stage: UiStage, browser: Browser, shots: Path
) -> None:
    page, console = sign_in(browser, stage.url, stage.keys[Role.viewer])
    page.goto(f"{stage.url}/ui#/drift")
    expect(page.locator("#open-alerts .stat-value")).to_have_text("0")
    hot = sorted(d.device_id for d in stage.fleet.devices)[:2]

    def shift() -> None:
        for d in stage.fleet.devices:
            if d.device_id in hot:
                d.stream.shift = HOT

    stage.on_loop(shift)
    try:
        alert_rows = page.locator("tr", has=page.locator("td", has_text="temp_c"))
        expect(alert_rows.first).to_be_visible(timeout=40_000)
        expect(page.locator("#open-alerts .stat-value")).not_to_have_text("0")
        expect(page.locator("figcaption", has_text="PSI per feature")).to_be_visible()
        page.select_option("#drift-range", "300")  # the last 5 minutes: the shift shows
        expect(page.locator(".chart-note").first).to_contain_text("5 s per point")
        page.wait_for_timeout(2500)  # another point or two of the shift
        page.screenshot(path=str(shots / "drift.png"))
        # the fleet page names the drifting devices as needing attention
        page.goto(f"{stage.url}/ui#/fleet")
        expect(page.locator("td", has_text="drift on temp_c").first).to_be_visible()
        assert console.errors == []
    finally:
        stage.on_loop(lambda: [setattr(d.stream, "shift", None) for d in stage.fleet.devices])
        page.context.close()


def test_a_silent_devices_alert_shows_stale_with_its_reason(
    stage: UiStage, browser: Browser
) -> None:
    """A device (not of the simulated fleet) drifts, then says nothing more: the sweep,
    run as the hub's maintenance would run it once the silence is over, marks its alert
    stale, and the drift page lists it with the reason, not as open."""
    name, version = stage.model["name"], stage.model["version"]
    recorder = DriftRecorder()
    recorder.activate(
        name, version, trust_baselines(stage.hub.registry, stage.hub.trust)(name, version)
    )
    for seq in range(2):
        x, _ = generate(600, seed=seq, shift=HOT)
        recorder.observe(name, version, x, {})
        got = recorder.drain()
        assert got is not None
        body = {"seq": seq, "model": name, "version": version, "sketch": got.sketch.to_dict()}
        msg = protocol.decode(
            protocol.encode("drift", body, ts=time.time()), expect=protocol.TOPIC_TYPES["drift"]
        )
        stage.hub.ingest.write_batch([Report("ghost-ui", "drift", msg)])
    stage.hub.drift.sweep(time.time() + Policy().silence_s + 1)  # 15 minutes on
    page, console = sign_in(browser, stage.url, stage.keys[Role.viewer])
    try:
        page.goto(f"{stage.url}/ui#/drift")
        row = page.locator("tr", has=page.locator("a", has_text="ghost-ui"))
        expect(row.first).to_contain_text("stale: device ghost-ui silent since ")
        assert console.errors == []
    finally:
        page.context.close()


def test_a_viewer_sees_no_buttons_and_a_forged_change_is_refused(
    stage: UiStage, browser: Browser
) -> None:
    new = stage.train()
    rollout = stage.client.create_rollout(new["name"], version=new["version"], waves=2)
    stage.client.rollout_action(rollout["id"], "pause")  # an operator would see Resume, Abort
    try:
        page, _ = sign_in(browser, stage.url, stage.keys[Role.viewer])
        page.goto(f"{stage.url}/ui#/rollouts/{rollout['id']}")
        expect(page.locator("[data-rollout-state]")).to_be_visible()
        expect(page.locator("button[data-action]")).to_have_count(0)
        forged = page.evaluate(
            """async (id) => {
                const csrf = document.querySelector('meta[name="csrf-token"]').content;
                const r = await fetch(`/rollouts/${id}/pause`, {method: "POST",
                    headers: {"x-csrf-token": csrf}, credentials: "same-origin"});
                return [r.status, (await r.json()).detail];
            }""",
            rollout["id"],
        )
        assert forged[0] == 403 and "role operator required" in forged[1]
        assert stage.client.rollout(rollout["id"])["state"] == "paused"
        page.goto(f"{stage.url}/ui#/audit")
        expect(page.locator("#needs-admin")).to_contain_text("needs an admin key")
        page.context.close()
    finally:
        stage.client.rollout_action(rollout["id"], "abort")


def test_a_revoked_key_sends_its_open_page_back_to_sign_in(
    stage: UiStage, browser: Browser
) -> None:
    made = ApiKeys(stage.hub.engine).create("leaving", Role.viewer, "test")
    page, _ = sign_in(browser, stage.url, made.key)
    expect(page.locator(".who-name")).to_have_text("leaving")
    stage.client.revoke_api_key(made.record.keyid)
    # the next poll gets 401 and the page goes back to the sign-in form
    expect(page.locator("h1")).to_have_text("Sign in to the fleet dashboard", timeout=10_000)
    page.context.close()


def test_every_page_has_its_csp_and_no_console_error(
    stage: UiStage, browser: Browser, shots: Path
) -> None:
    page, console = sign_in(browser, stage.url, stage.keys[Role.admin])
    shell = page.request.get(f"{stage.url}/ui")
    assert shell.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
    assert shell.headers["x-content-type-options"] == "nosniff"
    assert shell.headers["referrer-policy"] == "no-referrer"
    script = page.request.get(f"{stage.url}/ui/static/js/app.js")
    assert script.headers["content-security-policy"] == CSP
    assert not re.search(r"<script>|\son\w+=", shell.text())  # no inline script or handler

    device = sorted(d.device_id for d in stage.fleet.devices)[0]
    rollout = widest_rollout(stage)
    routes = {
        "fleet": ("#/fleet", "Needs attention"),
        "device": (f"#/device/{device}", "Telemetry, last 30 minutes"),
        "rollouts": ("#/rollouts", "Rollouts ("),
        "rollout": (f"#/rollouts/{rollout}", "Progress, wave by wave"),
        "models": ("#/models", "Versions ("),
        "drift": ("#/drift", "The loop's runs"),
        "audit": ("#/audit", "Audit log (newest"),
    }
    assert set(routes) == set(PAGES)
    for name, (route, heading) in routes.items():
        page.goto(f"{stage.url}/ui{route}")
        expect(page.locator(".card h2", has_text=heading).first).to_be_visible()
        wait_for(lambda: page.locator(".loading").count() == 0, 10, f"{name} loaded")
        if name == "models":  # with the newest version's lineage open
            page.locator("button[data-version]").first.click()
            expect(page.locator(".card h2", has_text="Lineage of")).to_be_visible()
        page.wait_for_timeout(300)  # the charts drawn
        if name not in ("rollout", "drift"):  # those two are taken mid-rollout, mid-drift
            page.screenshot(path=str(shots / f"{name}.png"))
    page.context.close()
    # the sign-in page too, as a new operator first sees it
    fresh = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    fresh.goto(f"{stage.url}/ui")
    fresh.screenshot(path=str(shots / "signin.png"))
    fresh.context.close()
    assert console.errors == []
    for png in shots.glob("*.png"):
        assert png.stat().st_size < 250 * 1024, f"{png.name} is over 250 KB"


def test_text_from_a_caller_is_shown_as_text_never_run(stage: UiStage, browser: Browser) -> None:
    # (After the screenshots.) A model name is free text up to 64 characters: refused (no
    # such model), it lands in the audit record's detail, which the audit page shows.
    bait = '<img src=x onerror="window.pwned=1">'
    r = httpx.post(
        f"{stage.url}/rollouts",
        json={"model": bait},
        headers={"authorization": f"Bearer {stage.keys[Role.admin]}"},
    )
    assert r.status_code == 404 and bait in r.json()["detail"]
    page, console = sign_in(browser, stage.url, stage.keys[Role.admin])
    page.goto(f"{stage.url}/ui#/audit")
    expect(page.locator("td", has_text=bait).first).to_be_visible()  # shown, as text
    assert page.locator("#main img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert console.errors == []
    page.context.close()
