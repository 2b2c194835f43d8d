"""``edgefleet agent run``: the device daemon.

Wires one ``Device`` to paho-mqtt (MQTT 3.1.1, persistent session, a retained
``offline`` Last Will), ticks it every second with the process's CPU and RSS, and
serves the local inference endpoint for applications on the device. Its settings are
in agent/config.py and docs/agent.md.

Stopping: SIGTERM or SIGINT (Ctrl-C) only sets a flag (a signal handler must not take
a lock the interrupted thread may hold: ``Event.set`` from a handler deadlocked against
the main thread's ``Event.wait``); the main loop sleeps in short slices, sees the flag
and stops within :data:`STOP_SLICE_S`. The stop itself is bounded by
:data:`STOP_TIMEOUT_S` even with the broker gone. A second signal while stopping ends
the process at once.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import ssl
import sys
import threading
import time
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import psutil

from agent.backends import BackendError, backend_for
from agent.config import AgentConfig, ConfigError, endpoint_address
from agent.connection import ConnectionLog
from agent.core import CoreConfig
from agent.device import Device
from agent.endpoint import LocalEndpoint
from agent.enrol import IDENTITY_DIR, enrol, identity_dir
from agent.identity import DeviceIdentity
from agent.renewal import CertRenewal
from agent.runtime import SessionCache
from agent.spool import Spool, SpoolSender
from agent.store import DeviceStore
from agent.update_log import UpdateLog
from shared import protocol
from shared.pkcs11 import Pkcs11Error

__all__ = [
    "IDENTITY_DIR",
    "AgentConfig",
    "AgentDaemon",
    "ConfigError",
    "EndpointInUse",
    "enrol",
    "identity_dir",
    "run_daemon",
]

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often inference stats are handed to the core
STOP_SLICE_S = 0.1  # seconds: the main loop's sleep between looks at the stop flag
STOP_TIMEOUT_S = 3.0  # seconds the MQTT side of a stop may take (saying offline, paho's thread)
SAY_OFFLINE_S = 1.0  # seconds to wait for the broker to take the clean "offline" state
RECONNECT_S = (1, 60)  # paho's reconnect backoff: first wait, longest wait (seconds)
SPOOL_DIR = "spool"  # under state_dir: unacknowledged telemetry and drift windows
NO_TOKEN_TLS = (
    "{broker} needs TLS client authentication, and this device's key is in a PKCS#11 token:"
    " Python's ssl presents only a key from a file. Point broker at a local TLS tunnel that"
    " holds the key (stunnel with OpenSSL's PKCS#11 engine: docs/devices.md, 'Keys in a token')"
)
SWITCH_ATTEMPTS = 2  # failed connections with a renewed certificate before going back


class EndpointInUse(ConfigError):
    """The local endpoint's port is taken (by another agent on this machine?)."""


