"""Dataset versions (ADR 0014): the operator's files, content-addressed, checked, immutable.

An upload streams into a temporary file under the data dir (:meth:`DatasetStore.stage`
gives a :class:`StagedFile` that hashes and caps as it writes), then
:meth:`DatasetStore.add` parses it (hub/ml/data/files.py), writes the canonical arrays
(npz: ``x`` float32, ``y``) and moves both files into the content-addressed artifact
store before the ``DataVersion`` row is committed. Any failure deletes what was written:
nothing half-written stays. The same bytes under the same name are the same version.

``NAME:VERSION`` names a version: VERSION is its sequence number (1, 2, ...) or a prefix
of at least 6 hex digits of its sha256; ``NAME`` alone is the latest.

Exceptions::

    DatasetStoreError(detail, status)     unknown dataset, bad reference, too large
    DatasetFileError(detail, column, row) the file's content (hub/ml/data/files.py)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, func
from sqlmodel import col, select

from hub.ml.data.files import DatasetFileError, ParsedDataset, guess_format, read_dataset
from hub.store.artifacts import ArtifactStore
from hub.store.tables import DataVersion, session

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DatasetFileError",
    "DatasetStore",
    "DatasetStoreError",
    "StagedFile",
    "parse_ref",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES: Final = 2**30  # bytes of one dataset file (HubConfig overrides)
MIN_ROWS: Final = 10  # rows a dataset needs: a hold-out split needs some of each
MIN_PER_CLASS: Final = 2  # rows of each class a stratified split needs
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
HEX_RE: Final = re.compile(r"^[0-9a-f]{6,64}$")


class DatasetStoreError(Exception):
    """A dataset request that cannot be met; ``status`` is the HTTP status it maps to."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME[:VERSION]`` as (name, version or None).

    Raises:
        DatasetStoreError: not a dataset name, or an empty version.
    """
    name, _, version = ref.partition(":")
    if not NAME_RE.match(name):
        raise DatasetStoreError(
            f"invalid dataset name {name!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64"
        )
    if _ and not version:
        raise DatasetStoreError(f"{ref!r}: give a version after the ':' or none at all")
    return name, version or None


class StagedFile:
    """An upload being written to a temporary file: hashed and capped as it arrives."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.head = b""  # the first bytes, to tell the format by

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``.

        Raises:
            DatasetStoreError: (413) the file is over the cap; the file is deleted.
        """
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise DatasetStoreError(
                f"dataset file over the {self.max_bytes} byte limit (hub config max_dataset_bytes)",
                413,
            )
        if len(self.head) < 8:
            self.head = (self.head + chunk)[:8]
        self._hash.update(chunk)
        self._file.write(chunk)

    def close(self) -> str:
        """Finish writing; the file's sha256."""
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Added:
    """What :meth:`DatasetStore.add` did: the version, and whether it is new."""

    version: DataVersion
    created: bool


