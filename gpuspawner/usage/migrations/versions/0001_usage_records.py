"""The first schema: one row per server's holding of GPU units.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpuspawner_usage",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False, server_default=""),
        sa.Column("user_groups", sa.Text(), nullable=False),  # a JSON list
        sa.Column("profile", sa.String(255), nullable=False, server_default=""),
        sa.Column("image_digest", sa.String(255), nullable=False, server_default=""),
        sa.Column("units", sa.Text(), nullable=False),  # a JSON list of unit ids
        sa.Column("unit_count", sa.Integer(), nullable=False),
        sa.Column("share_of", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("host", sa.String(255), nullable=False, server_default=""),
        # Microseconds since 1970-01-01 UTC, as Slurm's accounting keeps epoch seconds: exact sums in SQL
        # and in Python; in SQLite, datetime(start_us / 1e6, 'unixepoch') reads one.
        sa.Column("start_us", sa.BigInteger(), nullable=False),
        sa.Column("stop_us", sa.BigInteger(), nullable=True),  # NULL while the server holds its units
        sa.Column("stop_reason", sa.String(32), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("utilisation", sa.Float(), nullable=True),
        sa.Column("peak_memory", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_gpuspawner_usage_holder_open", "gpuspawner_usage", ["holder", "stop_us"])
    op.create_index("ix_gpuspawner_usage_username", "gpuspawner_usage", ["username"])
    op.create_index("ix_gpuspawner_usage_start_us", "gpuspawner_usage", ["start_us"])
    op.create_index("ix_gpuspawner_usage_stop_us", "gpuspawner_usage", ["stop_us"])


def downgrade() -> None:
    op.drop_table("gpuspawner_usage")
