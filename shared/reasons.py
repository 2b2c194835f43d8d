"""Stable reason codes for every refusal an agent makes (reported on ``events``).

The codes are part of the protocol: the hub counts them, operators alert on them and
docs/protocol.md lists them. Never rename one; add new ones at the end.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a device refused or abandoned an update."""

    # trust (TUF metadata and targets)
    BAD_SIGNATURE = "bad_signature"  # metadata or a command without enough valid signatures
    EXPIRED_METADATA = "expired_metadata"  # freeze attack: metadata past its expiry
    METADATA_ROLLBACK = "metadata_rollback"  # metadata older than what the device has seen
    METADATA_INVALID = "metadata_invalid"  # unparsable or inconsistent metadata
    TARGET_NOT_FOUND = "target_not_found"  # the signed targets do not list the named model
    HASH_MISMATCH = "hash_mismatch"  # whole file differs from the signed sha256
    LENGTH_MISMATCH = "length_mismatch"  # whole file differs from the signed length
    CHUNK_HASH_MISMATCH = "chunk_hash_mismatch"  # a chunk kept failing its signed sha256
    # intent
    VERSION_ROLLBACK = "version_rollback"  # older than the installed version
    WRONG_DEVICE_CLASS = "wrong_device_class"
    WRONG_RUNTIME = "wrong_runtime"
    MANIFEST_MISMATCH = "manifest_mismatch"  # command and signed manifest disagree
    # health
    HEALTH_CHECK_FAILED = "health_check_failed"  # before activation: staged model discarded
    PROBATION_FAILED = "probation_failed"  # after activation: rolled back to previous
    ROLLBACK_REQUESTED = "rollback_requested"  # the hub asked for a rollback
    # transport
    FETCH_TIMEOUT = "fetch_timeout"  # the hub did not answer after every retry
    HUB_ERROR = "hub_error"  # the hub answered a fetch with an error
    STORAGE_ERROR = "storage_error"  # the device could not write its files
    BUSY = "busy"  # a newer deployment or a rollback command superseded this one
    NO_ROOM = "no_room"  # the model would not fit the device's memory budget beside the others
    # director (signed commands)
    UNSIGNED_COMMAND = "unsigned_command"  # a deploy/rollback command with no signature
    UNKNOWN_KEY = "unknown_key"  # signed by no key the device's trusted root lists
    WRONG_DEVICE = "wrong_device"  # a command signed for another device
    COMMAND_EXPIRED = "command_expired"  # a command past its expiry
    COMMAND_REPLAYED = "command_replayed"  # a command id this device has already seen
    COMMAND_INVALID = "command_invalid"  # malformed signatures or an expiry too far out
    # data capture (docs/capture.md)
    CAPTURE_EMPTY = "capture_empty"  # the capture ended without a row of its model
    UPLOAD_INCOMPLETE = "upload_incomplete"  # hub: chunks still missing at the deadline
    UPLOAD_INVALID = "upload_invalid"  # hub: an upload whose manifest or bytes do not add up
    # trust, added later
    METADATA_MISMATCH = "metadata_mismatch"  # a role's file is not the one the role above
    # it signed (length or hashes): mix-and-match
    # data capture, added later (docs/capture.md "Resuming an upload")
    UPLOAD_NO_ROOM = "upload_no_room"  # the sample would not fit the device's upload disk bound
