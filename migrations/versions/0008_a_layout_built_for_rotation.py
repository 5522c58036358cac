"""a layout built for rotation: (company_id, id) indexes instead of (company_id, key_id, id),
room for in-place updates, and per-key item counters

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 00:30:00

Why this layout, and what else was measured: docs/architecture.md, "Table layout".

- The id indexes the rotation walks are (company_id, id): a rewritten row's key_id is in no
  index any more, so PostgreSQL can update it in place (a HOT update: no index is touched)
  when its page has room, which a fillfactor below 100 leaves. That applies to pages written
  from now on; `VACUUM FULL <table>` (or pg_repack) lays out existing pages the same way.
- key_item_counts holds the items per organisation, key and kind (portal/chat/counts.py),
  filled here from the data in one pass per table.

Nothing in a data row changes: ids, ciphertexts and key ids stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The encrypted kinds at this revision: table -> kind name (frozen here, not imported).
KINDS = {"messages": "messages", "attachments": "attachments", "conversations": "metadata"}
# Leave this share of each new heap page free for in-place (HOT) updates (PostgreSQL only).
FILLFACTOR = {"messages": 50, "conversations": 50, "attachments": 50}


def upgrade() -> None:
    """Swap the key indexes for id indexes, set fillfactors, create and fill the counters."""
    bind = op.get_bind()
    for table in KINDS:
        op.create_index(f"ix_{table}_company_id_id", table, ["company_id", "id"])
        op.drop_index(f"ix_{table}_company_key", table_name=table)
    if bind.dialect.name == "postgresql":
        for table, percent in FILLFACTOR.items():
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")
    op.create_table(
        "key_item_counts",
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("early", sa.BigInteger(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["company_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("company_id", "key_id", "kind", "shard"),
    )
    for table, kind in KINDS.items():
        # early: under a platform key and written before the organisation's first own key.
        op.execute(
            sa.text(
                "INSERT INTO key_item_counts (company_id, key_id, kind, shard, items, early) "
                "SELECT t.company_id, t.key_id, :kind, 0, COUNT(*), "
                "SUM(CASE WHEN k.origin = 'platform' "
                "AND (own.first_at IS NULL OR t.created_at < own.first_at) THEN 1 ELSE 0 END) "
                f"FROM {table} t "
                "LEFT JOIN keys k ON k.company_id = t.company_id AND k.key_id = t.key_id "
                "LEFT JOIN (SELECT company_id, MIN(created_at) AS first_at FROM keys "
                "WHERE origin <> 'platform' GROUP BY company_id) own "
                "ON own.company_id = t.company_id "
                "GROUP BY t.company_id, t.key_id"
            ).bindparams(kind=kind)
        )


def downgrade() -> None:
    """Back to the key indexes; the counters go (0007's code counts the data itself)."""
    bind = op.get_bind()
    op.drop_table("key_item_counts")
    if bind.dialect.name == "postgresql":
        for table in FILLFACTOR:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    for table in KINDS:
        op.create_index(f"ix_{table}_company_key", table, ["company_id", "key_id", "id"])
        op.drop_index(f"ix_{table}_company_id_id", table_name=table)
