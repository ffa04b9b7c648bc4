"""GPU-hour budgets: how much GPU time a user or a course may use per week or per term (pure).

A budget names **who** (``user``: one user's own use; ``group``: the use of all a group's
members together, each record counted for the groups its user had when it started;
``every_user: true``: each user on their own use), **how much** (``gpu_hours``: a whole GPU for
an hour is 1, a slot on a GPU shared by K is 1/K an hour, as in quotas), **per what** (``per:
week``, from ``week_starts`` 00:00 in ``time_zone``, or ``per: term``, from the day ``from`` to
the day ``until``, both included, in ``time_zone``; outside its dates a term's budget does not
apply), the **scope** (``profile``: one profile's use; none: all GPU profiles) and whether admins
are exempt (``admins_exempt``, default true: an admin is never refused or stopped for a budget;
their use still counts towards a group's).

The questions, for a time ``now`` given by the caller (never read from a clock), over the
records (``UsageStore.uses``, or whole records): the period containing ``now`` (``Budget.window``), GPU-seconds
used in it (records that straddle its start are clipped; open ones count up to ``now``), what is
left, when it renews, the refusal of a spawn ("ML101's budget of 10 GPU-hours this week is
spent: 10.2 used; it renews Monday 00:00 Europe/Berlin"), the spawn page's card line ("6.5 of 10
GPU-hours left this week"), and when the servers running now spend the rest (``runs_out_at``:
when the culler stops them, after its warning window).

``parse_budgets`` validates the config's list at load, naming the budget and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..reservations import WEEKDAYS, read_date
from .records import MICROSECONDS, Record, Use, to_us, utc

FIELDS = (
    "name",
    "user",
    "group",
    "every_user",
    "gpu_hours",
    "per",
    "week_starts",
    "time_zone",
    "from",
    "until",
    "profile",
    "admins_exempt",
)


class BudgetError(ValueError):
    """A budget in config that cannot be used, naming the budget and the field."""


@dataclass(frozen=True)
class Weekly:
    starts: int  # 0: Monday
    zone: ZoneInfo


@dataclass(frozen=True)
class Term:
    first: date
    last: date  # included
    zone: ZoneInfo


@dataclass(frozen=True)
class Window:
    """One period of a budget: [start, end), aware datetimes in UTC."""

    start: datetime
    end: datetime


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # A midnight the clocks skip is the moment they jump; one that happens twice, its first.
    return utc(datetime.combine(day, time(0), zone))


@dataclass(frozen=True)
class Budget:
    name: str  # whose, in sentences: "ML101's budget"; '' for a user's own ("Your budget")
    gpu_hours: Fraction
    period: Weekly | Term
    user: str | None = None
    group: str | None = None  # neither: every user, each on their own use
    profile: str | None = None  # None: all GPU profiles
    admins_exempt: bool = True

    @property
    def seconds(self) -> Fraction:
        return self.gpu_hours * 3600

    @property
    def zone(self) -> ZoneInfo:
        return self.period.zone

    def applies(self, user: str, groups: Iterable[str], profile: str, admin: bool = False) -> bool:
        """Whether a start of ``profile`` by ``user`` (in ``groups``) answers to this budget."""
        if admin and self.admins_exempt or self.profile is not None and profile != self.profile:
            return False
        if self.user is not None:
            return user == self.user
        if self.group is not None:
            return self.group in set(groups)
        return True

    def counts(self, record: Use | Record, user: str) -> bool:
        """Whether ``record`` is spent from this budget, as ``user`` sees it."""
        if self.profile is not None and record.profile != self.profile:
            return False
        if self.group is not None:
            return self.group in record.groups
        return record.user == (self.user if self.user is not None else user)

    def window(self, now: datetime) -> Window | None:
        """The period containing ``now``; None outside a term's dates."""
        zone = self.period.zone
        if isinstance(self.period, Weekly):
            today = utc(now).astimezone(zone).date()
            first = today - timedelta(days=(today.weekday() - self.period.starts) % 7)
            return Window(_midnight(first, zone), _midnight(first + timedelta(days=7), zone))
        window = Window(_midnight(self.period.first, zone), _midnight(self.period.last + timedelta(days=1), zone))
        return window if window.start <= utc(now) < window.end else None

    def per(self) -> str:
        """'this week', 'this term'."""
        return "this week" if isinstance(self.period, Weekly) else "this term"

    def describe(self) -> str:
        """ "ML101's budget of 10 GPU-hours this week", "Your budget of 2.5 GPU-hours on a100 this term"."""
        whose = f"{self.name}'s budget" if self.name else "Your budget"
        on = f" on {self.profile}" if self.profile else ""
        return f"{whose} of {_amount(self.gpu_hours)} GPU-hours{on} {self.per()}"


