"""The hub's configuration: what ``Hub(HubConfig(...))`` is given, with its defaults.

Each field names the module whose behaviour it sets; ``edgefleet hub serve`` fills the
ones it has options for. :func:`check_broker_transport` refuses a configuration that would
send the fleet's traffic in clear text over a network.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from hub.access.audit import AUDIT_MAX_AGE_S
from hub.alerts import DeliveryPolicy, ReceiverSpec
from hub.fleet.classes import DEFAULT_CLASSES_DIR
from hub.fleet.deployments import EVENTS_MAX_AGE_S
from hub.ml.data.store import DEFAULT_MAX_UPLOAD_BYTES
from hub.telemetry.retention import MAX_AGE_S, RAW_AGE_S, RESOLUTION_S
from hub.transport.broker import BrokerAddress
from hub.transport.budget import INGEST, Budget
from shared.chunks import DEFAULT_CHUNK_SIZE

__all__ = ["DB_URL_ENV", "HubConfig", "check_broker_transport"]

# The hub's database URL when none is given (docs/database.md); unset: SQLite in data_dir
DB_URL_ENV = "EDGEFLEET_DB_URL"


def _db_url_from_env() -> str | None:
    return os.environ.get(DB_URL_ENV) or None


@dataclass(frozen=True)
class HubConfig:
    data_dir: Path
    # SQLAlchemy URL; default: $EDGEFLEET_DB_URL, else a SQLite file in data_dir
    db_url: str | None = field(default_factory=_db_url_from_env)
    broker_url: str | None = None  # default: private Mosquitto, else embedded broker
    # the private broker's port; default: the last start's (data_dir/broker.json), else free
    broker_port: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE  # bytes per chunk sent to devices
    # publish a target's chunks once per rollout wave on a topic its devices read
    # (hub/transport/fanout.py); False: every device fetches every chunk itself
    fanout: bool = True
    fanout_qos: int = 1  # of the fan-out publishes (0: the broker keeps no queue for them)
    dev_mode: bool = False  # accept the built-in development API key (hub.access.keys.DEV_KEY)
    client_id: str = "edgefleet-hub"
    root_keys_dir: Path | None = None  # default data_dir/trust/keys/root; may be offline
    # What `edgefleet broker config` wrote, for an mqtts:// broker: the hub's client
    # certificate and key, the CA, and the CRL it rewrites when it revokes a device.
    broker_tls_dir: Path | None = None
    broker_reload: tuple[str, ...] = ()  # run after a CRL change, e.g. kill -HUP <pid>
    device_cert_days: float = 365.0  # device certificates' lifetime, at enrolment and renewal
    # a plain-TCP broker beyond loopback, outside development mode (refused otherwise)
    allow_plain_broker: bool = False
    # processes that take the telemetry through $share (hub/workers.py); 0: this one
    ingest_workers: int = 0
    # this process's index among hub replicas over one PostgreSQL (ADR 0032, hub/replica.py,
    # docs/operations.md); None: the single hub, always the leader
    replica: int | None = None
    # seconds between re-signing / CRL checks / the drift alerts' silence sweep
    maintenance_s: float = 60.0
    # telemetry retention (hub/telemetry/retention.py): raw windows, then hourly rows, then gone
    telemetry_raw_age_s: float = RAW_AGE_S
    telemetry_max_age_s: float = MAX_AGE_S
    telemetry_resolution_s: float = RESOLUTION_S
    audit_max_age_s: float = AUDIT_MAX_AGE_S  # seconds audit records are kept (365 days)
    events_max_age_s: float = EVENTS_MAX_AGE_S  # seconds deployment events are kept (365 days)
    # what one device may send to be stored (hub/transport/budget.py)
    ingest_budget: Budget = INGEST
    max_dataset_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # one dataset file (hub/ml/data/store.py)
    classes_dir: Path = DEFAULT_CLASSES_DIR  # <class>/profile.toml (hub/fleet/classes.py)
    # alerts to webhooks (hub/alerts/, docs/alerts.md): how they are sent, and receivers
    # to create or replace at start beside those an admin adds through the API
    alerts: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    alert_receivers: tuple[ReceiverSpec, ...] = ()

    def __post_init__(self) -> None:
        for name in ("audit_max_age_s", "events_max_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        for receiver in self.alert_receivers:  # a secret made at each start: known to none
            if not receiver.secret:
                raise ValueError(f"alert receiver {receiver.name!r} in the config needs a secret")
        if self.broker_port is not None and self.broker_url:
            raise ValueError("--broker-port is the private broker's: give it without --broker")
        if self.replica is not None:
            if self.replica < 0:
                raise ValueError(f"a replica's index is 0 or more, not {self.replica}")
            if not (self.db_url or "").startswith("postgresql"):
                raise ValueError(
                    "hub replicas share one PostgreSQL database: give --db postgresql+psycopg://..."
                )
            if not self.broker_url:
                raise ValueError("hub replicas share one broker: give --broker")


def check_broker_transport(address: BrokerAddress, cfg: HubConfig) -> None:
    """Refuse a plain-TCP broker on a network outside development mode.

    Over plain TCP every command, model and report travels in clear text, and any client
    can connect as any device (no certificates, no ACL by identity). Loopback is a
    single machine's try-out; anything else needs ``mqtts://`` (``edgefleet broker
    config``) or an explicit ``allow_plain_broker``.

    Raises:
        ValueError: a plain broker the configuration does not allow.
    """
    if address.tls or cfg.dev_mode or cfg.allow_plain_broker or _is_loopback(address.host):
        return
    raise ValueError(
        f"{address.url} is plain TCP on a network: commands, models and reports would travel"
        " in clear text and any client could pose as any device. Use mqtts:// with the"
        " configuration `edgefleet broker config` writes, or --allow-plain-broker to accept it"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
