"""Alembic's environment for the results database: always run by ``edgekit.results.migrate``
with an open connection in ``config.attributes`` (inside its transaction and lock)."""

from alembic import context

from edgekit.results.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():  # the caller's transaction: nothing is committed here
    context.run_migrations()
