"""``gpuspawner usage``: GPU-hours by user, group, profile or day; ``usage purge`` for retention.

Reads the usage database (``gpuspawner.usage``) at ``--db`` URL, by default the hub config's
``GPUSpawner.usage_db_url`` (``sqlite:///gpuspawner-usage.sqlite`` in the working directory: the
hub's, beside its ``jupyterhub.sqlite``; ``docker compose exec hub gpuspawner usage`` runs there).
"""

from __future__ import annotations

import os
from datetime import datetime, time, timedelta, timezone
from textwrap import dedent
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from traitlets import CaselessStrEnum, Float, Unicode

from ..config import ConfigError
from ..usage import DEFAULT_DB_URL, UsageStore, UsageStoreError
from ..usage.report import BY, aggregate, as_csv, as_json, as_table, describe
from . import output
from .command import LabCommand


def parse_moment(value: str, zone: ZoneInfo, option: str) -> datetime:
    """'2026-04-13' (midnight starting that day), '2026-04-13 08:00' or '2026-04-13T08:00+02:00', in ``zone``
    unless it says its own."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not a date or a time: write 2026-04-13 or '2026-04-13 08:00'"
        ) from None
    if len(text) == 10:  # a date: its midnight
        moment = datetime.combine(moment.date(), time(0))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


class _UsageCommand(LabCommand):
    db = Unicode(
        "",
        help=f"""The usage database: any SQLAlchemy URL, as for JupyterHub's db_url.

        Default: the hub config's GPUSpawner.usage_db_url (-f), else {DEFAULT_DB_URL}, a file in
        the working directory: run the command where the hub runs.
        """,
    ).tag(config=True)

    def _hub_setting(self, name: str, fallback):
        """``GPUSpawner.<name>`` of the hub's config where one is found, else ``fallback``."""
        if not (self.config_named() or os.path.exists(self.hub_config)):
            return fallback
        return getattr(self.load_hub_config().spawner, name)

    def open_store(self) -> UsageStore:
        if not self.db:
            self.db = self._hub_setting("usage_db_url", DEFAULT_DB_URL)
            if not self.db:
                raise ConfigError("the hub records no usage: its GPUSpawner.usage_db_url is empty")
        try:
            url = make_url(self.db)
        except ArgumentError:
            raise ConfigError(f"--db {self.db!r} is not a database URL (sqlite:///path, postgresql://...)") from None
        path = url.database if url.get_backend_name() == "sqlite" else None
        if path and path != ":memory:" and not os.path.exists(path):
            raise ConfigError(
                f"no usage database at {os.path.abspath(path)}: give its URL with --db"
                " (the hub writes it in its working directory once it records usage)"
            )
        try:
            return UsageStore(self.db)
        except UsageStoreError as e:
            raise ConfigError(str(e)) from None
        except SQLAlchemyError as e:
            raise ConfigError(f"the usage database at {url.render_as_string()} cannot be read: {e}") from None


class UsagePurgeApp(_UsageCommand):
    name = "gpuspawner usage purge"
    description = "Delete the usage records that closed more than --older-than DAYS ago (never a running one)."
    examples = "gpuspawner usage purge --older-than 365"

    older_than = Float(
        0,
        help="Delete the records that closed more than this many days ago. Default: the hub config's"
        " GPUSpawner.usage_retention.",
    ).tag(config=True)
    aliases = {**LabCommand.aliases, "db": "_UsageCommand.db", "older-than": "UsagePurgeApp.older_than"}

    def start(self) -> int:
        if self.older_than <= 0:
            self.older_than = self._hub_setting("usage_retention", 0) / 86400
        if self.older_than <= 0:
            raise ConfigError(
                "say how old the records to delete are: --older-than DAYS (more than 0),"
                " or set GPUSpawner.usage_retention in the hub's config"
            )
        before = datetime.now(timezone.utc) - timedelta(days=self.older_than)
        with self.open_store() as store:
            purged = store.purge(before)
        print(f"purged {purged} usage record(s) that closed before {before.isoformat(timespec='seconds')}")
        return 0


class UsageApp(_UsageCommand):
    name = "gpuspawner usage"
    description = """GPU-hours by user, group, profile or day, from the usage database.

    Every server's holding of GPU units is a record; the report counts each record's seconds
    within [--since, --until) (open ones up to now): a whole GPU for an hour is 1 GPU-hour,
    a slot on a GPU shared by K, 1/K. By group, a record counts for each group its user had
    when it started. `gpuspawner usage purge --older-than DAYS` deletes old records.
    """
    examples = dedent("""
    gpuspawner usage --since 2026-04-13 --by group
    gpuspawner usage --since 2026-04-13 --until 2026-07-18 --group ml101 --by user --format csv > ml101.csv
    gpuspawner usage --by day --time-zone Europe/Berlin --format json
    gpuspawner usage purge --older-than 365
    """)
    subcommands = {"purge": (UsagePurgeApp, UsagePurgeApp.description)}

    since = Unicode("", help="From (a date: its midnight, or a date and time); default: the first record.").tag(
        config=True
    )
    until = Unicode("", help="Until (excluded; a date or a date and time); default: now.").tag(config=True)
    user = Unicode("", help="Only this user's records.").tag(config=True)
    group = Unicode("", help="Only the records started by members of this group.").tag(config=True)
    by = CaselessStrEnum(BY, default_value="user", help="One row per user, group, profile or day.").tag(config=True)
    format = CaselessStrEnum(("table", "csv", "json"), default_value="table", help="How to print.").tag(config=True)
    time_zone = Unicode("UTC", help="The time zone of --since, --until and of the days (--by day).").tag(config=True)

    aliases = {
        **LabCommand.aliases,
        "db": "_UsageCommand.db",
        "since": "UsageApp.since",
        "until": "UsageApp.until",
        "user": "UsageApp.user",
        "group": "UsageApp.group",
        "by": "UsageApp.by",
        "format": "UsageApp.format",
        "time-zone": "UsageApp.time_zone",
    }

    def start(self) -> int:
        if self.subapp:
            return self.subapp.start()
        if self.extra_args:
            raise ConfigError(f"unexpected arguments {' '.join(self.extra_args)}: see gpuspawner usage --help")
        try:
            zone = ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--time-zone {self.time_zone!r} is not a time zone such as Europe/Berlin") from None
        now = datetime.now(timezone.utc)
        since = parse_moment(self.since, zone, "--since") if self.since else None
        until = parse_moment(self.until, zone, "--until") if self.until else None
        if since and until and until <= since:
            raise ConfigError(f"--until {self.until} is not after --since {self.since}")
        with self.open_store() as store:
            records = store.uses(since=since, until=until, user=self.user or None, group=self.group or None)
        report = aggregate(
            records,
            by=self.by,
            now=now,
            since=since,
            until=until,
            zone=zone,
            user=self.user or None,
            group=self.group or None,
        )
        if self.format == "json":
            output.print_json(as_json(report))
        elif self.format == "csv":
            print(as_csv(report), end="")
        else:
            out = output.console()
            out.print(describe(report))
            if report.rows:
                out.print(as_table(report))
            else:
                out.print("No GPU use recorded in this window.")
            if report.note:
                out.print(f"({report.note})")
        return 0
