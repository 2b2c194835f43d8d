"""Message bodies: the schema of each envelope type's body, and the limits it is held to.

A schema maps a field to ``(checker, required)``. Checkers are tiny predicates: the
messages are small and frequent, so this stays cheaper than a general validation
library. :func:`validate_body` applies a schema and raises :class:`ProtocolError`
(reason ``bad_body``) naming the first field that is missing or wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from shared.drift import DriftError, DriftSketch
from shared.latency import N_BUCKETS
from shared.protocol_error import ProtocolError
from shared.renewal import ANSWER_SCHEMA, HINT_SCHEMA, REQUEST_SCHEMA
from shared.topics import is_fanout_topic

# Deployment stages a device reports on `events`, in the order they happen.
STAGES: Final = (
    "received",
    "downloading",
    "verified",
    "staged",
    "activated",
    "healthy",
    "rolled_back",
    "failed",
    "refused",  # a command the device would not act on (bad signature, expired, replayed)
)
TERMINAL_STAGES: Final = frozenset({"healthy", "rolled_back", "failed", "refused"})

MAX_CHUNK_BYTES: Final = 64 * 2**10  # bytes (DESIGN §8: keeps the broker's memory flat)
MAX_UINT: Final = 2**63  # unsigned fields stay below it: a SQL BIGINT holds them
LATENCY_BUCKETS: Final = N_BUCKETS  # shared/latency.py: buckets of a LatencyHistogram
# Live accuracy / error of labelled predictions (docs/telemetry.md)
MAX_OTHER_VERSIONS: Final = 8  # entries of a telemetry window's ``other_versions``
# a window's sum of absolute or squared errors stays below it: the hub adds up to
# 500,000 windows of them and still gets a finite float (the agent refuses a label
# beyond float32's range, so one error squared is < 5e77)
MAX_ERR_SUM: Final = 1e200

# Data capture (docs/capture.md): limits a receiver checks before it trusts a size.
MAX_CAPTURE_ROWS: Final = 100_000  # rows one capture command may ask for
MAX_CAPTURE_S: Final = 7 * 86400.0  # seconds a capture may run
MAX_CAPTURE_WINDOWS: Final = 10_000  # telemetry windows a capture may run
MAX_UPLOAD_BYTES: Final = 16 * 2**20  # bytes of one device's upload (<= 256 chunks of 64 KiB)
MAX_UPLOAD_ARRAYS: Final = 16  # arrays in an upload's schema
MAX_PROBATION_S: Final = 86400.0  # seconds a deploy command may ask a probation to last
UPLOAD_DTYPES: Final = frozenset({"float32", "float64", "int32", "int64"})  # little-endian

Check = Callable[[Any], bool]
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HIST_KEYS: Final = frozenset(str(i) for i in range(LATENCY_BUCKETS))

# --------------------------------------------------------------------------- checkers


def is_number(x: Any) -> bool:
    """A finite JSON number (not a bool, not NaN or infinite, and one a float can hold)."""
    if type(x) is float:  # the common case first: the hub checks ~10 numbers a message
        return math.isfinite(x)
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond a float's range
        return False


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_nonneg_int(x: Any) -> bool:
    """An unsigned JSON integer below :data:`MAX_UINT` (not a bool)."""
    if type(x) is int:  # the common case first (bool is not int here)
        return 0 <= x < MAX_UINT
    return _is_int(x) and 0 <= x < MAX_UINT


def is_text(x: str) -> bool:
    """No lone surrogates (JSON escapes can carry them; no database or UTF-8 can)."""
    return x.isascii() or not _SURROGATE.search(x)


def is_short_str(x: Any) -> bool:
    """A non-empty string of at most 256 characters, without lone surrogates."""
    return isinstance(x, str) and 0 < len(x) <= 256 and is_text(x)


def _opt_str(x: Any) -> bool:
    return x is None or (isinstance(x, str) and len(x) <= 4096 and is_text(x))


def _opt_name(x: Any) -> bool:
    """None, or a model name as the registry allows them (at most 64 characters)."""
    return x is None or (isinstance(x, str) and 0 < len(x) <= 64 and is_text(x))


def _opt_number(x: Any) -> bool:
    return x is None or is_number(x)


def _opt_nonneg_int(x: Any) -> bool:
    return x is None or is_nonneg_int(x)


def _one_of(*values: str) -> Check:
    return lambda x: x in values


def _bounded(check: Check, low: float, high: float) -> Check:
    return lambda x: check(x) and low <= x <= high


def _models_map(x: Any) -> bool:
    return isinstance(x, dict) and all(
        is_short_str(k) and isinstance(v, dict) and is_nonneg_int(v.get("version"))
        for k, v in x.items()
    )


def _last_event(x: Any) -> bool:
    """A state message's ``last``: the device's latest deployment event, for reconciliation."""
    return (
        isinstance(x, dict)
        and is_short_str(x.get("deployment"))
        and is_short_str(x.get("model"))
        and is_nonneg_int(x.get("version"))
        and x.get("stage") in STAGES
        and _opt_str(x.get("reason"))
        and is_number(x.get("ts"))
    )


def _latency(x: Any) -> bool:
    # unrolled (no generator): the hub checks one in every telemetry window
    return (
        isinstance(x, dict)
        and is_number(x.get("p50"))
        and is_number(x.get("p95"))
        and is_number(x.get("p99"))
    )


def _latency_hist(x: Any) -> bool:
    """A sparse latency histogram: ``{"bucket": count}``, buckets 0..LATENCY_BUCKETS-1.

    Set operations, not a loop per bucket: the hub checks one in every telemetry window.
    """
    if not isinstance(x, dict) or not x.keys() <= _HIST_KEYS:
        return False
    counts = x.values()
    return not counts or (
        set(map(type, counts)) == {int} and min(counts) >= 0 and max(counts) < MAX_UINT
    )


_err_sum: Final = _bounded(is_number, 0.0, MAX_ERR_SUM)
_VERSION_LABEL_KEYS: Final = frozenset(
    {"model", "version", "labelled", "correct", "abs_err_sum", "sq_err_sum"}
)


def _version_labels(x: Any) -> bool:
    """One ``other_versions`` entry: a model version's labels joined in this window."""
    return (
        isinstance(x, dict)
        and x.keys() <= _VERSION_LABEL_KEYS
        and is_short_str(x.get("model"))
        and is_nonneg_int(x.get("version"))
        and is_nonneg_int(x.get("labelled"))
        and ("correct" not in x or (is_nonneg_int(x["correct"]) and x["correct"] <= x["labelled"]))
        and ("abs_err_sum" not in x or _err_sum(x["abs_err_sum"]))
        and ("sq_err_sum" not in x or _err_sum(x["sq_err_sum"]))
    )