@dataclass(frozen=True)
class Standing:
    """Where one budget stands for one user at ``now``: GPU-seconds used, the rate the servers that
    count run at now (GPU-seconds per second)."""

    budget: Budget
    window: Window
    now: datetime
    used: Fraction
    rate: Fraction

    @property
    def left(self) -> Fraction:
        return max(self.budget.seconds - self.used, Fraction(0))

    @property
    def spent(self) -> bool:
        return self.used >= self.budget.seconds

    @property
    def renews_at(self) -> datetime | None:
        """When a new period starts with nothing used; None for a term (it ends)."""
        return self.window.end if isinstance(self.budget.period, Weekly) else None

    @property
    def runs_out_at(self) -> datetime | None:
        """When the servers running now spend the rest (``now`` when spent); None when they do not
        before the period ends. Ask again when a server starts or stops."""
        if self.spent:
            return self.now
        if self.rate <= 0:
            return None
        at = self.now + timedelta(microseconds=math.ceil(self.left / self.rate * 1_000_000))
        return at if at < self.window.end else None

    def renewal(self) -> str:
        """'it renews Monday 00:00 Europe/Berlin', 'the term ends Friday 17 July 2026'."""
        zone = self.budget.zone
        if self.renews_at is None:
            last = self.budget.period.last
            return f"the term ends {WEEKDAYS[last.weekday()].capitalize()} {last.day} {last:%B %Y}"
        return f"it renews {_when(self.renews_at.astimezone(zone), self.now.astimezone(zone))} {zone.key}"

    def refusal(self) -> str:
        """Why a start is refused (or a server stopped): the budget, what was used, when it renews."""
        return f"{self.budget.describe()} is spent: {_hours(self.used, math.ceil)} used; {self.renewal()}"

    def card_line(self) -> str:
        """'6.5 of 10 GPU-hours left this week' (what is left, rounded down)."""
        on = f" on {self.budget.profile}" if self.budget.profile else ""
        left, total = _hours(self.left, math.floor), _amount(self.budget.gpu_hours)
        return f"{left} of {total} GPU-hours{on} left {self.budget.per()}"

    def warning(self) -> str:
        """What the culler says in its warning window: when the servers will be stopped, and why."""
        when = self.runs_out_at
        if when is None:
            return ""
        zone = self.budget.zone
        at = _when(when.astimezone(zone), self.now.astimezone(zone))
        return f"{self.budget.describe()} runs out at {at} {zone.key}: running servers stop then; {self.renewal()}"


def standing(budget: Budget, records: Iterable[Use | Record], now: datetime, user: str) -> Standing | None:
    """Where ``budget`` stands for ``user`` at ``now``; None outside its period (a term's dates)."""
    now = utc(now)
    window = budget.window(now)
    if window is None:
        return None
    now_us, start_us, end_us = to_us(now), to_us(window.start), to_us(window.end)
    used: dict[int, int] = {}  # unit-microseconds per share K: exact, and no Fraction in the loop
    rate = Fraction(0)
    for r in records:
        r = r.use if isinstance(r, Record) else r
        if not budget.counts(r, user):
            continue
        used[r.share_of] = used.get(r.share_of, 0) + r.unit_count * r.held_us(now_us, start_us, end_us)
        if r.stop_us is None and r.start_us <= now_us:
            rate += Fraction(r.unit_count, r.share_of)
    seconds = sum((Fraction(v, k * MICROSECONDS) for k, v in used.items()), Fraction(0))
    return Standing(budget, window, now, seconds, rate)


def standings(
    budgets: Iterable[Budget],
    records: Iterable[Use | Record],
    now: datetime,
    user: str,
    groups: Iterable[str],
    profile: str,
    admin: bool = False,
) -> list[Standing]:
    """Every budget a start of ``profile`` by ``user`` answers to, in its period now; the spent ones first."""
    records, groups = list(records), set(groups)
    found = [standing(b, records, now, user) for b in budgets if b.applies(user, groups, profile, admin)]
    return sorted((s for s in found if s is not None), key=lambda s: not s.spent)


def budget_use(budgets: Iterable[Budget], records: Iterable[Use | Record], now: datetime) -> list[tuple[str, Standing]]:
    """Where each budget stands now, for Prometheus: ``(subject, standing)`` with the subject the budget's
    user or group, or each user with use in the period for a budget of every user. Budgets outside
    their period (a term's dates) are left out."""
    records = [r.use if isinstance(r, Record) else r for r in records]
    found: list[tuple[str, Standing]] = []
    for budget in budgets:
        if budget.user is not None or budget.group is not None:
            subjects = [budget.user if budget.user is not None else budget.group]
        else:
            window = budget.window(now)
            if window is None:
                continue
            now_us, start_us, end_us = to_us(utc(now)), to_us(window.start), to_us(window.end)
            subjects = sorted({r.user for r in records if r.held_us(now_us, start_us, end_us) > 0})
        for subject in subjects:
            found_one = standing(budget, records, now, subject or "")
            if found_one is not None:
                found.append((subject or "", found_one))
    return found


def refusal(budgets: Iterable[Budget], records: Iterable[Use | Record], now: datetime, **start) -> str | None:
    """Why a start (``user=, groups=, profile=, admin=``) is refused: the first spent budget's sentence."""
    spent = [s for s in standings(budgets, records, now, **start) if s.spent]
    return spent[0].refusal() if spent else None


