"""The ``edgefleet`` command: a thin front over the hub, the agent and the simulator.

Each subcommand imports only what it needs, so a device with just the ``agent`` extra
can run ``edgefleet agent run`` without the hub's dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

DEFAULT_HUB = "http://127.0.0.1:8700"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error for the operator, not a traceback
        if args.verbose:
            raise
        print(f"edgefleet: error: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = p.add_subparsers(metavar="COMMAND")

    demo = sub.add_parser("demo", help="hub + simulated fleet, end to end, on this machine")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    demo.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    demo.add_argument("--broker", help="use this MQTT broker (mqtt://host:port)")
    demo.add_argument("--work-dir", type=Path, help="keep hub and device state here")
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to converge")
    demo.set_defaults(func=_demo)

    hub = sub.add_parser("hub", help="the central hub").add_subparsers(metavar="ACTION")
    serve = hub.add_parser("serve", help="run the hub: admin API + MQTT")
    serve.add_argument("--data", type=Path, default=Path("edgefleet-data"), help="data directory")
    serve.add_argument("--db", help="SQLAlchemy URL (default: SQLite file in --data)")
    serve.add_argument("--broker", help="MQTT broker URL (default: a private Mosquitto)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700)
    serve.set_defaults(func=_hub_serve)

    agent = sub.add_parser("agent", help="the device daemon").add_subparsers(metavar="ACTION")
    run = agent.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    run.set_defaults(func=_agent_run)
    enrol = agent.add_parser("enrol", help="enrol with a hub: pin its root, write a config")
    enrol.add_argument("--hub", default=DEFAULT_HUB)
    enrol.add_argument("--token", required=True, help="the hub's enrolment token")
    enrol.add_argument("--device-id", required=True)
    enrol.add_argument("--device-class", default="generic")
    enrol.add_argument("--state-dir", type=Path, required=True)
    enrol.add_argument("--config-out", type=Path, required=True, help="write the TOML here")
    enrol.set_defaults(func=_agent_enrol)

    sim = sub.add_parser("sim", help="the fleet simulator").add_subparsers(metavar="ACTION")
    srun = sim.add_parser("run", help="run N simulated devices against a broker")
    srun.add_argument("--devices", type=int, default=100)
    srun.add_argument("--broker", required=True, help="mqtt://host:port")
    srun.add_argument("--root", type=Path, help="pinned TUF root.json (else --hub/--token)")
    srun.add_argument("--hub", default=DEFAULT_HUB)
    srun.add_argument("--token", help="enrolment token, to fetch the root from --hub")
    srun.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    srun.add_argument("--processes", type=int, default=1)
    srun.add_argument("--work-dir", type=Path, default=Path("edgefleet-data/sim"))
    srun.add_argument("--id-prefix", default="sim")
    srun.add_argument("--device-class", default="sim-gateway")
    srun.add_argument("--summary", type=Path, help="write the summary as JSON here")
    srun.set_defaults(func=_sim_run)

    models = sub.add_parser("models", help="the model registry").add_subparsers(metavar="ACTION")
    mlist = models.add_parser("list", help="list model versions with their metrics")
    mlist.add_argument("--hub", default=DEFAULT_HUB)
    mlist.set_defaults(func=_models_list)
    mtrain = models.add_parser("train", help="train, quantise, sign a model on the hub")
    mtrain.add_argument("--hub", default=DEFAULT_HUB)
    mtrain.add_argument("--name", default="vibration")
    mtrain.add_argument("--n-train", type=int, default=12000)
    mtrain.add_argument("--max-int8-loss", type=float, default=1.0, help="points of accuracy")
    mtrain.set_defaults(func=_models_train)
    mup = models.add_parser("upload", help="upload your own ONNX model")
    mup.add_argument("--hub", default=DEFAULT_HUB)
    mup.add_argument("--name", required=True)
    mup.add_argument("file", type=Path)
    mup.set_defaults(func=_models_upload)

    devs = sub.add_parser("devices", help="list devices")
    devs.add_argument("--hub", default=DEFAULT_HUB)
    devs.set_defaults(func=_devices)

    dep = sub.add_parser("deploy", help="deploy a model version to devices")
    dep.add_argument("--hub", default=DEFAULT_HUB)
    dep.add_argument("--model", required=True)
    dep.add_argument("--version", type=int)
    dep.add_argument("--devices", nargs="*", help="device ids (default: all)")
    dep.add_argument("--wait", action="store_true", help="follow progress until the end")
    dep.set_defaults(func=_deploy)
    return p


# ------------------------------------------------------------------ handlers


def _demo(args: argparse.Namespace) -> int:
    from edgefleet.demo import DemoOptions, run_demo

    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    summary = run_demo(
        DemoOptions(
            devices=args.devices,
            summary_path=args.summary,
            broker_url=args.broker,
            work_dir=args.work_dir,
            converge_timeout_s=args.timeout,
        )
    )
    return 0 if summary["converged"] == summary["devices"] else 1


def _hub_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.api import create_app
    from hub.service import Hub, HubConfig

    logging.getLogger().setLevel(logging.INFO)
    with Hub(HubConfig(data_dir=args.data, db_url=args.db, broker_url=args.broker)) as hub:
        print(
            f"hub: API on http://{args.host}:{args.port} (docs at /docs), broker {hub.broker.url}"
        )
        print(f"hub: enrolment token in {args.data / 'enrol-token'}")
        uvicorn.run(create_app(hub), host=args.host, port=args.port, log_level="info")
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import AgentConfig, run_daemon

    run_daemon(AgentConfig.load(args.config))
    return 0


def _agent_enrol(args: argparse.Namespace) -> int:
    from agent.daemon import enrol

    enrol(
        hub_url=args.hub,
        token=args.token,
        device_id=args.device_id,
        device_class=args.device_class,
        state_dir=args.state_dir,
        config_out=args.config_out,
    )
    print(f"enrolled {args.device_id}; config written to {args.config_out}")
    return 0


def _sim_run(args: argparse.Namespace) -> int:
    from hub.broker import BrokerAddress
    from simulator.fleet import FleetConfig, run_fleet

    addr = BrokerAddress.parse(args.broker)
    if args.root is not None:
        root = args.root.read_bytes()
    elif args.token:
        from hub.client import HubClient

        with HubClient(args.hub) as c:
            root = c.enrol(f"{args.id_prefix}-image", args.token)["root"].encode()
    else:
        raise ValueError("give --root FILE, or --token (and --hub) to fetch the root")
    summary = run_fleet(
        FleetConfig(
            devices=args.devices,
            host=addr.host,
            port=addr.port,
            work_dir=args.work_dir,
            pinned_root=root,
            id_prefix=args.id_prefix,
            device_class=args.device_class,
        ),
        duration_s=args.duration,
        processes=args.processes,
    )
    out = json.dumps(summary.__dict__, indent=2)
    print(out)
    if args.summary:
        args.summary.write_text(out + "\n")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from hub.client import HubClient

    return HubClient(args.hub)


def _models_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.models()
    print(f"{'model':<16}{'ver':>4}  {'bytes':>9}  {'acc fp32':>8}  {'acc int8':>8}  sha256")
    for r in rows:
        print(
            f"{r['name']:<16}{r['version']:>4}  {r['size_bytes']:>9}  "
            f"{_f(r['accuracy_fp32'])}  {_f(r['accuracy_int8'])}  {r['sha256'][:16]}"
        )
    return 0


def _f(x: float | None) -> str:
    return f"{x:>8.3f}" if x is not None else f"{'-':>8}"


def _models_train(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.train(name=args.name, n_train=args.n_train, max_int8_loss_points=args.max_int8_loss)
        done = c.wait_job(
            job["id"],
            on_progress=lambda j: print(f"  {j['stage'] or j['status']} {j['progress']:.0%}"),
        )
    print(json.dumps(done["result"], indent=2))
    return 0


def _models_upload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.upload(args.name, args.file.read_bytes())
        done = c.wait_job(job["id"])
    print(json.dumps(done["result"], indent=2))
    return 0


def _devices(args: argparse.Namespace) -> int:
    with _client(args) as c:
        for d in c.devices():
            print(f"{d['id']:<24}{d['status']:<9}{d['model'] or '-'}:{d['version'] or '-'}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        st = c.deploy(args.model, args.version, args.devices or None)
        print(f"deployment {st['id']}: {args.model} v{st['version']} to {st['devices']} devices")
        while args.wait and not st["finished"]:
            time.sleep(1)
            st = c.deployment(st["id"], devices=False)
            print(f"  {st['converged']}/{st['devices']} healthy  {st['stages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
