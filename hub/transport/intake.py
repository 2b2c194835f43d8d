"""The hub process's own telemetry intake: the subscribe-only client beside the paho link.

Telemetry is most of what a fleet sends, and the hub only stores it. Through the hub's
paho link (hub/transport/link.py) a hub without ingest workers took about 13,500
windows a second: paho's machinery costs as much per message as decoding and storing
it. So the hub process takes telemetry as an ingest worker does (ADR 0033): an
:class:`~hub.transport.inbound.IngestSubscriber` (hub/transport/fastsub.py: large reads,
one PUBACK write per batch) on a thread and an MQTT session of its own, with the same
validation, per-device budget, revocation filter, (device, sequence) dedup and
acknowledgement after commit as the link. The link keeps everything else: states,
events and drift windows (in order per device, beside the rollout engine), fetches
(answered) and captures.

The intake's identity:

- plain ``mqtt://``: client id ``<the hub's client id>-telemetry``;
- ``mqtts://``: the broker takes a client's certificate name as its client id, so the
  intake cannot share the hub's certificate (two connections with one client id take
  each other's session over). It connects as ingest identity 0 (``ingest-0.crt``, which
  ``edgefleet broker config`` writes by default; the ACL lets it read telemetry and
  nothing else). Without that file telemetry stays on the link, with a warning;
- the embedded pure-Python broker (amqtt, for small demos) keeps telemetry on the link.

The topic filter and the client id are parameters of :class:`IntakeSpec`, so several
hub processes can share the telemetry as members of one ``$share`` group.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.transport.budget import INGEST, Budget, Budgets
from hub.transport.inbound import BatchSink, IngestSubscriber, no_revocations
from hub.transport.service_names import ingest_identity
from shared.protocol import ROOT

log = logging.getLogger(__name__)

TELEMETRY_TOPIC: Final = f"{ROOT}/+/telemetry"
CLIENT_SUFFIX: Final = "-telemetry"  # the intake's client id on a plain broker
TLS_IDENTITY_INDEX: Final = 0  # the ingest identity the intake takes on a TLS broker


def ingest_tls(tls_dir: Path, index: int) -> TlsIdentity:
    """Ingest identity ``index``'s TLS files in the directory `edgefleet broker config`
    wrote (CN ``edgefleet-ingest-{index}``: may read telemetry only)."""
    return TlsIdentity(
        tls_dir / "ca.crt", tls_dir / f"ingest-{index}.crt", tls_dir / f"ingest-{index}.key"
    )


@dataclass(frozen=True)
class IntakeSpec:
    """Where and as whom the hub process subscribes to telemetry.

    Attributes:
        client_id: its persistent session (on TLS the broker uses the certificate's name).
        topic_filter: ``ef/v1/dev/+/telemetry``, or a ``$share/<group>/...`` filter when
            several hub processes share the telemetry.
        tls: the identity for an ``mqtts://`` broker.
    """

    client_id: str
    topic_filter: str = TELEMETRY_TOPIC
    tls: TlsIdentity | None = None


def intake_spec(
    address: BrokerAddress,
    hub_client_id: str,
    tls_dir: Path | None,
    *,
    embedded: bool = False,
    topic_filter: str = TELEMETRY_TOPIC,
) -> IntakeSpec | None:
    """How the hub process takes telemetry; None: on its paho link (see the docstring).

    Args:
        address: the broker.
        hub_client_id: the hub link's client id (the intake's is derived from it).
        tls_dir: the directory ``edgefleet broker config`` wrote (for ``mqtts://``).
        embedded: the broker is the embedded amqtt one.
        topic_filter: what to subscribe to.
    """
    if embedded:
        return None
    if not address.tls:
        return IntakeSpec(hub_client_id + CLIENT_SUFFIX, topic_filter)
    try:
        tls = ingest_tls(tls_dir, TLS_IDENTITY_INDEX) if tls_dir is not None else None
    except ValueError:  # a file missing
        tls = None
    if tls is None:
        log.warning(
            "no ingest identity %d in %s: the hub takes telemetry through its link, about "
            "2-3x slower (write the broker config with --ingest-workers 1 or more)",
            TLS_IDENTITY_INDEX,
            tls_dir,
        )
        return None
    return IntakeSpec(ingest_identity(TLS_IDENTITY_INDEX), topic_filter, tls)


def start_intake(
    spec: IntakeSpec,
    address: BrokerAddress,
    ingest: BatchSink,
    *,
    revoked: Callable[[], frozenset[str]] = no_revocations,
    budget: Budget | Budgets = INGEST,
    counts: Counter[str] | None = None,
    dropped: Counter[str] | None = None,
) -> IngestSubscriber:
    """Connect and subscribe the intake; it writes each batch to ``ingest`` and then
    acknowledges it.

    Args:
        spec: from :func:`intake_spec`.
        address: the broker.
        ingest: the hub's writer (``write_batch`` runs on the intake's thread).
        revoked: the revoked devices (read once per batch).
        budget: what each device may send to be stored, per second; pass the link
            handler's :class:`Budgets` so that a device has one budget, not two.
        counts, dropped: the counters to add to (the hub link's: one set for
            ``GET /metrics``).

    Raises:
        ConnectRefused: the broker refused the intake's identity.
        ConnectionError: not subscribed in time.
    """
    intake = IngestSubscriber(
        address,
        ingest,
        client_id=spec.client_id,
        subscriptions=[(spec.topic_filter, 1)],
        tls=spec.tls,
        revoked=revoked,
        budget=budget,
        counts=counts,
        dropped=dropped,
    )
    intake.start()
    log.info("hub: telemetry through %s as %s", spec.topic_filter, spec.client_id)
    return intake
