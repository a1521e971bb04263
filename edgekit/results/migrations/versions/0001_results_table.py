"""The results table as edgekit 0.1 created it (raw sqlite3, before migrations existed).

A database written by that edgekit already has this table: it is stamped at this revision
instead of running it (``edgekit.results.migrate``).

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("artifact_sha256", sa.Text, nullable=False),
        sa.Column("artifact_name", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("settings_key", sa.Text, nullable=False),
        sa.Column("ok", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("p50_ms", sa.Float),
        sa.Column("mean_ms", sa.Float),
        sa.Column("peak_rss_bytes", sa.BigInteger),
        sa.Column("accuracy", sa.Float),
        sa.Column("upload_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("started_at", sa.Text, nullable=False),
        sa.Column("finished_at", sa.Text, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("results_key", "results", ["device", "artifact_sha256", "settings_key"])


def downgrade() -> None:
    op.drop_table("results")
