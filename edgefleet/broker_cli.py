"""``edgefleet broker config``: write a production Mosquitto config from the hub's CA.

The CA lives in ``DATA_DIR/pki`` (created on first use); the broker's files go to
``--out``. See hub/transport/brokerconf.py for what the config contains and why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_DATA_DIR = Path("edgefleet-data")

broker = typer.Typer(no_args_is_help=True, help="The MQTT broker's TLS set-up.")

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        "--data",
        help="The hub's data directory; its CA is in DATA_DIR/pki.",
    ),
]
Out = Annotated[
    Path | None, typer.Option("--out", help="Write here (default DATA_DIR/broker-tls).")
]
Port = Annotated[int, typer.Option("--port", help="TLS port.")]
Bind = Annotated[str, typer.Option("--bind", help="Listen address.")]
ServerNames = Annotated[
    list[str] | None,
    typer.Option(
        "--server-name",
        metavar="NAME",
        help="DNS name or IP devices use to reach the broker; repeatable "
        "(default: localhost and 127.0.0.1).",
    ),
]
Persistence = Annotated[
    Path | None, typer.Option("--persistence-dir", help="Keep sessions across restarts.")
]
PlainPort = Annotated[
    int | None,
    typer.Option("--plain-port", help="DEVELOPMENT ONLY: a plain loopback listener for the hub."),
]
User = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="Account mosquitto switches to when started as root (default: mosquitto's own; "
        "it must be able to read --out).",
    ),
]
IngestWorkers = Annotated[
    int,
    typer.Option(
        "--ingest-workers",
        metavar="N",
        help="Identities for N hub ingest workers (hub serve --ingest-workers).",
    ),
]
HubReplicas = Annotated[
    int,
    typer.Option(
        "--hub-replicas",
        metavar="N",
        help="Identities for N hub replicas and their leader's link (hub serve --replicas).",
    ),
]


def register(app: typer.Typer) -> None:
    """``edgefleet broker config``."""
    broker.command(
        "config", help="Write mosquitto.conf, certificates, ACL and CRL for a TLS broker."
    )(config)
    app.add_typer(broker, name="broker")


def config(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    out: Out = None,
    port: Port = 8883,
    bind: Bind = "127.0.0.1",
    server_name: ServerNames = None,
    persistence_dir: Persistence = None,
    plain_port: PlainPort = None,
    user: User = None,
    ingest_workers: IngestWorkers = 4,
    hub_replicas: HubReplicas = 0,
) -> int:
    """Write the broker's files and print how to start it."""
    from hub.transport.brokerconf import write_broker_config
    from hub.trust.pki import CRL_VALIDITY, CertificateAuthority, PkiError

    ca = CertificateAuthority.open_or_init(data_dir / "pki")
    out = out or data_dir / "broker-tls"
    try:
        files = write_broker_config(
            out,
            ca,
            port=port,
            bind=bind,
            server_names=tuple(server_name or ("localhost", "127.0.0.1")),
            persistence_dir=persistence_dir,
            plain_port=plain_port,
            user=user,
            ingest_workers=ingest_workers,
            hub_replicas=hub_replicas,
        )
    except PkiError as e:  # a device holds a service name: nothing was written
        print(f"broker config refused: {e}", file=sys.stderr)
        return 1
    _say_written(files, ca.directory, CRL_VALIDITY.days)
    if user is None and os.geteuid() == 0:
        print("note: started as root, mosquitto switches to user 'mosquitto': give it read")
        print(f"      access to {files.directory}, or rerun with --user")
    print("start it with:")
    print(f"  {' '.join(files.start_command)}")
    return 0


def _say_written(files: Any, ca_dir: Path, crl_days: int) -> None:
    print(f"broker: CA in {ca_dir}; wrote to {files.directory}:")
    written = [
        (files.config, "Mosquitto config"),
        (files.acl, "ACL: device {id} (its certificate's CN) touches only ef/v1/dev/{id}/..."),
        (files.ca, "the CA certificate (devices and the hub trust it)"),
        (files.server_cert, f"server certificate for {', '.join(files.server_names)}"),
        (files.server_key, "server key (0600)"),
        (files.crl, f"revocation list, valid {crl_days} days: rewrite + SIGHUP before"),
        (files.hub_cert, f"the hub's client certificate (CN {files.hub_identity})"),
        (files.hub_key, "the hub's client key (0600)"),
    ]
    if files.ingest_workers:
        written.append(
            (
                files.directory / "ingest-N.crt",
                f"ingest workers 0..{files.ingest_workers - 1}: certificates and keys (read "
                "telemetry only)",
            )
        )
    if files.hub_replicas:
        written.append(
            (
                files.directory / "hub-N.crt",
                f"hub replicas 0..{files.hub_replicas - 1} and hub-leader: certificates and "
                "keys (the hub's rights)",
            )
        )
    if files.hub_password is not None:
        written.append((files.hub_password, "DEV ONLY: the hub's password, plain listener"))
    if files.dynsec is not None:
        what = "the dynamic-security plugin's state (kept; the broker rewrites it)"
        written.append((files.dynsec, what))
    for path, what in written:
        print(f"  {path.name:<16}{what}")
    print(f"TLS listener on {files.bind}:{files.port}, client certificates required")
    if files.dynsec is None:
        print("no mosquitto_dynamic_security.so found: a revoked device stays connected until")
        print("  it disconnects (install Mosquitto 2's plugin and rerun; docs/operations.md)")
    else:
        print(f"plugin {files.dynsec_plugin}: the hub cuts a revoked device's connection")
    if files.plain_port is not None:
        print(f"DEVELOPMENT ONLY: plain listener on 127.0.0.1:{files.plain_port} (hub only)")
