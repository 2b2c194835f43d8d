"""The ``edgefleet`` command: a thin front over the hub, the agent and the simulator.

Each subcommand imports only what it needs, so a device with just the ``agent`` extra
can run ``edgefleet agent run`` without the hub's dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edgefleet import (
    agent_cli,
    broker_cli,
    datasets_cli,
    fleet_cli,
    hub_cli,
    keys_cli,
    models_cli,
    rollout_cli,
)

DEFAULT_HUB = "http://127.0.0.1:8700"
API_KEY_ENV = "EDGEFLEET_API_KEY"


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
        print(f"edgefleet: error: {e}{_hint(e)}", file=sys.stderr)
        return 1


def _hint(e: Exception) -> str:
    if getattr(e, "status", None) == 401:
        return f" (give --api-key or set {API_KEY_ENV})"
    if getattr(e, "status", None) == 403:
        return " (ask an admin for a key with that role)"
    return ""


def _parser() -> argparse.ArgumentParser:
    # What every command that calls the admin API takes.
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--hub", default=DEFAULT_HUB, help=f"the hub's API (default {DEFAULT_HUB})")
    api.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"API key ef_<keyid>_<secret> (default: ${API_KEY_ENV})",
    )
    p = argparse.ArgumentParser(prog="edgefleet", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = p.add_subparsers(metavar="COMMAND")
    broker_cli.register(sub)
    keys_cli.register(sub)
    rollout_cli.register(sub, api)

    _demo_parser(sub)

    hub_cli.register(sub, api)

    agent_cli.register(sub)

    _sim_parser(sub)

    models_cli.register(sub, api)
    datasets_cli.register(sub, api)
    fleet_cli.register(sub, api)
    return p


def _demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="hub + simulated fleet, end to end, on this machine")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    demo.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    demo.add_argument("--broker", help="use this MQTT broker (mqtt://host:port)")
    demo.add_argument("--work-dir", type=Path, help="keep hub and device state here")
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to converge")
    data = demo.add_argument_group(
        "your own data (edgefleet/demo_data.py): upload, train, roll out, live figures"
    )
    data.add_argument("--dataset", type=Path, metavar="FILE", help="a labelled CSV or NPZ")
    data.add_argument("--label", help="the label column of a CSV (NPZ: y)")
    data.add_argument("--task", choices=("classification", "regression"), help="default: inferred")
    data.add_argument("--kind", choices=("mlp", "cnn"), default="mlp", help="cnn: images, windows")
    data.add_argument("--name", help="the dataset's and model's name (default: the file's)")
    data.add_argument(
        "--play",
        choices=("holdout", "all"),
        default="holdout",
        help="rows the devices infer on: those held out to judge the model (default), or all",
    )
    data.add_argument("--late-share", type=float, default=0.3, help="labels sent later (0..1)")
    demo.set_defaults(func=_demo)


def _sim_parser(sub: Any) -> None:
    sim = sub.add_parser("sim", help="the fleet simulator").add_subparsers(metavar="ACTION")
    srun = sim.add_parser(
        "run",
        help="run N simulated devices against a broker, or rehearse a scenario (--scenario)",
    )
    srun.add_argument(
        "--scenario",
        type=Path,
        help="a scenario file (TOML, see simulator/scenarios/): broker, hub, fleet, rollout "
        "and faults, all on this machine; ignores the other options but --summary, --work-dir",
    )
    srun.add_argument("--devices", type=int, default=100)
    srun.add_argument("--broker", help="mqtt://host:port (required without --scenario)")
    srun.add_argument("--root", type=Path, help="pinned TUF root.json (else --hub/--token)")
    srun.add_argument("--hub", default=DEFAULT_HUB)
    srun.add_argument("--token", help="enrolment token, to fetch the root from --hub")
    srun.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    srun.add_argument("--processes", type=int, default=1)
    srun.add_argument(
        "--work-dir",
        type=Path,
        help="device state (default edgefleet-data/sim; with --scenario a new temp dir)",
    )
    srun.add_argument("--id-prefix", default="sim")
    srun.add_argument("--device-class", default="sim-gateway")
    srun.add_argument(
        "--rows",
        type=Path,
        metavar="FILE",
        help="infer on this labelled CSV or NPZ's rows instead of the sensor generator",
    )
    srun.add_argument("--label", help="with --rows: the label column of a CSV (NPZ: y)")
    srun.add_argument(
        "--late-share", type=float, default=0.0, help="with --rows: labels sent later (0..1)"
    )
    srun.add_argument("--summary", type=Path, help="write the summary as JSON here")
    srun.set_defaults(func=_sim_run)


# ------------------------------------------------------------------ handlers


def _demo(args: argparse.Namespace) -> int:
    from edgefleet.demo import DemoOptions, run_demo

    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    opts = DemoOptions(
        devices=args.devices,
        summary_path=args.summary,
        broker_url=args.broker,
        work_dir=args.work_dir,
        converge_timeout_s=args.timeout,
    )
    if args.dataset is None:
        summary = run_demo(opts)
        return 0 if summary["converged"] == summary["devices"] else 1
    from edgefleet.demo_data import DataOptions, run_dataset_demo

    data = DataOptions(
        args.dataset, args.label, args.task, args.kind, args.name, args.play,
        late_share=args.late_share,
    )  # fmt: skip
    summary = run_dataset_demo(opts, data)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["running"] == args.devices else 1


def _sim_run(args: argparse.Namespace) -> int:
    if args.scenario is not None:  # exit 0 when every device converged, else 1
        from edgefleet.rehearsal import run_scenario
        from simulator.scenario import load_scenario

        scenario = load_scenario(args.scenario)  # a bad file fails here, before any start
        result = run_scenario(scenario, args.work_dir).summary
        text = json.dumps(result, indent=2)
        print(text)
        if args.summary:
            args.summary.write_text(text + "\n")
        return 0 if result["converged"] == result["devices"] else 1
    from hub.transport.broker import BrokerAddress
    from simulator.fleet import FleetConfig, run_fleet

    if args.broker is None:
        raise ValueError("give --broker mqtt://host:port, or --scenario FILE")
    addr = BrokerAddress.parse(args.broker)
    if args.root is not None:
        root = args.root.read_bytes()
    elif args.token:
        from edgefleet.client import HubClient

        with HubClient(args.hub) as c:
            root = c.enrol(f"{args.id_prefix}-image", args.token)["root"].encode()
    else:
        raise ValueError("give --root FILE, or --token (and --hub) to fetch the root")
    rows = None
    if args.rows is not None:
        from simulator.rows import load_rows

        rows = load_rows(args.rows, args.label)  # a bad file: RowsError, one line
    summary = run_fleet(
        FleetConfig(
            devices=args.devices,
            host=addr.host,
            port=addr.port,
            work_dir=args.work_dir or Path("edgefleet-data/sim"),
            pinned_root=root,
            id_prefix=args.id_prefix,
            device_class=args.device_class,
            rows=rows,
            late_label_share=args.late_share,
        ),
        duration_s=args.duration,
        processes=args.processes,
    )
    out = json.dumps(summary.__dict__, indent=2)
    print(out)
    if args.summary:
        args.summary.write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
