"""Alembic's environment: runs on the connection hub/store/migrate.py hands it.

The hub never runs ``alembic`` against a configuration file: :func:`hub.store.migrate.upgrade`
builds the configuration, opens the connection (and, on PostgreSQL, takes the lock that
keeps two starting replicas from migrating at once) and passes it in ``attributes``.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import hub.store.tables  # noqa: F401  (every table, registered on SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
)
with context.begin_transaction():
    context.run_migrations()
