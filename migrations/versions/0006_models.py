"""chats.model and conversations.model: the model a chat's replies use, and the one that wrote each reply

A chat's model is None for the server's default (CHATAPI_MODEL); so is a message's from before models.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("chats") as batch:
        batch.add_column(sa.Column("model", sa.String(1000), nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("model", sa.String(1000), nullable=True))


def downgrade():
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("model")
    with op.batch_alter_table("chats") as batch:
        batch.drop_column("model")
