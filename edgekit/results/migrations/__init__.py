"""Alembic migrations of the results database (run by ``edgekit.results.migrate``, never by
hand). A schema change is a new file in ``versions/`` whose ``down_revision`` is the newest
one's; ``edgekit/results/schema.py`` is then edited to match. Old files are never edited: a
database anywhere may be at any revision."""
