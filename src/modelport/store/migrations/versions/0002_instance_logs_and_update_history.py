"""instance logs and update history

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_updates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.String(length=36), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("service_updates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_service_updates_service_id"), ["service_id"], unique=False)

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ended_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("ended_at")
        batch_op.drop_column("log_path")

    with op.batch_alter_table("service_updates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_service_updates_service_id"))

    op.drop_table("service_updates")
