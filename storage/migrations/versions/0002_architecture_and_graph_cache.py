"""architecture and graph cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('graph_blobs',
    sa.Column('checkpoint_id', sa.String(length=32), nullable=False),
    sa.Column('converter_version', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('checkpoint_id', 'converter_version', 'mode')
    )
    with op.batch_alter_table('graph_blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_graph_blobs_sha256'), ['sha256'], unique=False)

    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('architecture_input', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('architecture', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('architecture')
        batch_op.drop_column('architecture_input')

    with op.batch_alter_table('graph_blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_graph_blobs_sha256'))

    op.drop_table('graph_blobs')
