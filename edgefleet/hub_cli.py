"""``edgefleet hub``: run the hub (``serve``) and bootstrap its API keys (``apikey``).

``hub serve`` binds the API's port before it starts anything, prints where it listens
once it does, and hints at the first admin key only while there is none (docs/hub.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """``edgefleet hub serve``, ``hub apikey``, ``hub classes`` and ``hub wait`` (``api``:
    the options of a command that calls the admin API)."""
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
    serve.add_argument(
        "--broker-port",
        type=int,
        metavar="N",
        help="the private broker's port (default: the one of the last start, saved in "
        "--data; a free one the first time)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700, help="the API's port (default 8700)")
    serve.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # else it would undo `edgefleet -v hub serve`
        help="a log line per API request (on stdout), tracebacks on error",
    )
    serve.add_argument(
        "--access-log", type=Path, metavar="FILE", help="append a line per API request to FILE"
    )
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
    _apikey_parser(hub)
    from edgefleet import hub_wait

    hub_wait.register(hub, api)
    classes = hub.add_parser(
        "classes", parents=[api], help="the device classes the hub knows (firmware-images/)"
    )
    classes.add_argument("--json", action="store_true", help="print them as JSON")
    classes.set_defaults(func=_classes)


def _classes(args: argparse.Namespace) -> int:
    from edgefleet.client import HubClient

    with HubClient(args.hub, api_key=args.api_key) as c:
        found = c.device_classes()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"{'class':<16}{'runtime':<13}{'interpreter':<16}{'arch':<13}{'memory':>8}{'p95':>10}")
    for k in found:
        print(
            f"{k['name']:<16}{k['runtime']:<13}{k['interpreter']:<16}"
            f"{','.join(k['architectures']):<13}{k['memory_budget_mb']:>6.0f}MB"
            f"{k['latency_budget_us'] / 1000:>8.1f}ms"
        )
    return 0


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


def _hub_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.api.serving import bind_api, server_config

    # Bound first, before the hub's imports (seconds): a taken port is said at once, and
    # before the hub starts its broker and threads.
    sock = bind_api(args.host, args.port)
    from hub import Hub, HubConfig, create_app
    from hub.access.keys import DEV_KEY

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
        broker_port=args.broker_port,
        dev_mode=args.dev,
        broker_tls_dir=args.broker_tls,
        broker_reload=tuple(shlex.split(args.broker_reload or "")),
        allow_plain_broker=args.allow_plain_broker,
        ingest_workers=args.ingest_workers,
        root_keys_dir=args.root_keys,
    )
    with sock, Hub(config) as hub:
        app = create_app(hub)
        for warning in hub.storage_warnings:
            print(f"hub: WARNING: {warning}")
        port = sock.getsockname()[1]
        print(f"hub: API on http://{args.host}:{port} (docs at /docs), broker {hub.broker.url}")
        if not _has_admin(app.state.api_keys.list()):
            print(
                f"hub: no admin key yet: edgefleet hub apikey create --data-dir {args.data}"
                " --role admin --name NAME; then enrolment tokens: edgefleet enrol-token"
            )
        sys.stdout.flush()  # a `hub serve > log &` shows where it listens at once
        # uvicorn re-raises a SIGTERM it caught once it has shut down; exit through Python
        # then, so the hub stops its broker and writers instead of leaving them orphaned.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        access_log = args.access_log or args.verbose
        served = server_config(app, args.host, port, log_level="info", access_log=access_log)
        uvicorn.Server(served).run(sockets=[sock])
    return 0


def _has_admin(keys: list[Any]) -> bool:
    return any(k.role == "admin" and k.revoked_at is None for k in keys)


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
