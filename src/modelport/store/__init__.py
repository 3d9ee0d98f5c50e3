"""Persistence: tables, the engine/session factory, Alembic migrations."""
