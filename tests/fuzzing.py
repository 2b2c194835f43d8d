"""A seeded fuzzer for the wire protocol: seed corpus, mutators, hostile values.

tests/test_fuzz.py feeds what this module makes to the agent core, the device adapter
and the hub. Everything comes from a ``random.Random`` the caller seeds, so a run is the
same on every machine and a failing case is found again by its seed and index.

The seeds are built with the library's own encoders at test time, so the corpus follows
the wire format when it changes. Commands are the one part that depends on how they are
signed: :func:`command_seeds` makes them, and is the place to adjust.

:meth:`Fuzzer.payload` mixes four kinds of payload (and a few intact seeds):

- random bytes;
- a seed mutated at the byte level (bit flips, inserts, deletes, truncation, splicing two
  seeds, duplicated ranges, JSON tokens, numbers and strings swapped for hostile ones);
- a JSON seed re-serialised with a hostile value in one of its fields, a field missing or
  an extra one (wrong types, huge/negative/float/NaN numbers, deep nesting, long strings,
  unicode);
- a blob with a hostile header (bad magic, header length past the end, header not JSON,
  wrong kinds, chunk index out of range, huge or negative).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

from hypothesis import strategies as st

from shared import protocol
from shared.director import sign_command

# --------------------------------------------------------------------------- hostile values

INTERESTING_INTS: tuple[int, ...] = (
    0,
    1,
    -1,
    2,
    255,
    256,
    2**16,
    2**20 - 1,  # the last chunk index a fetch may name
    2**20,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,  # not exact as a float
    2**63 - 1,
    2**63,  # past SQLite's INTEGER
    2**64,
    -(2**63),
    10**300,
    10**400,  # past a float
)
INTERESTING_FLOATS: tuple[float, ...] = (
    0.5,
    -0.0,
    1.0,
    -1.5,
    1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
)
LONG_STRING_CHARS = 1 << 20  # 1 MiB: past every size limit; made sparingly
HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    "a",
    "x" * 64,
    "x" * 65,
    "x" * 256,
    "x" * 257,  # one past a short string
    "x" * 4097,  # one past a text field
    "\x00",
    "\ud800",  # a lone surrogate: valid in JSON text, not encodable as UTF-8
    "\udfff\ud800",
    "\ufeff",
    "\u202e",  # right-to-left override
    "é",
    "😀" * 100,
    "Ω" * 300,
    "\n",
    "a\nb",
    "dev-1\n",
    "../../etc/passwd",
    "/",
    "+",
    "#",
    "ef/v1/dev/x/state",
    "%s%s%n",
    "null",
    "NaN",
    "1",
    "0",
    "-1",
    "chunk",
    "meta",
    "error",
    "deploy",
    "rollback",
    "online",
)

# JSON text json.dumps cannot write: placed as a marker string, swapped in afterwards.
_RAW: dict[str, bytes] = {
    "@@bigint@@": b"7" * 4400,  # more digits than Python parses into an int by default
    "@@negbig@@": b"-" + b"9" * 5000,
    "@@1e999@@": b"1e999",  # a JSON number that overflows a float
    "@@neg0@@": b"-0",
    "@@deep@@": b"[" * 5000 + b"]" * 5000,  # deeper than json's recursion limit
    "@@deep900@@": b"[" * 900 + b"]" * 900,  # deep, but within it
    "@@deepobj@@": b'{"a":' * 2000 + b"1" + b"}" * 2000,
}
_RAW_QUOTED = {json.dumps(k).encode(): v for k, v in _RAW.items()}
_RAW_PATTERN = re.compile(b"|".join(re.escape(k) for k in _RAW_QUOTED))

JSON_TOKENS: tuple[bytes, ...] = (
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b"\\",
    b"null",
    b"true",
    b"false",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-0",
    b"0.0",
    b"18446744073709551616",
    b'"\\ud800"',
    b'"\\u0000"',
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
    b"\x00",
    b'"x":1',
    b"[[[[[[[[",
    b'{"v":1}',
    b"EFB1",
)
_INTERESTING_BYTES = b'\x00\xff\x7f\x80"\\{}[],:09-e.'
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STRING = re.compile(rb'"[^"\\]{0,64}"')
_NUMBER_TOKENS: tuple[bytes, ...] = (
    b"-1",
    b"0",
    b"1.5",
    b"-0",
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b'"1"',
    b"[1]",
    b"1048576",
    b"9223372036854775808",
    b"18446744073709551616",
    b"1" + b"0" * 400,
    b"7" * 4400,
)


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-able value chosen to break a validator (markers of :data:`_RAW` included)."""
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(INTERESTING_INTS)
    if roll < 0.35:
        return rng.choice(INTERESTING_FLOATS)
    if roll < 0.6:
        return rng.choice(HOSTILE_STRINGS)
    if roll < 0.7:
        return rng.choice((None, True, False, [], {}, "1", [0], {"version": 1}))
    if roll < 0.78:
        return rng.choice(tuple(_RAW))
    if roll < 0.783:
        return "y" * LONG_STRING_CHARS
    if depth >= 3:
        return rng.choice(INTERESTING_INTS)
    if roll < 0.9:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        str(hostile_value(rng, 3)): hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))
    }


