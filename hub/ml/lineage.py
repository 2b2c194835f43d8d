"""A model version's lineage: what it was built from, how it was judged, where it went.

``lineage(engine, registry, name, version)`` joins the version's training run (ADR 0014:
dataset versions and their hashes, split, config, tuner trials, metrics, gates, the
package and source revision that built it), its signature (TUF target, sha256, length),
the rollouts and deployments that shipped it, and the devices that report running it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.registry import Registry
from hub.store.running import running as running_versions
from hub.store.tables import (
    DataVersion,
    Deployment,
    Rollout,
    RolloutDevice,
    TrainingRecord,
    TrainingRun,
    session,
)

__all__ = ["lineage"]

MAX_DEVICES_LISTED = 1000  # device ids listed; the count is always whole


def lineage(engine: Engine, registry: Registry, name: str, version: int) -> dict[str, Any]:
    """The lineage of ``name`` v``version`` (JSON-able).

    Raises:
        RegistryError: no such model version.
    """
    mv = registry.get(name, version)
    with session(engine) as s:
        run = s.exec(
            select(TrainingRun).where(TrainingRun.model == name, TrainingRun.version == version)
        ).first()
        record = s.get(TrainingRecord, (name, version))
        dataset_ids = run.datasets if run is not None else (record.datasets if record else [])
        datasets = [_dataset(s.get(DataVersion, d), d) for d in dataset_ids]
        rollouts = list(
            s.exec(
                select(Rollout)
                .where(Rollout.model == name, Rollout.version == version)
                .order_by(col(Rollout.created_at))
            )
        )
        counts = {r.id: _rollout_devices(s, r.id) for r in rollouts}
        deployments = list(
            s.exec(
                select(Deployment)
                .where(Deployment.model == name, Deployment.version == version)
                .order_by(col(Deployment.created_at))
            )
        )
        running = sorted(d for d, v in running_versions(s, name).items() if v == version)
    return {
        "model": name,
        "version": version,
        "created_at": mv.created_at,
        "source": mv.source,
        "evaluated": bool(datasets) or (run is not None and bool(run.metrics)),
        "datasets": datasets,
        "training": _training(run, record),
        "signature": {
            "target": mv.target,
            "sha256": mv.sha256,
            "length": mv.size_bytes,
            "format": mv.format,
            "runtime": mv.runtime,
            "device_classes": [c for c in mv.device_classes.split(",") if c],
        },
        "rollouts": [
            {
                "id": r.id,
                "state": r.state,
                "group": r.group,
                "created_at": r.created_at,
                "ended_at": r.ended_at,
                "devices": counts[r.id],
            }
            for r in rollouts
        ],
        "deployments": [
            {"id": d.id, "created_at": d.created_at, "devices": d.devices} for d in deployments
        ],
        "running": {"devices": len(running), "ids": running[:MAX_DEVICES_LISTED]},
    }


def _dataset(row: DataVersion | None, ref: str) -> dict[str, Any]:
    if row is None:  # the built-in generator, or a capture kept as rows only
        return {"id": ref}
    return {
        "id": row.id,
        "sha256": row.sha256,
        "rows": row.rows,
        "task": row.task,
        "kind": row.kind,
        "format": row.format,
        "source": row.source,
    }


def _training(run: TrainingRun | None, record: TrainingRecord | None) -> dict[str, Any]:
    if run is None:
        return {"run": None, "config": record.config if record else None}
    return {
        "run": run.id,
        "status": run.status,
        "source": run.source,
        "split": run.split,
        "config": run.config,
        "metrics": run.metrics,
        "gates": run.gates,
        "trials": run.trials,
        "package_version": run.package_version,
        "source_revision": run.source_revision,
        "created_by": run.created_by,
        "created_at": run.created_at,
    }


def _rollout_devices(s: Any, rollout_id: str) -> dict[str, int]:
    states: dict[str, int] = {}
    for state in s.exec(select(RolloutDevice.state).where(RolloutDevice.rollout_id == rollout_id)):
        states[state] = states.get(state, 0) + 1
    return states
