from alembic import context

from store.db import engine_for, unbounded
from store.models import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = engine_for(url)
    with engine.connect() as connection, unbounded(connection):  # a migration may rebuild a table
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