def dump_json(value: Any, rng: random.Random | None = None) -> bytes:
    """JSON text for ``value``, NaN and Infinity allowed, markers swapped for raw text."""
    ascii_only = rng.random() < 0.5 if rng is not None else True
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True, separators=(",", ":"))
    data = text.encode("utf-8", "surrogatepass")
    if b"@@" in data:
        data = _RAW_PATTERN.sub(lambda m: _RAW_QUOTED[m.group(0)], data)
    return data


# --------------------------------------------------------------------------- byte mutation


class Fuzzer:
    """Makes payloads from a seed corpus; one ``random.Random`` decides everything."""

    def __init__(self, seed: int | str, corpus: Sequence[bytes]) -> None:
        if not corpus:
            raise ValueError("the fuzzer needs at least one seed")
        self.rng = random.Random(seed)
        self.corpus = list(corpus)
        self._ops: tuple[Callable[[bytes], bytes], ...] = (
            self._flip_bit,
            self._flip_bit,
            self._set_byte,
            self._insert_random,
            self._insert_token,
            self._delete_range,
            self._truncate,
            self._splice,
            self._duplicate_range,
            self._swap_number,
            self._swap_number,
            self._swap_string,
            self._blob_length,
        )

    def payload(self) -> bytes:
        """The next payload of the mix: random, mutated, hostile JSON or hostile blob."""
        roll = self.rng.random()
        if roll < 0.08:
            return self.random_bytes()
        if roll < 0.12:
            return self.rng.choice(self.corpus)  # intact: the valid path runs too
        seed = self.rng.choice(self.corpus)
        if roll < 0.72:
            return self.mutate(seed)
        if seed.startswith(protocol.BLOB_MAGIC):
            return hostile_blob(self.rng, seed)
        return hostile_json(self.rng, seed)

    def random_bytes(self) -> bytes:
        size = self.rng.choice((0, 1, 4, 8, 9, 16, 64, 300, 4096))
        data = self.rng.randbytes(size)
        if self.rng.random() < 0.3:  # random bytes behind a valid blob prefix
            data = protocol.BLOB_MAGIC + struct.pack(">I", self.rng.randrange(64)) + data
        return data

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 5))):
            data = self.rng.choice(self._ops)(data)
        return data

    # -- operators; each returns new bytes (an empty input stays small)

    def _pos(self, data: bytes) -> int:
        # Mostly inside the first 2 KiB: the envelope or the blob header lives there.
        limit = min(len(data), 2048) if self.rng.random() < 0.9 else len(data)
        return self.rng.randrange(limit + 1)

    def _flip_bit(self, data: bytes) -> bytes:
        if not data:
            return b"\x01"
        i = min(self._pos(data), len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1 :]

    def _set_byte(self, data: bytes) -> bytes:
        if not data:
            return b"\x00"
        i = min(self._pos(data), len(data) - 1)
        return data[:i] + bytes([self.rng.choice(_INTERESTING_BYTES)]) + data[i + 1 :]

    def _insert_random(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.randbytes(self.rng.randrange(1, 9)) + data[i:]

    def _insert_token(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.choice(JSON_TOKENS) + data[i:]

    def _delete_range(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + data[i + self.rng.randrange(1, 17) :]

    def _truncate(self, data: bytes) -> bytes:
        return data[: self._pos(data)]

    def _splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.corpus)
        return data[: self._pos(data)] + other[self._pos(other) :]

    def _duplicate_range(self, data: bytes) -> bytes:
        i = self._pos(data)
        j = min(len(data), i + self.rng.randrange(1, 65))
        return data[:j] + data[i:j] * self.rng.randrange(1, 4) + data[j:]

    def _swap_number(self, data: bytes) -> bytes:
        matches = list(_NUMBER.finditer(data, 0, 2048))
        if not matches:
            return self._insert_token(data)
        m = self.rng.choice(matches)
        return data[: m.start()] + self.rng.choice(_NUMBER_TOKENS) + data[m.end() :]

    def _swap_string(self, data: bytes) -> bytes:
        matches = list(_STRING.finditer(data, 0, 2048))
        if not matches:
            return self._insert_token(data)
        m = self.rng.choice(matches)
        value = dump_json(self.rng.choice(HOSTILE_STRINGS), self.rng)
        return data[: m.start()] + value + data[m.end() :]

    def _blob_length(self, data: bytes) -> bytes:
        """A blob's u32 header length set off by a little or by a lot."""
        if not data.startswith(protocol.BLOB_MAGIC) or len(data) < 8:
            return self._flip_bit(data)
        (hlen,) = struct.unpack_from(">I", data, 4)
        new = self.rng.choice(
            (hlen - 1, hlen + 1, 0, len(data), len(data) - 7, 2**32 - 1, 16 * 2**10 + 1)
        )
        return data[:4] + struct.pack(">I", max(0, new) % 2**32) + data[8:]


# --------------------------------------------------------------------------- structured


def hostile_json(rng: random.Random, seed: bytes) -> bytes:
    """``seed`` (a JSON envelope) with one or two fields made hostile, dropped or added."""
    env = json.loads(seed)
    for _ in range(rng.choice((1, 1, 2))):
        where = env if rng.random() < 0.35 or not isinstance(env.get("body"), dict) else env["body"]
        keys = list(where)
        roll = rng.random()
        if roll < 0.65 and keys:
            where[rng.choice(keys)] = hostile_value(rng)
        elif roll < 0.8 and keys:
            del where[rng.choice(keys)]
        else:
            where[str(hostile_value(rng, 3))[:80]] = hostile_value(rng)
    if rng.random() < 0.03:
        env = rng.choice((hostile_value(rng), [env], env.get("body")))
    return dump_json(env, rng)


# Values each of a right type for some report field, and each hostile to a database:
# past SQLite's INTEGER, past a float, non-finite, unencodable, long, nested.
TYPED_HOSTILE: tuple[Any, ...] = (
    2**63,
    2**64,
    10**300,
    0,
    float("inf"),
    float("-inf"),
    1e308,
    -0.0,
    5e-324,
    "\ud800",
    "\x00",
    "x" * 256,
    "😀" * 64,
    "y" * 4096,
    None,
    "online",
    "offline",
    "healthy",
    {"p50": float("inf"), "p95": 2**64, "p99": -1e308},
    {"m": {"version": 2**64, "sha256": [[{"deep": "\ud800"}]]}},
    {"\ud800": {"version": 1, "sha256": float("nan")}},
    {"": {"version": 1}},
    {"m": {"version": 1, "sha256": "x" * 100_000}},
    [2**20 - 1],
)


def hostile_body(rng: random.Random, seed: bytes, valid: Callable[[str, str, Any], bool]) -> bytes:
    """``seed`` (a JSON envelope) with hostile values in its body that still pass ``valid``.

    ``valid(type, field, value)`` says whether the schema allows a value; 1 in 4 fields
    gets any hostile value instead, and extra fields get anything.
    """
    env = json.loads(seed)
    body = env["body"]
    for _ in range(rng.choice((1, 2, 3))):
        field = rng.choice([*body, "extra", "x" * 300])
        if field in body and rng.random() < 0.75:
            candidates = [v for v in TYPED_HOSTILE if valid(env["type"], field, v)]
            body[field] = rng.choice(candidates) if candidates else hostile_value(rng)
        else:
            body[field] = hostile_value(rng)
    if rng.random() < 0.2:
        env["ts"] = rng.choice((float("inf"), 1e308, 0, -1, 2**63, "@@1e999@@"))
    return dump_json(env, rng)


def mutate_tree(rng: random.Random, value: Any) -> Any:
    """``value`` (parsed JSON) with one node somewhere inside replaced, dropped or added."""
    if not isinstance(value, (dict, list)) or not value or rng.random() < 0.15:
        return hostile_value(rng)
    if isinstance(value, dict):
        key = rng.choice(list(value))
        roll = rng.random()
        if roll < 0.15:
            del value[key]
        elif roll < 0.25:
            value[str(hostile_value(rng, 3))[:40]] = hostile_value(rng)
        else:
            value[key] = mutate_tree(rng, value[key])
        return value
    i = rng.randrange(len(value))
    value[i] = mutate_tree(rng, value[i])
    return value


def mutate_metadata(fuzzer: Fuzzer, files: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """TUF metadata files with one of them damaged, renamed, dropped or duplicated."""
    rng = fuzzer.rng
    out = list(files)
    i = rng.randrange(len(out))
    name, data = out[i]
    roll = rng.random()
    if roll < 0.4:
        out[i] = (name, fuzzer.mutate(data))
    elif roll < 0.8:
        out[i] = (name, dump_json(mutate_tree(rng, json.loads(data)), rng))
    elif roll < 0.87:
        del out[i]
    elif roll < 0.94:
        other = rng.choice(("2.root.json", "root.json", "../targets.json", "timestamp.json"))
        out.append((other, rng.choice(out)[1]))
    else:
        j = rng.randrange(len(out))
        out[i], out[j] = (name, out[j][1]), (out[j][0], data)
    return out


def hostile_blob(rng: random.Random, seed: bytes) -> bytes:
    """A blob built from ``seed`` with a hostile header, prefix or data."""
    blob = protocol.decode_blob(seed)  # the seeds are valid blobs
    header: dict[str, Any] = dict(blob.header)
    data = blob.data
    roll = rng.random()
    if roll < 0.45:
        field = rng.choice((*header, "kind", "index", "files", "req", "extra"))
        header[field] = _hostile_header_value(rng, field, header)
    elif roll < 0.55:
        header.pop(rng.choice(list(header)), None)
    elif roll < 0.65:
        data = rng.choice(
            (b"", data + rng.randbytes(rng.randrange(1, 9)), data[:-1], b"\x00" * 70_000)
        )
    head: bytes
    if rng.random() < 0.1:
        head = rng.choice((b"", b"{", b"not json", b"[]", b"null", b"\xff\xfe", b'"chunk"'))
    else:
        head = dump_json(header, rng)
    magic = (
        protocol.BLOB_MAGIC if rng.random() < 0.9 else rng.choice((b"EFB2", b"efb1", b"\0\0\0\0"))
    )
    hlen = len(head)
    if rng.random() < 0.15:
        hlen = rng.choice((hlen + 1, hlen - 1, 0, 2**32 - 1, 16 * 2**10 + 1, hlen + len(data) + 1))
    return magic + struct.pack(">I", max(0, hlen) % 2**32) + head + data


def _hostile_header_value(rng: random.Random, field: str, header: Mapping[str, Any]) -> Any:
    if field == "kind" and rng.random() < 0.6:
        return rng.choice(("chunk", "meta", "error", "", "CHUNK", None, 1, ["chunk"]))
    if field == "index" and rng.random() < 0.6:
        return rng.choice((-1, 2**20, 2**31, 2**63, 2**64, 10**30, 1.0, "0", True, None, 99))
    if field == "files" and rng.random() < 0.6:
        files = header.get("files") or [["a", 1]]
        return rng.choice(
            (
                [[n, -1] for n, _ in files],
                [[n, ln + 1] for n, ln in files],
                [*files, ["extra", 0]],
                [[n] for n, _ in files],
                [[ln, n] for n, ln in files],
                [["", 0]],
                [["a", 2**63]],
                {"a": 1},
                [],
            )
        )
    return hostile_value(rng)


def random_topic(rng: random.Random) -> str:
    """A topic a broker could deliver: right-looking, wrong by one part, or noise."""
    device = rng.choice(
        ("dev-1", "press-17", "a", "A" * 64, "A" * 65, "-x", "x y", "x\n", "dev-1\n", "", "+", "é")
    )
    kind = rng.choice((*protocol.KINDS, "State", "", "cmdx", "#", "state\n"))
    roll = rng.random()
    if roll < 0.6:
        return f"{protocol.ROOT}/{device}/{kind}"
    if roll < 0.8:
        parts = [*protocol.ROOT.split("/"), device, kind]
        i = rng.randrange(len(parts))
        parts[i] = rng.choice(("", "x", "ef", "v2", "+", "#", "dev", parts[i] * 2))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts) + 1), "extra")
        return "/".join(parts)
    return rng.choice(HOSTILE_STRINGS) + "/" * rng.randrange(6)


