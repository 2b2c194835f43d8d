"""``edgefleet agent run``: the device daemon.

Wires one ``Device`` to paho-mqtt (MQTT 3.1.1, persistent session, a retained
``offline`` Last Will), ticks it every second with the process's CPU and RSS, and
serves the local inference endpoint for applications on the device.

Config (TOML)::

    device_id = "press-17"
    device_class = "rpi4"
    broker = "mqtt://hub.example:1883"
    state_dir = "/var/lib/edgefleet"
    # optional
    runtime = "onnxruntime"
    window_s = 10.0
    endpoint = "127.0.0.1:8780"     # "" disables the local endpoint
    spool_max_bytes = 16777216      # telemetry/drift kept on disk while offline (agent/spool.py)
    spool_fsync = false             # true: fsync each window (survives a power cut, costs ms)
    spool_replay_per_s = 5.0        # spooled windows sent per second after an outage's burst
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import paho.mqtt.client as mqtt
import psutil

from agent.core import CoreConfig
from agent.device import Device
from agent.endpoint import LocalEndpoint
from agent.identity import DeviceIdentity
from agent.runtime import OnnxBackend, SessionCache
from agent.spool import DEFAULT_MAX_BYTES, REPLAY_PER_S, Spool, SpoolSender
from agent.store import DeviceStore
from shared import protocol
from shared.trust import DeviceVerifier

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often inference stats are handed to the core
IDENTITY_DIR = "identity"  # under state_dir: device.key, device.crt, ca.crt
SPOOL_DIR = "spool"  # under state_dir: unacknowledged telemetry and drift windows


class ConfigError(ValueError):
    """An agent config that cannot be used; the message names the field."""


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    device_class: str
    broker: str
    state_dir: Path
    runtime: str = "onnxruntime"
    window_s: float = 10.0
    endpoint: str = "127.0.0.1:8780"
    spool_max_bytes: int = DEFAULT_MAX_BYTES  # bytes
    spool_fsync: bool = False
    spool_replay_per_s: float = REPLAY_PER_S  # the hub's ingest budget is 20/s (agent/spool.py)

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read and check a TOML config.

        Raises:
            ConfigError: unreadable file, missing or invalid field.
        """
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> AgentConfig:
        required = ("device_id", "device_class", "broker", "state_dir")
        missing = [k for k in required if not isinstance(raw.get(k), str) or not raw.get(k)]
        if missing:
            raise ConfigError(f"{source}: missing or empty: {', '.join(missing)}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{source}: unknown settings: {', '.join(sorted(unknown))}")
        if not protocol.is_device_id(raw["device_id"]):
            raise ConfigError(f"{source}: device_id {raw['device_id']!r}: letters, digits, _.-")
        u = urlparse(raw["broker"])
        if u.scheme not in ("mqtt", "tcp", "mqtts") or not u.hostname:
            raise ConfigError(
                f"{source}: broker must be mqtt://host:port or mqtts://host:port,"
                f" got {raw['broker']!r}"
            )
        window = raw.get("window_s", 10.0)
        if not isinstance(window, (int, float)) or window <= 0:
            raise ConfigError(f"{source}: window_s must be a positive number")
        spool_max = raw.get("spool_max_bytes", DEFAULT_MAX_BYTES)
        if not isinstance(spool_max, int) or isinstance(spool_max, bool) or spool_max < 4096:
            raise ConfigError(f"{source}: spool_max_bytes must be an integer >= 4096")
        if not isinstance(raw.get("spool_fsync", False), bool):
            raise ConfigError(f"{source}: spool_fsync must be true or false")
        replay = raw.get("spool_replay_per_s", REPLAY_PER_S)
        if not isinstance(replay, (int, float)) or isinstance(replay, bool) or replay <= 0:
            raise ConfigError(f"{source}: spool_replay_per_s must be a positive number")
        return cls(
            device_id=raw["device_id"],
            device_class=raw["device_class"],
            broker=raw["broker"],
            state_dir=Path(raw["state_dir"]),
            runtime=str(raw.get("runtime", "onnxruntime")),
            window_s=float(window),
            endpoint=str(raw.get("endpoint", "127.0.0.1:8780")),
            spool_max_bytes=spool_max,
            spool_fsync=bool(raw.get("spool_fsync", False)),
            spool_replay_per_s=float(replay),
        )


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        store = DeviceStore(config.state_dir)
        if not (store.trust_dir / "root.json").exists():
            raise ConfigError(
                f"{store.trust_dir / 'root.json'} is missing: enrol first (edgefleet agent enrol)"
            )
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.device_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if urlparse(config.broker).scheme == "mqtts":
            identity = DeviceIdentity.load_or_create(identity_dir(config), config.device_id)
            if not identity.has_certificate:
                raise ConfigError(
                    f"{config.broker} needs this device's certificate in {identity_dir(config)}:"
                    " enrol first (edgefleet agent enrol)"
                )
            self._client.tls_set(
                ca_certs=str(identity.ca_path),
                certfile=str(identity.cert_path),
                keyfile=str(identity.key_path),
            )
        self.spool = SpoolSender(
            Spool(config.state_dir / SPOOL_DIR, config.spool_max_bytes, fsync=config.spool_fsync),
            self._send_spooled,
            per_s=config.spool_replay_per_s,
        )
        self.device = Device(
            CoreConfig(
                device_id=config.device_id,
                device_class=config.device_class,
                runtime=config.runtime,
                window_s=config.window_s,
            ),
            store,
            publish=self._publish,
            sessions=SessionCache(OnnxBackend()),
            spool=self.spool,
        )
        self._client.will_set(
            protocol.topic(config.device_id, "state"), self.device.offline_state(), 1, True
        )
        self._client.reconnect_delay_set(1, 60)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self._stop = threading.Event()
        self.endpoint: LocalEndpoint | None = None
        self._proc = psutil.Process()

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.publish(topic, payload, qos, retain)

    def _send_spooled(self, topic: str, payload: bytes) -> int | None:
        """Hand a spooled window to paho (QoS 1); None while offline (it stays spooled)."""
        if not self._client.is_connected():
            return None
        info = self._client.publish(topic, payload, 1, False)
        return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self.spool.acked(mid)  # never blocks (paho holds its message lock here)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.spool.disconnected()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        client.subscribe(
            [
                (protocol.topic(self.config.device_id, "cmd"), 1),
                (protocol.topic(self.config.device_id, "blob"), 1),
            ]
        )
        self.device.connected()
        self.spool.connected()  # send what was spooled while offline, oldest first

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.device.message(msg.topic.rsplit("/", 1)[-1], bytes(msg.payload))
        except Exception:  # never let one message kill paho's loop
            log.exception("failed to handle a message on %s", msg.topic)

    def start(self) -> None:
        u = urlparse(self.config.broker)
        default_port = 8883 if u.scheme == "mqtts" else 1883
        self._client.connect_async(u.hostname or "127.0.0.1", u.port or default_port, keepalive=30)
        self._client.loop_start()
        if self.config.endpoint:
            host, _, port = self.config.endpoint.rpartition(":")
            self.endpoint = LocalEndpoint(
                self.device.predictor, host=host or "127.0.0.1", port=int(port)
            )
            bound = self.endpoint.start()
            log.info("local inference endpoint on http://%s:%d/v1/predict", *bound)
        self._proc.cpu_percent(None)

    def run_forever(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.device.tick(self._proc.cpu_percent(None), self._proc.memory_info().rss)
                self.spool.pump()  # acks that arrived while the spool was busy
            except Exception:
                log.exception("tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self.endpoint is not None:
            self.endpoint.stop()
        # A clean stop says "offline" itself (the Last Will covers crashes).
        if self._client.is_connected():
            info = self._client.publish(
                protocol.topic(self.config.device_id, "state"), self.device.offline_state(), 1, True
            )
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError) as e:  # the link dropped meanwhile
                log.warning("could not say offline before stopping: %s", e)
        self._client.disconnect()
        self._client.loop_stop()


def identity_dir(config: AgentConfig) -> Path:
    """Where the device's key, certificate and CA certificate live."""
    return config.state_dir / IDENTITY_DIR


def run_daemon(config: AgentConfig) -> None:
    logging.getLogger().setLevel(logging.INFO)
    daemon = AgentDaemon(config)
    signal.signal(signal.SIGTERM, lambda *_: daemon._stop.set())
    daemon.start()
    log.info("agent %s running (broker %s)", config.device_id, config.broker)
    try:
        daemon.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()


def enrol(
    *,
    hub_url: str,
    token: str,
    device_id: str,
    device_class: str,
    state_dir: Path,
    config_out: Path,
    timeout: float = 30.0,
) -> AgentConfig:
    """Trade a one-time enrolment token for the hub's TUF root (pinned here), a
    certificate for this device's own key (made here; it never leaves), and a config."""
    identity = DeviceIdentity.load_or_create(state_dir / IDENTITY_DIR, device_id)
    body = json.dumps(
        {
            "device_id": device_id,
            "token": token,
            "device_class": device_class,
            "csr": identity.csr_pem().decode(),
        }
    )
    req = Request(
        hub_url.rstrip("/") + "/enrol",
        data=body.encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    store = DeviceStore(state_dir)
    DeviceVerifier(store.trust_dir, answer["root"].encode())
    if answer.get("certificate"):
        identity.store_certificate(answer["certificate"].encode(), answer["ca"].encode())
    config = AgentConfig(
        device_id=device_id, device_class=device_class, broker=answer["broker"], state_dir=state_dir
    )
    config_out.write_text(
        "\n".join(
            [
                f'device_id = "{device_id}"',
                f'device_class = "{device_class}"',
                f'broker = "{answer["broker"]}"',
                f'state_dir = "{state_dir}"',
                "",
            ]
        )
    )
    return config
