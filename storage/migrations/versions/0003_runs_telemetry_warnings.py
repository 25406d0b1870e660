"""runs telemetry warnings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('model', sa.JSON(), nullable=True),
    sa.Column('detectors', sa.JSON(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('last_step', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_created', ['created_at', 'id'], unique=False)

    op.create_table('run_warnings',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('layers', sa.JSON(), nullable=False),
    sa.Column('detector', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('run_id', 'key')
    )
    with op.batch_alter_table('run_warnings', schema=None) as batch_op:
        batch_op.create_index('ix_run_warnings_cursor', ['run_id', 'seq'], unique=False)

    op.create_table('telemetry',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('layer', sa.String(length=512), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('nonfinite', sa.Boolean(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'step', 'layer')
    )


def downgrade() -> None:
    op.drop_table('telemetry')
    with op.batch_alter_table('run_warnings', schema=None) as batch_op:
        batch_op.drop_index('ix_run_warnings_cursor')

    op.drop_table('run_warnings')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_created')

    op.drop_table('runs')