class DatasetStore:
    """Dataset versions in SQL, their files in the artifact store."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        staging: Path,
        max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.engine = engine
        self.store = store
        self.staging = staging
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one writer picks the next seq at a time

    def stage(self) -> StagedFile:
        return StagedFile(self.staging, self.max_bytes)

    def add(
        self,
        name: str,
        staged: StagedFile,
        *,
        filename: str = "",
        label: str | None = None,
        task: str | None = None,
        fmt: str | None = None,
        created_by: str | None = None,
    ) -> Added:
        """Parse a staged upload and keep it as the next version of ``name``.

        Raises:
            DatasetStoreError: a bad name or format.
            DatasetFileError: the content is refused (the column and row it names).
        """
        try:
            sha = staged.close()
            parse_ref(name)
            existing = self._by_hash(name, sha)
            if existing is not None:
                return Added(existing, False)
            if staged.size == 0:
                raise DatasetFileError("the file is empty")
            fmt = fmt or guess_format(filename, staged.head)
            parsed = read_dataset(staged.path, fmt, label=label, task=task, min_rows=MIN_ROWS)
            _check_split(parsed)
            arrays_sha = self._store_arrays(parsed)
            self.store.put_file(staged.path, sha)
            return self._new_version(
                name, parsed, sha, fmt, staged.size, arrays_sha, created_by=created_by
            )
        finally:
            staged.discard()

    def add_arrays(
        self,
        name: str,
        parsed: ParsedDataset,
        *,
        source_file: bytes,
        fmt: str,
        source: str = "upload",
        capture_id: str | None = None,
        model: str | None = None,
    ) -> Added:
        """Keep arrays made on the hub (a capture) as the next version of ``name``."""
        sha = hashlib.sha256(source_file).hexdigest()
        existing = self._by_hash(name, sha)
        if existing is not None:
            return Added(existing, False)
        _check_split(parsed)
        arrays_sha = self._store_arrays(parsed)
        self.store.put(source_file)
        return self._new_version(
            name,
            parsed,
            sha,
            fmt,
            len(source_file),
            arrays_sha,
            source=source,
            capture_id=capture_id,
            model=model,
        )

    def get(self, ref: str) -> DataVersion:
        """The version ``NAME[:VERSION]`` names.

        Raises:
            DatasetStoreError: (404) no such dataset or version; (422) a bad reference.
        """
        name, version = parse_ref(ref)
        with session(self.engine) as s:
            q = select(DataVersion).where(DataVersion.name == name)
            if version is None:
                rows = list(s.exec(q.order_by(col(DataVersion.seq).desc()).limit(1)))
            elif version.isdigit() and len(version) < 6:
                rows = list(s.exec(q.where(DataVersion.seq == int(version))))
            elif HEX_RE.match(version):
                rows = list(s.exec(q.where(col(DataVersion.sha256).startswith(version))))
            else:
                raise DatasetStoreError(
                    f"{ref!r}: a version is a number or at least 6 hex digits of its sha256"
                )
        if len(rows) > 1:
            raise DatasetStoreError(f"{ref!r} names {len(rows)} versions: give more digits")
        if not rows:
            known = self.versions(name)
            hint = (
                f"; {name} has versions {', '.join(str(v.seq) for v in known[-5:])}"
                if known
                else "; upload one with `edgefleet datasets upload`"
            )
            raise DatasetStoreError(f"no dataset {ref!r}{hint}", 404)
        return rows[0]

    def versions(self, name: str | None = None) -> list[DataVersion]:
        with session(self.engine) as s:
            q = select(DataVersion).order_by(col(DataVersion.name), col(DataVersion.seq))
            if name is not None:
                q = q.where(DataVersion.name == name)
            return list(s.exec(q))

    def file_path(self, row: DataVersion) -> Path:
        """The file as uploaded (its exact bytes)."""
        return self.store.path(row.sha256)

    def arrays(self, row: DataVersion) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
        """The canonical arrays (x float32, y) of a version."""
        with np.load(self.store.path(row.arrays_sha256), allow_pickle=False) as z:
            return z["x"], z["y"]

    def _by_hash(self, name: str, sha: str) -> DataVersion | None:
        with session(self.engine) as s:
            q = select(DataVersion).where(DataVersion.name == name, DataVersion.sha256 == sha)
            return s.exec(q).first()

    def _new_version(
        self,
        name: str,
        parsed: ParsedDataset,
        sha: str,
        fmt: str,
        size: int,
        arrays_sha: str,
        **fields: Any,
    ) -> Added:
        """The next version of ``name``: the file ``sha``, its arrays, its schema."""
        row = DataVersion(
            id="",
            name=name,
            seq=0,
            sha256=sha,
            format=fmt,
            task=parsed.schema["task"],
            kind=parsed.schema["kind"],
            label=parsed.schema["label"],
            rows=len(parsed.x),
            size_bytes=size,
            data_schema=parsed.schema,
            arrays_sha256=arrays_sha,
            **fields,
        )
        return Added(self._insert(row), True)

    def _store_arrays(self, parsed: ParsedDataset) -> str:
        """Write the canonical arrays and move them into the artifact store; their sha256."""
        npz_path, arrays_sha = self._write_arrays(parsed)
        try:
            self.store.put_file(npz_path, arrays_sha)
        finally:
            npz_path.unlink(missing_ok=True)
        return arrays_sha

    def _write_arrays(self, parsed: ParsedDataset) -> tuple[Path, str]:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.staging, prefix=".arrays-", suffix=".npz")
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=parsed.x, y=parsed.y)
            return path, _file_sha256(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _insert(self, row: DataVersion) -> DataVersion:
        with self._lock, session(self.engine) as s:
            latest = s.exec(
                select(func.max(DataVersion.seq)).where(DataVersion.name == row.name)
            ).one()
            row.seq = int(latest or 0) + 1
            row.id = f"{row.name}:{row.seq}"
            s.add(row)
            s.commit()
            s.refresh(row)
        log.info("dataset %s: %d rows, %s, %s", row.id, row.rows, row.task, row.sha256[:12])
        return row


def _check_split(parsed: ParsedDataset) -> None:
    """Every class needs rows on both sides of a stratified split."""
    classes = parsed.schema.get("classes")
    if parsed.schema["task"] != "classification" or not classes:
        return
    counts = np.bincount(parsed.y, minlength=len(classes))
    few = [(str(classes[i]), int(n)) for i, n in enumerate(counts) if n < MIN_PER_CLASS]
    if few:
        listed = ", ".join(f"{c!r} ({n} row{'s' * (n != 1)})" for c, n in few[:5])
        raise DatasetFileError(
            f"label column {parsed.schema['label']!r}: class {listed}: a hold-out split needs "
            f"at least {MIN_PER_CLASS} rows of each class",
            column=parsed.schema["label"],
        )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(2**20):
            h.update(block)
    return h.hexdigest()
