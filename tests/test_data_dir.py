"""The hub's data directory is its own (issue 11, item 9).

``hub.db`` holds key hashes, the audit log and telemetry: it was found 0644 in a 0755
directory. A fresh hub now makes the directory 0700 and its files 0600, whatever the
umask it was started with; one that finds them looser says so at start, by path and mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import Hub, HubConfig
from hub.transport.broker import Mosquitto

# the SQLite file's own mode: no such file when the hub's database is PostgreSQL
pytestmark = [pytest.mark.broker, pytest.mark.sqlite]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual login umask (0022), under which files come out 0644 unless made private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_fresh_hubs_data_is_private(
    tmp_path: Path, mosquitto: Mosquitto, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "hub"
    caplog.set_level(logging.WARNING)
    with Hub(HubConfig(data_dir=data, broker_url=mosquitto.address.url, dev_mode=True)) as hub:
        artifact = hub.store.path(hub.store.put(b"model bytes"))
        secrets = [
            data / "hub.db",
            data / "hub.db-wal",  # SQLite gives them the database file's mode
            data / "hub.db-shm",
            data / "pki" / "ca.key",
            data / "pki" / "ledger.json",
            artifact,
            *(p for p in (data / "trust").rglob("*") if p.is_file() and "keys" in p.parts),
        ]
        modes = {str(p.relative_to(data)): oct(mode(p)) for p in secrets}
        assert hub.storage_warnings == []

    assert oct(mode(data)) == "0o700"
    assert len(modes) > 8, modes  # the trust keys were found too
    assert set(modes.values()) == {"0o600"}, modes
    # and whatever else it made is out of others' reach: no directory lets them in
    for sub in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        assert mode(sub) & 0o007 == 0, f"{sub} is {oct(mode(sub))}"
    assert not [r for r in caplog.records if "group or others" in r.getMessage()]


def test_a_looser_data_dir_or_db_is_named_at_start(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    os.chmod(data, 0o755)
    with sqlite3.connect(data / "hub.db") as db:  # a real database, as an older hub left it
        db.execute("CREATE TABLE left_behind (x INTEGER)")
    os.chmod(data / "hub.db", 0o644)
    caplog.set_level(logging.WARNING, logger="hub.store.datadir")

    with Hub(HubConfig(data_dir=data, broker_url=mosquitto.address.url, dev_mode=True)) as hub:
        warnings = list(hub.storage_warnings)

    logged = [r.getMessage() for r in caplog.records if r.name == "hub.store.datadir"]
    assert logged == warnings and len(warnings) == 2
    assert f"{data} is mode 0755" in warnings[0] and "chmod 700" in warnings[0]
    assert f"{data / 'hub.db'} is mode 0644" in warnings[1] and "chmod 600" in warnings[1]
    assert mode(data) == 0o755 and mode(data / "hub.db") == 0o644  # said, not changed
