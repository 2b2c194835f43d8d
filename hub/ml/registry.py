"""The model registry: signed model versions, their files and their chunks.

Publishing a built model stores the file content-addressed, builds its manifest,
adds it as a TUF target (signed targets, snapshot and timestamp) and records the
version in SQL. A version may have further artefacts, one per runtime (a .tflite file for
LiteRT classes beside the int8 ONNX): each its own target with its own manifest
(:meth:`Registry.add_artefact`, ADR 0020); :meth:`Registry.artefacts` says which target a
device of each runtime installs. Devices then fetch the metadata and the chunks through
hub/transport/link.py, which reads them from here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import col, select

from hub.ml.pipeline import BuiltModel, PipelineConfig, build_manifest
from hub.store.artifacts import ArtifactStore
from hub.store.tables import ModelArtefact, ModelVersion, session
from hub.trust.repository import TrustRepository
from shared.chunks import chunk_span

FILE_CACHE_ENTRIES = 8  # model files kept in memory for chunk serving


class RegistryError(Exception):
    """A registry request that cannot be met (unknown model or version)."""


@dataclass(frozen=True)
class TargetEntry:
    sha256: str
    length: int
    chunk_size: int


class Registry:
    def __init__(
        self, engine: Engine, store: ArtifactStore, trust: TrustRepository, chunk_size: int
    ) -> None:
        self.engine = engine
        self.store = store
        self.trust = trust
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._targets: dict[str, TargetEntry] = {}
        # (model, version) -> runtime -> target: what a device of each runtime installs
        self._artefacts: dict[tuple[str, int], dict[str, str]] = {}
        self._remember(None, None)

    def _remember(self, target: str | None, version: tuple[str, int] | None) -> bool:
        """Read versions and artefacts from SQL into the maps: every one (at start), or
        one ``target`` or ``version`` this process has not seen, which another hub replica
        published (ADR 0032). True if something was found."""
        rows: list[ModelVersion | ModelArtefact] = []
        with session(self.engine) as s:
            for table in (ModelVersion, ModelArtefact):
                q: Any = select(table)  # either table: both have these columns
                if target is not None:
                    q = q.where(table.target == target)
                if version is not None:
                    q = q.where(table.name == version[0], table.version == version[1])
                rows += s.exec(q)
        for r in sorted(rows, key=lambda r: isinstance(r, ModelArtefact)):  # versions first
            self._targets[r.target] = TargetEntry(r.sha256, r.size_bytes, r.chunk_size)
            self._artefacts.setdefault((r.name, r.version), {}).setdefault(r.runtime, r.target)
        return bool(rows)

    def next_version(self, name: str) -> int:
        with session(self.engine) as s:
            latest = s.exec(
                select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
            ).one()
        return int(latest or 0) + 1

    def publish(
        self,
        built: BuiltModel,
        *,
        config: PipelineConfig,
        source: str = "trained",
        device_classes: tuple[str, ...] = (),
        dataset: str | None = None,
        class_health: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ModelVersion:
        """Sign and register ``built`` as the next version of its model."""
        with self._lock, self.trust.serialized():  # one version number across replicas
            version = self.next_version(built.name)
            manifest = build_manifest(
                built,
                version=version,
                chunk_size=self.chunk_size,
                device_classes=device_classes,
                config=config,
                class_health=class_health,
            )
            target = f"{built.name}/{version}/model.{manifest.format}"
            digest = self.store.put(built.model_bytes)
            self.trust.add_target(target, built.model_bytes, manifest.to_custom())
            row = ModelVersion(
                name=built.name,
                version=version,
                sha256=digest,
                format=manifest.format,
                runtime=manifest.runtime,
                size_bytes=len(built.model_bytes),
                chunk_size=manifest.chunk_size,
                size_fp32=built.size_fp32,
                accuracy_fp32=built.accuracy_fp32,
                accuracy_int8=built.accuracy_int8,
                target=target,
                source=source,
                device_classes=",".join(device_classes),
                task=built.task,
                mae_fp32=built.metrics.get("fp32", {}).get("mae"),
                mae_int8=built.metrics.get("int8", {}).get("mae"),
                dataset=dataset,
            )
            with session(self.engine) as s:
                s.add(row)
                s.commit()
                s.refresh(row)
            self._targets[target] = TargetEntry(digest, len(built.model_bytes), manifest.chunk_size)
            self._artefacts[(built.name, version)] = {manifest.runtime: target}
            return row

    def add_artefact(
        self,
        row: ModelVersion,
        built: BuiltModel,
        *,
        config: PipelineConfig,
        device_classes: tuple[str, ...] = (),
        class_health: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ModelArtefact:
        """Sign ``built`` as version ``row``'s artefact for another runtime.

        Raises:
            RegistryError: the version has an artefact for that runtime already.
        """
        with self._lock, self.trust.serialized():
            self._remember(None, (row.name, row.version))  # another replica's artefacts
            manifest = build_manifest(
                built,
                version=row.version,
                chunk_size=self.chunk_size,
                device_classes=device_classes,
                config=config,
                class_health=class_health,
            )
            known = self._artefacts.setdefault((row.name, row.version), {})
            if manifest.runtime in known:
                raise RegistryError(
                    f"{row.name} v{row.version} has a {manifest.runtime} artefact already"
                )
            target = f"{row.name}/{row.version}/model.{manifest.format}"
            digest = self.store.put(built.model_bytes)
            self.trust.add_target(target, built.model_bytes, manifest.to_custom())
            artefact = ModelArtefact(
                name=row.name,
                version=row.version,
                runtime=manifest.runtime,
                format=manifest.format,
                target=target,
                sha256=digest,
                size_bytes=len(built.model_bytes),
                chunk_size=manifest.chunk_size,
                accuracy_int8=built.accuracy_int8,
                mae_int8=built.metrics.get("int8", {}).get("mae"),
                metrics=dict(built.metrics),
                gates=list(built.gates),
            )
            with session(self.engine) as s:
                s.add(artefact)
                s.commit()
                s.refresh(artefact)
            self._targets[target] = TargetEntry(digest, len(built.model_bytes), manifest.chunk_size)
            known[manifest.runtime] = target
            return artefact

    def artefacts(self, name: str, version: int) -> dict[str, str]:
        """Runtime -> target of every artefact of a version (empty when unknown)."""
        if (name, version) not in self._artefacts:
            self._remember(None, (name, version))
        return dict(self._artefacts.get((name, version), {}))

    def size_of(self, name: str, version: int, runtime: str) -> int | None:
        """Bytes of the version's artefact for ``runtime`` (else of its first one); None
        when the registry has no such version."""
        artefacts = self.artefacts(name, version)
        target = artefacts.get(runtime) or next(iter(artefacts.values()), None)
        entry = self._targets.get(target) if target is not None else None
        return entry.length if entry is not None else None

    def extra_artefacts(self, name: str, version: int) -> list[ModelArtefact]:
        """The version's artefacts beyond its first, with their figures."""
        with session(self.engine) as s:
            q = select(ModelArtefact).where(
                ModelArtefact.name == name, ModelArtefact.version == version
            )
            return list(s.exec(q))

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A model version (the latest when ``version`` is None).

        Raises:
            RegistryError: no such model or version.
        """
        with session(self.engine) as s:
            q = select(ModelVersion).where(ModelVersion.name == name)
            if version is None:
                q = q.order_by(col(ModelVersion.version).desc())
            else:
                q = q.where(ModelVersion.version == version)
            row = s.exec(q).first()
        if row is None:
            what = f"{name} v{version}" if version is not None else name
            raise RegistryError(f"no model {what} in the registry")
        return row

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        with session(self.engine) as s:
            q = select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version))
            if name is not None:
                q = q.where(ModelVersion.name == name)
            return list(s.exec(q))

    def chunk(self, target: str, index: int) -> bytes | None:
        """Chunk ``index`` of ``target``; None when the target or index is unknown."""
        entry = self._targets.get(target)
        if entry is None and self._remember(target, None):  # published by another replica
            entry = self._targets.get(target)
        if entry is None:
            return None
        try:
            off, size = chunk_span(index, entry.length, entry.chunk_size)
        except IndexError:
            return None
        return self._file(entry.sha256)[off : off + size]

    def _file(self, sha256: str) -> bytes:
        with self._lock:
            data = self._files.get(sha256)
            if data is not None:
                self._files.move_to_end(sha256)
                return data
        data = self.store.get(sha256)
        with self._lock:
            self._files[sha256] = data
            while len(self._files) > FILE_CACHE_ENTRIES:
                self._files.popitem(last=False)
        return data

    def forget_cached(self) -> None:
        """Drop cached file bytes (after an artifact changed on disk)."""
        with self._lock:
            self._files.clear()
