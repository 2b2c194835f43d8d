"""Signed deploy and rollback commands: the director (DESIGN §4; Uptane's director role).

A command is a protocol envelope (shared/protocol.py) whose body also names the ``device``
it is for, when it ``expires`` (seconds since the epoch) and the hub's ``root_version``,
plus a ``signatures`` list beside the envelope::

    {"v": 1, "type": "deploy", "id": <command id>, "ts": ..., "body": {...},
     "signatures": [{"keyid": <hex>, "sig": <hex>}]}

Each signature covers the canonical JSON of the envelope without ``signatures`` (sorted
keys, no spaces). The verifier re-serialises what it parsed, so what is verified is
exactly what is used. Signing and verifying use securesystemslib keys (Ed25519), as TUF
does; the director's public keys and threshold travel in the TUF root (field
``x-edgefleet-director``), so a device pins them at enrolment and learns a rotation by
walking the root chain.

Exceptions::

    CommandError(reason, detail)        reason is a shared.reasons.Reason
        UNSIGNED_COMMAND    no signatures at all
        UNKNOWN_KEY         signed only by keys the trusted root does not list
        BAD_SIGNATURE       a listed key, but fewer valid signatures than the threshold
        WRONG_DEVICE        signed for another device
        COMMAND_EXPIRED     past its expiry
        COMMAND_INVALID     no expiry, or one further out than MAX_COMMAND_TTL_S
    (replays are the device's to spot: it remembers command ids until they expire)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signature, Signer

from shared import protocol
from shared.reasons import Reason

__all__ = [
    "DIRECTOR_FIELD",
    "Command",
    "CommandError",
    "DirectorKeys",
    "sign_command",
    "verify_command",
]

DIRECTOR_FIELD: Final = "x-edgefleet-director"  # root field: {"keys": {...}, "threshold": n}
MAX_COMMAND_TTL_S: Final = 7 * 86400  # seconds; a command may not claim a longer life
CLOCK_SKEW_S: Final = 300.0  # seconds of device clock error tolerated on expiry bounds
MAX_SIGNATURES: Final = 16  # signatures looked at; more is refused as invalid
COMMAND_FIELDS: Final = ("device", "expires", "root_version")  # added to a command's body


class CommandError(Exception):
    """A command refused on trust grounds.

    Attributes:
        reason: the stable code reported to the hub.
        detail: what exactly was wrong.
        root_version: the root version the (unverified) command claims the hub has; a
            device with an older root may refresh its trust and try again.
    """

    def __init__(self, reason: Reason, detail: str, root_version: int = 0) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.root_version = root_version


@dataclass(frozen=True)
class DirectorKeys:
    """The director's public keys (by key id) and how many must sign a command."""

    keys: Mapping[str, Key]
    threshold: int = 1

    @classmethod
    def from_root_field(cls, field: Any) -> DirectorKeys:
        """Read the root's ``x-edgefleet-director`` field; none (or a broken one) → no keys."""
        if not isinstance(field, dict) or not isinstance(field.get("keys"), dict):
            return cls({}, 1)
        keys: dict[str, Key] = {}
        for keyid, data in field["keys"].items():
            try:
                keys[str(keyid)] = Key.from_dict(str(keyid), dict(data))
            except (ValueError, TypeError, KeyError):
                continue
        threshold = field.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            return cls({}, 1)
        return cls(keys, threshold)


@dataclass(frozen=True)
class Command:
    """A verified command."""

    type: str  # deploy | rollback
    id: str  # unique; the device remembers it until ``expires``
    body: Mapping[str, Any]
    expires: float  # seconds since the epoch
    keyids: frozenset[str]  # the director keys whose signatures verified


