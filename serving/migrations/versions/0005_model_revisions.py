"""generations record the model revisions their outputs were made with

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('generations', sa.Column('model_revisions', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('generations', 'model_revisions')
