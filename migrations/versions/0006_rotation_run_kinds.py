"""rotation runs: one row of figures per kind (rotation_run_kinds), not a column per kind

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The kinds that had a column of their own on rotation_runs before this revision.
KIND_COLUMNS = (
    ("messages", "messages_total"),
    ("attachments", "attachments_total"),
    ("metadata", "metadata_total"),
)


def _ranges_sum(column: str) -> str:
    """SQL for the sum of one range column over a run's ranges of the bound kind."""
    return (
        f"COALESCE((SELECT SUM(g.{column}) FROM rotation_ranges g "
        "WHERE g.run_id = r.id AND g.kind = :kind), 0)"
    )


def upgrade() -> None:
    """Create rotation_run_kinds, carry every run's figures over, drop the old columns."""
    op.create_table(
        "rotation_run_kinds",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["rotation_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "kind"),
    )
    for kind, column in KIND_COLUMNS:
        op.execute(
            sa.text(
                "INSERT INTO rotation_run_kinds (run_id, kind, total, done, failed) "
                f"SELECT r.id, :kind, r.{column}, {_ranges_sum('done')}, {_ranges_sum('failed')} "
                "FROM rotation_runs r"
            ).bindparams(kind=kind)
        )
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy of the table: with
    # foreign keys on, dropping the old copy of rotation_runs would cascade to its ranges.
    for _kind, column in KIND_COLUMNS:
        op.drop_column("rotation_runs", column)


def downgrade() -> None:
    """Put the three total columns back from rotation_run_kinds (other kinds are dropped)."""
    for kind, column in KIND_COLUMNS:
        op.add_column(
            "rotation_runs",
            sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"),
        )
        op.execute(
            sa.text(
                f"UPDATE rotation_runs SET {column} = COALESCE((SELECT k.total FROM "
                "rotation_run_kinds k WHERE k.run_id = rotation_runs.id AND k.kind = :kind), 0)"
            ).bindparams(kind=kind)
        )
        if op.get_bind().dialect.name == "postgresql":
            op.alter_column("rotation_runs", column, server_default=None)
    op.drop_table("rotation_run_kinds")