# --------------------------------------------------------------------------- seed corpus


@dataclass(frozen=True)
class CommandSpec:
    """One command of the seed corpus: ``type`` deploy or rollback."""

    type: str
    deployment: str
    model: str
    version: int


def command_seeds(
    signers: Sequence[Any],
    device_id: str,
    specs: Sequence[CommandSpec],
    *,
    now: float,
    root_version: int = 1,
    salt: str = "",
) -> list[bytes]:
    """The ``cmd`` payloads the fuzzer starts from: each spec signed for ``device_id``.

    The one place that knows how a command is made on the wire: adjust it when the
    command format changes. Also returns an unsigned deploy, one signed for another
    device and one already expired, so the refusal paths have seeds too. Command ids are
    derived from ``salt`` and the spec, so the seeds are the same bytes on every run.
    """

    def body(spec: CommandSpec) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deployment": spec.deployment,
            "model": spec.model,
            "version": spec.version,
        }
        if spec.type == "deploy":
            out["target"] = f"{spec.model}/{spec.version}/model.onnx"
        return out

    def signed(spec: CommandSpec, device: str, at: float) -> bytes:
        key = f"{salt}|{spec}|{device}|{at}".encode()
        with mock.patch.object(protocol, "new_id", lambda: hashlib.sha256(key).hexdigest()[:32]):
            return sign_command(
                signers,
                spec.type,
                body(spec),
                device_id=device,
                now=at,
                ttl_s=3600.0,
                root_version=root_version,
            )

    seeds = [signed(spec, device_id, now) for spec in specs]
    first = specs[0]
    seeds.append(protocol.encode(first.type, body(first), ts=now, msg_id="unsigned"))
    seeds.append(signed(first, "other-device", now))
    seeds.append(signed(first, device_id, now - 7200.0))
    return seeds


