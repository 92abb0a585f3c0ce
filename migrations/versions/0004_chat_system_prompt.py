"""chats.system_prompt: a chat's own system prompt, in place of CHATAPI_SYSTEM_PROMPT

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("chats") as batch:
        batch.add_column(sa.Column("system_prompt", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("chats") as batch:
        batch.drop_column("system_prompt")
