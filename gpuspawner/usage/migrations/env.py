"""Alembic's environment for the usage database: run on the connection ``UsageStore`` gives it.

From the ``alembic`` command (writing a revision), the database is the ``-x url=...`` given.
"""

from alembic import context
from sqlalchemy import create_engine

from gpuspawner.usage.store import VERSION_TABLE, Base

config = context.config
options = {"target_metadata": Base.metadata, "version_table": VERSION_TABLE, "render_as_batch": True}


def run(connection) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as connection:
        run(connection)
