"""The hub's MQTT side: answer devices' fetches, ingest their reports, send commands.

One paho client (MQTT 3.1.1, persistent session) subscribed to every device's
device-to-hub topics. Fetches are answered on the MQTT thread straight from the
registry's in-memory files (no SQL on that path); reports are validated and handed to
the ingest writer. A message that does not parse is counted and dropped with one log
line per reason; it never stops the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt

from hub.broker import BrokerAddress
from hub.ingest import Ingest, Report
from hub.registry import Registry
from shared import protocol
from shared.protocol import ProtocolError
from shared.trust import TrustRepository

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [(f"{protocol.ROOT}/+/{kind}", 1) for kind in sorted(protocol.DEVICE_TO_HUB)]
TIMESTAMP_MIN_REMAINING_S = 3600.0  # re-sign the timestamp when it expires sooner


class HubMqtt:
    def __init__(
        self,
        address: BrokerAddress,
        registry: Registry,
        trust: TrustRepository,
        ingest: Ingest,
        *,
        client_id: str = "edgefleet-hub",
    ) -> None:
        self.address = address
        self.registry = registry
        self.trust = trust
        self.ingest = ingest
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
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
        payload = protocol.encode(msg_type, body, ts=time.time())
        self._client.publish(protocol.topic(device_id, "cmd"), payload, qos=1)
        self.counts["commands"] += 1

    # ------------------------------------------------------------- callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("hub: broker refused the connection: %s", rc)
            return
        client.subscribe(SUBSCRIPTIONS)
        self.connected.set()
        log.info("hub: connected to %s", self.address.url)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        if rc != 0:
            log.warning("hub: lost the broker (%s); reconnecting", rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, kind = protocol.parse_topic(msg.topic)
            if kind not in protocol.DEVICE_TO_HUB:
                raise ProtocolError("unexpected_topic", msg.topic)
            message = protocol.decode(msg.payload, expect=protocol.TOPIC_TYPES[kind])
            if kind == "fetch":
                self._answer_fetch(device_id, message)
            else:
                self.ingest.put(Report(device_id, kind, message))
            self.counts[kind] += 1
        except ProtocolError as e:
            self._drop(e.reason, f"{msg.topic}: {e.detail}")
        except Exception:  # never let one message kill the loop
            self.dropped["internal_error"] += 1
            log.exception("hub: failed to handle a message on %s", msg.topic)

    def _drop(self, reason: str, detail: str) -> None:
        if self.dropped[reason] == 0:
            log.warning(
                "hub: dropped a message (%s): %s (further ones are counted)", reason, detail
            )
        self.dropped[reason] += 1

    # ------------------------------------------------------------- fetches

    def _answer_fetch(self, device_id: str, message: protocol.Message) -> None:
        body = message.body
        blob_topic = protocol.topic(device_id, "blob")
        req = str(body["req"])
        if message.type == "fetch_meta":
            self.trust.refresh_timestamp(TIMESTAMP_MIN_REMAINING_S)
            files = self.trust.metadata_for(int(body["root_version"]))
            payload = protocol.encode_meta_blob(req, files)
            self._client.publish(blob_topic, payload, qos=1)
            self.counts["meta_sent"] += 1
            return
        target = str(body["target"])
        for index in body["chunks"]:
            data = self.registry.chunk(target, int(index))
            if data is None:
                header = {
                    "kind": "error",
                    "req": req,
                    "reason": "not_found",
                    "detail": f"no chunk {index} of {target!r}",
                }
                self._client.publish(blob_topic, protocol.encode_blob(header), qos=1)
                self.counts["fetch_errors"] += 1
                return
            header = {"kind": "chunk", "req": req, "target": target, "index": int(index)}
            self._client.publish(blob_topic, protocol.encode_blob(header, data), qos=1)
            self.counts["chunks_sent"] += 1
