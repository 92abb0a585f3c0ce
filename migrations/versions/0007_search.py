"""The full-text index over messages and chat names (chatapi/search_index.py): FTS5 tables kept by triggers on
SQLite, a generated tsvector column with a GIN index on PostgreSQL; filled from the rows there are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

from chatapi import search_index

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    search_index.create(op.get_bind())


def downgrade():
    search_index.drop(op.get_bind())
