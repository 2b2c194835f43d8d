"""The ``edgefleet`` command: a thin front over the hub, the agent and the simulator.

Each subcommand imports only what it needs, so a device with just the ``agent`` extra
can run ``edgefleet agent run`` without the hub's dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from edgefleet import broker_cli, datasets_cli, fleet_cli, keys_cli, models_cli, rollout_cli

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

    _hub_parser(sub)

    _agent_parser(sub)

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


def _hub_parser(sub: Any) -> None:
    hub = sub.add_parser("hub", help="the central hub").add_subparsers(metavar="ACTION")
    serve = hub.add_parser("serve", help="run the hub: admin API + MQTT")
    serve.add_argument("--data", type=Path, default=Path("edgefleet-data"), help="data directory")
    serve.add_argument("--db", help="SQLAlchemy URL (default: SQLite file in --data)")
    serve.add_argument(
        "--broker", help="MQTT broker URL, mqtt:// or mqtts:// (default: a private Mosquitto)"
    )
    serve.add_argument(
        "--broker-tls",
        type=Path,
        help="for mqtts://: the directory `edgefleet broker config` wrote (the hub's "
        "certificate, the CA, the CRL it rewrites on revocation)",
    )
    serve.add_argument(
        "--broker-reload",
        help="command run after a CRL change, e.g. 'systemctl reload mosquitto'",
    )
    serve.add_argument(
        "--root-keys", type=Path, help="root keys directory, if kept apart (may be offline)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument(
        "--dev", action="store_true", help="development mode: accept the built-in dev API key"
    )
    serve.add_argument(
        "--ingest-workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that take the telemetry ($share) besides this one (default 0)",
    )
    serve.add_argument(
        "--allow-plain-broker",
        action="store_true",
        help="accept a plain-TCP (mqtt://) broker that is not on loopback (no TLS: unsafe)",
    )
    serve.set_defaults(func=_hub_serve)
    from edgefleet import hub_wait

    hub_wait.register(hub, DEFAULT_HUB)
    _apikey_parser(hub)


def _agent_parser(sub: Any) -> None:
    agent = sub.add_parser("agent", help="the device daemon").add_subparsers(metavar="ACTION")
    run = agent.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    run.set_defaults(func=_agent_run)
    enrol = agent.add_parser("enrol", help="enrol with a hub: pin its root, write a config")
    enrol.add_argument("--hub", default=DEFAULT_HUB)
    enrol.add_argument("--token", required=True, help="a one-time enrolment token")
    enrol.add_argument("--device-id", required=True)
    enrol.add_argument("--device-class", default="generic")
    enrol.add_argument("--state-dir", type=Path, required=True)
    enrol.add_argument("--config-out", type=Path, required=True, help="write the TOML here")
    enrol.set_defaults(func=_agent_enrol)


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


def _apikey_parser(hub: Any) -> None:
    """``edgefleet hub apikey``: keys made on the hub's machine, from its database."""
    keys = hub.add_parser(
        "apikey", help="API keys, from the hub's database (bootstrap the first admin)"
    ).add_subparsers(metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--data-dir",
        "--data",
        dest="data",
        type=Path,
        default=Path("edgefleet-data"),
        help="the hub's data directory (as for hub serve --data)",
    )
    db.add_argument("--db", help="SQLAlchemy URL (default: SQLite file in --data-dir)")
    create = keys.add_parser("create", parents=[db], help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.set_defaults(func=_apikey_create)
    klist = keys.add_parser("list", parents=[db], help="list keys (never their secrets)")
    klist.set_defaults(func=_apikey_list)
    revoke = keys.add_parser("revoke", parents=[db], help="revoke a key")
    revoke.add_argument("keyid")
    revoke.set_defaults(func=_apikey_revoke)


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


def _hub_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub import Hub, HubConfig, create_app
    from hub.access.keys import DEV_KEY
    from hub.api.serving import server_config

    logging.getLogger().setLevel(logging.INFO)
    if args.dev:
        logging.getLogger("edgefleet").warning(
            "DEVELOPMENT MODE: the built-in key %s is accepted as admin by anyone who can "
            "reach this API. Never run a hub that devices or people rely on like this.",
            DEV_KEY,
        )
    config = HubConfig(
        data_dir=args.data,
        db_url=args.db,
        broker_url=args.broker,
        dev_mode=args.dev,
        broker_tls_dir=args.broker_tls,
        broker_reload=tuple(shlex.split(args.broker_reload or "")),
        allow_plain_broker=args.allow_plain_broker,
        ingest_workers=args.ingest_workers,
        root_keys_dir=args.root_keys,
    )
    with Hub(config) as hub:
        for warning in hub.storage_warnings:
            print(f"hub: WARNING: {warning}")
        print(
            f"hub: API on http://{args.host}:{args.port} (docs at /docs), broker {hub.broker.url}"
        )
        print(
            f"hub: first admin key: edgefleet hub apikey create --data-dir {args.data}"
            " --role admin --name NAME; enrolment tokens: edgefleet enrol-token"
        )
        # uvicorn re-raises a SIGTERM it caught once it has shut down; exit through Python
        # then, so the hub stops its broker and writers instead of leaving them orphaned.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        served = server_config(create_app(hub), args.host, args.port, log_level="info")
        uvicorn.Server(served).run()
    return 0


def _key_store(args: argparse.Namespace) -> Any:
    """The hub's API keys and audit log, from its database (as hub serve picks it)."""
    from hub.access.audit import AuditLog
    from hub.access.keys import ApiKeys
    from hub.store.datadir import create_private_file, private_umask
    from hub.store.tables import make_engine, sqlite_url

    if args.db is None:
        with private_umask():  # as the hub makes them (hub/store/datadir.py)
            args.data.mkdir(parents=True, exist_ok=True)
            create_private_file(args.data / "hub.db")
            engine = make_engine(sqlite_url(args.data / "hub.db"))
    else:
        engine = make_engine(args.db)
    return ApiKeys(engine), AuditLog(engine)


def _apikey_create(args: argparse.Namespace) -> int:
    from edgefleet.local_audit import record
    from hub.access.keys import CLI_ACTOR, Role
    from hub.store.tables import ApiKeyPublic

    keys, _ = _key_store(args)
    new = keys.create(args.name, Role(args.role), created_by=CLI_ACTOR)
    public = ApiKeyPublic.model_validate(new.record).model_dump()
    record(
        args.data,
        args.db,
        "api_key.create",
        new.record.keyid,
        "edgefleet hub apikey create",
        after=public,
    )
    print(new.key)
    print(
        f"({args.role} key {new.record.keyid} '{args.name}': shown once, only its hash is kept)",
        file=sys.stderr,
    )
    return 0


def _apikey_list(args: argparse.Namespace) -> int:
    import time

    keys, _ = _key_store(args)
    print(f"{'keyid':<18}{'role':<10}{'created':<21}{'revoked':<21}name")
    for k in keys.list():
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.created_at))
        revoked = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.revoked_at))
            if k.revoked_at
            else "-"
        )
        print(f"{k.keyid:<18}{k.role:<10}{created:<21}{revoked:<21}{k.name}")
    return 0


def _apikey_revoke(args: argparse.Namespace) -> int:
    from edgefleet.local_audit import record

    keys, _ = _key_store(args)
    row = keys.revoke(args.keyid)
    record(
        args.data,
        args.db,
        "api_key.revoke",
        row.keyid,
        "edgefleet hub apikey revoke",
        before={"revoked_at": None},
        after={"revoked_at": row.revoked_at},
    )
    print(f"revoked {row.keyid} ({row.role} '{row.name}')")
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import AgentConfig, run_daemon

    run_daemon(AgentConfig.load(args.config))
    return 0


def _agent_enrol(args: argparse.Namespace) -> int:
    from http.client import HTTPException
    from urllib.error import URLError

    from agent.daemon import enrol
    from edgefleet.connection import enrol_error

    try:
        enrol(
            hub_url=args.hub,
            token=args.token,
            device_id=args.device_id,
            device_class=args.device_class,
            state_dir=args.state_dir,
            config_out=args.config_out,
        )
    except (URLError, ConnectionError, TimeoutError, HTTPException, json.JSONDecodeError) as e:
        raise enrol_error(args.hub, e) from e  # one line: the hub's reason, or why no hub
    print(f"enrolled {args.device_id}; config written to {args.config_out}")
    return 0


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
