"""security: platform admins, AK/SK pairs, apps, AppCodes, app-service bindings

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    # The bootstrap user of platforms made before this revision administers the platform.
    op.execute(sa.text("UPDATE users SET is_admin = :t WHERE name = 'admin'").bindparams(t=True))
    op.create_table(
        "access_keys",
        sa.Column("access_key", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("access_key"),
    )
    op.create_index("ix_access_keys_user_id", "access_keys", ["user_id"])
    op.create_table(
        "apps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_key"),
        sa.UniqueConstraint("project_id", "name", name="uq_app_name"),
    )
    op.create_index("ix_apps_project_id", "apps", ["project_id"])
    op.create_table(
        "app_codes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_sha256"),
    )
    op.create_index("ix_app_codes_app_id", "app_codes", ["app_id"])
    op.create_table(
        "app_bindings",
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("service_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id", "service_id"),
    )


def downgrade() -> None:
    op.drop_table("app_bindings")
    op.drop_index("ix_app_codes_app_id", table_name="app_codes")
    op.drop_table("app_codes")
    op.drop_index("ix_apps_project_id", table_name="apps")
    op.drop_table("apps")
    op.drop_index("ix_access_keys_user_id", table_name="access_keys")
    op.drop_table("access_keys")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
