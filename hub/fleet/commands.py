"""What fleet code needs of the world outside: a way to command a device, and the list of
devices it must leave alone.

Deployments, rollouts and captures depend on these small interfaces, not on the MQTT
link: the hub wires :class:`hub.transport.commands.DirectorCommands` in as the
:class:`CommandSender` and its device identities (hub/trust/identities.py) as the one
source of revocations. A test passes a recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


class CommandSender(Protocol):
    def send_command(self, device_id: str, msg_type: str, body: Mapping[str, Any]) -> None:
        """Sign ``msg_type`` (deploy, rollback, capture) for one device and send it."""
        ...


class FanOutTopics(Protocol):
    def join(self, rollout_id: str, target: str, device_id: str) -> str | None:
        """The fan-out topic ``device_id`` reads ``target``'s chunks on (None: it fetches
        them itself); hub/transport/fanout.py."""
        ...


RevokedDevices = Callable[[], frozenset[str]]  # the devices revoked now


def no_revocations() -> frozenset[str]:
    return frozenset()
