"""Alembic environment: the URL comes from the caller's config (storage.db.migrate)."""

from alembic import context
from sqlalchemy import create_engine, pool

from storage.models import Base

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite ALTERs become copy-and-move
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
