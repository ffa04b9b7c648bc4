"""GPU-hours per day, per course (group) or per student, over whole days (pure): the usage chart's data.

The window is whole days in a time zone, ``first_day`` to ``last_day`` (both included); each
record is clipped to it (an open record counts up to ``now``) and its time goes to the days it
fell on, as ``report.aggregate`` does by day. By group, a record counts for each group its user
had when it started (``groups_of`` may narrow them: a teacher sees their own courses only); by
user, for its user. Sums are exact: whole unit-microseconds scaled to the shares' least common
multiple, so a slot on a GPU shared by K counts exactly 1/K.

Each row also carries the utilisation and peak memory of its servers' own processes, where NVML
measured them (``None`` where none was: "n/a", never 0): the mean weighted by each record's
GPU time in the window, and the highest peak.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from .records import MICROSECONDS, Record, Use, from_us, to_us
from .report import NO_GROUP

BY = ("group", "user")
_HOUR_US = 3600 * MICROSECONDS


@dataclass(frozen=True)
class Series:
    """One course's or student's GPU-hours on each day of the window, and in all."""

    key: str
    hours: tuple[float, ...]  # one per day of the window
    gpu_hours: float
    servers: int  # records that held units in the window
    users: int
    utilisation: float | None = None  # mean % of its servers' own processes (NVML); None: not measured
    peak_memory: int | None = None  # bytes; None: not measured

    def peak_day(self) -> int | None:
        """The index of its busiest day; None without any use."""
        if not self.gpu_hours:
            return None
        return max(range(len(self.hours)), key=lambda i: (self.hours[i], -i))


@dataclass(frozen=True)
class Daily:
    by: str
    days: tuple[date, ...]
    zone: tzinfo
    since: datetime  # the first day's midnight (UTC)
    until: datetime  # the midnight after the last day, or ``now`` when earlier (UTC)
    series: tuple[Series, ...]  # the most GPU-hours first
    total: Series  # every record once ("total")
    groups: tuple[str, ...]  # the groups of the records counted (as ``groups_of`` shows them), sorted

    @property
    def time_zone(self) -> str:
        return getattr(self.zone, "key", None) or str(self.zone)


class _Cells:
    __slots__ = ("cells", "servers", "users", "util_sum", "util_weight", "peak")

    def __init__(self, days: int):
        self.cells = [0] * days
        self.servers = 0
        self.users: set[str] = set()
        self.util_sum = 0.0
        self.util_weight = 0
        self.peak: int | None = None

    def series(self, key: str, scale: int) -> Series:
        hours = tuple(v / scale for v in self.cells)
        utilisation = self.util_sum / self.util_weight if self.util_weight else None
        return Series(key, hours, sum(self.cells) / scale, self.servers, len(self.users), utilisation, self.peak)


def midnights(first_day: date, last_day: date, zone: tzinfo) -> list[int]:
    """The µs of each day's midnight in ``zone``, and of the one after the last day."""
    return [
        to_us(datetime.combine(first_day + timedelta(days=i), time(0), zone))
        for i in range((last_day - first_day).days + 2)
    ]


def per_day(
    records: Iterable[Use | Record],
    *,
    by: str,
    first_day: date,
    last_day: date,
    zone: tzinfo,
    now: datetime,
    group: str | None = None,
    groups_of: Callable[[Use], Iterable[str]] | None = None,
) -> Daily:
    """GPU-hours of ``records`` (oldest first or not) per day of [first_day, last_day] and ``by``
    group or user. ``group``: only records started by its members (and by group, only its row).
    ``groups_of(use)``: the groups a record counts for (default: all its user had at its start)."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}; got {by!r}")
    if last_day < first_day:
        raise ValueError(f"the last day {last_day} is before the first {first_day}")
    records = [r.use if isinstance(r, Record) else r for r in records]
    bounds = midnights(first_day, last_day, zone)
    days = len(bounds) - 1
    low, high = bounds[0], min(bounds[-1], to_us(now))
    lcm = math.lcm(*{r.share_of for r in records}) if records else 1
    total = _Cells(days)
    rows: dict[str, _Cells] = {}
    seen_groups: set[str] = set()
    by_user = by == "user"
    for r in records:
        if group is not None and group not in r.groups:
            continue
        start = r.start_us if r.start_us > low else low
        end = r.stop_us if r.stop_us is not None and r.stop_us < high else high
        if end <= start:
            continue
        groups = tuple(groups_of(r)) if groups_of is not None else r.groups
        seen_groups.update(groups)
        if by_user:
            keys = (r.user,)
        elif group is not None:
            keys = (group,)
        else:
            keys = groups or (NO_GROUP,)
        counted = [total]
        for key in keys:
            cells = rows.get(key)
            if cells is None:
                cells = rows[key] = _Cells(days)
            counted.append(cells)
        weight = r.unit_count * (lcm // r.share_of)  # per µs, in 1/lcm of a unit
        held = weight * (end - start)
        user, utilisation, peak = r.user, r.utilisation, r.peak_memory
        for cells in counted:  # _Cells.count, inline: this loop runs for every record of a term
            cells.servers += 1
            cells.users.add(user)
            if utilisation is not None:
                cells.util_sum += utilisation * held
                cells.util_weight += held
            if peak is not None and (cells.peak is None or peak > cells.peak):
                cells.peak = peak
        i = bisect_right(bounds, start) - 1
        while start < end:
            stop = bounds[i + 1] if bounds[i + 1] < end else end
            amount = weight * (stop - start)
            for cells in counted:
                cells.cells[i] += amount
            start = stop
            i += 1
    scale = lcm * _HOUR_US
    series = sorted((cells.series(key, scale) for key, cells in rows.items()), key=lambda s: (-s.gpu_hours, s.key))
    return Daily(
        by=by,
        days=tuple(first_day + timedelta(days=i) for i in range(days)),
        zone=zone,
        since=from_us(low),
        until=from_us(max(high, low)),
        series=tuple(series),
        total=total.series("total", scale),
        groups=tuple(sorted(seen_groups)),
    )


def as_json(daily: Daily) -> dict:
    """The chart's data as the dashboard's ``api/usage`` answers it."""

    def series(s: Series, key: dict) -> dict:
        return {
            **key,
            "gpu_hours": round(s.gpu_hours, 4),
            "servers": s.servers,
            "users": s.users,
            "utilisation": None if s.utilisation is None else round(s.utilisation, 1),
            "peak_memory": s.peak_memory,
            "gpu_hours_per_day": [round(h, 4) for h in s.hours],
        }

    return {
        "by": daily.by,
        "since": daily.since.isoformat(),
        "until": daily.until.isoformat(),
        "time_zone": daily.time_zone,
        "days": [d.isoformat() for d in daily.days],
        "total": series(daily.total, {}),
        "rows": [series(s, {daily.by: s.key}) for s in daily.series],
    }


__all__ = ["BY", "Daily", "Series", "as_json", "midnights", "per_day"]