def report_seeds(now: float) -> dict[str, list[bytes]]:
    """Valid envelopes of every device-to-hub type, by topic kind (fixed message ids)."""

    def enc(msg_type: str, body: dict[str, Any], ts: float) -> bytes:
        return protocol.encode(msg_type, body, ts=ts, msg_id=f"seed-{msg_type}-{len(body)}")

    telemetry = {
        "seq": 17,
        "start": now - 10,
        "end": now,
        "model": "m",
        "version": 3,
        "count": 1200,
        "errors": 0,
        "latency_us": {"p50": 212.5, "p95": 340.0, "p99": 415.2},
        "labelled": 40,
        "correct": 38,
        "cpu_pct": 12.5,
        "rss_bytes": 88473600,
        "other_versions": [
            {"model": "m", "version": 2, "labelled": 6, "correct": 5},
            {"model": "r", "version": 1, "labelled": 4, "abs_err_sum": 2.5, "sq_err_sum": 3.25},
        ],
    }
    state = {
        "status": "online",
        "device_class": "rpi4",
        "runtime": "onnxruntime",
        "agent_version": "0.1.0",
        "root_version": 1,
        "models": {"m": {"version": 3, "sha256": "9f" * 32}},
    }
    event = {
        "deployment": "3fa2c1d09b7e",
        "model": "m",
        "version": 4,
        "stage": "rolled_back",
        "reason": "probation_failed",
        "detail": "350 errors in 1400 inferences",
        "from_version": 4,
    }
    sketch = {  # shared/drift.py: 2 rows, one feature of one bin, two classes
        "rows": 2,
        "features": [{"counts": [0, 2, 0], "n": 2, "mean": 0.5, "m2": 0.125}],
        "outputs": {"kind": "classes", "counts": [1, 1]},
    }
    upload_manifest = {  # agent/capture.py: 3 rows of 2 float32 features, one chunk
        "capture": "c1",
        "model": "m",
        "version": 3,
        "rows": 3,
        "labelled": 1,
        "schema": [{"name": "x", "dtype": "float32", "shape": [3, 2]}],
        "length": 24,
        "sha256": "ab" * 32,
        "chunk_size": 65536,
        "chunks": ["ab" * 32],
    }
    return {
        "state": [enc("state", state, ts=now), enc("state", {"status": "offline"}, ts=now)],
        "events": [enc("event", event, ts=now)],
        "telemetry": [enc("telemetry", telemetry, ts=now)],
        "drift": [enc("drift", {"seq": 1, "model": "m", "version": 3, "sketch": sketch}, ts=now)],
        "capture": [
            enc(
                "capture_status",
                {"capture": "c1", "model": "m", "status": "started", "rows": 0},
                ts=now,
            ),
            enc("upload_manifest", upload_manifest, ts=now),
        ],
        "fetch": [
            enc("fetch_meta", {"req": "dev-1:41", "root_version": 1}, ts=now),
            enc(
                "fetch_chunks",
                {"req": "dev-1:42", "target": "m/1/model.onnx", "chunks": [0, 1, 2, 99]},
                ts=now,
            ),
        ],
    }


