"""zoos and metanets

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('zoos',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('recipe', sa.JSON(), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('metanets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('zoo_id', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False),
    sa.Column('task', sa.String(length=16), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('weights_sha256', sa.String(length=64), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['zoo_id'], ['zoos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('metanets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metanets_weights_sha256'), ['weights_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_metanets_zoo_id'), ['zoo_id'], unique=False)

    op.create_table('zoo_members',
    sa.Column('zoo_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('group', sa.String(length=255), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['zoo_id'], ['zoos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('zoo_id', 'position')
    )
    with op.batch_alter_table('zoo_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_zoo_members_checkpoint_id'), ['checkpoint_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('zoo_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_zoo_members_checkpoint_id'))

    op.drop_table('zoo_members')
    with op.batch_alter_table('metanets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metanets_zoo_id'))
        batch_op.drop_index(batch_op.f('ix_metanets_weights_sha256'))

    op.drop_table('metanets')
    op.drop_table('zoos')
