"""aixpose_organizations: the tenant's name, branding (watermark logo) and default outputs

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aixpose_organizations',
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('branding', sa.JSON(), nullable=False),
    sa.Column('logo_upload_id', sa.String(length=36), nullable=True),
    sa.Column('default_output', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['logo_upload_id'], ['uploads.id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )


def downgrade() -> None:
    op.drop_table('aixpose_organizations')