def blob_seeds(
    req: str, target: str, chunks: Sequence[bytes], meta: Sequence[tuple[str, bytes]]
) -> list[bytes]:
    """A meta blob, one chunk blob per chunk (index = position) and an error blob."""
    seeds = [protocol.encode_meta_blob(req, list(meta))]
    for index, data in enumerate(chunks):
        header = {"kind": "chunk", "req": req, "target": target, "index": index}
        seeds.append(protocol.encode_blob(header, data))
    error = {"kind": "error", "req": req, "reason": "not_found", "detail": f"no chunk of {target}"}
    seeds.append(protocol.encode_blob(error))
    return seeds


# --------------------------------------------------------------------------- hypothesis

_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(INTERESTING_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_STRINGS),
)
JSON_VALUES = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def envelopes(types: Sequence[str], fields: Mapping[str, Sequence[str]]) -> st.SearchStrategy[Any]:
    """Envelopes of ``types`` whose every field may be right, hostile or missing.

    ``fields``: the body fields of each type, to draw names a validator looks at.
    """

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg_type = draw(st.sampled_from([*types, "x", "", "DEPLOY"]))
        names = [*fields.get(msg_type, ()), "extra"]
        body = draw(
            st.dictionaries(st.sampled_from(names), JSON_VALUES, max_size=len(names)) | JSON_VALUES
        )
        env: dict[str, Any] = {
            "v": draw(st.sampled_from([1, 1, 1, 2, 0, 1.0, True, "1", None])),
            "type": msg_type,
            "id": draw(st.text(min_size=0, max_size=70) | JSON_VALUES),
            "ts": draw(st.floats(allow_nan=True) | st.integers() | JSON_VALUES),
            "body": body,
        }
        for key in draw(st.lists(st.sampled_from(list(env)), max_size=2)):
            env.pop(key, None)
        return env

    return build()


