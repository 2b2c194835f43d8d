"""Rehearse a rollout on this machine: the hub and the simulator composed.

:func:`run_scenario` plays a scenario (simulator/scenario.py): a private Mosquitto on a
free port, the hub as a child process (``edgefleet hub serve --dev``, so killing it is
real; edgefleet/stage.py), the model trained on it, the fleet in this process on one
selector loop, then the rollout with its faults and drift (simulator/timeline.py); it
returns the summary (simulator/summary.py). ``edgefleet sim run --scenario FILE`` is its
command line.

This is the one place that knows both sides: the simulator reaches the hub only through
:class:`HubRollouts` (a :class:`simulator.timeline.RolloutHub`) and the stage's processes
only through :class:`edgefleet.stage.Stage` (a :class:`simulator.faults.Processes`).

Exceptions::

    ScenarioError      (simulator/scenario.py) a stage that could not be set up: broker,
                       hub, model training, devices online, baseline
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgefleet.client import HubClient, HubClientError
from edgefleet.connection import HubConnectionError
from edgefleet.stage import Stage
from hub.access.keys import DEV_KEY
from simulator.fleet import Fleet, FleetConfig
from simulator.scenario import Scenario, ScenarioError
from simulator.summary import summarise
from simulator.timeline import HubUnreachable, Say, play

__all__ = ["HubRollouts", "ScenarioResult", "run_scenario"]

ONLINE_TIMEOUT_S = 60.0  # s: for the whole fleet to report online
BASELINE_TIMEOUT_S = 120.0  # s: for the baseline version to reach every device
POLL_S = 0.25  # s: between status polls


class HubRollouts:
    """The hub's rollouts over its HTTP API: the one adapter a rehearsal's rollout uses."""

    def __init__(self, client: HubClient) -> None:
        self.client = client

    def start_rollout(self, spec: Mapping[str, Any]) -> str:
        """``POST /rollouts``; the new rollout's id."""
        fields = dict(spec)
        return str(self.client.create_rollout(fields.pop("model"), **fields)["id"])

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        """``GET /rollouts/{id}``: state, wave, counts per device state, failure ratio.

        Raises:
            HubUnreachable: no connection, or a 5xx answer.
        """
        with _down_is_unreachable():
            return dict(self.client.rollout(rollout_id))

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        """``GET /rollouts/{id}/devices``: one row per device.

        Raises:
            HubUnreachable: no connection, or a 5xx answer.
        """
        with _down_is_unreachable():
            return [dict(r) for r in self.client.rollout_devices(rollout_id)]


@contextlib.contextmanager
def _down_is_unreachable() -> Iterator[None]:
    """Turn the hub being down or failing into HubUnreachable; a refusal passes through."""
    try:
        yield
    except Exception as e:
        if _is_down(e):
            raise HubUnreachable(type(e).__name__) from e
        raise


def _is_down(e: Exception) -> bool:
    """The hub is down or failing (no connection, or a 5xx answer), not refusing."""
    if isinstance(e, HubClientError):
        return e.status >= 500
    if isinstance(e, HubConnectionError):  # the client's one line for a failed connection
        return isinstance(e.__cause__, (httpx.TransportError, OSError))
    return isinstance(e, (httpx.TransportError, OSError))


@dataclass
class ScenarioResult:
    summary: dict[str, Any]
    fleet: Fleet  # closed; its devices' objects and state directories remain
    work_dir: Path


