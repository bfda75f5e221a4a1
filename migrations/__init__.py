"""Alembic migrations of the tracking database (installed as ``collector.migrations``)."""