class AgentDaemon:
    def __init__(self, config: AgentConfig, source: str = "the agent config") -> None:
        self.config = config
        self.source = source  # the config file, named in messages
        try:
            backend = backend_for(config.runtime)
        except BackendError as e:
            raise ConfigError(f"{source}: {e}") from e
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
        self.renewal: CertRenewal | None = None  # with TLS only
        self._switch = False  # a renewed certificate arrived: reconnect with it
        if urlparse(config.broker).scheme == "mqtts":
            identity = DeviceIdentity.load(identity_dir(config), config.device_id, config.key)
            if identity.in_token:
                raise Pkcs11Error("no_tls", NO_TOKEN_TLS.format(broker=config.broker))
            if not identity.has_certificate:
                raise ConfigError(
                    f"{config.broker} needs this device's certificate in {identity_dir(config)}:"
                    " enrol first (edgefleet agent enrol)"
                )
            self._start_renewal(config)  # first: it finishes a promotion a crash cut short
            # our own context: a renewed certificate is loaded into it (agent/renewal.py)
            self._tls = ssl.create_default_context(cafile=str(identity.ca_path))
            self._tls.load_cert_chain(str(identity.cert_path), str(identity.key_path))
            self._client.tls_set_context(self._tls)
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
                heartbeat_s=config.heartbeat_s,
                memory_budget_mb=config.memory_budget_mb,
                upload_disk_bytes=config.upload_disk_bytes,
            ),
            store,
            publish=self._publish,
            sessions=SessionCache(backend),
            spool=self.spool,
            update_log=UpdateLog(config.device_id),
            subscribe=self._subscribe,
        )
        self.connection = ConnectionLog(config.broker, *RECONNECT_S)
        self._client.will_set(
            protocol.topic(config.device_id, "state"), self.device.offline_state(), 1, True
        )
        self._client.reconnect_delay_set(*RECONNECT_S)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self.stopping = False  # a plain flag: set from signal handlers, read by the loop
        self.endpoint: LocalEndpoint | None = None
        self._proc = psutil.Process()

    # ------------------------------------------------------------- certificate renewal

    def _start_renewal(self, config: AgentConfig) -> None:
        self.renewal = CertRenewal(
            identity_dir(config),
            config.device_id,
            lambda topic, payload: self._publish(topic, payload, 1, False),
            fraction=config.renew_fraction,
            spread=config.renew_spread,
            retry_s=config.renew_retry_s,
        )

    def _renew_tick(self) -> None:
        """Ask for a certificate when due; switch to a renewed one; go back if refused."""
        renewal = self.renewal
        if renewal is None:
            return
        if renewal.switching_since is not None:
            if renewal.switch_overdue() or self.connection.retries >= SWITCH_ATTEMPTS:
                cert, key = renewal.switch_failed(self.connection.last_error or "no answer")
                self._tls.load_cert_chain(str(cert), str(key))
                self._reconnect()
        elif self._switch and renewal.ready_to_switch:
            self._switch = False
            cert, key, bundle = renewal.switching()
            self._tls.load_verify_locations(cafile=str(bundle))
            self._tls.load_cert_chain(str(cert), str(key))
            self._reconnect()
        else:
            renewal.tick(self._client.is_connected())

    def _reconnect(self) -> None:
        """Close the link cleanly (no Last Will) and open it again: the next TLS handshake
        presents the certificate now loaded in the context."""
        self._client.disconnect()
        self._client.loop_stop()
        # paho 2.2's loop_start makes a new wake-up socket pair without closing the one
        # the stopped loop used (a leaked pair per reconnect): close it first
        self._client._reset_sockets(sockpair_only=True)
        self._client.connect_async(*self._address(), keepalive=30)
        self._client.loop_start()

    def _address(self) -> tuple[str, int]:
        u = urlparse(self.config.broker)
        return u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)

    # ------------------------------------------------------------- paho's callbacks

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.publish(topic, payload, qos, retain)

    def _subscribe(self, topic: str, qos: int) -> None:
        """Read a fan-out topic (``qos`` < 0: stop); the broker's ACL allows reading only."""
        if qos < 0:
            self._client.unsubscribe(topic)
        else:
            self._client.subscribe(topic, qos)

    def _send_spooled(self, topic: str, payload: bytes) -> int | None:
        """Hand a spooled window to paho (QoS 1); None while offline (it stays spooled)."""
        if not self._client.is_connected():
            return None
        info = self._client.publish(topic, payload, 1, False)
        return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self.spool.acked(mid)  # never blocks (paho holds its message lock here)

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.spool.disconnected()
        if rc.is_failure and not flags.is_disconnect_packet_from_server:
            self.connection.down("the connection dropped or the broker went away")
        else:
            self.connection.down(f"the broker closed it: {rc}")

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the error is the current exception
        self.connection.attempt_failed(_why(sys.exc_info()[1]))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.connection.refused(str(rc))
            return
        self.connection.up()
        if self.renewal is not None:
            self.renewal.connected()  # a renewed certificate just proved itself
        client.subscribe(
            [(protocol.topic(self.config.device_id, kind), 1) for kind in ("cmd", "blob", "cert")]
        )
        self.device.connected()
        self.spool.connected()  # send what was spooled while offline, oldest first

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            if kind == "cert":
                if self.renewal is not None and self.renewal.on_answer(bytes(msg.payload)):
                    self._switch = True  # the main loop reconnects (not paho's thread)
                return
            self.device.message(kind, bytes(msg.payload))
        except Exception:  # never let one message kill paho's loop
            log.exception("failed to handle a message on %s", msg.topic)

    # ------------------------------------------------------------- life

    def start(self) -> None:
        """Bind the local endpoint, then connect (in the background, retrying).

        Raises:
            EndpointInUse: the endpoint's port is taken; nothing was started.
        """
        if self.config.endpoint:
            self._start_endpoint()  # first: a second agent must not take the MQTT session
        log.info("connecting to %s", self.config.broker)
        self._client.connect_async(*self._address(), keepalive=30)
        self._client.loop_start()
        self._proc.cpu_percent(None)

    def _start_endpoint(self) -> None:
        address = endpoint_address(self.config.endpoint)
        assert address is not None  # AgentConfig checked it
        self.endpoint = LocalEndpoint(
            self.device.predictor, host=address[0], port=address[1], status=self.status
        )
        try:
            bound = self.endpoint.start()
        except OSError as e:
            self.endpoint = None
            if e.errno != errno.EADDRINUSE:
                raise
            raise EndpointInUse(
                f"port {address[1]} of the local inference endpoint (the endpoint setting,"
                f' "{self.config.endpoint}") is in use, by another agent on this machine?'
                f' Give this one another port: endpoint = "{address[0]}:{address[1] + 1}"'
                f' in {self.source} (endpoint = "" turns the endpoint off)'
            ) from e
        log.info("local inference endpoint on http://%s:%d (/v1/predict, /v1/status)", *bound)

    def status(self) -> dict[str, Any]:
        """The body of ``GET /v1/status`` (docs/agent.md)."""
        depth, size = self.spool.depth()
        return {
            "device_id": self.config.device_id,
            "connection": self.connection.status(),
            **self.device.status(),
            "spool": {"windows": depth, "bytes": size, "dropped": self.spool.dropped},
        }

    def run_forever(self) -> None:
        """Tick every :data:`TICK_S` until :attr:`stopping` is set."""
        next_tick = time.monotonic() + TICK_S
        while not self.stopping:
            time.sleep(STOP_SLICE_S)
            if time.monotonic() < next_tick or self.stopping:
                continue
            next_tick += TICK_S
            try:
                self.device.tick(self._proc.cpu_percent(None), self._proc.memory_info().rss)
                self.spool.pump()  # acks that arrived while the spool was busy
                self._renew_tick()
            except Exception:
                log.exception("tick failed")

    def stop(self) -> None:
        """Stop serving and close the link, within about :data:`STOP_TIMEOUT_S`."""
        self.stopping = True
        if self.endpoint is not None:
            self.endpoint.stop()
        self.connection.stopped()
        # A clean stop says "offline" itself (the Last Will covers crashes).
        if self._client.is_connected():
            info = self._client.publish(
                protocol.topic(self.config.device_id, "state"), self.device.offline_state(), 1, True
            )
            try:
                info.wait_for_publish(SAY_OFFLINE_S)
            except (RuntimeError, ValueError) as e:  # the link dropped meanwhile
                log.warning("could not say offline before stopping: %s", e)
        self._client.disconnect()
        # paho's loop_stop joins its thread without a limit; that thread may sit in a
        # connect to a host that does not answer. Give it a bounded time, then leave it
        # (a daemon thread: it does not keep the process alive).
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        if stopper.is_alive():
            log.warning("the MQTT thread did not stop within %.0f s; leaving it", STOP_TIMEOUT_S)


def run_daemon(config: AgentConfig, source: str = "the agent config") -> None:
    """Run until SIGTERM or SIGINT; the state and the spool are on disk all along.

    Raises:
        ConfigError: not enrolled, or the endpoint's port is taken (EndpointInUse).
    """
    root = logging.getLogger()
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # an operator sees connection changes and update steps
    daemon = AgentDaemon(config, source)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if daemon.stopping:  # asked twice: do not wait for anything
            os._exit(128 + signum)
        daemon.stopping = True  # only a plain store: no lock, no I/O, no logging here

    daemon.start()  # EndpointInUse: nothing started, nothing to stop
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("agent %s running (broker %s)", config.device_id, config.broker)
        daemon.run_forever()
        log.info("agent %s stopping", config.device_id)
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("agent %s stopped", config.device_id)


def _why(error: object) -> str:
    """A connection error or a paho reason code as a few words for the log."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error) if error is not None else "unknown error"
    return text or type(error).__name__
