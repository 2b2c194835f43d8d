"""The fault drill: one rollout to N simulated devices while everything that can fail
fails, against the same rollout without faults, in one run.

``python -m bench drill [--devices 1000] [--json]``. The parts are real: a private
Mosquitto with persistence (a restart keeps the sessions), the hub as a child process
(``edgefleet hub serve``) driven over its HTTP API (edgefleet/client.py), models trained
by the hub, and the real agent code in virtual devices (simulator/fleet.py) spread over
``--processes`` worker processes (bench/drill_fleet.py). The devices infer a little
(``--rows-per-s``) so their telemetry windows carry data.

Two rollouts, one after the other, on the same hub and devices:

1. the reference: model v1 to every device, no faults; ``reference_seconds`` from the
   rollout's creation to the last device's ``healthy``;
2. the drill: model v2 to every device while
   - every chunk arriving at a device is corrupted with probability ``--corrupt-p``
     (one byte flipped before the agent sees it; its per-chunk hash refuses it),
   - ``--crash-share`` of the devices crash once halfway through their download and
     restart from their state directory 2 s later,
   - ``--link-share`` of the devices lose their link for ``--link-loss-s``,
   - the broker restarts ``--broker-restarts`` times (same port, same persistence),
   - the leader hub is SIGKILLed ``--leader-kills`` times: by default the hub is two
     replicas over a PostgreSQL schema of the drill's own (``--replicas 2``, ``--pg``),
     the leader is found through ``/health``, SIGKILLed, and the other replica takes over
     (``leader_kill: failover``, ``takeover_s``); the supervisor starts the killed one
     again as a follower. ``--replicas 1``: one hub over SQLite, SIGKILLed and started
     again (``restart``). bench/drill_stage.py, bench/drill_replicas.py.
   The process faults strike at fractions of the reference time, so they land while
   devices download; the figures say how many devices had converged when each struck.

Figures (device side: bench/drill_fleet.py; hub side: its database):

- ``converged``: devices healthy on v2, of all, of those a fault hit and of the others
  (goal: all; no device here is faulty by design, every fault is recoverable);
- ``telemetry``: windows produced (put into a device's spool), accepted (rows in the hub's
  database), still pending in a spool, missing (produced, not accepted, not pending), the
  spools' reported drops, and ``unaccounted`` = missing windows beyond what the device's
  spool says it dropped (goal 0: nothing lost within the spool's bound, and every
  missing window is a reported drop);
- ``commands``: executions at the devices, command ids executed twice (goal 0), devices
  that installed v2 twice (goal 0);
- ``seconds`` vs ``reference_seconds``: time to converge with and without faults.

The exit status is 0 when every goal is met.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.drill_args import parse
from bench.drill_fleet import Order, drill_worker
from bench.drill_report import figures, print_table

log = logging.getLogger("bench.drill")

MODEL_NAME = "bench-drill"
POLL_S = 0.1  # main loop: worker reports and due faults
ONLINE_TIMEOUT_S = 180.0  # for every device to be online at the hub
CRASH_RESTART_S = 2.0  # a crashed device boots again after this long
# the hub's stored windows unchanged this long: ingest caught up. 2 s was too short on a
# loaded machine: a restarted replica still draining its session, or a writer starved for
# CPU, looked settled and its windows were counted missing
INGEST_SETTLE_S = 10.0


# ----------------------------------------------------------------------------- workers


@dataclass
class WorkerState:
    progress: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)


class FleetProcesses:
    """The fleet's worker processes: orders out, progress and final tallies in."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.reports = self.ctx.Queue()
        self.orders: list[Any] = []
        self.procs: list[Any] = []
        self.state: dict[int, WorkerState] = {}

    def start(self, configs: list[Any], infer_share: float) -> None:
        for w, cfg in enumerate(configs):
            orders = self.ctx.Queue()
            args = (cfg, infer_share, w, orders, self.reports)
            proc = self.ctx.Process(target=drill_worker, args=args)
            proc.start()
            self.orders.append(orders)
            self.procs.append(proc)
            self.state[w] = WorkerState()

    def send(self, order: Order) -> None:
        for q in self.orders:
            q.put(order)

    def poll(self, timeout: float = POLL_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, w, data = self.reports.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # queue.Empty
                return
            if kind == "progress":
                self.state[w].progress = data
            else:
                self.state[w].final = data

    def wait_target(self, version: int, timeout: float = 60.0) -> None:
        """Until every worker reports on ``version`` (no count of the last phase is left).

        Raises:
            TimeoutError: a worker did not take the order in time.
        """
        deadline = time.monotonic() + timeout
        while any(s.progress.get("version") != version for s in self.state.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet workers did not take version {version} in time")
            self.poll()
            self.check_alive()

    def check_alive(self) -> None:
        """Raises: RuntimeError if a worker exited before its final report."""
        dead = {
            w: proc.exitcode
            for w, proc in enumerate(self.procs)
            if not proc.is_alive() and not self.state[w].final
        }
        if dead:
            raise RuntimeError(f"fleet worker(s) died (worker: exit code) {dead}: see stderr")

    def total(self, key: str) -> int:
        return sum(int(s.progress.get(key) or 0) for s in self.state.values())

    def any(self, key: str) -> bool:
        return any(s.progress.get(key) for s in self.state.values())

    def last_converged(self) -> float | None:
        times = [s.progress.get("last_converged") for s in self.state.values()]
        return max((t for t in times if t), default=None)

    def finish(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        self.send(Order("stop"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(s.final for s in self.state.values()):
            self.poll(0.2)
        for proc in self.procs:
            proc.join(max(1.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        return [s.final for s in self.state.values() if s.final]


def _shares(devices: int, processes: int) -> list[tuple[int, int]]:
    share = -(-devices // processes)
    return [(f, min(share, devices - f)) for f in range(0, devices, share)]


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- the hub


def train(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One model version trained and published by the hub; its job result."""
    job = client.train(
        name=MODEL_NAME,
        n_train=1000,
        hidden=[args.hidden, args.hidden],
        probation_s=1.0,
        probation_min_inferences=1,
        latency_budget_us=50000.0,
    )
    result: dict[str, Any] = client.wait_job(job["id"], timeout=600)["result"]
    return result


def hub_call(fn: Any, *a: Any, tries_s: float = 60.0, **kw: Any) -> Any:
    """Call the hub, waiting through a restart (connection refused, 5xx)."""
    deadline = time.monotonic() + tries_s
    while True:
        try:
            return fn(*a, **kw)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_online(client: Any, fleet: FleetProcesses, n: int) -> None:
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    last = 0.0
    while True:
        fleet.poll()
        fleet.check_alive()
        online = len(client.devices(status="online"))
        if online >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {online}/{n} devices online in {ONLINE_TIMEOUT_S:g} s")
        if time.monotonic() - last > 2.0:
            say(f"fleet  {fleet.total('connected')}/{n} connected, {online}/{n} online at the hub")
            last = time.monotonic()
        time.sleep(0.5)


# ----------------------------------------------------------------------------- faults


def process_faults(args: argparse.Namespace, reference_s: float) -> list[tuple[float, str]]:
    """(at_s, kind) of the broker restarts and leader kills, leader kills in the middle."""
    kinds = ["broker_restart"] * args.broker_restarts
    for k in range(args.leader_kills):
        kinds.insert(((k + 1) * len(kinds)) // (args.leader_kills + 1) + k, "leader_kill")
    first = max(0.2 * reference_s, 0.5)
    gap = max(0.3 * reference_s, 3.0)
    return [(first + i * gap, kind) for i, kind in enumerate(kinds)]


def device_faults(
    args: argparse.Namespace, chunks: int, reference_s: float
) -> list[dict[str, Any]]:
    """The device faults as FaultSpec tables (simulator/faultspec.py)."""
    faults: list[dict[str, Any]] = []
    if args.corrupt_p > 0:
        faults.append({"kind": "corrupt_chunks", "p": args.corrupt_p})
    if args.crash_share > 0:
        faults.append(
            {
                "kind": "crash_mid_download",
                "fraction": args.crash_share,
                "after_chunks": max(1, chunks // 2),
                "restart_after_s": CRASH_RESTART_S,
            }
        )
    if args.link_share > 0:
        faults.append(
            {
                "kind": "disconnect",
                "fraction": args.link_share,
                "at_s": round(0.25 * reference_s, 2),
                "duration_s": args.link_loss_s,
            }
        )
    return faults


# ----------------------------------------------------------------------------- phases


@dataclass
class Phase:
    """One rollout: when it started, when its last device converged, what struck."""

    rollout_id: str
    t0: float
    seconds: float | None = None
    converged: int = 0
    struck: list[dict[str, Any]] = field(default_factory=list)
    hub_status: dict[str, Any] = field(default_factory=dict)


def run_phase(
    ctx: Any,
    version: dict[str, Any],
    faults: list[dict[str, Any]],
    schedule: list[tuple[float, str]],
    name: str,
) -> Phase:
    """Roll ``version`` out to the fleet (faults armed) and wait until every device
    converged and every fault has struck and recovered, or ``--timeout``."""
    args, fleet, client, n = ctx.args, ctx.fleet, ctx.client, ctx.args.devices
    fleet.send(Order("target", MODEL_NAME, version["version"], tuple(faults), args.seed))
    fleet.wait_target(version["version"])
    t0 = time.time()
    created = client.create_rollout(MODEL_NAME, version=version["version"])
    phase = Phase(str(created["id"]), t0)
    due = list(schedule)
    last_line = 0.0
    while True:
        fleet.poll()
        fleet.check_alive()
        ctx.hubs.tick()
        now = time.time() - t0
        if due and now >= due[0][0]:
            at_s, kind = due.pop(0)
            phase.struck.append(strike(ctx, kind, at_s, now))
        done, failed = fleet.total("done"), fleet.total("failed")
        if done + failed >= n and not due and not fleet.any("faults_busy"):
            break
        if now > args.timeout:
            say(f"{name}: timed out after {args.timeout:g} s with {done}/{n} converged")
            break
        if time.monotonic() - last_line > 2.0:
            say(f"{name:<9} t={now:6.1f}s  {done}/{n} converged, {failed} gave up")
            last_line = time.monotonic()
    phase.converged = fleet.total("done")
    last = fleet.last_converged()
    phase.seconds = round(last - t0, 2) if last is not None and phase.converged >= n else None
    phase.hub_status = _hub_status(client, phase.rollout_id, n)
    say(f"{name:<9} {phase.converged}/{n} converged in {phase.seconds} s")
    return phase


def strike(ctx: Any, kind: str, at_s: float, now: float) -> dict[str, Any]:
    converged = ctx.fleet.total("done")
    t = time.monotonic()
    if kind == "broker_restart":
        say(f"drill     t={now:6.1f}s  broker restart ({converged} converged)")
        ctx.broker.restart(ctx.args.broker_down_s)
        record: dict[str, Any] = {"kind": kind, "down_s": round(time.monotonic() - t, 2)}
    else:
        from bench.drill_stage import kill_leader

        say(f"drill     t={now:6.1f}s  leader hub SIGKILL ({converged} converged)")
        record = {"kind": kind, **kill_leader(ctx.hubs)}
        say(f"drill     leader kill: {record}")
    record.update({"planned_at_s": round(at_s, 2), "at_s": round(now, 2), "converged": converged})
    return record


def _hub_status(client: Any, rollout_id: str, n: int) -> dict[str, Any]:
    """The hub's view of the rollout, once it has heard every outcome (or 30 s)."""
    deadline = time.monotonic() + 30.0
    while True:
        st = hub_call(client.rollout, rollout_id).model_dump()
        if st["converged"] >= n or st["finished"] or time.monotonic() > deadline:
            keep = ("state", "converged", "failures", "rolled_back", "counts", "halted_reason")
            return {k: st.get(k) for k in keep}
        time.sleep(0.5)


# ----------------------------------------------------------------------------- main


@dataclass
class Context:
    args: argparse.Namespace
    fleet: FleetProcesses
    client: Any
    broker: Any
    hubs: Any


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.drill_replicas import FailoverClient
    from bench.drill_stage import start_broker, start_hubs
    from hub.access.keys import DEV_KEY

    work = Path(tempfile.mkdtemp(prefix="bench-drill-"))
    device_dir = Path(tempfile.mkdtemp(prefix="bench-drill-", dir=args.device_dir))
    broker = start_broker(work)
    hubs = fleet = client = None
    try:
        hubs = start_hubs(work, broker.address.url, args.replicas, args.pg, args.keep)
        client = FailoverClient(hubs.urls, api_key=DEV_KEY, timeout=60.0)
        urls = ", ".join(hubs.urls)
        say(f"stage  broker {broker.address.url}, hub {urls} ({hubs.mode}), files in {work}")
        v1, v2 = train(client, args), train(client, args)
        chunks = -(-int(v2["size_bytes"]) // (16 * 1024))
        say(f"model  {MODEL_NAME} v1, v2: {v2['size_bytes']:,} bytes, {chunks} chunks")
        fleet = FleetProcesses()
        fleet.start(_fleet_configs(args, client, broker, device_dir), args.infer_share)
        wait_online(client, fleet, args.devices)
        say(f"fleet  {args.devices} devices online in {args.processes} process(es)")
        ctx = Context(args, fleet, client, broker, hubs)
        reference = run_phase(ctx, v1, [], [], "reference")
        ref_s = reference.seconds or args.timeout
        faults = device_faults(args, chunks, ref_s)
        drill = run_phase(ctx, v2, faults, process_faults(args, ref_s), "drill")
        fleet.poll(args.settle_s)  # spools drain after the last reconnects
        finals = fleet.finish()
        fleet = None
        hubs.wait_all_back()  # a killed replica collects what its session kept
        accepted = _settled_windows(hubs)
        stats = hub_call(client.stats).model_dump()
        report = figures(args, reference, drill, finals, accepted, v2, faults, hubs.summary())
        report["hub_stats_since_last_start"] = stats
    finally:
        if fleet is not None:
            fleet.finish(10.0)
        if client is not None:
            client.close()
        if hubs is not None:
            hubs.stop()
        broker.stop()
        shutil.rmtree(device_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["python"] = platform.python_version()
    report["cpus"] = len(os.sched_getaffinity(0))
    return report


def _settled_windows(hubs: Any) -> dict[str, dict[str, set[int]]]:
    """The hub's stored windows once its ingest has caught up (unchanged for a while)."""
    from bench.drill_stage import accepted_windows

    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 60.0
    while True:
        windows = accepted_windows(hubs)
        total = sum(len(s) for by_device in windows.values() for s in by_device.values())
        if total != last:
            last, since = total, time.monotonic()
        elif time.monotonic() - since >= INGEST_SETTLE_S or time.monotonic() > deadline:
            return windows
        time.sleep(0.25)


def _fleet_configs(
    args: argparse.Namespace, client: Any, broker: Any, device_dir: Path
) -> list[Any]:
    from simulator.fleet import FleetConfig

    root = client.enrol("drill-image", client.create_enrol_token()["token"])["root"]
    return [
        FleetConfig(
            devices=count,
            host=broker.address.host,
            port=broker.address.port,
            work_dir=device_dir / "devices",
            pinned_root=root.encode(),
            id_prefix="sim",
            first_index=first,
            seed=args.seed + w,
            rows_per_s=args.rows_per_s,
            window_s=args.window_s,
            fetch_timeout_s=args.fetch_timeout_s,
            spool_max_bytes=args.spool_bytes,
            heartbeat_s=args.heartbeat_s,
        )
        for w, (first, count) in enumerate(_shares(args.devices, args.processes))
    ]


def main(argv: list[str]) -> int:
    args = parse(argv, __doc__)
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if report["met"] else 1
