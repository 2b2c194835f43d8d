"""Which devices run a model counts every model a device runs, not only its first
(hub/store/running.py; the lineage's ``running`` and the champion build on it). A real
SQLite file, or the PostgreSQL schema of the test under EF_TEST_DB=postgresql."""

from __future__ import annotations

from pathlib import Path

from pg_schemas import hub_engine

from hub.store.running import most_run, running
from hub.store.tables import Device, session


def test_a_models_devices_include_those_that_run_it_beside_another(tmp_path: Path) -> None:
    engine = hub_engine(tmp_path)
    with session(engine) as s:
        s.add_all(
            [
                # first model "anomaly", second "classifier" at v2
                Device(
                    id="d1",
                    model="anomaly",
                    version=1,
                    models={"anomaly": {"version": 1}, "classifier": {"version": 2}},
                ),
                Device(id="d2", model="classifier", version=2),
                Device(id="d3", models={"classifier": {"version": 3}}),
                Device(id="d4", model="anomaly", version=1),
            ]
        )
        s.commit()
        assert running(s, "classifier") == {"d1": 2, "d2": 2, "d3": 3}
        assert running(s, "anomaly") == {"d1": 1, "d4": 1}
        assert most_run(s, "classifier") == 2
        assert most_run(s, "nothing") is None and running(s, "nothing") == {}
