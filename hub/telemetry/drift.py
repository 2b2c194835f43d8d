"""Fleet drift: score devices' sketches against the signed baseline, raise and clear alerts.

Devices send one ``drift`` message per telemetry window (shared/drift.py has the sketch).
The ingest writer hands them to :meth:`DriftMonitor.ingest`, which stores each window
once (unique per device and seq, like telemetry) with its PSI and JS distance per feature
and on the outputs against the model version's baseline, then applies the model's
:class:`Policy` (table ``DriftPolicy``; defaults in the spirit of Evidently):

- a window *exceeds* when it has at least ``min_rows`` rows and some feature or the
  outputs has PSI > ``psi_threshold`` or JS > ``js_threshold``;
- device scope: an alert opens when ``k`` of the device's last ``n`` windows exceed,
  and clears when fewer do;
- group (a device tag) and fleet scopes: the same rule over windows of
  ``scope_window_s`` seconds, each the merged sketches of every device of the scope
  (per model version: versions have their own baselines). :meth:`evaluate_scopes`
  runs after each ingested batch with drift in it (at most every SCOPE_EVAL_MIN_S).

Who an alert names (``devices``): a device alert its device. A group or fleet alert the
devices that drove it: in each exceeding bucket, the devices whose own merged windows of
that bucket exceed (same thresholds and ``min_rows``) on a feature the bucket drifted on.
When none does (the shift is visible only in the merge, e.g. devices whose windows are
each under ``min_rows``), the devices carrying the scope's shift: see :func:`carriers`.
If no device stands out either, the alert opens naming none (docs/drift.md).

Alerts live in ``DriftAlert``; each raise and clear is a row of the drift event stream
``DriftEvent``. A device alert whose device falls silent goes stale, and comes back when
it reports (:meth:`DriftMonitor.sweep`, hub/telemetry/drift_silence.py).
:func:`open_alerts` is the one call other hub code needs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from hub.ingest.report import Report
from hub.store.tables import DeviceTag, DriftAlert, DriftEvent, DriftPolicy, DriftWindow, session
from hub.telemetry import drift_silence
from hub.telemetry.drift_policy import Policy, load_policy
from hub.telemetry.drift_scopes import (
    Bucket,
    OwnSketches,
    carriers,
    drifted_names,
    scores_json,
    tags_of,
)
from shared.drift import (
    Baseline,
    DriftError,
    DriftSketch,
    merge_all,
)

log = logging.getLogger(__name__)

SCOPE_EVAL_MIN_S: Final = 1.0  # seconds between group/fleet evaluations from ingest
MAX_RANGE_WINDOWS: Final = 100_000  # windows merged by one drift query, at most
FLEET: Final = "*"  # scope_id of the fleet scope

BaselineSource = Callable[[str, int], Mapping[str, Any] | None]


class DriftMonitor:
    """Scores, stores and judges drift windows. Thread-safe (SQL does the sharing).

    Args:
        engine: the hub's database.
        baselines: ``(model, version) -> Manifest.baseline`` (None if unknown); set later
            with :meth:`use_baselines` when the registry comes up after ingest.
    """

    def __init__(self, engine: Engine, baselines: BaselineSource | None = None) -> None:
        self.engine = engine
        self._source = baselines
        self._cache: dict[tuple[str, int], Baseline | None] = {}
        self._lock = threading.Lock()
        self._last_scope_eval = 0.0
        self.counts: dict[str, int] = defaultdict(int)

    def use_baselines(self, baselines: BaselineSource) -> None:
        self._source = baselines
        with self._lock:
            self._cache.clear()

    def baseline(self, model: str, version: int) -> Baseline | None:
        key = (model, version)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        raw = None
        if self._source is not None:
            try:
                raw = self._source(model, version)
            except Exception as e:  # a registry miss or a broken manifest: no scores
                log.warning("drift: no baseline for %s v%d: %s", model, version, e)
        parsed = None
        if raw:
            try:
                parsed = Baseline.from_manifest(raw)
            except DriftError as e:
                log.warning("drift: %s v%d has an unusable baseline: %s", model, version, e)
        with self._lock:
            if raw is not None or self._source is not None:
                self._cache[key] = parsed
        return parsed

    # ------------------------------------------------------------- policy

    def policy(self, model: str) -> Policy:
        with session(self.engine) as s:
            return load_policy(s, model)

    def set_policy(self, model: str, policy: Policy, by: str | None = None) -> Policy:
        with session(self.engine) as s:
            row = s.get(DriftPolicy, model) or DriftPolicy(model=model, **asdict(policy))
            for k, v in asdict(policy).items():
                setattr(row, k, v)
            row.updated_at, row.updated_by = time.time(), by
            s.add(row)
            s.commit()
        return policy

    # ------------------------------------------------------------- ingest

    def apply(self, s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
        """Stage the ``drift`` reports (the ingest writer's applier, hub/ingest/report.py)."""
        drift = [(r.device_id, r.message.ts, r.message.body) for r in reports if r.kind == "drift"]
        return {"drift_duplicates": self.ingest(s, drift) if drift else 0}

    def committed(self, reports: Sequence[Report]) -> Mapping[str, int]:
        """Group and fleet drift alerts (throttled); a failure is logged, never fatal."""
        if not any(r.kind == "drift" for r in reports):
            return {}
        try:
            self.maybe_evaluate_scopes()
        except Exception:
            log.exception("ingest: group/fleet drift evaluation failed")
            return {"drift_scope_errors": 1}
        return {}

    def ingest(self, s: Session, reports: Sequence[tuple[str, float, Mapping[str, Any]]]) -> int:
        """Store and judge ``(device_id, ts, body)`` drift reports in the ingest's session.

        Returns:
            how many were duplicates (a window already stored) and skipped.
        """
        duplicates = 0
        touched: set[tuple[str, str]] = set()
        for device_id, ts, body in reports:
            row = self._window_row(device_id, ts, body)
            if row is None:
                continue
            if not self._insert(s, row):
                duplicates += 1
                continue
            touched.add((device_id, row["model"]))
        s.flush()
        for device_id, model in sorted(touched):
            self._judge_device(s, device_id, model)
        return duplicates

    def _window_row(
        self, device_id: str, ts: float, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        model, version = str(body["model"]), int(body["version"])
        try:
            sketch = DriftSketch.from_dict(body["sketch"])
        except DriftError as e:  # protocol.decode checked it: only a direct caller gets here
            self.counts["bad_sketch"] += 1
            log.warning("drift: dropped a sketch from %s: %s", device_id, e)
            return None
        scores = None
        baseline = self.baseline(model, version)
        if baseline is None:
            self.counts["no_baseline"] += 1
        elif not sketch.fits(baseline) or sketch.rows == 0:
            self.counts["layout_mismatch"] += 1
        else:
            scores = scores_json(baseline, sketch)
        return {
            "device_id": device_id,
            "seq": int(body["seq"]),
            "model": model,
            "version": version,
            "ts": ts,
            "rows": sketch.rows,
            "sketch": body["sketch"],
            "scores": scores,
        }

    def _insert(self, s: Session, row: dict[str, Any]) -> bool:
        dialect = s.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            ins: Any = (sqlite if dialect == "sqlite" else postgresql).insert(DriftWindow)
            stmt = ins.on_conflict_do_nothing(index_elements=["device_id", "seq"]).values(**row)
            if dialect == "sqlite":  # (RETURNING needs SQLite 3.35)
                return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]
            # RETURNING, not rowcount: through the session, psycopg's rowcount is -1 here
            return s.execute(stmt.returning(DriftWindow.seq)).first() is not None
        if s.get(DriftWindow, (row["device_id"], row["seq"])) is not None:
            return False
        s.add(DriftWindow(**row))
        return True

    def _judge_device(self, s: Session, device_id: str, model: str) -> None:
        policy = load_policy(s, model)
        last = s.exec(
            select(DriftWindow)
            .where(DriftWindow.device_id == device_id, DriftWindow.model == model)
            .order_by(col(DriftWindow.seq).desc())
            .limit(policy.n)
        ).all()
        exceeding = [(w, policy.drifted(w.rows, w.scores)) for w in last]
        exceeding = [(w, f) for w, f in exceeding if f]
        self._apply_rule(s, model, "device", device_id, policy, exceeding, last[0].ts, (device_id,))

    def _apply_rule(
        self,
        s: Session,
        model: str,
        scope: str,
        scope_id: str,
        policy: Policy,
        exceeding: list[tuple[Any, list[str]]],
        now: float,
        devices: Iterable[str] = (),
    ) -> None:
        """Open, update or clear the alert of one scope from its exceeding windows;
        ``devices``: those the alert names (may be none)."""
        q = select(DriftAlert).where(
            DriftAlert.model == model,
            DriftAlert.scope == scope,
            DriftAlert.scope_id == scope_id,
            col(DriftAlert.state).in_(("open", drift_silence.STALE)),
        )
        if scope == "device":  # the silence sweep's too: one writer per alert at a time
            q = q.with_for_update()
        alert = s.exec(q).first()
        if alert is not None and alert.state == drift_silence.STALE:  # its device is back
            drift_silence.resume(s, alert, now, f"device {scope_id} reports again")
            self.counts["alerts_resumed"] += 1
        if len(exceeding) >= policy.k:
            features = sorted({f for _, fs in exceeding for f in fs})
            latest = max(exceeding, key=lambda wf: wf[0].ts)[0]
            devs = sorted(set(devices))
            if alert is None:
                alert = DriftAlert(model=model, scope=scope, scope_id=scope_id, opened_at=now)
                alert.devices, alert.features = devs, features
                s.add(alert)
                s.flush()
                self._event(s, alert, "raised", now)
            alert.version, alert.updated_at = latest.version, now
            alert.devices, alert.features = devs, features
            alert.scores = dict(latest.scores or {})
            s.add(alert)
        elif alert is not None:
            alert.state, alert.cleared_at, alert.updated_at = "cleared", now, now
            s.add(alert)
            self._event(s, alert, "cleared", now)

    def _event(self, s: Session, alert: DriftAlert, kind: str, now: float) -> None:
        drift_silence.record(s, alert, kind, now)
        self.counts[f"alerts_{kind}"] += 1

    def sweep(self, now: float | None = None) -> None:
        """Device alerts whose device fell silent go stale, and come back when it reports
        (hub/telemetry/drift_silence.py); group and fleet alerts clear once their buckets
        age out (:meth:`evaluate_scopes`, which otherwise runs only as drift arrives)."""
        now = time.time() if now is None else now
        for kind, n in drift_silence.sweep(self.engine, now).items():
            self.counts[f"alerts_{kind}"] += n
        self.evaluate_scopes(now)

    # ------------------------------------------------------------- group and fleet

    def maybe_evaluate_scopes(self) -> None:
        """:meth:`evaluate_scopes`, at most every SCOPE_EVAL_MIN_S (called by ingest)."""
        now = time.time()
        if now - self._last_scope_eval < SCOPE_EVAL_MIN_S:
            return
        self._last_scope_eval = now
        self.evaluate_scopes(now)

    def evaluate_scopes(self, now: float | None = None) -> None:
        """Apply the persistence rule to every group and the fleet, for every model with
        windows in the last ``n * scope_window_s`` seconds."""
        now = time.time() if now is None else now
        with session(self.engine) as s:
            models = s.exec(select(DriftWindow.model).distinct()).all()
            for model in models:
                policy = load_policy(s, model)
                since = (math.floor(now / policy.scope_window_s) - policy.n + 1) * (
                    policy.scope_window_s
                )
                windows = list(
                    s.exec(
                        select(DriftWindow)
                        .where(DriftWindow.model == model, DriftWindow.ts >= since)
                        .limit(MAX_RANGE_WINDOWS)
                    )
                )
                scopes = {("fleet", FLEET): windows}
                tags = tags_of(s, {w.device_id for w in windows})
                for tag, devs in tags.items():
                    scopes[("group", tag)] = [w for w in windows if w.device_id in devs]
                open_scopes = s.exec(
                    select(DriftAlert).where(
                        DriftAlert.model == model,
                        DriftAlert.state == "open",
                        col(DriftAlert.scope).in_(("group", "fleet")),
                    )
                ).all()
                for a in open_scopes:  # a scope that fell silent clears too
                    scopes.setdefault((a.scope, a.scope_id), [])
                own = OwnSketches()  # a device's bucket is the same in every scope it is in
                for (scope, scope_id), ws in scopes.items():
                    exceeding = self._scope_buckets(model, ws, policy, own)
                    devices = sorted({d for b, _ in exceeding for d in b.devices})
                    self._apply_rule(s, model, scope, scope_id, policy, exceeding, now, devices)
            s.commit()

    def _scope_buckets(
        self, model: str, windows: list[DriftWindow], policy: Policy, own: OwnSketches
    ) -> list[tuple[Any, list[str]]]:
        """The exceeding time buckets of one scope: (bucket, drifted features), each
        bucket naming the devices that drove it (module docstring)."""
        buckets: dict[tuple[int, int], dict[str, list[DriftWindow]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for w in windows:
            key = (math.floor(w.ts / policy.scope_window_s), w.version)
            buckets[key][w.device_id].append(w)
        by_bucket: dict[int, tuple[Bucket, list[str]]] = {}
        for (b, version), per_device in sorted(buckets.items()):
            baseline = self.baseline(model, version)
            if baseline is None:
                continue
            sketches = {
                d: sk
                for d, ws in sorted(per_device.items())
                if (sk := own.sketch(d, b, version, baseline, ws)) is not None
            }
            if not sketches:
                continue
            sketch = merge_all(list(sketches.values()))
            scores = scores_json(baseline, sketch)
            drifted = policy.drifted(sketch.rows, scores)
            if not drifted:
                continue
            wanted = set(drifted)
            devs = {
                d
                for d, sk in sketches.items()
                if wanted & set(policy.drifted(sk.rows, own.scores(d, b, version, baseline)))
            } or carriers(baseline, sketch, sketches, drifted)
            ts = max(w.ts for ws in per_device.values() for w in ws)
            prev = by_bucket.get(b)  # another version's windows in the same bucket
            if prev is not None:
                devs |= set(prev[0].devices)
                wanted |= set(prev[1])
            by_bucket[b] = (Bucket(ts, version, scores, sorted(devs)), sorted(wanted))
        return list(by_bucket.values())

    def merged(
        self, model: str, version: int, windows: Sequence[DriftWindow]
    ) -> tuple[DriftSketch, dict[str, Any]] | None:
        """The merged sketch of windows of one version and its scores (None: no baseline)."""
        baseline = self.baseline(model, version)
        if baseline is None or not windows:
            return None
        sketches = []
        for w in windows:
            sk = DriftSketch.from_dict(w.sketch)
            if sk.fits(baseline):
                sketches.append(sk)
        if not sketches:
            return None
        sketch = merge_all(sketches)
        if sketch.rows == 0:
            return None
        return sketch, scores_json(baseline, sketch)

    # ------------------------------------------------------------- queries

    def report(
        self,
        model: str,
        scope: str,
        scope_id: str | None,
        since: float | None,
        until: float | None,
    ) -> dict[str, Any]:
        """Per version: rows, windows, devices and per-feature PSI/JS over a time range."""
        policy = self.policy(model)
        with session(self.engine) as s:
            q = select(DriftWindow).where(DriftWindow.model == model)
            if since is not None:
                q = q.where(DriftWindow.ts >= since)
            if until is not None:
                q = q.where(DriftWindow.ts <= until)
            if scope == "device":
                q = q.where(DriftWindow.device_id == scope_id)
            elif scope == "group":
                tagged = select(DeviceTag.device_id).where(DeviceTag.tag == scope_id)
                q = q.where(col(DriftWindow.device_id).in_(tagged))
            windows = list(s.exec(q.order_by(col(DriftWindow.ts)).limit(MAX_RANGE_WINDOWS)))
        by_version: dict[int, list[DriftWindow]] = defaultdict(list)
        for w in windows:
            by_version[w.version].append(w)
        versions = []
        for version, ws in sorted(by_version.items()):
            merged = self.merged(model, version, ws)
            entry: dict[str, Any] = {
                "version": version,
                "windows": len(ws),
                "devices": sorted({w.device_id for w in ws}),
                "rows": sum(w.rows for w in ws),
                "scores": None,
                "drifted": [],
                "enough_data": sum(w.rows for w in ws) >= policy.min_rows,
            }
            if merged is not None:
                sketch, scores = merged
                entry |= policy.verdict(sketch.rows, scores)
                entry["mean"] = dict(zip(drifted_names(scores), sketch.mean.tolist(), strict=False))
            versions.append(entry)
        return {
            "model": model,
            "scope": scope,
            "id": scope_id if scope != "fleet" else FLEET,
            "since": since,
            "until": until,
            "policy": asdict(policy),
            "versions": versions,
            **policy.enough(versions),
        }

    def alerts(
        self, *, state: str | None = None, model: str | None = None, limit: int = 100
    ) -> list[DriftAlert]:
        """Newest first."""
        q = select(DriftAlert)
        if state is not None:
            q = q.where(DriftAlert.state == state)
        if model is not None:
            q = q.where(DriftAlert.model == model)
        with session(self.engine) as s:
            return list(s.exec(q.order_by(col(DriftAlert.updated_at).desc()).limit(limit)))

    def events(
        self, *, since: float | None = None, model: str | None = None, limit: int = 100
    ) -> list[DriftEvent]:
        """Oldest first from ``since``."""
        q = select(DriftEvent)
        if since is not None:
            q = q.where(DriftEvent.ts >= since)
        if model is not None:
            q = q.where(DriftEvent.model == model)
        with session(self.engine) as s:
            return list(s.exec(q.order_by(col(DriftEvent.id)).limit(limit)))


def trust_baselines(registry: Any, trust: Any) -> BaselineSource:
    """A BaselineSource reading the signed manifests (hub/ml/registry.py, trust/repository.py)."""

    def source(model: str, version: int) -> Mapping[str, Any] | None:
        manifest = trust.manifest(registry.get(model, version).target) or {}
        baseline: Mapping[str, Any] | None = manifest.get("baseline")
        return baseline

    return source