def canonical(envelope: Mapping[str, Any]) -> bytes:
    """The bytes a command signature covers."""
    return json.dumps(
        envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sign_command(
    signers: Sequence[Signer],
    msg_type: str,
    body: Mapping[str, Any],
    *,
    device_id: str,
    now: float,
    ttl_s: float,
    root_version: int,
) -> bytes:
    """A signed command for one device, valid for ``ttl_s`` seconds from ``now``.

    Raises:
        ValueError: a bad ``ttl_s``; ProtocolError: the body does not match its type.
    """
    if not 0 < ttl_s <= MAX_COMMAND_TTL_S:
        raise ValueError(f"command lifetime must be in (0, {MAX_COMMAND_TTL_S}] s, got {ttl_s}")
    full = {**body, "device": device_id, "expires": now + ttl_s, "root_version": root_version}
    envelope = json.loads(protocol.encode(msg_type, full, ts=now))
    data = canonical(envelope)
    envelope["signatures"] = [
        {"keyid": s.public_key.keyid, "sig": s.sign(data).signature} for s in signers
    ]
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()


def verify_command(
    message: protocol.Message, payload: bytes, keys: DirectorKeys, *, device_id: str, now: float
) -> Command:
    """Check a parsed command's signatures, addressee and expiry.

    Args:
        message: ``payload`` as :func:`shared.protocol.decode` parsed it (a deploy or
            rollback); the caller counts and drops what does not parse.
        payload: the raw bytes, for the signatures beside the envelope.

    Raises:
        CommandError: a command this device must refuse (the caller reports it).
    """
    envelope = json.loads(payload)  # decode() has checked it is a JSON object
    body = message.body
    claimed_root = body.get("root_version")
    hint = claimed_root if isinstance(claimed_root, int) and claimed_root > 0 else 0
    signatures = envelope.pop("signatures", None)
    if not signatures:
        raise CommandError(Reason.UNSIGNED_COMMAND, "the command carries no signature", hint)
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        raise CommandError(Reason.COMMAND_INVALID, "signatures must be a short list", hint)
    try:
        signed = canonical(envelope)
    except (ValueError, UnicodeEncodeError) as e:  # NaN/Infinity, or a lone surrogate
        raise CommandError(Reason.COMMAND_INVALID, f"not canonical JSON: {e}", hint) from e
    keyids = _check_signatures(signatures, signed, keys, hint)
    if body.get("device") != device_id:
        raise CommandError(
            Reason.WRONG_DEVICE, f"signed for {str(body.get('device'))[:64]!r}, not {device_id}"
        )
    if not protocol.is_number(body.get("expires")):
        raise CommandError(Reason.COMMAND_INVALID, "no expiry")
    expires = float(body["expires"])
    if expires < now:
        raise CommandError(Reason.COMMAND_EXPIRED, f"expired {now - expires:.0f} s ago")
    if expires > now + MAX_COMMAND_TTL_S + CLOCK_SKEW_S:
        raise CommandError(
            Reason.COMMAND_INVALID, f"expiry {expires - now:.0f} s ahead > {MAX_COMMAND_TTL_S}"
        )
    return Command(message.type, message.id, body, expires, keyids)


def _check_signatures(
    sigs: list[Any], data: bytes, keys: DirectorKeys, hint: int
) -> frozenset[str]:
    valid: set[str] = set()
    known = 0
    for entry in sigs:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("keyid"), str)
            and isinstance(entry.get("sig"), str)
        ):
            raise CommandError(Reason.COMMAND_INVALID, "a signature is not {keyid, sig}", hint)
        key = keys.keys.get(entry["keyid"])
        if key is None:
            continue
        known += 1
        try:
            key.verify_signature(Signature(entry["keyid"], entry["sig"]), data)
        except (UnverifiedSignatureError, ValueError, TypeError):
            continue  # VerificationError (malformed signature) is an UnverifiedSignatureError
        valid.add(entry["keyid"])
    if len(valid) >= keys.threshold:
        return frozenset(valid)
    if known == 0:
        raise CommandError(Reason.UNKNOWN_KEY, "signed by no key this device trusts", hint)
    raise CommandError(
        Reason.BAD_SIGNATURE,
        f"{len(valid)} valid signature(s) of {keys.threshold} needed",
        hint,
    )
