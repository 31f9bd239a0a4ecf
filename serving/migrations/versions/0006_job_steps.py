"""generations: the denoising step a running job reached and its step count (live progress)

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('generations', sa.Column('step', sa.Integer(), nullable=True))
    op.add_column('generations', sa.Column('steps', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('generations') as batch:
        batch.drop_column('steps')
        batch.drop_column('step')
