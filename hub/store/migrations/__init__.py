"""The hub's Alembic migrations (hub/store/migrate.py runs them; docs/database.md)."""
