"""Usage reports: GPU-hours by user, group, profile or day over a window (pure), as a table, CSV or JSON.

Each record is clipped to the window [since, until) (an open record counts up to ``now``), so a
report of April counts only April's seconds of a server that ran across midnight on the 30th.
By day, a record's seconds go to the days (in the report's time zone) they fell on.

By group, a record counts for **each** group its user had when it started: a student in ML101 and
CV202 counts fully for both, so the groups' rows add up to more than the total, which counts each
record once (``Report.note`` says so). A record of a user in no group counts for ``(no group)``.
With ``group=`` the report keeps only that group's records, and by group, that group's row.

Sums are exact (``Fraction`` GPU-seconds, from whole microseconds); the outputs round them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone, tzinfo
from fractions import Fraction

from rich.table import Table

from ..quantities import format_bytes
from .records import MICROSECONDS, Record, Use, from_us, to_us, utc

BY = ("user", "group", "profile", "day")
NO_GROUP = "(no group)"
GROUPS_NOTE = "a record of a user in several groups counts for each: the rows add up to more than the total"


@dataclass
class Row:
    """One line of a report: ``key`` (a user, group, profile or day), exact GPU-seconds, the servers
    (records) that held units in the window, and their distinct users."""

    key: str
    gpu_seconds: Fraction = Fraction(0)
    servers: int = 0
    users: int = 0
    #: Of its servers' own processes, where NVML measured them (None: not measured, "n/a"): the mean
    #: utilisation (%), weighted by each record's GPU time in the window, and the highest peak memory.
    utilisation: float | None = None
    peak_memory: int | None = None

    @property
    def gpu_hours(self) -> float:
        return float(self.gpu_seconds / 3600)

    def as_json(self, by: str) -> dict:
        return {
            by: self.key,
            "gpu_hours": round(self.gpu_hours, 4),
            "gpu_seconds": round(float(self.gpu_seconds), 3),
            "servers": self.servers,
            "users": self.users,
            "utilisation": None if self.utilisation is None else round(self.utilisation, 1),
            "peak_memory": self.peak_memory,
        }


@dataclass(frozen=True)
class Report:
    by: str
    since: datetime | None
    until: datetime
    zone: tzinfo
    rows: list[Row]
    total: Row
    note: str = ""
    filters: dict = field(default_factory=dict)

    @property
    def time_zone(self) -> str:
        return getattr(self.zone, "key", None) or str(self.zone)


class _Sum:
    """Exact sums per key without Fractions in the loop: whole unit-microseconds per share K. A record
    adds to one key at most once (a day split gives distinct days), so servers are counted, not kept."""

    __slots__ = ("by_k", "servers", "users", "util_sum", "util_weight", "peak")

    def __init__(self):
        self.by_k: dict[int, int] = {}
        self.servers = 0
        self.users: set[str] = set()
        self.util_sum = 0.0
        self.util_weight = 0.0
        self.peak: int | None = None

    def add(self, r: Use, unit_us: int) -> None:
        by_k = self.by_k
        by_k[r.share_of] = by_k.get(r.share_of, 0) + unit_us
        self.servers += 1
        self.users.add(r.user)
        if r.utilisation is not None:
            self.util_sum += r.utilisation * unit_us / r.share_of
            self.util_weight += unit_us / r.share_of
        if r.peak_memory is not None and (self.peak is None or r.peak_memory > self.peak):
            self.peak = r.peak_memory

    def row(self, key: str) -> Row:
        seconds = sum((Fraction(v, k * MICROSECONDS) for k, v in self.by_k.items()), Fraction(0))
        utilisation = self.util_sum / self.util_weight if self.util_weight else None
        return Row(key, seconds, self.servers, len(self.users), utilisation, self.peak)


def aggregate(
    records: Iterable[Use | Record],
    *,
    by: str,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    zone: tzinfo = timezone.utc,
    user: str | None = None,
    group: str | None = None,
) -> Report:
    """GPU-seconds of ``records`` (``UsageStore.uses``) within [since, until) (until: ``now`` at the
    latest), ``by`` key."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}; got {by!r}")
    now = utc(now)
    since = utc(since) if since is not None else None
    until = min(utc(until), now) if until is not None else now
    since_us, until_us = (to_us(since) if since is not None else None), to_us(until)
    sums: dict[str, _Sum] = {}
    total = _Sum()
    days = _Days(zone)
    for r in records:
        if isinstance(r, Record):
            r = r.use
        if user is not None and r.user != user or group is not None and group not in r.groups:
            continue
        start = r.start_us if since_us is None or r.start_us > since_us else since_us
        end = r.stop_us if r.stop_us is not None and r.stop_us < until_us else until_us
        if end <= start:
            continue
        unit_us = r.unit_count * (end - start)
        total.add(r, unit_us)
        if by == "day":
            for day, a, b in days.split(start, end):
                _sum(sums, day).add(r, r.unit_count * (b - a))
            continue
        if by == "user":
            keys = (r.user,)
        elif by == "profile":
            keys = (r.profile,)
        else:
            keys = (group,) if group is not None else (r.groups or (NO_GROUP,))
        for key in keys:
            _sum(sums, key).add(r, unit_us)
    rows = [s.row(k) for k, s in sums.items()]
    rows.sort(key=(lambda row: row.key) if by == "day" else (lambda row: (-row.gpu_seconds, row.key)))
    return Report(
        by=by,
        since=since,
        until=until,
        zone=zone,
        rows=rows,
        total=total.row("total"),
        note=GROUPS_NOTE if by == "group" and group is None else "",
        filters={k: v for k, v in (("user", user), ("group", group)) if v is not None},
    )


