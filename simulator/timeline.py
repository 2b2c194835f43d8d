"""A scenario's timeline on a running fleet: from the rollout's start to its end.

:func:`play` arms the scenario's faults (simulator/faults.py) and drift
(simulator/drift.py), starts the rollout, and follows it, running the process faults when
they are due and printing a progress line a second, until the rollout has ended and
every fault has recovered. What it saw goes to simulator/summary.py.

The simulator never imports the hub: it reaches the hub's rollouts through
:class:`RolloutHub` and the stage's processes through :class:`simulator.faults.Processes`,
both provided by whoever set up the stage (edgefleet/rehearsal.py, with the real hub).

Exceptions::

    HubUnreachable     raised by a RolloutHub when the hub does not answer (down or 5xx);
                       the timeline counts the time and polls on
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from simulator.drift import DriftSchedule
from simulator.faults import FaultInjector, Processes
from simulator.fleet import Fleet
from simulator.scenario import Scenario

__all__ = ["HubUnreachable", "Played", "RolloutHub", "Say", "Watch", "play"]

POLL_S = 0.25  # s: between status polls
PROGRESS_EVERY_S = 1.0  # s: between progress lines

Say = Callable[[str], None]


class HubUnreachable(Exception):
    """The hub did not answer; ``cause`` names what failed (``"ConnectError"``, ...)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the hub did not answer ({cause})")
        self.cause = cause


class RolloutHub(Protocol):
    """The hub's rollouts, as the timeline sees them (edgefleet/rehearsal.py: HTTP)."""

    def start_rollout(self, spec: Mapping[str, Any]) -> str:
        """Start a rollout (the hub's rollout spec, model and version in it); its id."""
        ...

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        """State, wave, counts per device state, failure ratio.

        Raises:
            HubUnreachable: the hub did not answer.
        """
        ...

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        """The hub's per-device rows of the rollout (attempts, rollback_at, ...).

        Raises:
            HubUnreachable: the hub did not answer.
        """
        ...


@dataclass
class Watch:
    """What following the rollout saw (times in seconds from the rollout's start)."""

    status: dict[str, Any] | None = None  # the last status the hub returned
    seconds_to_converge: float | None = None
    halts: list[dict[str, Any]] = field(default_factory=list)
    hub_unreachable_s: float = 0.0
    timed_out: bool = False
    elapsed_s: float = 0.0
    t0: float = 0.0  # monotonic time of the rollout's start


@dataclass
class Played:
    """A timeline that ran to its end."""

    rollout_id: str
    watch: Watch
    rows: list[dict[str, Any]]  # the hub's per-device rows (empty if it could not answer)
    injector: FaultInjector
    drift: DriftSchedule


def play(
    scenario: Scenario,
    fleet: Fleet,
    processes: Processes,
    hub: RolloutHub,
    model: Mapping[str, Any],
    *,
    say: Say,
) -> Played:
    """Play the scenario's rollout, faults and drift on a started fleet, to the end.

    Args:
        scenario: the scenario (simulator/scenario.py).
        fleet: its fleet, started, its loop running in a thread, every device online.
        processes: the stage's broker and hub, for the process faults.
        hub: the hub's rollouts.
        model: the version to roll out (``name``, ``version``), as the hub trained it.
        say: progress lines go here.

    Returns:
        what the timeline saw; the fleet still runs.
    """
    injector = FaultInjector(scenario.faults, fleet, processes, seed=scenario.seed, say=say)
    spec = {
        "seed": f"scenario-{scenario.seed}",  # the same waves every run
        **scenario.rollout,
        "model": model["name"],
        "version": model["version"],
    }
    injector.arm()
    drift = DriftSchedule(scenario.drifts, scenario.seed, scenario.fleet.window_s)
    if scenario.drifts:
        drift.arm(fleet)
    # before the request: on a busy machine its answer may come after the first devices
    # already acted on the rollout, and their events count from here
    t0 = time.monotonic()
    rollout_id = hub.start_rollout(spec)
    say(f"rollout {rollout_id}: {model['name']} v{model['version']}, {injector.planned()}")
    watch = _follow(hub, rollout_id, scenario, injector, say, t0)
    rows = _rollout_devices(hub, rollout_id)
    return Played(rollout_id, watch, rows, injector, drift)


def _follow(
    hub: RolloutHub,
    rollout_id: str,
    scenario: Scenario,
    injector: FaultInjector,
    say: Say,
    t0: float,
) -> Watch:
    """Poll the rollout, run the process faults when due, print progress, until it ends."""
    w = Watch(t0=t0)
    next_line = 0.0
    while True:
        injector.run_due()
        t = injector.elapsed()
        before = time.monotonic()
        try:
            st = hub.rollout_status(rollout_id)
        except HubUnreachable as e:  # the hub may be down: a fault of the scenario
            w.hub_unreachable_s += time.monotonic() - before + POLL_S
            if t >= next_line:
                say(f"t={t:6.1f}s  hub unreachable ({e.cause})")
                next_line = t + PROGRESS_EVERY_S
            time.sleep(POLL_S)
            continue
        _note_halt(w, st, t)
        w.status = st
        if w.seconds_to_converge is None and st["devices"] and st["converged"] == st["devices"]:
            w.seconds_to_converge = round(t, 2)
        if t >= next_line:
            say(_progress_line(t, st, injector))
            next_line = t + PROGRESS_EVERY_S
        # A halted or aborted rollout is over once the hub has put back every device it
        # changed (``finished``: each rollback reported); stopping at the first poll that
        # shows the halt would count devices a rollback had yet to reach.
        done = st["finished"] or st["state"] == "completed"
        if done and not injector.busy and t >= scenario.duration_s:
            break
        if t > max(scenario.timeout_s, scenario.duration_s):
            w.timed_out = True
            say(f"t={t:6.1f}s  gave up: the rollout did not finish in {scenario.timeout_s:g} s")
            break
        time.sleep(POLL_S)
    w.elapsed_s = round(injector.elapsed(), 2)
    say(
        f"t={w.elapsed_s:6.1f}s  rollout {w.status['state'] if w.status else '?'}: "
        f"{w.status['converged'] if w.status else 0}/{scenario.fleet.devices} healthy"
    )
    return w


def _progress_line(t: float, st: Mapping[str, Any], injector: FaultInjector) -> str:
    counts = " ".join(f"{k}={v}" for k, v in sorted(st["counts"].items()))
    return (
        f"t={t:6.1f}s  rollout {st['state']}  wave {st['wave']}/{st['waves']}  "
        f"healthy {st['converged']}/{st['devices']}  [{counts}]  "
        f"faults {dict(injector.counts)}"
    )


def _rollout_devices(hub: RolloutHub, rollout_id: str) -> list[dict[str, Any]]:
    """The hub's per-device rows of the rollout (empty if the hub cannot answer)."""
    try:
        return hub.rollout_devices(rollout_id)
    except HubUnreachable:
        return []


def _note_halt(w: Watch, st: Mapping[str, Any], t: float) -> None:
    last = w.status["state"] if w.status else None
    if st["state"] in ("halted", "paused") and st["state"] != last:
        w.halts.append({"t_s": round(t, 2), "state": st["state"], "reason": st["halted_reason"]})