def _other_versions(x: Any) -> bool:
    return (
        isinstance(x, list)
        and 0 < len(x) <= MAX_OTHER_VERSIONS
        and all(_version_labels(v) for v in x)
        and len({(v["model"], v["version"]) for v in x}) == len(x)
    )


def _chunk_list(x: Any) -> bool:
    return (
        isinstance(x, list) and 0 < len(x) <= 256 and all(is_nonneg_int(i) and i < 2**20 for i in x)
    )


def _drift_sketch(x: Any) -> bool:
    """A well-formed drift sketch (shared/drift.py checks counts, moments and sizes)."""
    try:
        DriftSketch.from_dict(x)
    except DriftError:
        return False
    return True


def _sha256_hex(x: Any) -> bool:
    return isinstance(x, str) and bool(_HEX64.fullmatch(x))


def _array_spec(x: Any) -> bool:
    """``{"name": short, "dtype": one of UPLOAD_DTYPES, "shape": [uint, ...]}``."""
    return (
        isinstance(x, dict)
        and set(x) == {"name", "dtype", "shape"}
        and is_short_str(x["name"])
        and x["dtype"] in UPLOAD_DTYPES
        and isinstance(x["shape"], list)
        and 1 <= len(x["shape"]) <= 4
        and all(is_nonneg_int(d) and d <= MAX_UPLOAD_BYTES for d in x["shape"])
    )


