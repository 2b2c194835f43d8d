"""``edgefleet hub``: run the hub (``serve``), wait for one, its counters (``status``), its
device classes, and bootstrap its API keys from its database (``apikey``).

``hub migrate`` brings its database to this release's schema (``hub serve`` does at start).
``hub serve`` binds the API's port before it starts anything, prints where it listens
once it does, and hints at the first admin key only while there is none (docs/hub.md).
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from edgefleet import hub_migrate, hub_wait
from edgefleet.hub_migrate import DbUrl
from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, stamp, table

hub = typer.Typer(
    no_args_is_help=True, help="The central hub: run it, wait for it, its keys and classes."
)
apikey = typer.Typer(
    no_args_is_help=True, help="API keys, from the hub's database (bootstrap the first admin)."
)

DataDir = Annotated[Path, typer.Option("--data", help="The hub's data directory.")]
KeyDataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir", "--data", help="The hub's data directory (as for hub serve --data)."
    ),
]
Broker = Annotated[
    str | None,
    typer.Option(
        "--broker", help="MQTT broker URL, mqtt:// or mqtts:// (default: a private Mosquitto)."
    ),
]
BrokerTls = Annotated[
    Path | None,
    typer.Option(
        "--broker-tls",
        help="For mqtts://: the directory `edgefleet broker config` wrote (the hub's "
        "certificate, the CA, the CRL it rewrites on revocation).",
    ),
]
BrokerReload = Annotated[
    str | None,
    typer.Option(
        "--broker-reload", help="Command run after a CRL change, e.g. 'systemctl reload mosquitto'."
    ),
]
RootKeys = Annotated[
    Path | None,
    typer.Option("--root-keys", help="Root keys directory, if kept apart (may be offline)."),
]
BrokerPort = Annotated[
    int | None,
    typer.Option(
        "--broker-port",
        metavar="N",
        help="The private broker's port (default: the one of the last start, saved in "
        "--data; a free one the first time).",
    ),
]
Host = Annotated[str, typer.Option("--host", help="The address the API listens on.")]
Port = Annotated[int, typer.Option("--port", help="The API's port.")]
Verbose = Annotated[
    bool,
    typer.Option("-v", "--verbose", help="A log line per API request (on stdout), tracebacks."),
]
AccessLog = Annotated[
    Path | None,
    typer.Option("--access-log", metavar="FILE", help="Append a line per API request to FILE."),
]
Dev = Annotated[
    bool, typer.Option("--dev", help="Development mode: accept the built-in dev API key.")
]
IngestWorkers = Annotated[
    int,
    typer.Option(
        "--ingest-workers",
        metavar="N",
        help="Processes that take the telemetry ($share) besides this one.",
    ),
]
Replicas = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        metavar="N",
        help="Run N hub processes over one PostgreSQL (--db) and broker (--broker), on "
        "ports --port to --port+N-1, restarting any that exits (docs/operations.md).",
    ),
]
Replica = Annotated[
    int | None,
    typer.Option(
        "--replica",
        metavar="I",
        help="Run as replica I of several (what --replicas starts; its MQTT client ids "
        "and leader election depend on it).",
    ),
]
AllowPlain = Annotated[
    bool,
    typer.Option(
        "--allow-plain-broker",
        help="Accept a plain-TCP (mqtt://) broker that is not on loopback (no TLS: unsafe).",
    ),
]


def register(app: typer.Typer) -> None:
    """``edgefleet hub ...``."""
    hub.command("serve", help="Run the hub: admin API + MQTT.")(serve)
    hub.command("wait", help="Wait until the hub at --hub answers (one starting).")(hub_wait.wait)
    hub.command("status", help="Whether the hub and its broker link are up; its counters.")(status)
    hub.command("classes", help="The device classes the hub knows (firmware-images/).")(classes)
    hub.command("migrate", help="Bring the hub's database to this release's schema.")(
        hub_migrate.migrate
    )
    apikey.command("create", help="Create a key and print it once.")(apikey_create)
    apikey.command("list", help="List keys (never their secrets).")(apikey_list)
    apikey.command("revoke", help="Revoke a key.")(apikey_revoke)
    hub.add_typer(apikey, name="apikey")
    app.add_typer(hub, name="hub")


def serve(
    ctx: typer.Context,
    data: DataDir = Path("edgefleet-data"),
    db: DbUrl = None,
    broker: Broker = None,
    broker_tls: BrokerTls = None,
    broker_reload: BrokerReload = None,
    root_keys: RootKeys = None,
    broker_port: BrokerPort = None,
    host: Host = "127.0.0.1",
    port: Port = 8700,
    verbose: Verbose = False,
    access_log: AccessLog = None,
    dev: Dev = False,
    ingest_workers: IngestWorkers = 0,
    allow_plain_broker: AllowPlain = False,
    replicas: Replicas = None,
    replica: Replica = None,
) -> int:
    import uvicorn

    if replicas is not None:
        return _supervise(replicas, port, db, broker)

    from hub.api.serving import bind_api, server_config

    # Bound first, before the hub's imports (seconds): a taken port is said at once, and
    # before the hub starts its broker and threads.
    sock = bind_api(host, port)
    from hub import Hub, HubConfig, create_app
    from hub.access.keys import DEV_KEY

    logging.getLogger().setLevel(logging.INFO)
    if dev:
        logging.getLogger("edgefleet").warning(
            "DEVELOPMENT MODE: the built-in key %s is accepted as admin by anyone who can "
            "reach this API. Never run a hub that devices or people rely on like this.",
            DEV_KEY,
        )
    config = HubConfig(
        data_dir=data,
        db_url=db,
        broker_url=broker,
        broker_port=broker_port,
        dev_mode=dev,
        broker_tls_dir=broker_tls,
        broker_reload=tuple(shlex.split(broker_reload or "")),
        allow_plain_broker=allow_plain_broker,
        ingest_workers=ingest_workers,
        root_keys_dir=root_keys,
        replica=replica,
    )
    with sock, Hub(config) as h:
        app = create_app(h)
        for warning in h.storage_warnings:
            print(f"hub: WARNING: {warning}")
        bound = sock.getsockname()[1]
        print(f"hub: API on http://{host}:{bound} (docs at /docs), broker {h.broker.url}")
        if not _has_admin(app.state.api_keys.list()):
            print(
                f"hub: no admin key yet: edgefleet hub apikey create --data-dir {data}"
                " --role admin --name NAME; then enrolment tokens: edgefleet enrol-token"
            )
        sys.stdout.flush()  # a `hub serve > log &` shows where it listens at once
        # uvicorn re-raises a SIGTERM it caught once it has shut down; exit through Python
        # then, so the hub stops its broker and writers instead of leaving them orphaned.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        logged = access_log or verbose or getattr(ctx.obj, "verbose", False)
        served = server_config(app, host, bound, log_level="info", access_log=logged)
        uvicorn.Server(served).run(sockets=[sock])
    return 0


def _supervise(replicas: int, port: int, db: str | None, broker: str | None) -> int:
    """``--replicas N``: run and watch N replicas (edgefleet/hub_replicas.py)."""
    from edgefleet.hub_replicas import Supervisor

    if not (db or "").startswith("postgresql") or not broker:
        print(
            "hub: --replicas needs --db postgresql+psycopg://... and --broker URL: the "
            "replicas share one database and one broker",
            file=sys.stderr,
        )
        return 2
    return Supervisor(sys.argv[1:], replicas, port).run()  # each: this command line, less -N


def _has_admin(keys: list[Any]) -> bool:
    return any(k.role == "admin" and k.revoked_at is None for k in keys)


def status(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = {"health": c.health(), "stats": c.stats()}
    emit(found, json, _render_status)
    return 0


def _render_status(found: dict[str, Any]) -> Any:
    h = found["health"]
    link = "up" if h.get("broker_connected") else "DOWN"
    rows = [
        (part, name, count)
        for part, counts in found["stats"].items()
        for name, count in sorted(counts.items())
    ]
    return table(["part", "counter", "count>"], rows, title=f"hub up, broker link {link}")


def classes(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    from edgefleet.classes_cli import render_classes

    with client(hub, api_key) as c:
        found = c.device_classes()
    emit(found, json, render_classes)
    return 0


@contextmanager
def _key_store(data: Path, db: str | None) -> Iterator[Any]:
    """The hub's API keys, from its database (as hub serve picks it); closed after."""
    from hub.access.keys import ApiKeys
    from hub.store.datadir import create_private_file, private_umask
    from hub.store.tables import make_engine, sqlite_url

    if db is None:
        with private_umask():  # as the hub makes them (hub/store/datadir.py)
            data.mkdir(parents=True, exist_ok=True)
            create_private_file(data / "hub.db")
            engine = make_engine(sqlite_url(data / "hub.db"))
    else:
        engine = make_engine(db)
    try:
        yield ApiKeys(engine)
    finally:
        engine.dispose()


