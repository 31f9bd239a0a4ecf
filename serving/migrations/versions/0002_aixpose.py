"""aixpose: projects, pictures (version lineage), quick actions, agent settings, resource
idempotency records

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aixpose_projects',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('output', sa.String(length=16), nullable=False),
    sa.Column('picture_aspect_ratio', sa.String(length=16), nullable=False),
    sa.Column('picture_resolution', sa.String(length=4), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('published_media', sa.JSON(), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_aixpose_projects_account_created', 'aixpose_projects',
                    ['account_id', 'created_at', 'id'], unique=False)

    op.create_table('aixpose_pictures',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('parent_id', sa.String(length=40), nullable=True),
    sa.Column('root_id', sa.String(length=40), nullable=True),
    sa.Column('upload_id', sa.String(length=36), nullable=True),
    sa.Column('generation_id', sa.String(length=36), nullable=True),
    sa.Column('output_index', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('subversion', sa.Integer(), nullable=False),
    sa.Column('scene_type', sa.String(length=32), nullable=True),
    sa.Column('scene_location', sa.String(length=64), nullable=True),
    sa.Column('source_instruction', sa.JSON(), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=True),
    sa.Column('model_revision', sa.String(length=200), nullable=True),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('feedback_rating', sa.Integer(), nullable=True),
    sa.Column('feedback_comment', sa.Text(), nullable=True),
    sa.Column('feedback_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['aixpose_projects.id'], ),
    sa.ForeignKeyConstraint(['parent_id'], ['aixpose_pictures.id'], ),
    sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'], ),
    sa.ForeignKeyConstraint(['generation_id'], ['generations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('root_id', 'version', 'subversion', name='uq_aixpose_picture_lineage')
    )
    op.create_index('ix_aixpose_pictures_account_id', 'aixpose_pictures', ['account_id'],
                    unique=False)
    op.create_index('ix_aixpose_pictures_generation_id', 'aixpose_pictures', ['generation_id'],
                    unique=False)
    op.create_index('ix_aixpose_pictures_project_created', 'aixpose_pictures',
                    ['project_id', 'created_at', 'id'], unique=False)

    op.create_table('aixpose_quick_actions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('instruction', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_aixpose_quick_actions_account_id', 'aixpose_quick_actions',
                    ['account_id'], unique=False)

    op.create_table('aixpose_agents',
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('explicit', sa.JSON(), nullable=False),
    sa.Column('learned', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )

    op.create_table('resource_idempotency_records',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('api_key_id', sa.String(length=40), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('resource_type', sa.String(length=32), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('api_key_id', 'idempotency_key',
                        name='uq_resource_idempotency_key_per_api_key')
    )


def downgrade() -> None:
    op.drop_table('resource_idempotency_records')
    op.drop_table('aixpose_agents')
    op.drop_index('ix_aixpose_quick_actions_account_id', table_name='aixpose_quick_actions')
    op.drop_table('aixpose_quick_actions')
    op.drop_index('ix_aixpose_pictures_project_created', table_name='aixpose_pictures')
    op.drop_index('ix_aixpose_pictures_generation_id', table_name='aixpose_pictures')
    op.drop_index('ix_aixpose_pictures_account_id', table_name='aixpose_pictures')
    op.drop_table('aixpose_pictures')
    op.drop_index('ix_aixpose_projects_account_created', table_name='aixpose_projects')
    op.drop_table('aixpose_projects')
