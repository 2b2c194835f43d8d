"""``python -m bench memory``: the agent daemon's memory and idle CPU, against the runtime alone.

A real hub (in-process) and a private Mosquitto; one real ``edgefleet agent run`` process
per runtime (onnxruntime, and LiteRT: ``runtime = "tflite"``), each enrolled as an
operator would, gets the same hub-built model by one deployment (an int8 ONNX file for
the one, an int8 .tflite for the other) and serves it on its local endpoint. Then:

1. **serving**: ``--rate`` predict calls a second of ``--rows`` rows each through the
   endpoint for ``--serve-s`` seconds; the agent's RSS (also USS and PSS) after it;
2. **idle**: no call for ``--idle-s`` seconds (telemetry on: 10 s windows, which idle
   coalesce into heartbeats); the agent's CPU over that span, in % of one core;
3. **restarted**: the agent restarted (SIGTERM, then ``agent run`` again) and served the
   same calls: a device's usual state, up since its last boot, no update since.

The reference, measured in the same run: a bare Python process that imports only numpy
and the runtime, loads the same model bytes (the file the agent installed), runs the
same number of calls on the same rows, then waits; its RSS/USS/PSS the same way. Goals
(issue 14): the agent's RSS at most +20 MB over the reference's, and at most 1% of a core
at idle.

    python -m bench memory [--json] [--runtimes onnxruntime,tflite] [--idle-s 30]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
GOAL_RSS_MB = 20.0  # the agent's RSS over the bare runtime's, at most
GOAL_IDLE_CPU_PCT = 1.0  # % of one core, at idle with telemetry on, at most
CLASS_OF = {"onnxruntime": "generic-linux", "tflite": "pi-litert"}  # hub's built-in classes
MIB = 2**20

# The reference process: numpy and the runtime, the model's bytes, the same calls.
REFERENCE = r"""
import sys, time
import numpy as np
runtime, model_path, rows_path, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data, x = open(model_path, "rb").read(), np.load(rows_path)
if runtime == "onnxruntime":
    import onnxruntime as ort
    opts = ort.SessionOptions()  # as the agent's OnnxBackend: one thread, no spinning
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    def call():
        sess.run(None, {name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    def call():
        for row in x:  # a batch axis fixed at 1: row by row, as the agent's LiteRT backend
            it.set_tensor(inp["index"], row[None, :].astype(inp["dtype"]))
            it.invoke()
            [it.get_tensor(o["index"]) for o in outs]
for _ in range(calls):
    call()
print("ready", flush=True)
time.sleep(3600)
"""


@dataclass
class Agent:
    """One agent daemon process and what the bench knows of it."""

    runtime: str
    device: str
    config: Path
    state_dir: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgefleet.cli",
                    "agent",
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def model_file(self) -> Path:
        """The model file the agent installed (the reference loads the same bytes)."""
        suffix = ".onnx" if self.runtime == "onnxruntime" else ".tflite"
        files = sorted(self.state_dir.rglob(f"model{suffix}"))
        if not files:
            raise RuntimeError(f"{self.device}: no installed model{suffix} in {self.state_dir}")
        return files[-1]


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, payload, {"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _predict(port: int, rows: list[list[float]]) -> int:
    try:
        return _request(port, "POST", "/v1/predict", {"inputs": rows})[0]
    except (OSError, http.client.HTTPException):
        return 0  # not up yet


def _wait(what: str, done: Any, timeout: float, agents: list[Agent] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not done():
        for a in agents:
            if a.proc is not None and a.proc.poll() is not None:
                raise RuntimeError(
                    f"{a.device} exited:\n{a.log.read_text(errors='replace')[-3000:]}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _serve(agents: list[Agent], rows: list[list[float]], seconds: float, rate: float) -> int:
    """``rate`` predict calls a second on each agent for ``seconds``; calls made on each."""
    calls, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for a in agents:
            if _predict(a.port, rows) != 200:
                raise RuntimeError(f"{a.device}: a predict call failed")
        calls += 1
        time.sleep(max(0.0, t0 + calls / rate - time.monotonic()))
    return calls


def _memory(pid: int) -> dict[str, float]:
    m = psutil.Process(pid).memory_full_info()
    return {k: round(getattr(m, k) / MIB, 1) for k in ("rss", "uss", "pss")}


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _reference(
    agent: Agent, rows_path: Path, calls: int, settle_s: float
) -> tuple[dict[str, float], subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            REFERENCE,
            agent.runtime,
            str(agent.model_file()),
            str(rows_path),
            str(calls),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {agent.runtime} reference failed ({proc.wait()})")
    time.sleep(settle_s)
    return _memory(proc.pid), proc


# ----------------------------------------------------------------------------- the hub


def _enrol(client: Any, api_url: str, work: Path, runtime: str, heartbeat_s: float | None) -> Agent:
    """Enrol one device of ``runtime``'s class as an operator would (``agent enrol``)."""
    from edgefleet.cli import main as cli
    from hub.transport.broker import free_port

    device, port = f"mem-{runtime}", free_port()
    config, state = work / f"{device}.toml", work / device
    argv = ["agent", "enrol", "--hub", api_url, "--device-id", device]
    argv += ["--token", client.create_enrol_token(device)["token"]]
    argv += ["--device-class", CLASS_OF[runtime], "--state-dir", str(state)]
    argv += ["--config-out", str(config), "--endpoint", f"127.0.0.1:{port}"]
    if cli(argv) != 0:
        raise RuntimeError(f"enrolling {device} failed")
    if heartbeat_s is not None:  # the agent's default otherwise (agent/config.py)
        config.write_text(config.read_text() + f"heartbeat_s = {heartbeat_s}\n")
    return Agent(runtime, device, config, state, port, work / f"{device}.log")


def _deploy(client: Any, agents: list[Agent], rows: list[list[float]]) -> dict[str, Any]:
    """Train the hub's built-in model with an artefact per runtime; roll it out to the
    agents, feeding probation with live calls. The model."""
    job = client.train(
        n_train=2000,
        device_classes=[CLASS_OF[a.runtime] for a in agents],
        probation_s=1.0,
        probation_min_inferences=3,
    )
    model: dict[str, Any] = client.wait_job(job["id"], timeout=600)["result"]
    rollout = client.create_rollout(model["name"], version=model["version"])
    deadline = time.monotonic() + 120
    while client.rollout(rollout["id"])["state"] != "completed":
        for a in agents:
            _predict(a.port, rows)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the rollout did not complete: {client.rollout(rollout['id'])}")
        time.sleep(0.1)
    return model


def _serving(agents: list[Agent]) -> None:
    def up() -> bool:
        for a in agents:
            try:
                status, body = _request(a.port, "GET", "/v1/status")
            except (OSError, http.client.HTTPException):
                return False
            if status != 200 or not body.get("serving"):
                return False
        return True

    _wait("the agents serving", up, 60, agents)


def measure(args: argparse.Namespace, work: Path, client: Any, api_url: str) -> dict[str, Any]:
    """The three phases on one agent per runtime, and each runtime's reference."""
    from shared.sensors import generate

    x, _ = generate(args.rows, seed=5)
    rows = x.astype(np.float32).tolist()
    rows_path = work / "rows.npy"
    np.save(rows_path, np.asarray(rows, dtype=np.float32))
    agents = [_enrol(client, api_url, work, r, args.heartbeat_s) for r in args.runtimes]
    refs: list[subprocess.Popen[str]] = []
    try:
        for a in agents:
            a.start()
        _wait(
            "the agents online",
            lambda: len(client.devices(status="online")) == len(agents),
            60,
            agents,
        )
        model = _deploy(client, agents, rows)
        calls = _serve(agents, rows, args.serve_s, args.rate)
        time.sleep(args.settle_s)
        out: dict[str, Any] = {a.runtime: {"serving": _memory(a.pid)} for a in agents}
        cpu0, t0 = {a.runtime: _cpu_s(a.pid) for a in agents}, time.monotonic()
        time.sleep(args.idle_s)
        wall = time.monotonic() - t0
        for a in agents:
            r = out[a.runtime]
            r["idle_cpu_pct"] = round(100 * (_cpu_s(a.pid) - cpu0[a.runtime]) / wall, 3)
            r["idle"] = _memory(a.pid)
            a.stop()
            a.start()
        _serving(agents)
        _serve(agents, rows, args.serve_s, args.rate)
        time.sleep(args.settle_s)
        for a in agents:
            r = out[a.runtime]
            r["restarted"] = _memory(a.pid)
            ref_mem, proc = _reference(a, rows_path, calls, args.settle_s)
            refs.append(proc)
            r["reference"] = ref_mem
            r["model_bytes"] = a.model_file().stat().st_size
            r["calls"] = calls
            for phase in ("serving", "idle", "restarted"):
                r[f"{phase}_rss_over_reference_mb"] = round(r[phase]["rss"] - ref_mem["rss"], 1)
                r[f"{phase}_uss_over_reference_mb"] = round(r[phase]["uss"] - ref_mem["uss"], 1)
            r["rss_ratio"] = round(r["serving"]["rss"] / ref_mem["rss"], 2)
            r["rss_goal_met"] = r["serving_rss_over_reference_mb"] <= GOAL_RSS_MB
            r["idle_cpu_goal_met"] = r["idle_cpu_pct"] <= GOAL_IDLE_CPU_PCT
        out["model"] = {"name": model["name"], "version": model["version"]}
        return out
    finally:
        for a in agents:
            a.stop()
        for p in refs:
            p.kill()
            p.wait(5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgefleet.client import HubClient
    from edgefleet.demo import ApiServer
    from hub import Hub, HubConfig
    from hub.access.keys import ApiKeys, Role
    from hub.transport.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, Mosquitto() as broker:
        work = Path(tmp)
        hub = Hub(HubConfig(data_dir=work / "hub", broker_url=broker.address.url)).start()
        api = ApiServer(hub).start()
        client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("b", Role.operator, "b").key)
        try:
            per_runtime = measure(args, work, client, api.url)
        finally:
            client.close()
            api.stop()
            hub.stop()
    return {
        "benchmark": "memory",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {
            k: getattr(args, k)
            for k in ("runtimes", "rows", "rate", "serve_s", "idle_s", "settle_s")
        },
        "goals": {"rss_over_reference_mb": GOAL_RSS_MB, "idle_cpu_pct": GOAL_IDLE_CPU_PCT},
        **per_runtime,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--runtimes", default="onnxruntime,tflite", help="comma-separated")
    p.add_argument("--rows", type=int, default=4, help="rows per predict call")
    p.add_argument("--rate", type=float, default=20.0, help="predict calls per second")
    p.add_argument("--serve-s", type=float, default=10.0, help="seconds of serving")
    p.add_argument("--idle-s", type=float, default=30.0, help="seconds at idle")
    p.add_argument("--settle-s", type=float, default=2.0, help="pause before reading memory")
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=None,
        help="the agents' heartbeat_s (0: every telemetry window sent; default: the agent's)",
    )
    args = p.parse_args(argv)
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(args.runtimes) - set(CLASS_OF)
    if unknown or not args.runtimes:
        p.error(f"--runtimes: one or more of {', '.join(CLASS_OF)}")
    with contextlib.redirect_stdout(sys.stderr):  # TensorFlow's converter prints; --json is ours
        result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    g = r["goals"]
    print(
        "agent daemon vs bare runtime (same model, same calls);"
        f" goals: RSS <= +{g['rss_over_reference_mb']} MB, idle CPU <= {g['idle_cpu_pct']}%"
    )
    head = ("runtime", "phase", "RSS MB", "USS MB", "PSS MB", "RSS over ref")
    print("{:<12} {:<10} {:>8} {:>8} {:>8} {:>13}".format(*head))
    for runtime in r["settings"]["runtimes"]:
        x = r[runtime]
        for phase in ("reference", "serving", "idle", "restarted"):
            m = x[phase]
            over = "" if phase == "reference" else f"{x[f'{phase}_rss_over_reference_mb']:+.1f}"
            cells = (runtime, phase, m["rss"], m["uss"], m["pss"], over)
            print("{:<12} {:<10} {:>8.1f} {:>8.1f} {:>8.1f} {:>13}".format(*cells))
        print(
            f"{runtime:<12} idle CPU {x['idle_cpu_pct']:.2f}% of a core"
            f" over {r['settings']['idle_s']} s (goal met: {x['idle_cpu_goal_met']});"
            f" RSS goal met: {x['rss_goal_met']}"
        )
