"""The protocol's one error: a message that does not follow the protocol (docs/protocol.md).

Every part of the protocol raises it with a stable ``reason``, so a receiver can count
and drop bad input without crashing.

Exceptions::

    ProtocolError(reason, detail)
        too_large        an envelope, blob or upload chunk over its size limit
        bad_json         an envelope that is not JSON
        bad_envelope     not an object; an unknown type; a bad id, ts or body
        bad_version      an envelope of another protocol version
        unexpected_type  a type not allowed on the topic it came on
        bad_body         a body that does not match the schema of its type
        bad_topic        a topic name outside ``ef/v1/dev/{id}/{kind}``
        bad_blob         a malformed blob
        bad_upload       a malformed upload chunk
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that does not follow the protocol.

    Attributes:
        reason: a stable, short code (``bad_json``, ``bad_envelope``, ``bad_body``, ...).
        detail: what exactly was wrong, for the log line.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