BLOB_HEADERS = st.fixed_dictionaries(
    {"kind": st.sampled_from(["chunk", "meta", "error"]) | JSON_VALUES},
    optional={
        "req": st.text(min_size=1, max_size=10) | JSON_VALUES,
        "target": st.sampled_from(["m/2/model.onnx", "m/1/model.onnx"]) | JSON_VALUES,
        "index": st.integers(min_value=-3, max_value=2**65) | JSON_VALUES,
        "files": st.lists(st.tuples(st.text(max_size=12), st.integers(-2, 40)).map(list))
        | JSON_VALUES,
        "reason": st.text(max_size=300) | JSON_VALUES,
        "detail": JSON_VALUES,
    },
)


# --------------------------------------------------------------------------- oracles
# What docs/protocol.md promises about a message that decodes, written from the doc's
# tables (not from the validator's code): "short string" = 1-256 chars, "text" = <= 4096
# chars or null, "uint" = integer >= 0 (no bool), "number" = not NaN, not bool.

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # docs: Topics
DECODE_REASONS = frozenset(
    {"too_large", "bad_json", "bad_envelope", "bad_version", "unexpected_type", "bad_body"}
)
BLOB_REASONS = frozenset({"too_large", "bad_blob"})


def _uint(x: Any) -> bool:
    return type(x) is int and x >= 0


