"""A device's upload of captured rows (docs/capture.md): its manifest, chunks and arrays.

A device announces its upload with an ``upload_manifest`` (length, sha256 and chunk
hashes, the schema of its arrays) and sends the bytes in chunks. Chunks that do not come
are asked for again (``upload_ask``) after a quiet interval, with backoff, a bounded
number of times (docs/capture.md "Resuming an upload", ADR 0039). Each chunk is checked
against its hash before it is written to staging; the whole upload against its length and
sha256; its arrays against the schema and the manifest's counts. The format: the arrays
raw, little-endian, C order, one after another in the schema's order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.data.captured_rows import NO_LABEL
from hub.store.tables import Capture

__all__ = ["Upload", "check_arrays", "chunk_problem", "manifest_problem", "parse_upload"]


MAX_ASK_BACKOFF: Final = 8  # quiet intervals between two asks, at most


@dataclass
class Upload:
    """One device's upload in progress: its manifest and the chunks verified so far.

    ``next_ask``: when the hub asks for what is missing unless a chunk comes first;
    ``asks``: asks since the last chunk that came.
    """

    manifest: Mapping[str, Any]
    directory: Path
    next_ask: float
    received: set[int] = field(default_factory=set)
    asks: int = 0

    def missing(self) -> list[int]:
        """The chunks not verified yet, in order."""
        return [i for i in range(len(self.manifest["chunks"])) if i not in self.received]

    def progressed(self, now: float, quiet_s: float) -> None:
        """A chunk came: the next ask waits a whole quiet interval again."""
        self.asks = 0
        self.next_ask = now + quiet_s

    def asked(self, now: float, quiet_s: float) -> None:
        """An ask went out: the next one backs off (1, 2, 4, ... quiet intervals)."""
        self.asks += 1
        self.next_ask = now + quiet_s * min(2**self.asks, MAX_ASK_BACKOFF)

    def chunk_len(self, index: int) -> int:
        """The length chunk ``index`` must have (the last one may be short)."""
        size, length = int(self.manifest["chunk_size"]), int(self.manifest["length"])
        return min(size, length - index * size)

    def read(self) -> bytes:
        """The verified chunks from staging, in order."""
        n_chunks = len(self.manifest["chunks"])
        return b"".join((self.directory / str(i)).read_bytes() for i in range(n_chunks))

    def arrays(self, data: bytes) -> dict[str, npt.NDArray[Any]]:
        """The arrays of the whole upload ``data``, checked against the manifest.

        Raises:
            ValueError: the whole does not match the manifest's length, sha256, schema or
                counts.
        """
        m = self.manifest
        if len(data) != m["length"] or hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise ValueError("the whole upload does not match its length and sha256")
        arrays = parse_upload(data, m["schema"])
        check_arrays(arrays, int(m["rows"]), int(m["labelled"]))
        return arrays


def parse_upload(data: bytes, schema: Sequence[Mapping[str, Any]]) -> dict[str, npt.NDArray[Any]]:
    """The arrays of an upload: raw little-endian, C order, in the schema's order.

    Raises:
        ValueError: the bytes do not add up to the schema.
    """
    arrays: dict[str, npt.NDArray[Any]] = {}
    pos = 0
    for spec in schema:
        dtype = np.dtype(str(spec["dtype"])).newbyteorder("<")
        shape = tuple(int(d) for d in spec["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if pos + size > len(data):
            raise ValueError(f"{spec['name']} needs {size} bytes, {len(data) - pos} left")
        arrays[str(spec["name"])] = (
            np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=pos)
            .astype(dtype.newbyteorder("="))
            .reshape(shape)
        )
        pos += size
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes beyond the schema's arrays")
    return arrays


def chunk_problem(upload: Upload, index: int, size: int) -> str | None:
    """What is wrong with a chunk's place or size in ``upload`` (it is dropped), or None."""
    count = len(upload.manifest["chunks"])
    if index >= count:
        return f"chunk {index} of an upload of {count} chunks"
    if size != upload.chunk_len(index):
        return f"chunk {index} has {size} bytes, not {upload.chunk_len(index)}"
    return None


def manifest_problem(body: Mapping[str, Any], capture: Capture) -> str | None:
    """What is wrong with an upload manifest beyond its schema, or None."""
    n_chunks = -(-int(body["length"]) // int(body["chunk_size"]))
    names = {a["name"]: a for a in body["schema"]}
    size = sum(
        int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
        for a in body["schema"]
    )
    rows = int(body["rows"])
    x, labels = names.get("x"), names.get("labels")
    for bad, msg in (
        (body["model"] != capture.model, f"model {body['model']!r}, not {capture.model!r}"),
        (rows > capture.max_rows, f"{rows} rows, more than the {capture.max_rows} asked for"),
        (len(body["chunks"]) != n_chunks, "chunk count does not match length and chunk size"),
        (size != body["length"], "the schema's arrays do not add up to the length"),
        (x is None or len(x["shape"]) != 2 or x["shape"][0] != rows, "x must be [rows, n]"),
        (labels is None or labels["shape"] != [rows], "labels must be [rows]"),
        (any(a["shape"][0] != rows for a in body["schema"]), "every array needs `rows` rows"),
    ):
        if bad:
            return msg
    return None


def check_arrays(arrays: Mapping[str, npt.NDArray[Any]], rows: int, labelled: int) -> None:
    """Check an upload's parsed arrays against what its manifest says.

    Raises:
        ValueError: x is not finite float32, the labels are not class indices or -1, or
            their labelled count is not ``labelled``.
    """
    x, labels = arrays["x"], arrays["labels"]
    if x.dtype != np.float32 or not np.isfinite(x).all():
        raise ValueError("x must be finite float32")
    if labels.dtype != np.int64 or (labels < NO_LABEL).any():
        raise ValueError("labels must be int64 class indices or -1")
    if int(np.count_nonzero(labels != NO_LABEL)) != labelled:
        raise ValueError("the labelled count does not match the labels")
