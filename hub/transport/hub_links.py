"""The hub's MQTT links to the broker, each with the identity it connects as.

- the device link: every device-to-hub topic (a replica's: fetches and telemetry shared
  with the other replicas), under the hub's client id or a replica's own;
- the fan-out link (ADR 0042): publishes fan-out rounds only. The rounds are paced by the
  broker's acknowledgements (hub/transport/fanout.py); on the device link each chunk
  queued behind thousands of per-device answers, so a 65-chunk round for 96 devices took
  19 s and one for 36 took 45 s (10,000 devices, ``python -m bench rollout``).

On a TLS broker every link has a certificate of its own (the broker takes the
certificate's name as the client id: hub/transport/service_names.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.transport.link import MqttLink, hub_subscriptions, replica_subscriptions
from hub.transport.service_names import fanout_tls, identity_files, replica_tls

log = logging.getLogger(__name__)


def hub_tls(
    broker: BrokerAddress, tls_dir: Path | None, replica: int | None, *, leader: bool = False
) -> TlsIdentity | None:
    """The hub's certificate for an mqtts:// broker (what ``broker config`` wrote); a
    replica's own, or its leader's link's (``leader``). None for a plain broker.

    Raises:
        ValueError: a TLS broker and no ``tls_dir``, or a replica's files missing.
    """
    if not broker.tls:
        return None
    if tls_dir is None:
        raise ValueError(f"{broker.url} needs broker_tls_dir (edgefleet broker config)")
    if replica is None:
        return identity_files(tls_dir, "hub")
    return replica_tls(tls_dir, None if leader else replica)


def device_link(
    broker: BrokerAddress,
    client_id: str,
    replica: int | None,
    tls: TlsIdentity | None,
    *,
    telemetry: bool,
) -> MqttLink:
    """The hub's link to the devices; a replica's shares fetches (and telemetry when no
    intake takes it) with the others, under a client id of its own."""
    if replica is None:
        subs = hub_subscriptions(telemetry=telemetry)
    else:
        client_id, subs = f"{client_id}-{replica}", replica_subscriptions(telemetry=telemetry)
    return MqttLink(broker, client_id=client_id, tls=tls, subscriptions=subs)


def fanout_link(broker: BrokerAddress, client_id: str, tls_dir: Path | None) -> MqttLink | None:
    """The fan-out's own publishing link (no subscriptions); None when a TLS broker's
    directory has no fan-out identity (written before it existed): the fan-out then
    shares the device link, as before."""
    tls = None
    if broker.tls:
        tls = fanout_tls(tls_dir) if tls_dir is not None else None
        if tls is None:
            log.info(
                "no fan-out identity in %s (edgefleet broker config writes it): "
                "fan-out rounds share the hub's link",
                tls_dir,
            )
            return None
    return MqttLink(broker, client_id=f"{client_id}-fanout", tls=tls, subscriptions=[])