def run_scenario(
    scenario: Scenario, work_dir: Path | None = None, *, say: Say | None = None
) -> ScenarioResult:
    """Play a scenario end to end and summarise it.

    Args:
        scenario: from :func:`simulator.scenario.load_scenario`.
        work_dir: where the broker, hub and devices keep their files (default: a new
            temporary directory, kept for inspection; its path is in the summary).
        say: progress lines go here (default: stderr).

    Returns:
        the summary (JSON-able; see simulator/summary.py) and the stopped fleet.

    Raises:
        ScenarioError: the stage could not be set up.
    """
    say = say or _stderr
    work = Path(work_dir or tempfile.mkdtemp(prefix=f"ef-scenario-{scenario.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    stage = Stage(work, scenario.broker_persistence).start()
    assert stage.hub is not None
    client = HubClient(stage.hub.url, api_key=DEV_KEY)
    fleet: Fleet | None = None
    thread: threading.Thread | None = None
    try:
        say(f"stage  broker {stage.broker.address.url}, hub {stage.hub.url}, files in {work}")
        baseline, model = _train(client, scenario, say)
        fleet = _start_fleet(client, scenario, stage, work)
        thread = fleet.loop.start_thread()
        _wait_online(client, scenario.fleet.devices, say)
        if baseline is not None:
            _install_baseline(client, baseline, scenario.fleet.devices, say)
        played = play(scenario, fleet, stage, HubRollouts(client), model, say=say)
        _stop_loop(fleet, thread)
        summary = summarise(scenario, fleet, played, model, baseline, work)
    finally:
        if fleet is not None:
            _stop_loop(fleet, thread)
            fleet.close()
        client.close()
        stage.stop()
    assert fleet is not None
    return ScenarioResult(summary, fleet, work)


def _stop_loop(fleet: Fleet, thread: threading.Thread | None) -> None:
    fleet.loop.stop()
    if thread is not None:
        thread.join(10)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train(
    client: HubClient, scenario: Scenario, say: Say
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    settings = {"name": scenario.model.name, **scenario.model.train}
    if scenario.rows is not None:  # the model learns the rows the devices will play
        rows = scenario.rows
        try:
            v = client.upload_dataset(scenario.model.name, rows.file, label=rows.label)
        except HubClientError as e:
            raise ScenarioError(f"rows.file: the hub refused it: {e.message}") from e
        say(f"data   {v['id']}: {v['rows']} rows, {v['task']}, from {rows.file.name}")
        settings.setdefault("dataset", v["id"])
    versions = []
    for _ in range(2 if scenario.model.baseline else 1):
        try:
            job = client.train(**settings)
            result: dict[str, Any] = client.wait_job(job["id"], timeout=300)["result"]
        except HubClientError as e:
            raise ScenarioError(f"model.train: the hub refused it: {e.message}") from e
        say(f"model  {result['name']} v{result['version']} trained, {result['size_bytes']} bytes")
        versions.append(result)
    return (versions[0] if len(versions) == 2 else None), versions[-1]


def _start_fleet(client: HubClient, scenario: Scenario, stage: Stage, work: Path) -> Fleet:
    root = client.enrol("scenario-image", client.create_enrol_token()["token"])["root"]
    f = scenario.fleet
    fleet = Fleet(
        FleetConfig(
            devices=f.devices,
            host=stage.broker.address.host,
            port=stage.broker.address.port,
            work_dir=work / "devices",
            pinned_root=root.encode(),
            device_classes=f.classes,
            class_runtimes=f.runtimes,
            seed=scenario.seed,
            rows_per_s=f.rows_per_s,
            window_s=f.window_s,
            fetch_timeout_s=f.fetch_timeout_s,
            **_rows_config(scenario),
        )
    ).start()
    return fleet


def _rows_config(scenario: Scenario) -> dict[str, Any]:
    """The FleetConfig fields of ``[rows]`` (none without it)."""
    rows = scenario.rows
    if rows is None:
        return {}
    return {
        "rows": rows.source,
        "row_passes": rows.passes,
        "late_label_share": rows.late_share,
        "late_label_after_s": rows.late_after_s,
    }


def _wait_online(client: HubClient, n: int, say: Say) -> None:
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while (online := len(client.devices(status="online"))) < n:
        if time.monotonic() > deadline:
            raise ScenarioError(f"only {online}/{n} devices came online in {ONLINE_TIMEOUT_S} s")
        time.sleep(POLL_S)
    say(f"fleet  {n} devices online")


def _counts(counts: dict[str, int]) -> str:
    """``{"sent": 3, "healthy": 1}`` as ``3 sent, 1 healthy``."""
    return ", ".join(f"{n} {what}" for what, n in counts.items()) or "none"


def _install_baseline(client: HubClient, model: dict[str, Any], n: int, say: Say) -> None:
    dep = client.deploy(model["name"], model["version"])
    deadline = time.monotonic() + BASELINE_TIMEOUT_S
    while not (st := client.deployment(dep["id"], devices=False))["finished"]:
        if time.monotonic() > deadline:
            raise ScenarioError(f"the baseline did not reach every device: {_counts(st['stages'])}")
        time.sleep(POLL_S)
    if st["converged"] != n:
        raise ScenarioError(f"the baseline failed on some devices: {_counts(st['reasons'])}")
    say(f"base   {model['name']} v{model['version']} on all {n} devices")
