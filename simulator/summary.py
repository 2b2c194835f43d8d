"""The summary of a rehearsal: what a user reads after ``edgefleet sim run --scenario``.

It joins what the devices did (their events, what they run, what they dropped) with what
the timeline saw of the rollout (simulator/timeline.py) and what the faults did. It is
JSON-able; tests/test_scenarios.py asserts on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulator.faults import FaultInjector
from simulator.fleet import DeviceEvent, Fleet
from simulator.player import Tally
from simulator.scenario import Scenario
from simulator.timeline import Played, Watch

__all__ = ["summarise"]


def summarise(
    scenario: Scenario,
    fleet: Fleet,
    played: Played,
    model: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    work: Path,
) -> dict[str, Any]:
    """Summarise a played scenario; call it once the fleet's loop has stopped.

    Args:
        scenario: the scenario played.
        fleet: its fleet (stopped, so its devices' events no longer change).
        played: what the timeline saw.
        model: the version rolled out (``name``, ``version``).
        baseline: the version installed everywhere first, if any.
        work: the rehearsal's files (named in the summary).
    """
    watch, injector = played.watch, played.injector
    events: list[DeviceEvent] = [e for d in fleet.devices for e in d.events if e.t >= watch.t0]
    last: dict[str, DeviceEvent] = {}
    for e in sorted(events, key=lambda e: e.t):
        last[e.device_id] = e
    devs = fleet.devices
    versions = Counter(
        f"{a[0]}:{a[1]}" if (a := d.device.predictor.active) else "none" for d in devs
    )
    states = Counter(last[d.device_id].stage if d.device_id in last else "none" for d in devs)
    refusals = Counter(e.reason or "unknown" for e in events if e.stage in ("failed", "refused"))
    st = watch.status or {}
    dropped: Counter[str] = Counter()
    for d in fleet.devices:
        dropped.update(d.device.core.dropped)
    summary = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "devices": len(fleet.devices),
        "model": {
            "name": model["name"],
            "version": model["version"],
            "baseline_version": baseline["version"] if baseline else None,
        },
        "versions": dict(sorted(versions.items())),
        "states": dict(sorted(states.items())),
        "converged": st.get("converged", 0),
        "seconds_to_converge": watch.seconds_to_converge,
        "rollout": _rollout(watch, played.rows),
        "halts": watch.halts,
        "rollbacks": len({e.device_id for e in events if e.stage == "rolled_back"}),
        "refusals": dict(sorted(refusals.items())),
        "faults": _faults(injector),
        "crashes": _crashes(injector),
        "hub_unreachable_s": round(watch.hub_unreachable_s, 1),
        "dropped_messages": dict(dropped),
        "elapsed_s": watch.elapsed_s,
        "work_dir": str(work),
    }
    if scenario.drifts:
        summary["drift"] = played.drift.summary()
    if scenario.rows is not None:
        summary["labels"] = _labels(fleet)
    return summary


def _labels(fleet: Fleet) -> dict[str, Any]:
    """What the devices inferred on the rows and the labels they reported (their count)."""
    t = Tally.total(d.tally for d in fleet.devices)
    values = t.labelled_values
    return {
        "inferences": t.inferences,
        "labelled": t.labelled,
        "accuracy": round(t.correct / classes, 4) if (classes := t.labelled - values) else None,
        "mae": round(t.abs_err_sum / values, 4) if values else None,
        "late": t.late,
        "late_joined": t.late_joined,
        "late_refused": t.late_refused,
        "late_pending": t.pending,  # still on their way when the run ended
        "unmatched": t.unmatched,
    }


def _rollout(watch: Watch, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rollout as the hub last reported it, and what it had to send again."""
    st = watch.status or {}
    return {
        "id": st.get("id"),
        "state": st.get("state"),
        "finished": st.get("finished", False),
        "timed_out": watch.timed_out,
        "wave": st.get("wave"),
        "waves": st.get("waves"),
        "counts": st.get("counts", {}),
        # per device class: runtime, the artefact sent, states (a mixed fleet, ADR 0020)
        "by_class": st.get("by_class", {}),
        "failure_ratio": st.get("failure_ratio"),
        "halted_reason": st.get("halted_reason"),
        # devices the hub had to send the command again (reconciled or timed out)
        "resent": sum(1 for r in rows if r["attempts"] > 1),
        "rollbacks_sent": sum(1 for r in rows if r["rollback_at"] is not None),
    }


def _faults(injector: FaultInjector) -> dict[str, dict[str, Any]]:
    """Per fault kind: planned, injected, devices hit (process faults: when they struck)."""
    return {
        kind: {
            "planned": n,
            "injected": injector.counts.get(kind, 0),
            "devices": len(injector.devices_hit.get(kind, ())),
            **({"struck": injector.struck[kind]} if kind in injector.struck else {}),
        }
        for kind, n in injector.planned().items()
    }


def _crashes(injector: FaultInjector) -> list[dict[str, Any]]:
    """Per crashed device: chunks it had on disk, and how many of them it fetched again."""
    return [
        {
            "device": c["device"],
            "chunks_on_disk": len(c["persisted"]),
            "refetched": len(c["refetched"]),
        }
        for c in injector.crashes
    ]
