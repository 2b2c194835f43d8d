"""``edgefleet hub migrate``: bring the hub's database to this release's schema, now.

``hub serve`` does the same at each start (hub/store/migrate.py); this runs it on its
own, before replicas start or to see where a database stands (docs/database.md). A
database made before migrations is adopted: what an older hub lacked is added, then it is
stamped with the baseline. Exit 0 once the database is at the newest revision; 1, with
what is wrong, when it cannot be brought there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.output import emit

__all__ = ["DB_URL_ENV", "DbUrl", "migrate"]

DB_URL_ENV = "EDGEFLEET_DB_URL"  # as hub/settings.py reads it
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=DB_URL_ENV,
        help="SQLAlchemy URL (default: $EDGEFLEET_DB_URL, else the SQLite file in --data).",
    ),
]


def migrate(
    data: Annotated[
        Path, typer.Option("--data", help="The hub's data directory (as for hub serve).")
    ] = Path("edgefleet-data"),
    db: DbUrl = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    from sqlalchemy import make_url

    from hub.store.datadir import create_private_file, private_umask
    from hub.store.engine import connect, sqlite_url
    from hub.store.migrate import current, head
    from hub.store.tables import upgrade_database

    if db is None:
        with private_umask():  # as the hub makes them (hub/store/datadir.py)
            data.mkdir(parents=True, exist_ok=True)
            create_private_file(data / "hub.db")
        db = sqlite_url(data / "hub.db")
    engine = connect(db)
    try:
        before = upgrade_database(engine)
        found = {
            "database": make_url(db).render_as_string(hide_password=True),
            "before": before,
            "now": current(engine),
            "head": head(),
        }
    finally:
        engine.dispose()
    emit(found, json, _render)
    return 0


def _render(found: dict[str, Any]) -> str:
    where = f"database {found['database']}"
    if found["before"] == found["now"]:
        return f"{where}: at {found['now']}, the newest; nothing to do"
    return f"{where}: {found['before']} -> {found['now']} (the newest)"