def _amount(hours: Fraction) -> str:
    """A budget's size as written: '10', '2.5', '0.25'."""
    return str(hours.numerator) if hours.denominator == 1 else f"{float(hours):.4f}".rstrip("0").rstrip(".")


def _hours(seconds: Fraction, rounding) -> str:
    """GPU-seconds as GPU-hours to a tenth, rounded as ``rounding`` says: '6.5', '10'."""
    tenths = rounding(seconds / 360)
    return f"{tenths // 10}" if tenths % 10 == 0 else f"{tenths // 10}.{tenths % 10}"


def _when(moment: datetime, now: datetime) -> str:
    """'15:42' today, 'Monday 00:00' within a week, 'Monday 20 April 00:00' beyond."""
    days = (moment.date() - now.date()).days
    clock = moment.strftime("%H:%M")
    if days == 0:
        return clock
    day = WEEKDAYS[moment.weekday()].capitalize()
    return f"{day} {clock}" if 0 < days < 7 else f"{day} {moment.day} {moment:%B} {clock}"


def parse_budgets(
    entries: Iterable[dict], groups: Iterable[str] | None = None, profiles: Iterable[str] | None = None
) -> tuple[Budget, ...]:
    """The config's budgets, validated; with the known ``groups`` and ``profiles``, names that do not
    exist are refused. Raises ``BudgetError`` naming the budget and the field."""
    groups, profiles = (None if x is None else set(x) for x in (groups, profiles))
    return tuple(_parse_one(n, entry, groups, profiles) for n, entry in enumerate(entries, 1))


def _parse_one(n: int, entry: object, groups: set[str] | None, profiles: set[str] | None) -> Budget:
    if not isinstance(entry, dict):
        raise BudgetError(f"budget {n}: must be a mapping (user or group, gpu_hours, per...); got {entry!r}")
    label = repr(entry["name"]) if isinstance(entry.get("name"), str) else str(n)

    def error(field: str, problem: str) -> BudgetError:
        return BudgetError(f"budget {label}: {field}: {problem}")

    unknown = [k for k in entry if k not in FIELDS]
    if unknown:
        raise error(unknown[0], f"is not a budget field; the fields are {', '.join(FIELDS)}")
    who = [k for k in ("user", "group", "every_user") if entry.get(k) not in (None, False)]
    if len(who) != 1:
        raise error("user", "give one of user: NAME, group: NAME or every_user: true")
    for key in ("user", "group", "profile", "name"):
        if entry.get(key) is not None and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise error(key, f"must be a name; got {entry[key]!r}")
    if entry.get("every_user") not in (None, True, False):
        raise error("every_user", f"must be true or false; got {entry['every_user']!r}")
    if groups is not None and entry.get("group") is not None and entry["group"] not in groups:
        raise error("group", f"{entry['group']!r} is not a group of this hub")
    if profiles is not None and entry.get("profile") is not None and entry["profile"] not in profiles:
        raise error("profile", f"{entry['profile']!r} is not a profile; the profiles are {', '.join(sorted(profiles))}")
    hours = entry.get("gpu_hours")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours < 0:
        raise error("gpu_hours", f"must be a number of GPU-hours, 0 or more; got {hours!r}")
    if not isinstance(entry.get("admins_exempt", True), bool):
        raise error("admins_exempt", f"must be true or false; got {entry['admins_exempt']!r}")
    zone_name = entry.get("time_zone")
    try:
        zone = ZoneInfo(zone_name) if isinstance(zone_name, str) else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    if zone is None:
        raise error("time_zone", f"must be a time zone such as 'Europe/Berlin'; got {zone_name!r}")
    return Budget(
        name=entry.get("name") or entry.get("group") or "",
        gpu_hours=Fraction(hours) if isinstance(hours, int) else Fraction(str(hours)),
        period=_period(entry, zone, error),
        user=entry.get("user"),
        group=entry.get("group"),
        profile=entry.get("profile"),
        admins_exempt=entry.get("admins_exempt", True),
    )


def _period(entry: dict, zone: ZoneInfo, error) -> Weekly | Term:
    per = entry.get("per")
    if per == "week":
        for key in ("from", "until"):
            if key in entry:
                raise error(key, "is for per: term; a weekly budget renews every week")
        starts = entry.get("week_starts", "monday")
        day = starts.strip().lower() if isinstance(starts, str) else None
        if day not in WEEKDAYS:
            raise error("week_starts", f"must be a day of the week such as 'monday'; got {starts!r}")
        return Weekly(WEEKDAYS.index(day), zone)
    if per == "term":
        if "week_starts" in entry:
            raise error("week_starts", "is for per: week; a term runs from its first day to its last")
        first, last = _date(entry, "from", error), _date(entry, "until", error)
        if last < first:
            raise error("until", f"{last} is before the term's first day, from: {first}")
        return Term(first, last, zone)
    raise error("per", f"{per!r} is not a period: write 'week' or 'term' (with from and until)")


def _date(entry: dict, field: str, error) -> date:
    value = entry.get(field)
    day = read_date(value)
    if day is None:
        raise error(field, f"must be a date such as 2026-04-13; got {value!r}")
    return day