def _upload_schema(x: Any) -> bool:
    return (
        isinstance(x, list)
        and 0 < len(x) <= MAX_UPLOAD_ARRAYS
        and all(_array_spec(a) for a in x)
        and len({a["name"] for a in x}) == len(x)
    )


def _chunk_hashes(x: Any) -> bool:
    limit = MAX_UPLOAD_BYTES // MAX_CHUNK_BYTES
    return isinstance(x, list) and 0 < len(x) <= limit and all(_sha256_hex(h) for h in x)


# --------------------------------------------------------------------------- schemas

_COMMAND_FIELDS: Final[Mapping[str, tuple[Check, bool]]] = {
    "device": (is_short_str, False),
    "expires": (is_number, False),
    "root_version": (is_nonneg_int, False),
}

BODY_SCHEMAS: Final[Mapping[str, Mapping[str, tuple[Check, bool]]]] = {
    "state": {
        "status": (_one_of("online", "offline"), True),
        "device_class": (is_short_str, False),
        "runtime": (is_short_str, False),
        "agent_version": (is_short_str, False),
        "root_version": (is_nonneg_int, False),
        "models": (_models_map, False),
        # the latest deployment event the device reported: an outcome lost while the
        # hub was away is read back from this retained message (docs/rollouts.md)
        "last": (_last_event, False),
    },
    "event": {
        "deployment": (is_short_str, True),
        "model": (is_short_str, True),
        "version": (is_nonneg_int, True),
        "stage": (_one_of(*STAGES), True),
        "reason": (_opt_str, False),
        "detail": (_opt_str, False),
        "from_version": (_opt_nonneg_int, False),
        # on activated: the probation's terms (the deploy command's, or the manifest's)
        "probation_s": (_bounded(is_number, 0, MAX_PROBATION_S), False),
        "probation_min_inferences": (is_nonneg_int, False),
        "probation_max_s": (_bounded(is_number, 0, 100 * MAX_PROBATION_S), False),
        # on a probation's outcome: the live traffic it judged
        "inferences": (is_nonneg_int, False),
        "errors": (is_nonneg_int, False),
    },
    "telemetry": {
        "seq": (is_nonneg_int, True),
        "start": (is_number, True),
        "end": (is_number, True),
        "model": (_opt_name, False),
        "version": (_opt_nonneg_int, False),
        "count": (is_nonneg_int, True),
        "errors": (is_nonneg_int, True),
        "latency_us": (_latency, True),
        "latency_hist": (_latency_hist, False),  # sparse {bucket: count} (docs/protocol.md)
        "spool_dropped": (is_nonneg_int, False),  # windows the device's spool dropped, ever
        "labelled": (is_nonneg_int, False),
        "correct": (is_nonneg_int, False),
        # a regressor's labels (docs/telemetry.md): sums of |value - label| and its square
        "abs_err_sum": (_err_sum, False),
        "sq_err_sum": (_err_sum, False),
        # labels joined in this window to predictions of other model versions
        "other_versions": (_other_versions, False),
        "cpu_pct": (_opt_number, False),
        "rss_bytes": (_opt_nonneg_int, False),
    },
    "drift": {
        "seq": (is_nonneg_int, True),
        "model": (is_short_str, True),
        "version": (is_nonneg_int, True),
        "sketch": (_drift_sketch, True),
    },
    "fetch_meta": {
        "req": (is_short_str, True),
        "root_version": (is_nonneg_int, True),
        # the target the device installs: the answer adds its model's delegated role and
        # its manifest (ADR 0037); without it, the top-level roles only (a root refresh)
        "target": (is_short_str, False),
        # the top-level targets version the device trusts: left out of the answer if current
        "targets_version": (is_nonneg_int, False),
    },
    "fetch_chunks": {
        "req": (is_short_str, True),
        "target": (is_short_str, True),
        "chunks": (_chunk_list, True),
    },
    # deploy and rollback also carry the fields shared/director.py signs: optional here
    # so that an unsigned or stripped command is refused by the director check, by name
    "deploy": {
        "deployment": (is_short_str, True),
        "model": (is_short_str, True),
        "version": (is_nonneg_int, True),
        "target": (is_short_str, True),
        # the probation the rollout asks for, instead of the manifest's (optional)
        "probation_s": (_bounded(is_number, 0, MAX_PROBATION_S), False),
        "probation_min_inferences": (is_nonneg_int, False),
        # the fan-out topic the target's chunks are published on (optional: docs/protocol.md)
        "fanout": (is_fanout_topic, False),
        **_COMMAND_FIELDS,
    },
    "rollback": {
        "deployment": (is_short_str, True),
        "model": (is_short_str, True),
        "version": (is_nonneg_int, True),
        **_COMMAND_FIELDS,
    },
    # a signed command, like deploy (docs/capture.md)
    "capture": {
        "capture": (is_short_str, True),
        "model": (is_short_str, True),
        "max_rows": (_bounded(is_nonneg_int, 1, MAX_CAPTURE_ROWS), True),
        "duration_s": (_bounded(is_number, 0.001, MAX_CAPTURE_S), False),
        "windows": (_bounded(is_nonneg_int, 1, MAX_CAPTURE_WINDOWS), False),
        "seed": (is_nonneg_int, False),
        **_COMMAND_FIELDS,
    },
    "capture_status": {
        "capture": (is_short_str, True),
        "model": (is_short_str, True),
        "status": (_one_of("started", "uploaded", "failed", "refused"), True),
        "reason": (_opt_str, False),
        "detail": (_opt_str, False),
        "rows": (is_nonneg_int, False),
    },
    # the hub asks again for the chunks of an upload it lacks, or (no chunks) for its
    # manifest (not signed: ADR 0039)
    "upload_ask": {
        "capture": (is_short_str, True),
        "chunks": (_chunk_list, False),
    },
    # the hub has an outcome for the upload: the device may delete its copy
    "upload_done": {
        "capture": (is_short_str, True),
        "status": (_one_of("verified", "failed"), True),
        "reason": (_opt_str, False),
    },
    "upload_manifest": {
        "capture": (is_short_str, True),
        "model": (is_short_str, True),
        "version": (is_nonneg_int, True),
        "rows": (_bounded(is_nonneg_int, 1, MAX_CAPTURE_ROWS), True),
        "labelled": (_bounded(is_nonneg_int, 0, MAX_CAPTURE_ROWS), True),
        "schema": (_upload_schema, True),
        "length": (_bounded(is_nonneg_int, 1, MAX_UPLOAD_BYTES), True),
        "sha256": (_sha256_hex, True),
        "chunk_size": (_bounded(is_nonneg_int, 1, MAX_CHUNK_BYTES), True),
        "chunks": (_chunk_hashes, True),
    },
    # certificate renewal (shared/renewal.py)
    "renew_request": REQUEST_SCHEMA,
    "renew_answer": ANSWER_SCHEMA,
    "renew_hint": HINT_SCHEMA,
}


def validate_body(msg_type: str, body: Mapping[str, Any]) -> None:
    """Check ``body`` against the schema of ``msg_type``.

    Raises:
        ProtocolError: ``bad_envelope`` for an unknown type, ``bad_body`` for a field
            that is missing or fails its check.
    """
    schema = BODY_SCHEMAS.get(msg_type)
    if schema is None:
        raise ProtocolError("bad_envelope", f"unknown type {msg_type!r}")
    for field, (check, required) in schema.items():
        if field not in body:
            if required:
                raise ProtocolError("bad_body", f"{msg_type}: missing {field!r}")
            continue
        if not check(body[field]):
            raise ProtocolError("bad_body", f"{msg_type}: invalid {field!r}: {body[field]!r:.80}")
