"""The figures of ``python -m bench drill`` from what the devices and the hub saw.

bench/drill.py runs the drill; this turns the workers' per-device tallies
(bench/drill_fleet.py ``DeviceTally``) and the hub's stored windows into the report and
judges the goals.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from bench.drill_fleet import RESENT_SUFFIX

GOALS = {
    "converged_share": 1.0,  # every device: no device in the drill is faulty by design
    "telemetry_unaccounted": 0,  # missing windows beyond the spools' reported drops
    "commands_executed_twice": 0,
    "devices_deployed_twice": 0,
}
FAULT_GROUPS = {
    "crash_mid_download": "crashed",
    "disconnect": "lost_link",
    "corrupt_chunks": "got_corrupt_chunk",
}


def figures(
    args: Any,
    reference: Any,
    drill: Any,
    finals: list[dict[str, Any]],
    accepted: dict[str, dict[str, set[int]]],
    version: dict[str, Any],
    faults: list[dict[str, Any]],
    leader_kill: dict[str, Any],
) -> dict[str, Any]:
    devices = [d for f in finals for d in f["devices"]]
    n = args.devices
    report: dict[str, Any] = {
        "devices": n,
        "reported_devices": len(devices),
        "converged": _converged(devices),
        "converge_times_s": _times(devices, drill.t0),
        "seconds": drill.seconds,
        "reference_seconds": reference.seconds,
        "ratio": (
            round(drill.seconds / reference.seconds, 2)
            if drill.seconds and reference.seconds
            else None
        ),
        **_windows(devices, accepted),
        "commands": _commands(devices, int(version["version"])),
        # bad input the agents counted and dropped (a crash resets a device's counts)
        "agent_dropped": _merge([f.get("agent_dropped", {}) for f in finals]),
        "faults": {
            "device": _merge([f.get("injected", {}) for f in finals]),
            "devices_planned": _merge([f.get("planned", {}) for f in finals]),
            "device_specs": faults,
            "process": drill.struck,
            "leader_kill": leader_kill,  # bench/drill_stage.py Hubs.summary
        },
        "hub": {"reference": reference.hub_status, "drill": drill.hub_status},
        "model_bytes": int(version["size_bytes"]),
        "settings": {
            k: getattr(args, k)
            for k in (
                "processes",
                "rows_per_s",
                "infer_share",
                "window_s",
                "heartbeat_s",
                "fetch_timeout_s",
                "link_loss_s",
                "spool_bytes",
            )
        },
        "fleet_cpu_s": round(sum(f.get("cpu_s", 0.0) for f in finals), 1),
        "goals": GOALS,
    }
    report["met"] = _met(report, n)
    return report


def _converged(devices: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[int]] = {"all": [0, 0], "untouched": [0, 0]}
    for d in devices:
        ok = d["converged_at"] is not None
        names = ["all"] + ([FAULT_GROUPS.get(k, k) for k in d["faults"]] or ["untouched"])
        for name in names:
            g = groups.setdefault(name, [0, 0])
            g[0] += ok
            g[1] += 1
    out: dict[str, Any] = {name: f"{ok}/{total}" for name, (ok, total) in groups.items()}
    out["share"] = round(groups["all"][0] / groups["all"][1], 4) if groups["all"][1] else 0.0
    out["faulty_by_design"] = 0
    return out


def _times(devices: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """Seconds from the drill's rollout to each device's ``healthy``, by what hit it:
    median, 95th percentile and last."""
    groups: dict[str, list[float]] = {}
    for d in devices:
        if d["converged_at"] is None:
            continue
        names = ["all"] + ([FAULT_GROUPS.get(k, k) for k in d["faults"]] or ["untouched"])
        for name in names:
            groups.setdefault(name, []).append(d["converged_at"] - t0)
    out = {}
    for name, times in groups.items():
        times.sort()
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        out[name] = {
            "p50": round(times[len(times) // 2], 1),
            "p95": round(p95, 1),
            "last": round(times[-1], 1),
        }
    return out


def _windows(
    devices: list[dict[str, Any]], accepted: dict[str, dict[str, set[int]]]
) -> dict[str, Any]:
    """Telemetry and drift windows: produced, accepted, pending, missing; and the missing
    ones beyond what each device's spool says it dropped (its counter covers both kinds)."""
    kinds = ("telemetry", "drift")
    out: dict[str, Any] = {k: Counter() for k in kinds}
    dropped = unaccounted = reused = 0
    worst: list[dict[str, Any]] = []
    for d in devices:
        lost: dict[str, list[int]] = {}
        for kind in kinds:
            produced = d["produced"].get(kind, {})
            seqs = set(produced)
            hub = accepted.get(kind, {}).get(d["device_id"], set())
            pending = set(d["pending"].get(kind, ())) - hub
            missing = seqs - hub - pending
            c = out[kind]
            c["produced"] += sum(produced.values())
            c["accepted"] += len(seqs & hub)
            c["pending_in_spools"] += len(pending)
            c["missing"] += len(missing)
            if missing:
                lost[kind] = sorted(missing)
        dropped += d["spool_dropped"]
        reused += d["seq_reused"]
        beyond = max(0, sum(len(v) for v in lost.values()) - d["spool_dropped"])
        unaccounted += beyond
        if beyond:
            worst.append({"device": d["device_id"], "missing": lost, "faults": d["faults"]})
    for kind in kinds:
        c = out[kind]
        c["accepted_share"] = round(c["accepted"] / c["produced"], 4) if c["produced"] else None
        out[kind] = dict(c)
    out["telemetry"].update(
        {
            "spool_dropped": dropped,  # telemetry and drift entries, all devices
            "unaccounted": unaccounted,
            "seq_reused": reused,
            "unaccounted_devices": worst[:10],
        }
    )
    return out


