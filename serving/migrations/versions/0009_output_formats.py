"""aixpose_projects: shared output formats (picture_format, video_format)

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('aixpose_projects') as batch:
        batch.add_column(sa.Column('picture_format', sa.String(length=8), nullable=False,
                                   server_default='jpeg'))
        batch.add_column(sa.Column('video_format', sa.String(length=8), nullable=False,
                                   server_default='mp4'))


def downgrade() -> None:
    with op.batch_alter_table('aixpose_projects') as batch:
        batch.drop_column('video_format')
        batch.drop_column('picture_format')
