"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('checkpoints',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('run', sa.String(length=255), nullable=True),
    sa.Column('step', sa.BigInteger(), nullable=True),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('canonical_sha256', sa.String(length=64), nullable=False),
    sa.Column('tensor_count', sa.Integer(), nullable=False),
    sa.Column('parameter_count', sa.BigInteger(), nullable=False),
    sa.Column('dtypes', sa.JSON(), nullable=False),
    sa.Column('file_metadata', sa.JSON(), nullable=False),
    sa.Column('tied', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index('ix_checkpoints_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_checkpoints_name', ['name'], unique=False)
        batch_op.create_index('ix_checkpoints_run', ['run'], unique=False)
        batch_op.create_index('ix_checkpoints_sha256', ['sha256'], unique=False)

    op.create_table('checkpoint_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('checkpoint_id', 'filename')
    )
    with op.batch_alter_table('checkpoint_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_files_sha256'), ['sha256'], unique=False)

    op.create_table('checkpoint_tags',
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('checkpoint_id', 'tag')
    )
    with op.batch_alter_table('checkpoint_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_tags_tag'), ['tag'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_id', sa.String(length=32), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_checkpoint', ['checkpoint_id'], unique=False)
        batch_op.create_index('ix_jobs_claim', ['status', 'created_at'], unique=False)

    op.create_table('tensors',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('shape', sa.JSON(), nullable=False),
    sa.Column('numel', sa.BigInteger(), nullable=False),
    sa.Column('mean', sa.Float(precision=53), nullable=True),
    sa.Column('std', sa.Float(precision=53), nullable=True),
    sa.Column('min', sa.Float(precision=53), nullable=True),
    sa.Column('max', sa.Float(precision=53), nullable=True),
    sa.Column('l2_norm', sa.Float(precision=53), nullable=True),
    sa.Column('zero_fraction', sa.Float(precision=53), nullable=True),
    sa.Column('nan_count', sa.BigInteger(), nullable=False),
    sa.Column('inf_count', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tensors', schema=None) as batch_op:
        batch_op.create_index('ix_tensors_checkpoint', ['checkpoint_id', 'position'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tensors', schema=None) as batch_op:
        batch_op.drop_index('ix_tensors_checkpoint')

    op.drop_table('tensors')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_claim')
        batch_op.drop_index('ix_jobs_checkpoint')

    op.drop_table('jobs')
    with op.batch_alter_table('checkpoint_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoint_tags_tag'))

    op.drop_table('checkpoint_tags')
    with op.batch_alter_table('checkpoint_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoint_files_sha256'))

    op.drop_table('checkpoint_files')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index('ix_checkpoints_sha256')
        batch_op.drop_index('ix_checkpoints_run')
        batch_op.drop_index('ix_checkpoints_name')
        batch_op.drop_index('ix_checkpoints_created')

    op.drop_table('checkpoints')
    op.drop_table('api_keys')
