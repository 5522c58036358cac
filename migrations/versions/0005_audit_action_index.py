"""audit trail: index for filtering by a specific action

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 19:10:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Index (company_id, action, id): the audit view's specific-action filter."""
    op.create_index("ix_audit_company_action", "audit_events", ["company_id", "action", "id"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_audit_company_action", table_name="audit_events")
