"""webhook_endpoints: account-level webhook subscriptions; deliveries name their endpoint

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('account_id', sa.String(length=40), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('description', sa.String(length=500), nullable=True),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('secret', sa.String(length=100), nullable=False),
        sa.Column('previous_secret', sa.String(length=100), nullable=True),
        sa.Column('previous_valid_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_endpoints_account_created', 'webhook_endpoints',
                    ['account_id', 'created_at', 'id'])
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.add_column(sa.Column('endpoint_id', sa.String(length=40), nullable=True))
        batch.create_foreign_key('fk_webhook_deliveries_endpoint_id', 'webhook_endpoints',
                                 ['endpoint_id'], ['id'])
        batch.create_index('ix_webhook_deliveries_endpoint_id', ['endpoint_id'])


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.drop_index('ix_webhook_deliveries_endpoint_id')
        batch.drop_constraint('fk_webhook_deliveries_endpoint_id', type_='foreignkey')
        batch.drop_column('endpoint_id')
    op.drop_index('ix_webhook_endpoints_account_created', table_name='webhook_endpoints')
    op.drop_table('webhook_endpoints')
