"""The dashboard's usage page without I/O: what the viewer asked, whose records they may see, what is shown.

- ``parse_query``: the page's GET form (``since``, ``until``, ``group``, ``by``) as a ``UsageQuery``,
  with the last four weeks by default; a bad value is a ``QueryError`` naming the field.
- ``usage_reach``: whose records a viewer's scopes reach, with the dashboard's scopes as they are:
  ``custom:gpu-dashboard:read`` unfiltered (an admin) reaches everyone; the same scope filtered
  (``!group=ml101``, ``!user=ana``) or ``custom:gpu-dashboard:read-groups`` (the viewer's own groups: a
  teacher) reaches those groups' members and those users; ``custom:gpu-dashboard:mine`` reaches the
  viewer's own records (a student).
- ``UsageAccess``: what that reach means for records. A record is seen when its user is reached, or
  was in a reached group **when it started** (the groups it keeps); by course, a limited viewer sees
  only the reached groups' rows, so another course's name never shows. A course's teacher may narrow
  to one of their courses, never to another's (``may_narrow_to``).
- ``build_usage_view``: the records the store gave, narrowed once more to the reach here (the store's
  filter is a speed-up, not the guard), as GPU-hours per day (``usage.daily``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from ..usage.daily import BY, Daily, per_day
from ..usage.daily import as_json as daily_json
from ..usage.records import Use
from .model import Reach, reach_from_scopes

DEFAULT_DAYS = 28  # the last four weeks, today included
MAX_DAYS = 400  # a page covers a term or a year; longer reports: `gpuspawner usage`
ROWS_SHOWN = 200  # rows of the per-course or per-student table on the page (the JSON has all)
BY_WORDS = {"group": "course", "user": "student"}


class QueryError(ValueError):
    """A value of the page's form that cannot be used: a sentence naming the field."""


@dataclass(frozen=True)
class UsageQuery:
    first_day: date
    last_day: date  # included
    by: str  # "group" (per course) or "user" (per student)
    group: str | None = None  # only this course's records

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    def as_args(self) -> dict[str, str]:
        """The form's values for links (the JSON of the same view)."""
        args = {"since": self.first_day.isoformat(), "until": self.last_day.isoformat(), "by": self.by}
        if self.group:
            args["group"] = self.group
        return args


def _day(args: Mapping[str, str], field: str, default: date) -> date:
    text = (args.get(field) or "").strip()
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{field}: {text!r} is not a date: write it as 2026-03-02") from None


def parse_query(args: Mapping[str, str], *, today: date, default_by: str = "group") -> UsageQuery:
    """The form's values (missing or empty: the default), checked."""
    last = _day(args, "until", today)
    first = _day(args, "since", last - timedelta(days=DEFAULT_DAYS - 1))
    if last < first:
        raise QueryError(f"until: {last} is before since: {first}")
    if (last - first).days + 1 > MAX_DAYS:
        raise QueryError(
            f"since to until is {(last - first).days + 1} days: a page shows {MAX_DAYS} at most"
            " (gpuspawner usage reports any period)"
        )
    by = (args.get("by") or "").strip() or default_by
    if by not in BY:
        raise QueryError(f"by: {by!r} is not a grouping: write group (per course) or user (per student)")
    group = (args.get("group") or "").strip() or None
    return UsageQuery(first, last, by, group)


def usage_reach(
    scopes: Iterable[str],
    *,
    viewer: str,
    viewer_groups: Iterable[str],
    read_scope: str,
    groups_scope: str,
    mine_scope: str,
) -> Reach:
    """Whose records the viewer's ``scopes`` (the hub's user model's) reach on the usage page."""
    scopes = list(scopes)
    reach = reach_from_scopes(scopes, read_scope, groups_scope=groups_scope, viewer=viewer, viewer_groups=viewer_groups)
    if reach.everyone or not viewer or not any(s.partition("!")[0] == mine_scope for s in scopes):
        return reach
    return Reach(False, reach.users | {viewer}, reach.groups)