def _commands(devices: list[dict[str, Any]], version: int) -> dict[str, Any]:
    executions = twice = deployed_twice = restarted_jobs = resent_answers = 0
    for d in devices:
        counts = d["executions"].values()
        executions += sum(counts)
        twice += sum(1 for c in counts if c > 1)
        stages: Counter[str] = Counter()
        for key, c in d["stages"].items():
            _dep, v, stage = key.rsplit(":", 2)
            if v == str(version):
                stages[stage] += c
        deployed_twice += stages["activated"] > 1
        restarted_jobs += stages["received"] > 1
        resent_answers += sum(c for k, c in stages.items() if k.endswith(RESENT_SUFFIX))
    return {
        "executed": executions,
        "executed_twice": twice,
        "devices_deployed_twice": deployed_twice,
        "devices_with_two_jobs": restarted_jobs,
        "resent_deploys_answered_in_progress": resent_answers,
    }


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def _met(r: dict[str, Any], n: int) -> bool:
    return bool(
        r["reported_devices"] == n
        and r["converged"]["share"] >= GOALS["converged_share"]
        and r["telemetry"]["unaccounted"] == GOALS["telemetry_unaccounted"]
        and r["telemetry"]["seq_reused"] == 0
        and r["commands"]["executed_twice"] == GOALS["commands_executed_twice"]
        and r["commands"]["devices_deployed_twice"] == GOALS["devices_deployed_twice"]
    )


def print_table(r: dict[str, Any]) -> None:
    t, c = r["telemetry"], r["commands"]
    rows = [
        ("devices converged", json.dumps(r["converged"])),
        (
            "drift windows",
            f"{r['drift']['accepted']}/{r['drift']['produced']} accepted, "
            f"{r['drift']['pending_in_spools']} pending, {r['drift']['missing']} missing",
        ),
        ("time to converge", f"{r['seconds']} s vs {r['reference_seconds']} s without faults"),
        ("ratio", str(r["ratio"])),
        ("converge times", json.dumps(r["converge_times_s"])),
        (
            "telemetry",
            f"{t['accepted']}/{t['produced']} accepted, {t['pending_in_spools']} pending, "
            f"{t['missing']} missing, {t['spool_dropped']} dropped by spools, "
            f"{t['unaccounted']} unaccounted (goal 0)",
        ),
        (
            "commands",
            f"{c['executed']} executed, {c['executed_twice']} twice (goal 0), "
            f"{c['devices_deployed_twice']} devices deployed twice (goal 0)",
        ),
        ("device faults", json.dumps(r["faults"]["device"])),
        ("process faults", json.dumps(r["faults"]["process"])),
        ("leader kill", json.dumps(r["faults"]["leader_kill"])),
        ("hub (drill)", json.dumps(r["hub"]["drill"])),
        ("goals met", str(r["met"])),
    ]
    for k, v in rows:
        print(f"{k:<18} {v}")