Role = Annotated[
    Literal["viewer", "operator", "admin"],
    typer.Option(
        "--role",
        help="What the key may do: viewer reads, operator changes the fleet, admin all.",
    ),
]


def apikey_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds the key.")],
    role: Role,
    data: KeyDataDir = Path("edgefleet-data"),
    db: DbUrl = None,
    json: Json = False,
) -> int:
    from edgefleet.local_audit import record
    from hub.access.keys import CLI_ACTOR
    from hub.access.keys import Role as KeyRole
    from hub.api.views.access import ApiKeyView

    with _key_store(data, db) as keys:
        new = keys.create(name, KeyRole(role), created_by=CLI_ACTOR)
    public = ApiKeyView.model_validate(new.record).model_dump()
    command = "edgefleet hub apikey create"
    record(data, db, "api_key.create", new.record.keyid, command, after=public)
    if json:
        print_json(public | {"key": new.key})
        return 0
    print(new.key)
    print(
        f"({role} key {new.record.keyid} '{name}': shown once, only its hash is kept)",
        file=sys.stderr,
    )
    return 0


def apikey_list(
    data: KeyDataDir = Path("edgefleet-data"), db: DbUrl = None, json: Json = False
) -> int:
    from hub.api.views.access import ApiKeyView

    with _key_store(data, db) as keys:
        rows = [ApiKeyView.model_validate(k).model_dump() for k in keys.list()]
    emit(rows, json, render_api_keys)
    return 0


def render_api_keys(rows: list[dict[str, Any]]) -> Any:
    """API keys as a table (never their secrets)."""
    return table(
        ["keyid", "role", "created", "revoked", "name"],
        [
            (k["keyid"], k["role"], stamp(k["created_at"]), stamp(k.get("revoked_at")), k["name"])
            for k in rows
        ],
    )


def apikey_revoke(
    keyid: Annotated[
        str, typer.Argument(metavar="KEYID", help="The key's id (the part after ef_).")
    ],
    data: KeyDataDir = Path("edgefleet-data"),
    db: DbUrl = None,
    json: Json = False,
) -> int:
    from edgefleet.local_audit import record
    from hub.api.views.access import ApiKeyView

    with _key_store(data, db) as keys:
        row = keys.revoke(keyid)
    record(
        data,
        db,
        "api_key.revoke",
        row.keyid,
        "edgefleet hub apikey revoke",
        before={"revoked_at": None},
        after={"revoked_at": row.revoked_at},
    )
    shown = ApiKeyView.model_validate(row).model_dump()
    emit(shown, json, lambda k: f"revoked {k['keyid']} ({k['role']} '{k['name']}')")
    return 0
