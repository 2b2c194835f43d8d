"""Signed commands to devices: deploy, rollback, capture (DESIGN §5).

Each command is signed with the director key (shared/director.py) for one device, with a
validity window, and published at QoS 1 on the device's ``cmd`` topic. Fleet code sees
only :class:`hub.fleet.commands.CommandSender`, which :class:`DirectorCommands` is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from securesystemslib.signer import Signer

from hub.transport.entitlements import Entitlements
from shared import protocol
from shared.director import sign_command

COMMAND_TTL_S = 24 * 3600.0  # seconds a signed command stays valid


class DirectorKeys(Protocol):
    """The director's keys and the root that lists them (hub/trust/repository.py)."""

    @property
    def root_version(self) -> int: ...

    def director_signers(self) -> Sequence[Signer]: ...


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def count(self, what: str) -> None: ...


class DirectorCommands:
    def __init__(
        self,
        link: Publisher,
        keys: DirectorKeys,
        *,
        ttl_s: float = COMMAND_TTL_S,
        entitlements: Entitlements | None = None,
    ) -> None:
        self.link = link
        self.keys = keys
        self.ttl_s = ttl_s
        self.entitlements = entitlements  # a deploy lets its device fetch the target

    def send_command(self, device_id: str, msg_type: str, body: Mapping[str, Any]) -> None:
        """Sign a command for one device and queue it (QoS 1)."""
        payload = sign_command(
            self.keys.director_signers(),
            msg_type,
            body,
            device_id=device_id,
            now=time.time(),
            ttl_s=self.ttl_s,
            root_version=self.keys.root_version,
        )
        if msg_type == "deploy" and self.entitlements is not None and "target" in body:
            self.entitlements.grant(device_id, str(body["target"]))  # before it can ask
        self.link.publish(protocol.topic(device_id, "cmd"), payload, 1)
        self.link.count("commands")

    def send_request(self, device_id: str, msg_type: str, body: Mapping[str, Any]) -> None:
        """Send one device a plain, unsigned request (QoS 1): ``upload_ask`` or
        ``upload_done``, which name only that device's own capture upload (ADR 0039)."""
        if msg_type not in protocol.UNSIGNED_COMMANDS:
            raise ValueError(f"{msg_type} is a command: it must be signed")
        payload = protocol.encode(msg_type, body, ts=time.time())
        self.link.publish(protocol.topic(device_id, "cmd"), payload, 1)
        self.link.count("requests")
