"""``edgefleet demo``: the whole path on one machine, with real parts.

Starts a hub (SQLite file, local artifact store, a private Mosquitto on a free port, or
the broker given), trains the built-in model, quantises it to int8, evaluates, gates and
signs it, starts simulated devices that run the real agent code, rolls it out to them (a
canary, then waves), lets them infer on simulated sensor data, and prints (and optionally
writes) a summary. The dashboard is at ``<api>/ui`` from the start (sign in with the
development key); with ``stay`` the hub and its devices keep running after the summary,
for the dashboard, until Ctrl-C.

The hub runs in development mode, and the demo calls its API with the development key.
``edgefleet demo --dataset FILE`` runs the same path on the operator's own data:
edgefleet/demo_data.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from edgefleet.client import HubClient
from edgefleet.progress import JobProgress, build_figures, stage_words
from hub import Hub, HubConfig, create_app
from hub.access.keys import DEV_KEY
from hub.api.serving import server_config
from hub.transport.broker import free_port
from simulator.fleet import Fleet, FleetConfig

log = logging.getLogger("edgefleet.demo")


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 50
    summary_path: Path | None = None
    broker_url: str | None = None
    work_dir: Path | None = None
    keep: bool = False
    converge_timeout_s: float = 180.0
    infer_s: float = 6.0  # inference time after convergence, for telemetry
    probation_s: float = 3.0
    probation_min_inferences: int = 6  # inference calls; a device makes 2 a second
    n_train: int = 12000
    latency_budget_us: float | None = None  # p95 of the health check (the hub's default)
    api_port: int | None = None  # the API's (and dashboard's) port; None: a free one
    stay: bool = False  # keep the hub and devices up after the summary, until Ctrl-C


class ApiServer:
    """uvicorn serving the hub's API on a free loopback port, in a thread."""

    def __init__(self, hub: Hub, port: int | None = None) -> None:
        self.port = port or free_port()
        config = server_config(create_app(hub), "127.0.0.1", self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="hub-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the hub's API server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


class Progress:
    """One status line that rewrites itself on a terminal, plain lines elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr  # at call time: whatever stderr is then
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = ""
        self._last_t = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        if text == self._last:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif force or now - self._last_t >= 2.0:
            self.stream.write(text + "\n")
            self._last_t = now
        self._last = text

    def done(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last = ""


@dataclass
class DemoStage:
    """A running demo: the hub, its API, a client with the development key, and the
    fleet once :meth:`start_fleet` started it."""

    work: Path
    hub: Hub
    api: ApiServer
    client: HubClient
    progress: Progress
    fleet: Fleet | None = None
    loop_thread: threading.Thread | None = None

    def enrol_image(self) -> bytes:
        """The root the simulated devices pin: they share one image, enrolled once."""
        token = self.client.create_enrol_token("demo-image")["token"]
        return str(self.client.enrol("demo-image", token)["root"]).encode()

    def start_fleet(self, config: FleetConfig) -> Fleet:
        self.fleet = Fleet(config).start()
        self.loop_thread = self.fleet.loop.start_thread()
        return self.fleet

    def stop_fleet(self) -> None:
        """Stop the devices' loop (they stay open: :meth:`close` closes them)."""
        if self.fleet is not None and self.loop_thread is not None:
            self.fleet.loop.stop()
            self.loop_thread.join(10)
            self.loop_thread = None

    def fleet_config(self, devices: int, **fields: Any) -> FleetConfig:
        return FleetConfig(
            devices=devices,
            host=self.hub.broker.host,
            port=self.hub.broker.port,
            work_dir=self.work / "devices",
            pinned_root=self.enrol_image(),
            **fields,
        )


@contextlib.contextmanager
def demo_stage(opts: DemoOptions, prefix: str = "edgefleet-demo-") -> Iterator[DemoStage]:
    """Start the hub and its API (and say where), yield them; stop all on the way out."""
    work = opts.work_dir or Path(tempfile.mkdtemp(prefix=prefix))
    progress = Progress()
    hub = Hub(HubConfig(data_dir=work / "hub", broker_url=opts.broker_url, dev_mode=True)).start()
    api = ApiServer(hub, port=opts.api_port).start()
    stage = DemoStage(work, hub, api, HubClient(api.url, api_key=DEV_KEY), progress)
    try:
        progress.done(f"hub    {api.url}  (API docs: {api.url}/docs)   broker {hub.broker.url}")
        progress.done(f"       development mode: API key {DEV_KEY}")
        progress.done(f"ui     {api.url}/ui  (the dashboard: sign in with the key {DEV_KEY})")
        yield stage
    finally:
        stage.stop_fleet()
        if stage.fleet is not None:
            stage.fleet.close()
        stage.client.close()
        api.stop()
        hub.stop()
        if not opts.keep and opts.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    with demo_stage(opts) as stage:
        client, progress = stage.client, stage.progress
        model = _train(client, opts, progress)
        fleet = stage.start_fleet(stage.fleet_config(opts.devices))
        wait_online(client, opts.devices, progress)
        dep_id, seconds = deploy(client, model, opts, progress)
        progress.done(f"infer  letting {opts.devices} devices infer for {opts.infer_s:.0f} s")
        time.sleep(opts.infer_s)
        if not opts.stay:  # staying, the devices go on inferring for the dashboard
            stage.stop_fleet()
        stage.hub.ingest.flush()
        summary = _summary(client, stage.hub, fleet, model, dep_id, seconds, opts)
        if opts.stay:
            report(summary, opts)
            keep_serving(stage.api.url)
            return summary
    report(summary, opts)
    return summary


def report(summary: dict[str, Any], opts: DemoOptions) -> None:
    print_summary(summary)
    if opts.summary_path is not None:
        opts.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {opts.summary_path}")


def keep_serving(url: str) -> None:
    """Block until Ctrl-C: the hub, its API and the devices stay up for the dashboard."""
    print(f"\nthe hub and its devices keep running: the dashboard is at {url}/ui (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping")


def _train(client: HubClient, opts: DemoOptions, progress: Progress) -> dict[str, Any]:
    job = client.train(
        name="vibration",
        n_train=opts.n_train,
        probation_s=opts.probation_s,
        probation_min_inferences=opts.probation_min_inferences,
        **health_budget(opts),
    )

    def show(j: Mapping[str, Any]) -> None:  # a percentage on a terminal
        progress.show(f"train  {stage_words(j['stage'] or j['status'])} {j['progress']:5.1%}")

    # in a log, each stage once (edgefleet/progress.py), in the demo's column
    log_stages = JobProgress(progress.stream, prefix="train  ", figures=False)
    on_progress = show if progress.tty else log_stages
    result: dict[str, Any] = client.wait_job(job["id"], on_progress=on_progress)["result"]
    for line in build_figures(result):
        progress.done(f"model  {line}")
    progress.done(
        f"model  {result['name']} v{result['version']} signed, sha256 {result['sha256'][:12]}…"
    )
    return result


def health_budget(opts: DemoOptions) -> dict[str, float]:
    """The health check's latency budget, when the demo sets one (else the hub's)."""
    return {} if opts.latency_budget_us is None else {"latency_budget_us": opts.latency_budget_us}


def wait_online(client: HubClient, n: int, progress: Progress, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        online = len(client.devices(status="online"))
        progress.show(f"fleet  {online}/{n} devices online")
        if online >= n:
            progress.done(f"fleet  {online}/{n} devices online")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {online}/{n} simulated devices came online in {timeout}s")
        time.sleep(0.2)


def deploy(
    client: HubClient, model: dict[str, Any], opts: DemoOptions, progress: Progress
) -> tuple[str, float | None]:
    """A staged rollout: a 10% canary, then three waves, each gated on the failure ratio."""
    t0 = time.monotonic()
    rollout = client.create_rollout(
        model["name"], version=model["version"], canary_percent=10, waves=3, min_sample=3
    )
    deadline = t0 + opts.converge_timeout_s
    seconds: float | None = None
    while True:
        st = client.rollout(rollout["id"])
        counts = " ".join(f"{k}={v}" for k, v in sorted(st["counts"].items()))
        progress.show(
            f"rollout {wave_words(st['wave'], st['waves'])}  {st['converged']}/{st['devices']}"
            f" healthy  [{counts}]"
        )
        if st["finished"]:
            if st["converged"] == st["devices"]:
                seconds = time.monotonic() - t0
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    progress.done(
        f"rollout {st['converged']}/{st['devices']} devices healthy on v{model['version']}"
        f" ({st['state']}; {waves_words(st['waves'])})"
        + (f" in {seconds:.1f} s" if seconds is not None else " (not converged)")
    )
    return rollout["id"], seconds


def wave_words(wave: int, waves: int) -> str:
    """The demo's rollout step: wave 1 of ``waves`` is its canary (``canary_percent``)."""
    return f"wave {wave}/{waves}" + (" (the canary)" if wave == 1 else "")


def waves_words(waves: int) -> str:
    """The demo rollout's shape, counted as :func:`wave_words` counts: 4 waves, the
    canary first."""
    if waves <= 1:
        return "1 wave: the canary"
    return f"{waves} waves: the canary, then {waves - 1} more"


def _summary(
    client: HubClient,
    hub: Hub,
    fleet: Fleet,
    model: dict[str, Any],
    dep_id: str,
    seconds: float | None,
    opts: DemoOptions,
) -> dict[str, Any]:
    rows = client.rollout_devices(dep_id)
    fs = fleet.summary()
    running = fs.versions.get(f"{model['name']}:{model['version']}", 0)
    healthy = {d["device_id"] for d in rows if d["state"] == "healthy"}
    refused: dict[str, int] = {}
    rolled_back = 0
    for d in rows:
        if d["state"] in ("failed", "refused", "rolled_back") and d["reason"]:
            refused[d["reason"]] = refused.get(d["reason"], 0) + 1
        rolled_back += d["state"] == "rolled_back"
    telemetry = hub.ingest.counts.get("telemetry", 0)
    return {
        "devices": opts.devices,
        "converged": min(len(healthy), running),
        "model": {
            "name": model["name"],
            "version": model["version"],
            "sha256": model["sha256"],
            "format": model["format"],
            "size_bytes": model["size_bytes"],
            "size_fp32_bytes": model["size_fp32"],
            "accuracy_fp32": model["accuracy_fp32"],
            "accuracy_int8": model["accuracy_int8"],
        },
        "seconds_to_converge": round(seconds, 2) if seconds is not None else None,
        "inferences": fs.inferences,
        "live_accuracy": round(fs.correct / fs.labelled, 4) if fs.labelled else None,
        "telemetry_messages": telemetry,
        "refused": refused,
        "rolled_back": rolled_back,
        "broker": hub.broker.url,
        "dropped_messages": {**dict(hub.mqtt.dropped), **fs.dropped},
    }


def print_summary(s: dict[str, Any]) -> None:
    m = s["model"]
    conv = s["seconds_to_converge"]
    lines = [
        "",
        "edgefleet demo — summary",
        f"  devices converged   {s['converged']}/{s['devices']}"
        + (f" in {conv:.1f} s" if conv is not None else " (did not converge)"),
        f"  model               {m['name']} v{m['version']} ({m['format']}, int8)"
        f" {m['size_bytes']:,} bytes (fp32 {m['size_fp32_bytes']:,})",
        f"  accuracy            fp32 {m['accuracy_fp32']:.3f}   int8 {m['accuracy_int8']:.3f}"
        + (f"   live {s['live_accuracy']:.3f}" if s["live_accuracy"] is not None else ""),
        f"  inferences          {s['inferences']:,} on devices",
        f"  telemetry messages  {s['telemetry_messages']:,} ingested by the hub",
        f"  refused             {_counts(s['refused']) or 'none'}",
        f"  rolled back         {s['rolled_back']}",
    ]
    print("\n".join(lines))


def _counts(by_reason: dict[str, int]) -> str:
    """``{"hash_mismatch": 2}`` as an operator reads it: ``2 hash_mismatch``."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
