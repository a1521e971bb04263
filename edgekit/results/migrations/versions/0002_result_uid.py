"""A uid per result (its identity across databases, for export/import) and an index on
``started_at`` (``results list --since``).

Rows already there get a uid derived from their content (``edgekit.results.model.content_uid``),
so two copies of one old database migrate to the same uids and import as the same results.

Revision ID: 0002
Revises: 0001
"""

import json
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from edgekit.errors import DocumentError
    from edgekit.results.model import UID_NAMESPACE, Result, content_uid

    op.add_column("results", sa.Column("uid", sa.String(36)))
    conn = op.get_bind()
    table = sa.table("results", sa.column("id"), sa.column("doc"), sa.column("uid"))
    taken: set = set()
    rows = conn.execute(sa.select(table.c.id, table.c.doc).order_by(table.c.id)).all()
    for row_id, doc in rows:
        try:
            uid = content_uid(Result.from_dict(json.loads(doc)))
        except (ValueError, TypeError, DocumentError):  # not a result edgekit can read: its text
            uid = str(uuid.uuid5(UID_NAMESPACE, doc))
        if uid in taken:  # the very same measurement stored twice: keep both, apart
            uid = str(uuid.uuid5(uuid.UUID(uid), str(row_id)))
        taken.add(uid)
        conn.execute(table.update().where(table.c.id == row_id).values(uid=uid))
    op.create_index("results_uid", "results", ["uid"], unique=True)
    op.create_index("results_started", "results", ["started_at"])


def downgrade() -> None:
    op.drop_index("results_started", "results")
    op.drop_index("results_uid", "results")
    op.drop_column("results", "uid")
