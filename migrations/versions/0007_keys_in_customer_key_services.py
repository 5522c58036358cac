"""keys: data keys wrapped by the customer's key service (key_ref, role_arn, origin external)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 22:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ORIGINS_BEFORE = "origin IN ('platform', 'generated', 'imported')"
ORIGINS_AFTER = "origin IN ('platform', 'generated', 'imported', 'external')"


def upgrade() -> None:
    """Add where an external key lives, and allow keys whose origin is a key service."""
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_ref", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("role_arn", sa.String(length=2048), nullable=True))
        batch_op.drop_constraint("ck_keys_origin", type_="check")
        batch_op.create_check_constraint("ck_keys_origin", ORIGINS_AFTER)


def downgrade() -> None:
    """Refuse while external keys exist (their data would become unreadable), else revert."""
    bind = op.get_bind()
    count = bind.execute(sa.text("SELECT COUNT(*) FROM keys WHERE origin = 'external'")).scalar()
    if count:
        raise RuntimeError(
            f"{count} keys are held in customers' key services; downgrading below 0007 would "
            "lose where they are. Move those organisations to sealed keys first."
        )
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_constraint("ck_keys_origin", type_="check")
        batch_op.create_check_constraint("ck_keys_origin", ORIGINS_BEFORE)
        batch_op.drop_column("role_arn")
        batch_op.drop_column("key_ref")
