"""Where device messages go: the ingest writer with every report applier the hub runs,
and an MQTT link wired to the owners of what it receives.

The hub (hub/app.py) wires its link, and a replica its leader's link, through here; tests
and benchmarks build a consumer of their own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from hub.fleet.progress import ProgressApplier
from hub.ingest.report import Report, ReportApplier
from hub.ingest.writer import Ingest
from hub.telemetry.drift import DriftMonitor
from hub.telemetry.windows import TelemetryWindows
from hub.transport.broker import BrokerAddress
from hub.transport.budget import INGEST, Budget, Budgets
from hub.transport.inbound import (
    NO_FETCHES,
    CaptureSink,
    DeviceMessages,
    FetchSource,
    ObservedSink,
    RenewalSource,
    ReportSink,
    no_revocations,
)
from hub.transport.intake import IntakeSpec, intake_spec
from hub.transport.link import INGEST_GROUP, MqttLink
from shared import protocol

__all__ = ["make_ingest", "serve_devices", "telemetry_intake"]


def make_ingest(
    engine: Engine,
    *,
    raw_max_age_s: float | None = None,
    drift: DriftMonitor | None = None,
    inline: bool = False,
    on_stored: Callable[[list[Report]], None] | None = None,
) -> Ingest:
    """The ingest writer with every report applier the hub runs, in one transaction:
    states and events (fleet), telemetry windows and drift summaries (telemetry)."""
    appliers: list[ReportApplier] = [
        ProgressApplier(),
        TelemetryWindows(raw_max_age_s),
        drift if drift is not None else DriftMonitor(engine),
    ]
    return Ingest(engine, appliers, inline=inline, on_stored=on_stored)


def serve_devices(
    link: MqttLink,
    ingest: Ingest,
    fetch: FetchSource | None = None,
    *,
    captures: CaptureSink | None = None,
    revoked: Callable[[], frozenset[str]] = no_revocations,
    budget: Budget | Budgets = INGEST,
    observe: Callable[[Report], None] | None = None,
    renewals: RenewalSource | None = None,
) -> MqttLink:
    """Wire the device messages ``link`` receives to their owners, before it starts.

    Reports go to ``ingest``, which acknowledges them on the link once stored; fetches
    to ``fetch`` (a consumer of telemetry alone needs none); captures to ``captures``.
    Each device's reports are paid for from ``budget`` (hub/transport/budget.py);
    ``observe`` sees each report on its way to the ingest (the fan-out's readiness);
    ``renewals`` answers certificate renewals (hub/trust/renewal.py).

    Raises:
        ValueError: ``ingest`` already acknowledges for another consumer.
    """
    if ingest.on_stored is not None:
        raise ValueError("this Ingest already acknowledges for another consumer")
    ingest.on_stored = link.acknowledge  # reports are acknowledged once stored
    sink: ReportSink = ingest if observe is None else ObservedSink(ingest, observe)
    handler = DeviceMessages(
        link,
        fetch or NO_FETCHES,
        sink,
        captures=captures,
        revoked=revoked,
        budget=budget,
        renewals=renewals,
    )
    return link.serve(handler)


def telemetry_intake(
    broker: BrokerAddress,
    client_id: str,
    tls_dir: Path | None,
    *,
    replica: int | None,
    embedded: bool,
) -> IntakeSpec | None:
    """The hub's own telemetry intake (ADR 0033); None: telemetry on the paho link.

    A replica's intake shares the telemetry with the others through ``$share``, under a
    client id of its own. On a TLS broker the intake's identity is one certificate
    (ingest identity 0), which replicas cannot share: they take telemetry on paho.
    """
    if replica is None:
        return intake_spec(broker, client_id, tls_dir, embedded=embedded)
    if broker.tls:
        return None
    return intake_spec(
        broker,
        f"{client_id}-{replica}",
        None,
        embedded=embedded,
        topic_filter=f"$share/{INGEST_GROUP}/{protocol.ROOT}/+/telemetry",
    )
