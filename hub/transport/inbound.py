"""Device messages in: validated, then handed to whoever owns them.

:class:`DeviceMessages` is the hub link's handler (hub/transport/link.py): a fetch is
answered at once (hub/transport/fetch.py); a report (state, events, telemetry, drift)
goes to the :class:`ReportSink` (the ingest writer) and is acknowledged only once it is
stored; a capture message or upload chunk goes to the :class:`CaptureSink` (the data
capture, hub/ml/data/captures.py). :class:`IngestSubscriber` is the same for an ingest-only
process (hub/workers.py), and for the hub process's own telemetry
(hub/transport/intake.py): the fast subscriber's batches into one committed write.
A message that does not parse is counted and dropped with one log line per reason; it
never stops the loop. Reports and capture messages are paid for from the device's ingest
budget (hub/transport/budget.py ``INGEST``): beyond it they are dropped as
``over_ingest_budget``, so one device cannot fill the disk (issue 11, item 4).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hub.ingest.report import REPORT_KINDS, Report
from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.transport.budget import INGEST, Budget, Budgets
from hub.transport.decode import count_drop, decode_device_message
from hub.transport.fastsub import CONNECT_TIMEOUT_S, KEEPALIVE_S, Batch, FastSubscriber
from shared import protocol
from shared.protocol import Message, ProtocolError

log = logging.getLogger(__name__)

# fetches have a budget of their own (hub/transport/fetch.py); capture uploads are
# bounded per upload (hub/ml/data/capture_uploads.py)
UNBUDGETED = frozenset({"fetch", "upload"})


class ReportSink(Protocol):
    def put(self, report: Report) -> None:
        """Take a report to store; its ``ack`` is acknowledged once it is committed."""
        ...


class BatchSink(Protocol):
    def write_batch(self, reports: list[Report]) -> None:
        """Store ``reports`` now; return once committed."""
        ...


class CaptureSink(Protocol):
    def on_message(self, device_id: str, message: Message) -> None: ...

    def on_chunk(self, device_id: str, chunk: protocol.UploadChunk) -> None: ...


class RenewalSource(Protocol):
    def answer(self, device_id: str, message: Message) -> bytes:
        """The encoded ``renew_answer`` to a device's ``renew_request`` (shared/renewal.py)."""
        ...


class FetchSource(Protocol):
    def answer(self, device_id: str, message: Message) -> list[tuple[bytes, str]]: ...


class Link(Protocol):
    """What the handler needs of the MQTT link: publish, counters."""

    counts: Counter[str]
    dropped: Counter[str]

    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def drop(self, reason: str, detail: str) -> None: ...


class ObservedSink:
    """A report sink that shows each report to ``observe`` first (the fan-out learns
    which devices are ready from their events), then hands it on."""

    def __init__(self, sink: ReportSink, observe: Callable[[Report], None]) -> None:
        self.sink = sink
        self.observe = observe

    def put(self, report: Report) -> None:
        try:
            self.observe(report)
        except Exception:  # an observer never costs the report
            log.exception("hub: observing a report failed")
        self.sink.put(report)


def no_revocations() -> frozenset[str]:
    return frozenset()


class _NoFetches:
    """For a consumer of reports alone: a fetch is dropped as ``no_fetch``."""

    def answer(self, device_id: str, message: Message) -> list[tuple[bytes, str]]:
        raise ProtocolError("no_fetch", "this consumer answers no fetches")


NO_FETCHES: FetchSource = _NoFetches()