def _opt_uint(x: Any) -> bool:
    return x is None or _uint(x)


def _short(x: Any) -> bool:
    return type(x) is str and 0 < len(x) <= 256


def _text(x: Any) -> bool:
    return x is None or (type(x) is str and len(x) <= 4096)


def _number(x: Any) -> bool:
    return type(x) in (int, float) and x == x


def _models(x: Any) -> bool:
    return type(x) is dict and all(
        _short(k) and type(v) is dict and _uint(v.get("version")) for k, v in x.items()
    )


def _latency(x: Any) -> bool:
    return type(x) is dict and all(_number(x.get(k)) for k in ("p50", "p95", "p99"))


def _chunks(x: Any) -> bool:
    return type(x) is list and 1 <= len(x) <= 256 and all(_uint(i) and i < 2**20 for i in x)


def _err_sum(x: Any) -> bool:
    return _number(x) and 0 <= x <= 1e200


def _other_versions(x: Any) -> bool:
    return (
        type(x) is list
        and 1 <= len(x) <= 8
        and all(
            type(v) is dict
            and _short(v.get("model"))
            and _uint(v.get("version"))
            and _uint(v.get("labelled"))
            and ("correct" not in v or (_uint(v["correct"]) and v["correct"] <= v["labelled"]))
            and all(_err_sum(v[k]) for k in ("abs_err_sum", "sq_err_sum") if k in v)
            for v in x
        )
    )