def _sum(sums: dict[str, _Sum], key: str) -> _Sum:
    found = sums.get(key)
    if found is None:
        found = sums[key] = _Sum()
    return found


class _Days:
    """Splits a span (µs) at local midnights. Records come oldest first: the last day found is asked first."""

    def __init__(self, zone: tzinfo):
        self.zone = zone
        self.last = ("", 0, 0)

    def bounds(self, moment: int) -> tuple[str, int, int]:
        if not self.last[1] <= moment < self.last[2]:
            day = from_us(moment).astimezone(self.zone).date()
            start = to_us(datetime.combine(day, time(0), self.zone))
            end = to_us(datetime.combine(day + timedelta(days=1), time(0), self.zone))
            self.last = (day.isoformat(), start, end)
        return self.last

    def split(self, start: int, end: int):
        while start < end:
            day, _, midnight = self.bounds(start)
            yield day, start, min(end, midnight)
            start = midnight


def as_json(report: Report) -> dict:
    return {
        "by": report.by,
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat(),
        "time_zone": report.time_zone,
        "filters": report.filters,
        "rows": [row.as_json(report.by) for row in report.rows],
        "total": report.total.as_json("total"),
        "note": report.note,
    }


def as_csv(report: Report) -> str:
    """One line per row (no total: a spreadsheet sums it, except by group, see ``note``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.by, "gpu_hours", "gpu_seconds", "servers", "users", "utilisation", "peak_memory"])
    for row in report.rows:
        data = row.as_json(report.by)
        measured = ["" if v is None else v for v in (data["utilisation"], data["peak_memory"])]  # '': not measured
        writer.writerow(
            [data[report.by], f"{data['gpu_hours']:.4f}", f"{data['gpu_seconds']:.3f}", row.servers, row.users]
            + measured
        )
    return out.getvalue()


def as_table(report: Report) -> Table:
    """The rows and the total, GPU-hours to a hundredth, for people."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold", show_footer=True)
    table.add_column(report.by.capitalize(), footer="total", no_wrap=True)
    total = report.total
    for title, footer in (("GPU-hours", f"{total.gpu_hours:.2f}"), ("Servers", str(total.servers))):
        table.add_column(title, footer=footer, justify="right", no_wrap=True)
    table.add_column("Users", footer=str(total.users), justify="right", no_wrap=True)
    table.add_column("GPU use", footer=utilisation_text(total.utilisation), justify="right", no_wrap=True)
    table.add_column("Peak memory", footer=memory_text(total.peak_memory), justify="right", no_wrap=True)
    for row in report.rows:
        table.add_row(
            row.key or "(none)",
            f"{row.gpu_hours:.2f}",
            str(row.servers),
            str(row.users),
            utilisation_text(row.utilisation),
            memory_text(row.peak_memory),
        )
    return table


def utilisation_text(percent: float | None) -> str:
    """'37%', or 'n/a' where NVML measured nothing (never 0)."""
    return "n/a" if percent is None else f"{percent:.0f}%"


def memory_text(peak: int | None) -> str:
    """'11.2 GiB', or 'n/a' where NVML measured nothing (never 0)."""
    return "n/a" if peak is None else format_bytes(peak)


def describe(report: Report) -> str:
    """'GPU-hours by group, 2026-04-13 00:00 to 2026-07-18 00:00 (Europe/Berlin)' for above the table."""
    zone = report.zone
    since = report.since.astimezone(zone).strftime("%Y-%m-%d %H:%M") if report.since else "the first record"
    until = report.until.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    only = "".join(f", {k} {v}" for k, v in report.filters.items())
    return f"GPU-hours by {report.by}{only}, {since} to {until} ({report.time_zone})"


__all__ = [
    "BY",
    "NO_GROUP",
    "Report",
    "Row",
    "aggregate",
    "as_csv",
    "as_json",
    "as_table",
    "describe",
    "memory_text",
    "utilisation_text",
]
