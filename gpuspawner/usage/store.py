"""The usage database: one row per server's holding of GPU units, through SQLAlchemy.

Any SQLAlchemy URL works, as for JupyterHub's own ``db_url``: SQLite by default, in the hub's
working directory next to ``jupyterhub.sqlite`` (``DEFAULT_DB_URL``, or ``next_to`` the hub's own
SQLite file), PostgreSQL or MySQL by URL. The schema is made and kept up to date by the Alembic
migrations shipped in ``gpuspawner/usage/migrations`` (revision ``0001`` is the first), which
``UsageStore`` runs when it opens, as ``jupyterhub upgrade-db`` does for the hub's database: an
empty database gets the schema, one at the current revision is left alone. Alembic's own version
table is ``gpuspawner_usage_version``, so the usage tables may share a database with the hub's.

Times are stored as whole microseconds since 1970-01-01 UTC (``start_us``, ``stop_us``; in SQLite,
``datetime(start_us / 1e6, 'unixepoch')`` shows one): exact, the same in every database, and fast
to read in bulk (``uses``, for budgets and reports).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import BigInteger, Float, Index, Integer, String, Text, create_engine, delete, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from .records import Record, Use, from_us, to_us

#: The default usage database: a SQLite file in the hub's working directory, where JupyterHub's
#: default ``db_url`` (``sqlite:///jupyterhub.sqlite``) puts the hub's own.
DEFAULT_DB_URL = "sqlite:///gpuspawner-usage.sqlite"
USAGE_FILE = "gpuspawner-usage.sqlite"
TABLE = "gpuspawner_usage"
VERSION_TABLE = "gpuspawner_usage_version"
MIGRATIONS = Path(__file__).with_name("migrations")


class UsageStoreError(Exception):
    """The usage database cannot be used: a sentence naming it and what to do."""


class Base(DeclarativeBase):
    pass


class UsageRow(Base):
    """A usage record as stored; ``Record`` is how the rest of gpuspawner reads it."""

    __tablename__ = TABLE
    __table_args__ = (
        Index("ix_gpuspawner_usage_holder_open", "holder", "stop_us"),
        Index("ix_gpuspawner_usage_username", "username"),
        Index("ix_gpuspawner_usage_start_us", "start_us"),
        Index("ix_gpuspawner_usage_stop_us", "stop_us"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    holder: Mapped[str] = mapped_column(String(255))
    user: Mapped[str] = mapped_column("username", String(255))
    server: Mapped[str] = mapped_column(String(255), server_default="")
    groups: Mapped[str] = mapped_column("user_groups", Text)  # a JSON list
    profile: Mapped[str] = mapped_column(String(255), server_default="")
    image_digest: Mapped[str] = mapped_column(String(255), server_default="")
    units: Mapped[str] = mapped_column(Text)  # a JSON list of unit ids
    unit_count: Mapped[int] = mapped_column(Integer)
    share_of: Mapped[int] = mapped_column(Integer, server_default="1")
    host: Mapped[str] = mapped_column(String(255), server_default="")
    start_us: Mapped[int] = mapped_column(BigInteger)  # microseconds since 1970-01-01 UTC
    stop_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None while it lasts
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    gpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    utilisation: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_memory: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


_COLUMNS = UsageRow.__table__.c
#: In ``Record``'s order.
_READ_RECORD = (
    _COLUMNS.id,
    _COLUMNS.holder,
    _COLUMNS.username,
    _COLUMNS.server,
    _COLUMNS.user_groups,
    _COLUMNS.profile,
    _COLUMNS.image_digest,
    _COLUMNS.units,
    _COLUMNS.share_of,
    _COLUMNS.host,
    _COLUMNS.start_us,
    _COLUMNS.stop_us,
    _COLUMNS.stop_reason,
    _COLUMNS.gpu_seconds,
    _COLUMNS.utilisation,
    _COLUMNS.peak_memory,
)


#: In ``Use``'s order.
_READ_USE = (
    _COLUMNS.id,
    _COLUMNS.username,
    _COLUMNS.user_groups,
    _COLUMNS.profile,
    _COLUMNS.unit_count,
    _COLUMNS.share_of,
    _COLUMNS.start_us,
    _COLUMNS.stop_us,
    _COLUMNS.utilisation,
    _COLUMNS.peak_memory,
)


def next_to(hub_db_url: str) -> str | None:
    """The usage database beside the hub's own SQLite file (``sqlite:////srv/jupyterhub/jupyterhub.sqlite``
    gives ``sqlite:////srv/jupyterhub/gpuspawner-usage.sqlite``); None for another database, which
    has no folder to put a file in: then the usage database's URL must be given."""
    url = make_url(hub_db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return url.set(database=os.path.join(os.path.dirname(url.database), USAGE_FILE)).render_as_string(False)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _member_of(group: str):
    """The records whose user was in ``group`` when they started: its name as the JSON list has it,
    quotes included, so never a part of another name."""
    return _COLUMNS.user_groups.like(f"%{_like(json.dumps(group))}%", escape="\\")


def _fetch_all(connection, query) -> list[tuple]:
    """Every row of ``query`` as plain tuples, through the driver's own cursor: SQLAlchemy's rows cost
    as much again as the read itself over a term's 100,000 records (the statement is still SQLAlchemy's,
    compiled for the connection's database, its parameters bound by the driver)."""
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def sqlite_file(url: str) -> str | None:
    """The file of an SQLite URL (None for another database, or one in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def _alembic(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


HEAD = ScriptDirectory.from_config(_alembic()).get_current_head()


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


#: Alembic's migration context is one per process (module-level proxies): two migrations at once, on two
#: threads, break each other. Every migration of this process waits for the one before it.
_MIGRATING = threading.Lock()


class UsageStore:
    """The usage database at ``url``, its schema brought to the current revision when it opens.

    ``upgrade=False``: refuse a database whose schema is not current instead of upgrading it.
    """

    def __init__(self, url: str = DEFAULT_DB_URL, *, upgrade: bool = True, **engine_kwargs):
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lists: dict[str, tuple[str, ...]] = {}
        #: Whether opening ran a migration (False: the schema was current).
        self.migrated = False
        try:
            if upgrade:
                self.migrated = self.upgrade()
            elif (revision := self.revision()) is None:
                raise UsageStoreError(
                    f"the usage database at {_where(url)} has no usage tables yet: the hub makes them"
                    " when it records its first GPU server"
                )
            elif revision != HEAD:
                raise UsageStoreError(
                    f"the usage database at {_where(url)} is at schema revision {revision},"
                    f" not {HEAD}: open it with upgrade=True to upgrade it"
                )
        except Exception:
            self.engine.dispose()
            raise

    @classmethod
    def open_existing(cls, url: str, *, read_only: bool = False, **engine_kwargs) -> UsageStore:
        """The hub's usage database as a reader opens it (the dashboard, the GPU culler): never made
        here (an SQLite file that is not there is refused, not created) and never upgraded.
        ``read_only``: an SQLite file is opened read-only (SQLite's ``mode=ro``)."""
        path = sqlite_file(url)
        if path is not None:
            if not os.path.isfile(path):
                raise UsageStoreError(
                    f"no usage database at {os.path.abspath(path)} yet: the hub makes it when it records"
                    " its first GPU server (GPUSpawner.usage_db_url)"
                )
            if read_only:  # by SQLite's own URI, which no URL parsing of SQLAlchemy's can mangle
                uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
                engine_kwargs["creator"] = lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
        return cls(url, upgrade=False, **engine_kwargs)

    def revision(self) -> str | None:
        """The schema revision the database is at; None for a database without the usage tables."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()

    def upgrade(self) -> bool:
        """Bring the schema to the current revision; returns whether any migration ran."""
        current = self.revision()
        if current == HEAD:
            return False
        try:
            with _MIGRATING, self.engine.begin() as connection:
                command.upgrade(_alembic(connection), "head")
        except CommandError as e:
            raise UsageStoreError(
                f"the usage database at {_where(self.url)} is at schema revision {current}, which this gpuspawner"
                f" does not know (a newer gpuspawner wrote it?): {e}"
            ) from None
        return True

    def _query(self, columns, since, until, user, holder=None, open_only=False, group=None, users=None, groups=None):
        query = select(*columns).order_by(_COLUMNS.start_us, _COLUMNS.id)
        if group is not None:
            query = query.where(_member_of(group))
        if users is not None or groups is not None:  # any of them: nothing when both are empty
            anyone = [_COLUMNS.username.in_(sorted(users or ()))] + [_member_of(g) for g in sorted(groups or ())]
            query = query.where(or_(*anyone))
        if until is not None:
            query = query.where(_COLUMNS.start_us < to_us(until))
        if since is not None:
            query = query.where((_COLUMNS.stop_us.is_(None)) | (_COLUMNS.stop_us > to_us(since)))
        if user is not None:
            query = query.where(_COLUMNS.username == user)
        if holder is not None:
            query = query.where(_COLUMNS.holder == holder)
        if open_only:
            query = query.where(_COLUMNS.stop_us.is_(None))
        return query

    def records(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user: str | None = None,
        holder: str | None = None,
        open_only: bool = False,
    ) -> list[Record]:
        """The whole records that held units at some moment in [since, until) (None: unbounded), oldest first."""
        query = self._query(_READ_RECORD, since, until, user, holder, open_only)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [self._record(row) for row in rows]

    def uses(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user: str | None = None,
        group: str | None = None,
        users: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> list[Use]:
        """What budgets and reports read of the records in [since, until) (of ``user``, of members of
        ``group`` when it started), oldest first: fast in bulk.

        ``users`` and ``groups``: only the records of any of ``users`` or of members of any of
        ``groups`` when they started (what a teacher may see); either given and both empty: none."""
        query = self._query(_READ_USE, since, until, user, group=group, users=users, groups=groups)
        new, lists = tuple.__new__, self._list
        with self.engine.connect() as connection:
            rows = _fetch_all(connection, query)
        return [new(Use, (i, u, lists(g), p, n, k, a, b, x, m)) for i, u, g, p, n, k, a, b, x, m in rows]

    def set_figures(self, figures: Mapping[int, tuple[float | None, int | None]]) -> None:
        """Store each record's (mean utilisation %, peak memory bytes) of its server's own processes,
        by record id (the GPU culler's, while it runs): one transaction; None leaves a figure empty."""
        if not figures:
            return
        with self.engine.begin() as connection:
            for record_id, (utilisation, peak_memory) in figures.items():
                connection.execute(
                    update(UsageRow)
                    .where(_COLUMNS.id == record_id)
                    .values(utilisation=utilisation, peak_memory=peak_memory)
                )

    def _record(self, row) -> Record:
        (id_, holder, user, server, groups, profile, digest, units, share_of, host, start, stop, *rest) = row
        return Record(
            id_,
            holder,
            user,
            server,
            self._list(groups),
            profile,
            digest,
            self._list(units),
            share_of,
            host,
            from_us(start),
            None if stop is None else from_us(stop),
            *rest,
        )

    def _list(self, text: str) -> tuple[str, ...]:
        # A class's records share a few lists of groups and of units: each is decoded once.
        decoded = self._lists.get(text)
        if decoded is None:
            if len(self._lists) > 10_000:
                self._lists.clear()
            decoded = self._lists[text] = tuple(json.loads(text))
        return decoded

    def purge(self, before: datetime) -> int:
        """Delete the records that closed before ``before`` (never an open one); returns how many."""
        with self.engine.begin() as connection:
            done = connection.execute(
                delete(UsageRow).where(_COLUMNS.stop_us.is_not(None), _COLUMNS.stop_us < to_us(before))
            )
            return done.rowcount

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> UsageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["DEFAULT_DB_URL", "HEAD", "UsageRow", "UsageStore", "UsageStoreError", "next_to"]
