"""The hub's MQTT side: answer devices' fetches, ingest their reports, send commands.

One paho client (MQTT 3.1.1, persistent session) subscribed to every device's
device-to-hub topics. Fetches are answered on the MQTT thread straight from the
registry's in-memory files (no SQL on that path); reports are validated and handed to
the ingest writer. Commands are signed with the director key (shared/director.py). A
message that does not parse is counted and dropped with one log line per reason; it
never stops the loop.

Acknowledgements are manual: a report (state, events, telemetry, drift) is acknowledged
only once the ingest writer has committed it (``Ingest.on_stored``), everything else once
it is handled. A hub killed between receipt and commit leaves the message unacknowledged
in its persistent session, and the broker delivers it again; the (device, sequence)
dedup absorbs the copy. An acknowledgement due from a connection that has since dropped
is not sent on the new one (the broker redelivers those messages anyway).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from hub.ingest.writer import REPORT_KINDS, Ingest, Report
from hub.ml.registry import Registry
from hub.telemetry.drift import trust_baselines
from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.trust.repository import TrustRepository
from shared import protocol
from shared.director import sign_command
from shared.protocol import ProtocolError

if TYPE_CHECKING:
    from hub.ml.datasets import Datasets

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [(f"{protocol.ROOT}/+/{kind}", 1) for kind in sorted(protocol.DEVICE_TO_HUB)]


def hub_subscriptions(*, telemetry: bool = True) -> list[tuple[str, int]]:
    """What the hub process subscribes to; without ``telemetry`` when ingest workers take
    it (hub/transport/workers.py)."""
    return [s for s in SUBSCRIPTIONS if telemetry or not s[0].endswith("/telemetry")]


TIMESTAMP_MIN_REMAINING_S = 3600.0  # re-sign the timestamp when it expires sooner
COMMAND_TTL_S = 24 * 3600.0  # seconds a signed command stays valid


class HubMqtt:
    def __init__(
        self,
        address: BrokerAddress,
        registry: Registry,
        trust: TrustRepository,
        ingest: Ingest,
        *,
        client_id: str = "edgefleet-hub",
        command_ttl_s: float = COMMAND_TTL_S,
        tls: TlsIdentity | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
    ) -> None:
        self.address = address
        # default: every device-to-hub topic; an ingest-only process may take a share of
        # the telemetry instead, e.g. [("$share/ingest/ef/v1/dev/+/telemetry", 1)]
        self.subscriptions = subscriptions if subscriptions is not None else SUBSCRIPTIONS
        self.command_ttl_s = command_ttl_s
        # Devices whose certificates were revoked. The broker's CRL stops new connections
        # only; a revoked device still connected is ignored here (DESIGN §8).
        self.revoked: frozenset[str] = frozenset()
        # Data capture (hub/ml/datasets.py): gets `capture` messages and `upload` chunks.
        self.captures: Datasets | None = None
        self.registry = registry
        self.trust = trust
        self.ingest = ingest
        # drift windows are scored against the signed manifests' baselines
        ingest.drift.use_baselines(trust_baselines(registry, trust))
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connected = threading.Event()
        self._connection = 0  # counts connects: an ack belongs to one connection
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if ingest.on_stored is not None:
            raise ValueError("this Ingest already acknowledges for another consumer")
        ingest.on_stored = self.acknowledge  # reports are acknowledged once stored
        if address.tls:
            if tls is None:
                raise ValueError(f"{address.url} needs the hub's TLS identity (CA, cert, key)")
            self._client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)  # unbounded: commands are never dropped
        self._client.reconnect_delay_set(0.5, 10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise ConnectionError(f"hub could not connect to the broker at {self.address.url}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send_command(self, device_id: str, msg_type: str, body: Mapping[str, Any]) -> None:
        """Sign a deploy or rollback command for one device and queue it (QoS 1)."""
        payload = sign_command(
            self.trust.director_signers(),
            msg_type,
            body,
            device_id=device_id,
            now=time.time(),
            ttl_s=self.command_ttl_s,
            root_version=self.trust.root_version,
        )
        self._client.publish(protocol.topic(device_id, "cmd"), payload, qos=1)
        self.counts["commands"] += 1

    # ------------------------------------------------------------- callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("hub: broker refused the connection: %s", rc)
            return
        self._connection += 1
        # a persistent session keeps what an earlier run subscribed to: drop what this one
        # leaves to others (telemetry, when ingest workers take it)
        mine = {t for t, _ in self.subscriptions}
        stale = [t for t, _ in SUBSCRIPTIONS if t not in mine]
        if stale:
            client.unsubscribe(stale)
        client.subscribe(self.subscriptions)
        self.connected.set()
        log.info("hub: connected to %s", self.address.url)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        if rc != 0:
            log.warning("hub: lost the broker (%s); reconnecting", rc)

    def acknowledge(self, reports: list[Report]) -> None:
        """Acknowledge stored reports (called by the ingest writer after its commit)."""
        connection = self._connection
        for r in reports:
            if r.ack is not None and r.ack[0] == connection:
                self._client.ack(r.ack[1], 1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = _topic_text(msg)
        stored_later = False
        try:
            device_id, kind, message = decode_device_message(topic, msg.payload, self.revoked)
            if isinstance(message, protocol.UploadChunk):
                if self.captures is not None:
                    self.captures.on_chunk(device_id, message)
            elif kind == "fetch":
                self._answer_fetch(device_id, message)
            elif kind == "capture":
                if self.captures is not None:
                    self.captures.on_message(device_id, message)
            elif kind in REPORT_KINDS:
                ack = (self._connection, msg.mid) if msg.qos else None
                self.ingest.put(Report(device_id, kind, message, ack=ack))
                stored_later = True
            self.counts[kind] += 1
        except ProtocolError as e:
            self._drop(e.reason, f"{topic}: {e.detail}")
        except Exception:  # never let one message kill the loop
            self.dropped["internal_error"] += 1
            log.exception("hub: failed to handle a message on %s", topic)
        finally:
            if msg.qos and not stored_later:  # handled, or a counted drop
                self._client.ack(msg.mid, msg.qos)

    def _drop(self, reason: str, detail: str) -> None:
        if self.dropped[reason] == 0:
            log.warning(
                "hub: dropped a message (%s): %s (further ones are counted)", reason, detail
            )
        self.dropped[reason] += 1

    # ------------------------------------------------------------- fetches

    def _answer_fetch(self, device_id: str, message: protocol.Message) -> None:
        blob_topic = protocol.topic(device_id, "blob")
        for payload, count in answer_fetch(self.registry, self.trust, message):
            self._client.publish(blob_topic, payload, qos=1)
            self.counts[count] += 1


TOPIC_CACHE_SIZE = 2**16  # topics remembered parsed (~0.3 KB each): a fleet's busiest ones
# the same few topics recur for every message of a device; a bad one is not cached (raises)
_parse_topic = functools.lru_cache(maxsize=TOPIC_CACHE_SIZE)(protocol.parse_topic)


def decode_device_message(
    topic: str, payload: bytes, revoked: frozenset[str] = frozenset()
) -> tuple[str, str, protocol.Message | protocol.UploadChunk]:
    """Validate one device-to-hub message: ``(device id, topic kind, message)``.

    Shared by every consumer of device messages (HubMqtt, hub/transport/fastsub.py), so they
    accept and refuse the same things. A binary chunk on ``upload`` decodes to an
    ``UploadChunk``; anything else must be an envelope of a type its topic allows.

    Raises:
        ProtocolError: a bad topic or payload, or a revoked device, with its reason.
    """
    device_id, kind = _parse_topic(topic)
    if kind not in protocol.DEVICE_TO_HUB:
        raise ProtocolError("unexpected_topic", topic)
    if device_id in revoked:
        raise ProtocolError("revoked_device", f"{device_id} is revoked")
    if kind == "upload" and payload[:4] == protocol.UPLOAD_MAGIC:
        return device_id, kind, protocol.decode_upload_chunk(payload)
    # (JSON on `upload` is refused here: that topic allows no message type)
    return device_id, kind, protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])


def _topic_text(msg: mqtt.MQTTMessage) -> str:
    """The topic as text; a non-UTF-8 one (brokers refuse them) as its repr."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return repr(msg._topic)


def answer_fetch(
    registry: Registry, trust: TrustRepository, message: protocol.Message
) -> list[tuple[bytes, str]]:
    """The blobs that answer one fetch, each with the counter it adds to.

    Metadata: every root newer than the device's, then timestamp, snapshot and targets
    (the timestamp re-signed first if it is close to expiry). Chunks: each one asked
    for, or an error blob naming the first that does not exist.
    """
    body = message.body
    req = str(body["req"])
    if message.type == "fetch_meta":
        trust.refresh_timestamp(TIMESTAMP_MIN_REMAINING_S)
        files = trust.metadata_for(int(body["root_version"]))
        return [(protocol.encode_meta_blob(req, files), "meta_sent")]
    target = str(body["target"])
    out: list[tuple[bytes, str]] = []
    for index in body["chunks"]:
        data = registry.chunk(target, int(index))
        if data is None:
            header = {
                "kind": "error",
                "req": req,
                "reason": "not_found",
                "detail": f"no chunk {index} of {target!r}",
            }
            out.append((protocol.encode_blob(header), "fetch_errors"))
            return out
        header = {"kind": "chunk", "req": req, "target": target, "index": int(index)}
        out.append((protocol.encode_blob(header, data), "chunks_sent"))
    return out