# type -> field -> (check, required)
DOC_BODIES: Mapping[str, Mapping[str, tuple[Callable[[Any], bool], bool]]] = {
    "state": {
        "status": (lambda x: x in ("online", "offline"), True),
        "device_class": (_short, False),
        "runtime": (_short, False),
        "agent_version": (_short, False),
        "root_version": (_uint, False),
        "models": (_models, False),
    },
    "event": {
        "deployment": (_short, True),
        "model": (_short, True),
        "version": (_uint, True),
        "stage": (lambda x: x in protocol.STAGES, True),
        "reason": (_text, False),
        "detail": (_text, False),
        "from_version": (_opt_uint, False),
    },
    "telemetry": {
        "seq": (_uint, True),
        "start": (_number, True),
        "end": (_number, True),
        "model": (_text, False),
        "version": (_opt_uint, False),
        "count": (_uint, True),
        "errors": (_uint, True),
        "latency_us": (_latency, True),
        "labelled": (_uint, False),
        "correct": (_uint, False),
        "abs_err_sum": (_err_sum, False),
        "sq_err_sum": (_err_sum, False),
        "other_versions": (_other_versions, False),
        "cpu_pct": (lambda x: x is None or _number(x), False),
        "rss_bytes": (_opt_uint, False),
    },
    "drift": {
        "seq": (_uint, True),
        "model": (_short, True),
        "version": (_uint, True),
        "sketch": (lambda x: type(x) is dict, True),
    },
    "fetch_meta": {
        "req": (_short, True),
        "root_version": (_uint, True),
        "target": (_short, False),
        "targets_version": (_uint, False),
    },
    "fetch_chunks": {"req": (_short, True), "target": (_short, True), "chunks": (_chunks, True)},
    "deploy": {
        "deployment": (_short, True),
        "model": (_short, True),
        "version": (_uint, True),
        "target": (_short, True),
    },
    "rollback": {"deployment": (_short, True), "model": (_short, True), "version": (_uint, True)},
    "capture": {"capture": (_short, True), "model": (_short, True), "max_rows": (_uint, True)},
    "capture_status": {
        "capture": (_short, True),
        "model": (_short, True),
        "status": (lambda x: x in ("started", "uploaded", "failed", "refused"), True),
        "reason": (lambda x: x is None or _text(x), False),
        "detail": (lambda x: x is None or _text(x), False),
        "rows": (_uint, False),
    },
    "upload_manifest": {
        "capture": (_short, True),
        "model": (_short, True),
        "version": (_uint, True),
        "rows": (lambda x: _uint(x) and x >= 1, True),
        "labelled": (_uint, True),
        "schema": (lambda x: type(x) is list and len(x) > 0, True),
        "length": (lambda x: _uint(x) and x >= 1, True),
        "sha256": (lambda x: type(x) is str and len(x) == 64, True),
        "chunk_size": (lambda x: _uint(x) and 1 <= x <= protocol.MAX_CHUNK_BYTES, True),
        "chunks": (lambda x: type(x) is list and len(x) > 0, True),
    },
}


def check_message(msg: protocol.Message, expect: frozenset[str]) -> None:
    """Assert that a decoded message is what the protocol doc says may be accepted."""
    assert msg.type in expect, msg.type
    assert type(msg.id) is str and 0 < len(msg.id) <= 64, msg.id
    assert type(msg.ts) is float and msg.ts == msg.ts, msg.ts
    body = msg.body
    assert type(body) is dict
    for name, (check, required) in DOC_BODIES[msg.type].items():
        if name in body:
            assert check(body[name]), f"{msg.type}.{name} = {body[name]!r:.80}"
        else:
            assert not required, f"{msg.type} without {name}"


def check_blob(blob: protocol.Blob) -> None:
    """Assert that a decoded blob is one the doc describes, and that its meta splits."""
    header = blob.header
    assert type(header) is dict and _short(header.get("req")), header
    assert blob.kind in ("chunk", "meta", "error"), blob.kind
    if blob.kind == "chunk":
        assert _short(header.get("target")) and _uint(header.get("index")), header
        assert len(blob.data) <= protocol.MAX_CHUNK_BYTES
    elif blob.kind == "error":
        assert _short(header.get("reason")), header
    else:
        files = header["files"]
        assert all(_short(name) and _uint(length) for name, length in files), files
        assert sum(length for _, length in files) == len(blob.data)
        split = protocol.split_meta_blob(blob)
        pos = 0
        expected: dict[str, bytes] = {}
        for name, length in files:
            expected[name] = blob.data[pos : pos + length]
            pos += length
        assert split == expected
