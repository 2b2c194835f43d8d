"""``edgefleet broker config``: write a production Mosquitto config from the hub's CA.

The CA lives in ``DATA_DIR/pki`` (created on first use); the broker's files go to
``--out``. See hub/transport/brokerconf.py for what the config contains and why.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("edgefleet-data")


def register(subparsers: Any) -> None:
    """Add ``broker config`` to the ``edgefleet`` command's subparsers."""
    broker = subparsers.add_parser("broker", help="the MQTT broker's TLS set-up")
    actions = broker.add_subparsers(metavar="ACTION")
    config = actions.add_parser(
        "config", help="write mosquitto.conf, certificates, ACL and CRL for a TLS broker"
    )
    config.add_argument(
        "--data-dir",
        "--data",
        dest="data_dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the hub's data directory; its CA is in DATA_DIR/pki (default edgefleet-data)",
    )
    config.add_argument("--out", type=Path, help="write here (default DATA_DIR/broker-tls)")
    config.add_argument("--port", type=int, default=8883, help="TLS port (default 8883)")
    config.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    config.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        metavar="NAME",
        help="DNS name or IP devices use to reach the broker; repeatable "
        "(default: localhost and 127.0.0.1)",
    )
    config.add_argument("--persistence-dir", type=Path, help="keep sessions across restarts")
    config.add_argument(
        "--plain-port", type=int, help="DEVELOPMENT ONLY: a plain loopback listener for the hub"
    )
    config.add_argument(
        "--user",
        help="account mosquitto switches to when started as root (default: mosquitto's own; "
        "it must be able to read --out)",
    )
    config.add_argument(
        "--ingest-workers",
        type=int,
        default=4,
        metavar="N",
        help="identities for N hub ingest workers (hub serve --ingest-workers; default 4)",
    )
    config.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the broker's files and print how to start it."""
    from hub.transport.brokerconf import write_broker_config
    from hub.trust.pki import CRL_VALIDITY, CertificateAuthority, PkiError

    ca = CertificateAuthority.open_or_init(args.data_dir / "pki")
    out = args.out or args.data_dir / "broker-tls"
    try:
        files = write_broker_config(
            out,
            ca,
            port=args.port,
            bind=args.bind,
            server_names=tuple(args.server_names or ("localhost", "127.0.0.1")),
            persistence_dir=args.persistence_dir,
            plain_port=args.plain_port,
            user=args.user,
            ingest_workers=args.ingest_workers,
        )
    except PkiError as e:  # a device holds a service name: nothing was written
        print(f"broker config refused: {e}", file=sys.stderr)
        return 1
    print(f"broker: CA in {ca.directory}; wrote to {files.directory}:")
    written = [
        (files.config, "Mosquitto config"),
        (files.acl, "ACL: device {id} (its certificate's CN) touches only ef/v1/dev/{id}/..."),
        (files.ca, "the CA certificate (devices and the hub trust it)"),
        (files.server_cert, f"server certificate for {', '.join(files.server_names)}"),
        (files.server_key, "server key (0600)"),
        (files.crl, f"revocation list, valid {CRL_VALIDITY.days} days: rewrite + SIGHUP before"),
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
    if files.hub_password is not None:
        written.append((files.hub_password, "DEV ONLY: the hub's password, plain listener"))
    for path, what in written:
        print(f"  {path.name:<16}{what}")
    print(f"TLS listener on {files.bind}:{files.port}, client certificates required")
    if files.plain_port is not None:
        print(f"DEVELOPMENT ONLY: plain listener on 127.0.0.1:{files.plain_port} (hub only)")
    if args.user is None and os.geteuid() == 0:
        print("note: started as root, mosquitto switches to user 'mosquitto': give it read")
        print(f"      access to {files.directory}, or rerun with --user")
    print("start it with:")
    print(f"  {' '.join(files.start_command)}")
    return 0
