"""The revisions of the usage database's schema, oldest first (Alembic skips this file)."""