@dataclass(frozen=True)
class UsageAccess:
    """A reach, applied to usage records."""

    reach: Reach

    def __bool__(self) -> bool:
        return bool(self.reach)

    def sees(self, use: Use) -> bool:
        return self.reach.covers(use.user, use.groups)

    def groups_of(self, use: Use) -> tuple[str, ...]:
        """The groups a seen record counts for: all its user's, for a user reached by name (their own
        records); otherwise only the reached groups."""
        reach = self.reach
        if reach.everyone or use.user in reach.users:
            return use.groups
        return tuple(g for g in use.groups if g in reach.groups)

    def store_filter(self) -> dict:
        """The store's own narrowing (``UsageStore.uses``): none for everyone."""
        if self.reach.everyone:
            return {}
        return {"users": sorted(self.reach.users), "groups": sorted(self.reach.groups)}

    def may_narrow_to(self, group: str) -> bool:
        """Whether the viewer may ask for one course's records: any for an admin; a teacher, one of their
        own courses; a viewer reaching only named users (their own records), any of those users' groups."""
        reach = self.reach
        return reach.everyone or group in reach.groups or not reach.groups

    def default_by(self) -> str:
        """Per course for admins; per student for a teacher (their course's students) and a student."""
        return "group" if self.reach.everyone else "user"

    def describe(self, viewer: str = "") -> str:
        """Whose use the page shows, in words: 'the course ml101 and its students, and your own use'."""
        reach = self.reach
        if reach.everyone:
            return "every course and student"
        parts = []
        if reach.groups:
            courses = sorted(reach.groups)
            if len(courses) == 1:
                parts.append(f"the course {courses[0]} and its students")
            else:
                parts.append(f"the courses {', '.join(courses[:-1])} and {courses[-1]} and their students")
        others = sorted(reach.users - {viewer})
        if others:
            parts.append("the use of " + ", ".join(others))
        if viewer in reach.users:
            parts.append("your own use")
        return ", and ".join(parts) or "nobody"


@dataclass(frozen=True)
class UsageView:
    query: UsageQuery
    daily: Daily
    seen_as: str  # UsageAccess.describe(viewer)
    viewer: str
    own_only: bool  # the viewer sees only their own records (a student)
    group_choices: tuple[str, ...]  # the courses the form offers
    note: str = ""  # why there is nothing to show (no database yet), said as a note

    @property
    def shown_rows(self):
        return self.daily.series[:ROWS_SHOWN]

    @property
    def rows_left_out(self) -> int:
        return max(0, len(self.daily.series) - ROWS_SHOWN)


def build_usage_view(
    uses: Iterable[Use],
    query: UsageQuery,
    access: UsageAccess,
    *,
    zone: tzinfo,
    now: datetime,
    viewer: str = "",
    note: str = "",
) -> UsageView:
    """The page's view of ``uses`` (what the store gave for the query's days and the viewer's reach)."""
    if query.group is not None and not access.may_narrow_to(query.group):
        raise PermissionError(
            f"group: {query.group!r} is not one of your courses ({', '.join(sorted(access.reach.groups))})"
        )
    seen = uses if access.reach.everyone else [u for u in uses if access.sees(u)]
    daily = per_day(
        seen,
        by=query.by,
        first_day=query.first_day,
        last_day=query.last_day,
        zone=zone,
        now=now,
        group=query.group,
        groups_of=None if access.reach.everyone else access.groups_of,
    )
    reach = access.reach
    own_only = not reach.everyone and not reach.groups and reach.users == frozenset({viewer})
    if reach.everyone or not reach.groups:
        choices = set(daily.groups)
    else:
        choices = set(reach.groups)
    if query.group:
        choices.add(query.group)
    return UsageView(query, daily, access.describe(viewer), viewer, own_only, tuple(sorted(choices)), note)


def usage_json(view: UsageView) -> dict:
    """The JSON behind the page: every row (the page shows ``ROWS_SHOWN``), per day."""
    data = daily_json(view.daily)
    data.update(
        first_day=view.query.first_day.isoformat(),
        last_day=view.query.last_day.isoformat(),
        group=view.query.group,
        shows=view.seen_as,
        note=view.note,
    )
    return data


__all__ = [
    "BY_WORDS",
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "ROWS_SHOWN",
    "QueryError",
    "UsageAccess",
    "UsageQuery",
    "UsageView",
    "build_usage_view",
    "parse_query",
    "usage_json",
    "usage_reach",
]
