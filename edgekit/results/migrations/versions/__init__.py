"""One Alembic revision per file (see the package above)."""
