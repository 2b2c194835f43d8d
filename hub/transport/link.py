"""The hub's MQTT link: one paho client (MQTT 3.1.1, persistent session) subscribed to
every device's device-to-hub topics.

The link knows nothing of what the messages mean: it hands each one to its handler
(hub/transport/inbound.py ``DeviceMessages``), publishes what it is given (answers to
fetches, signed commands from hub/transport/commands.py) and counts.

Acknowledgements are manual: a report (state, events, telemetry, drift) is acknowledged
only once the ingest writer has committed it (:meth:`MqttLink.acknowledge` is the
writer's ``on_stored``), everything else once it is handled. A hub killed between
receipt and commit leaves the message unacknowledged in its persistent session, and the
broker delivers it again; the (device, sequence) dedup absorbs the copy. An
acknowledgement due from a connection that has since dropped is not sent on the new one
(the broker redelivers those messages anyway).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from hub.ingest.report import Report
from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.transport.decode import count_drop
from shared import protocol

log = logging.getLogger(__name__)

RETAINED_KIND = "/state"  # the one device topic whose retained message the hub reads

SUBSCRIPTIONS = [(f"{protocol.ROOT}/+/{kind}", 1) for kind in sorted(protocol.DEVICE_TO_HUB)]

INGEST_GROUP = "edgefleet-ingest"  # $share group of the telemetry (hub/workers.py)
REPLICA_GROUP = "edgefleet-hub"  # $share group of the replicas' fetch answers
# What must stay in order per device, be read retained, or be judged in one place goes to
# the leader's link alone (ADR 0032): states, deployment events, drift windows (alerts),
# capture answers and their uploads, certificate renewals (one CA ledger writer).
LEADER_KINDS = ("capture", "drift", "events", "renew", "state", "upload")


def hub_subscriptions(*, telemetry: bool = True) -> list[tuple[str, int]]:
    """What the hub process subscribes to; without ``telemetry`` when ingest workers take
    it (hub/workers.py)."""
    return [s for s in SUBSCRIPTIONS if telemetry or not s[0].endswith("/telemetry")]


def replica_subscriptions(*, telemetry: bool = True) -> list[tuple[str, int]]:
    """A hub replica's own link: fetches shared with the other replicas, the telemetry
    with them and the ingest workers (each message reaches one member)."""
    subs = [(f"$share/{REPLICA_GROUP}/{protocol.ROOT}/+/fetch", 1)]
    if telemetry:
        subs.append((f"$share/{INGEST_GROUP}/{protocol.ROOT}/+/telemetry", 1))
    return subs


def leader_subscriptions() -> list[tuple[str, int]]:
    """The leader's link: one persistent session that every new leader takes over."""
    return [(f"{protocol.ROOT}/+/{kind}", 1) for kind in LEADER_KINDS]


class MessageHandler(Protocol):
    def handle(self, topic: str, payload: bytes, ack: Any) -> bool:
        """Handle one message; True if ``ack`` is acknowledged later (once stored)."""
        ...


class MqttLink:
    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str = "edgefleet-hub",
        tls: TlsIdentity | None = None,
        subscriptions: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        self.address = address
        # default: every device-to-hub topic; an ingest-only process may take a share of
        # the telemetry instead, e.g. [("$share/ingest/ef/v1/dev/+/telemetry", 1)]; none:
        # a link that only publishes
        self.subscriptions = list(subscriptions if subscriptions is not None else SUBSCRIPTIONS)
        self.handler: MessageHandler | None = None
        # topics of the broker's own (``$CONTROL/…`` answers), each to its callback
        self._listeners: dict[str, Callable[[bytes], None]] = {}
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connected = threading.Event()
        self._connection = 0  # counts connects: an ack belongs to one connection
        self._subscribe_mid: int | None = -1  # the SUBSCRIBE of the current connection
        self._client_id = client_id
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if address.tls:
            if tls is None:
                raise ValueError(f"{address.url} needs the hub's TLS identity (CA, cert, key)")
            self._client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)  # unbounded: commands are never dropped
        self._client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type]  # paho takes floats
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def serve(self, handler: MessageHandler) -> MqttLink:
        """Hand every message to ``handler`` from now on (before :meth:`start`)."""
        self.handler = handler
        return self

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise ConnectionError(f"hub could not connect to the broker at {self.address.url}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self._client.publish(topic, payload, qos=qos)

    def publish_info(self, topic: str, payload: bytes, qos: int) -> mqtt.MQTTMessageInfo:
        """Publish; paho's message info (the fan-out waits on it to pace itself)."""
        return self._client.publish(topic, payload, qos=qos)

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic`` (no wildcard) at every connect and hand its messages to
        ``callback`` instead of the handler: the broker's answers (hub/transport/dynsec.py)."""
        self._listeners[topic] = callback
        self.subscriptions.append((topic, 1))
        if self._client.is_connected():
            self._client.subscribe(topic, qos=1)

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def drop(self, reason: str, detail: str) -> None:
        """Count a dropped message; log the first of each reason."""
        count_drop(self.dropped, reason, detail)

    def clear_retained(self, topic: str) -> None:
        """Delete the broker's retained message on ``topic`` (an empty retained publish)."""
        self._client.publish(topic, b"", qos=1, retain=True)

    def acknowledge(self, reports: list[Report]) -> None:
        """Acknowledge stored reports (called by the ingest writer after its commit)."""
        connection = self._connection
        for r in reports:
            if r.ack is not None and r.ack[0] == connection:
                self._client.ack(r.ack[1], 1)

    # ------------------------------------------------------------- callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("hub: broker refused the connection: %s", rc)
            return
        self._connection += 1
        if not self.subscriptions:  # a publishing link (the fan-out's): connected is ready
            log.info("hub: %s connected to %s", self._client_id, self.address.url)
            self.connected.set()
            return
        # a persistent session keeps what an earlier run subscribed to: drop what this one
        # leaves to others (telemetry, when ingest workers take it)
        mine = {t for t, _ in self.subscriptions}
        stale = [t for t, _ in SUBSCRIPTIONS if t not in mine]
        if stale:
            client.unsubscribe(stale)
        _result, self._subscribe_mid = client.subscribe(self.subscriptions)
        log.info("hub: connected to %s", self.address.url)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        # Connected means subscribed: a message published after start() returns has a
        # receiver even when the broker had no session of ours to keep it for us.
        if mid == self._subscribe_mid:
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        if rc != 0:
            log.warning("hub: lost the broker (%s); reconnecting", rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = _topic_text(msg)
        stored_later = False
        try:
            ack = (self._connection, msg.mid) if msg.qos else None
            listener = self._listeners.get(topic)
            if listener is not None:
                listener(bytes(msg.payload))
            elif self.handler is None:
                self.drop("no_handler", topic)
            elif msg.retain and not topic.endswith(RETAINED_KIND):
                # Only a device's state is meant to be retained; any other retained message
                # would be answered or stored again at every reconnect (issue 11 item 7).
                self.drop("retained", topic)
            else:
                stored_later = self.handler.handle(topic, bytes(msg.payload), ack)
        finally:
            if msg.qos and not stored_later:  # handled, or a counted drop
                self._client.ack(msg.mid, msg.qos)


def _topic_text(msg: mqtt.MQTTMessage) -> str:
    """The topic as text; a non-UTF-8 one (brokers refuse them) as its repr."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return repr(msg._topic)
