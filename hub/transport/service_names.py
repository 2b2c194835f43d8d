"""The names and TLS files of the hub's own MQTT clients, beside the devices'.

Each connection of the hub to the broker has its own certificate: the broker takes the
certificate's name as the client id (hub/transport/brokerconf.py), so two connections
with one certificate would take each other's session. What ``broker config`` writes
in the broker's directory, besides the hub's own ``hub.crt``:

    hub-fanout.crt/.key  the fan-out link (CN ``edgefleet-hub-fanout``): it may only
                         publish fan-out chunks (hub/transport/fanout.py)
    ingest-{i}.crt/.key  ingest worker ``i`` (CN ``edgefleet-ingest-{i}``)
    hub-{i}.crt/.key, hub-leader.crt/.key  hub replica ``i``, and the leader's link
"""

from __future__ import annotations

from pathlib import Path

from hub.transport.broker import TlsIdentity

FANOUT_FILE = "hub-fanout"


def identity_files(tls_dir: Path, stem: str) -> TlsIdentity:
    """The CA and the ``{stem}.crt``/``{stem}.key`` pair of one identity in ``tls_dir``."""
    return TlsIdentity(tls_dir / "ca.crt", tls_dir / f"{stem}.crt", tls_dir / f"{stem}.key")


def replica_tls(tls_dir: Path, index: int | None) -> TlsIdentity:
    """Hub replica ``index``'s TLS files (None: the leader's link) in ``tls_dir``.

    Raises:
        ValueError: they are not there (the broker config was written for fewer replicas).
    """
    name = f"hub-{'leader' if index is None else index}"
    if not (tls_dir / f"{name}.crt").exists():
        raise ValueError(
            f"no identity {name} in {tls_dir}: write the broker config with --hub-replicas"
            " at least as many as the hub runs"
        )
    return identity_files(tls_dir, name)


def replica_identities(hub_identity: str, replicas: int) -> list[str]:
    """The certificate names of ``replicas`` hub replicas and of their leader's link."""
    if replicas <= 0:
        return []
    return [*(f"{hub_identity}-{i}" for i in range(replicas)), f"{hub_identity}-leader"]


def ingest_identity(index: int) -> str:
    """The certificate name (= username = client id) of the hub's ingest worker ``index``."""
    return f"edgefleet-ingest-{index}"


def fanout_identity(hub_identity: str) -> str:
    """The certificate name of the hub's fan-out link."""
    return f"{hub_identity}-fanout"


def fanout_tls(tls_dir: Path) -> TlsIdentity | None:
    """The fan-out link's TLS files in ``tls_dir``; None when the broker's directory was
    written before they were (the fan-out then shares the hub's link)."""
    if not (tls_dir / f"{FANOUT_FILE}.crt").exists():
        return None
    return identity_files(tls_dir, FANOUT_FILE)
