"""The dashboard's test stage: a real hub with its API on loopback, API keys of each
role, simulated devices around the real agent code on a real Mosquitto, a model trained
and deployed to them; and Debian's chromium driven by Playwright to look at it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright
from waiting import wait_for

from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto
from shared.sensors import FEATURES, Shift
from simulator.fleet import Fleet, FleetConfig

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/setup installs it)
VIEWPORT = {"width": 1280, "height": 800}
TEMP = FEATURES.index("temp_c")
HOT = Shift(offset=tuple(15.0 if j == TEMP else 0.0 for j in range(len(FEATURES))))
# The drift policy of the stage's model: windows of ~200 rows (100 rows/s, 2 s windows)
# count, and two of three exceeding windows raise an alert: a few seconds after a shift.
# The thresholds sit above the noise of calm 200-row windows (PSI up to ~0.15, JS up to
# ~0.16 measured) and far below a +15 °C shift of temp_c (PSI > 5).
DRIFT_POLICY = {"min_rows": 150, "k": 2, "n": 3, "psi_threshold": 1.0, "js_threshold": 0.3}


@dataclass
class UiStage:
    hub: Hub
    api: ApiServer
    client: HubClient  # an admin key
    keys: dict[Role, str]
    fleet: Fleet
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.api.url

    def on_loop(self, fn: Any) -> None:
        """Run ``fn`` on the fleet's loop thread (where the devices live) and wait."""
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self.fleet.loop.call_soon_threadsafe(run)
        assert done.wait(10), "the fleet's loop did not run the call"

    def train(self) -> dict[str, Any]:
        job = self.client.train(
            n_train=1000,
            hidden=[8],
            latency_budget_us=50_000.0,
            probation_s=0,
            probation_min_inferences=0,
        )
        result: dict[str, Any] = self.client.wait_job(job["id"], timeout=120)["result"]
        return result


@contextmanager
def ui_stage(broker: Mosquitto, work: Path, devices: int) -> Iterator[UiStage]:
    """A hub, keys of each role, ``devices`` online devices running a deployed model."""
    hub = Hub(
        HubConfig(
            data_dir=work / "hub",
            broker_url=broker.address.url,
            chunk_size=4096,
            client_id=f"hub-ui-{work.name}",
        )
    ).start()
    keys = ApiKeys(hub.engine)
    made = {role: keys.create(f"{role.value} key", role, "test").key for role in Role}
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=made[Role.admin])
    root = client.enrol("ui-image", client.create_enrol_token()["token"])["root"].encode()
    fleet = Fleet(
        FleetConfig(
            devices=devices,
            host=broker.address.host,
            port=broker.address.port,
            work_dir=work / "devices",
            pinned_root=root,
            id_prefix="ui",
            device_class="gateway",
            rows_per_s=100.0,
            batch=10,
            tick_s=0.25,
            window_s=2.0,
            fetch_timeout_s=3.0,
        )
    ).start()
    thread = fleet.loop.start_thread()
    stage = UiStage(hub, api, client, made, fleet)
    try:
        wait_for(lambda: len(client.devices(status="online")) == devices, 30, "devices online")
        for i, d in enumerate(sorted(x.device_id for x in fleet.devices)):  # two groups
            client.set_tags(d, ["line-a" if i % 2 == 0 else "line-b"])
        stage.model = stage.train()
        client.set_drift_policy(stage.model["name"], **DRIFT_POLICY)
        dep = client.deploy(stage.model["name"], stage.model["version"])
        wait_for(lambda: client.deployment(dep["id"], devices=False)["finished"], 60, "deploy")
        yield stage
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
        client.close()
        api.stop()
        hub.stop()


def launch(p: Playwright) -> Browser:
    """Debian's chromium, headless (Playwright's own browser builds are not used)."""
    return p.chromium.launch(executable_path=str(CHROMIUM), headless=True)


class Console:
    """What a page said on its console and the errors it threw."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def sign_in(browser: Browser, url: str, key: str) -> tuple[Page, Console]:
    """A fresh browser context signed in with ``key`` through the sign-in form."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = context.new_page()
    console = Console(page)
    page.goto(f"{url}/ui")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#nav")
    page.wait_for_selector("#live-dot.ok")
    return page, console