class DeviceMessages:
    """The hub process's handler of every device-to-hub message.

    Args:
        link: where answers go and messages are counted.
        fetch: answers fetches.
        reports: stores reports (they are acknowledged once stored).
        captures: takes capture messages and upload chunks (dropped uncounted if None).
        revoked: the revoked devices, read per message (hub/trust/identities.py).
        budget: what each device may send to be stored, per second (the buckets
            themselves when another consumer shares them: hub/transport/intake.py).
        renewals: answers certificate renewals (hub/trust/renewal.py); None: dropped as
            ``no_renewal``.
    """

    def __init__(
        self,
        link: Link,
        fetch: FetchSource,
        reports: ReportSink,
        *,
        captures: CaptureSink | None = None,
        revoked: Callable[[], frozenset[str]] = no_revocations,
        budget: Budget | Budgets = INGEST,
        renewals: RenewalSource | None = None,
    ) -> None:
        self.link = link
        self.renewals = renewals
        self.fetch = fetch
        self.reports = reports
        self.captures = captures
        self.revoked = revoked
        self.budgets = budget if isinstance(budget, Budgets) else Budgets(budget)

    def handle(self, topic: str, payload: bytes, ack: Any) -> bool:
        """Handle one message; True if its acknowledgement waits until it is stored."""
        try:
            device_id, kind, message = decode_device_message(topic, payload, self.revoked())
            paid = kind in UNBUDGETED or self.budgets.take(device_id, 1.0, float(len(payload)))
            if not paid:
                raise ProtocolError("over_ingest_budget", f"{device_id} sends more than its budget")
            stored_later = False
            if isinstance(message, protocol.UploadChunk):
                if self.captures is not None:
                    self.captures.on_chunk(device_id, message)
            elif kind == "fetch":
                self._answer_fetch(device_id, message)
            elif kind == "renew":
                self._answer_renewal(device_id, message)
            elif kind == "capture":
                if self.captures is not None:
                    self.captures.on_message(device_id, message)
            elif kind in REPORT_KINDS:
                self.reports.put(Report(device_id, kind, message, ack=ack))
                stored_later = ack is not None
            self.link.counts[kind] += 1
            return stored_later
        except ProtocolError as e:
            self.link.drop(e.reason, f"{topic}: {e.detail}")
        except Exception:  # never let one message kill the loop
            self.link.dropped["internal_error"] += 1
            log.exception("hub: failed to handle a message on %s", topic)
        return False

    def _answer_renewal(self, device_id: str, message: Message | protocol.UploadChunk) -> None:
        if self.renewals is None or not isinstance(message, Message):
            raise ProtocolError("no_renewal", "this hub answers no certificate renewals")
        self.link.publish(
            protocol.topic(device_id, "cert"), self.renewals.answer(device_id, message), 1
        )

    def _answer_fetch(self, device_id: str, message: Message) -> None:
        blob_topic = protocol.topic(device_id, "blob")
        for payload, count in self.fetch.answer(device_id, message):
            self.link.publish(blob_topic, payload, 1)
            self.link.counts[count] += 1


class IngestSubscriber:
    """A consumer of reports alone: :class:`FastSubscriber` into the writer.

    It runs in an ingest worker process (hub/workers.py) and, for telemetry, in the hub
    process itself when it has no workers (hub/transport/intake.py). Each batch is
    decoded and validated exactly as :class:`DeviceMessages` does
    (``decode_device_message``), paid for from the device's budget, written in one
    committed transaction (``write_batch``), and only then acknowledged. ``counts`` and
    ``dropped`` read as the hub link's do. Only reports (state, events, telemetry, drift)
    are ingested here; fetches and captures need the full hub and are dropped as
    ``not_ingested``.

    Args:
        address: the broker.
        ingest: the writer (an inline ``Ingest`` suits an ingest-only process: no
            second busy thread).
        client_id: the persistent session's id.
        subscriptions: e.g. ``[("$share/ingest/ef/v1/dev/+/telemetry", 1)]``.
        tls: CA, certificate and key for ``mqtts``.
        revoked: the revoked devices, read once per batch; their messages are refused.
        keepalive_s: the MQTT keepalive.
        budget: what each device may send to be stored, per second (per consumer: a
            shared subscription spreads a device's messages over its members), or
            the buckets of another consumer in the same process, to share them.
        counts, dropped: counters to add to (e.g. the hub link's, so that ``GET
            /metrics`` reads one set); new ones if None.
    """

    def __init__(
        self,
        address: BrokerAddress,
        ingest: BatchSink,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        tls: TlsIdentity | None = None,
        revoked: Callable[[], frozenset[str]] = no_revocations,
        keepalive_s: int = KEEPALIVE_S,
        budget: Budget | Budgets = INGEST,
        counts: Counter[str] | None = None,
        dropped: Counter[str] | None = None,
    ) -> None:
        self.ingest = ingest
        self.revoked = revoked
        self.budgets = budget if isinstance(budget, Budgets) else Budgets(budget)
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.dropped: Counter[str] = Counter() if dropped is None else dropped
        self.subscriber = FastSubscriber(
            address, client_id, subscriptions, self._on_batch, tls=tls, keepalive_s=keepalive_s
        )

    def start(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and subscribe (see :meth:`FastSubscriber.start`)."""
        self.subscriber.start(timeout)

    def stop(self) -> None:
        self.subscriber.stop()

    @property
    def connected(self) -> bool:
        """Whether it is subscribed now."""
        return self.subscriber.connected.is_set()

    def _on_batch(self, batch: Batch) -> None:
        reports: list[Report] = []
        kinds: Counter[str] = Counter()
        revoked = self.revoked()
        for topic, payload in batch:
            try:
                device_id, kind, message = decode_device_message(topic, payload, revoked)
                if kind not in REPORT_KINDS or not isinstance(message, Message):
                    raise ProtocolError("not_ingested", f"{kind} messages need the full hub")
                if not self.budgets.take(device_id, 1.0, float(len(payload))):
                    raise ProtocolError("over_ingest_budget", f"{device_id} sends too much")
                reports.append(Report(device_id, kind, message))
                kinds[kind] += 1
            except ProtocolError as e:
                count_drop(self.dropped, e.reason, f"{topic}: {e.detail}")
            except Exception:  # one message never costs the batch
                self.dropped["internal_error"] += 1
                log.exception("fastsub: failed to handle a message on %s", topic)
        self.ingest.write_batch(reports)
        self.counts.update(kinds)
