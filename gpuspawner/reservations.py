"""Lab hours: units reserved for a course at set times, and what that means for everyone else.

A reservation names who it serves (groups, users), which units (``units``: their ids) or how
many (``gpus``, optionally ``gpu_model``, ``gpu_kind``, ``mig_profile``), which profiles may use
them (none named: any), and when: a weekly schedule in a time zone between two dates (Tuesdays
14:00-16:00 Europe/Berlin, from 2026-04-14 until 2026-07-14), single dates, or both. During a
window the reserved units go only to the requests it serves (a member, with one of its
profiles); outside its windows they are ordinary units. Members may use unreserved units like
anyone.

What is stored, and how it is used:

- ``parse_reservations`` validates the config's list (``c.GPUSpawner.reservations``, or a YAML
  file read by ``ReservationsFile``, re-read when it changes) at once, naming the reservation and
  the field; with the known groups and profiles it refuses names that do not exist. Each
  reservation's windows are computed then, as instants (seconds since the epoch), from the
  wall-clock times in its zone, so a window is right across daylight saving changes.
- ``ReservationBook.place`` puts them on an inventory: named units must exist; counted ones get
  units of their own (the same units serve labs that never overlap; the last units in inventory
  order first, so that ordinary placement, which fills the first ones, rarely meets them); two
  reservations that overlap in time on one unit, or that together ask for more units than fit,
  are refused with a sentence naming both and a time they overlap.
- The book answers the questions of a decision and of the culler, for a time ``now`` given by
  the caller (never read from a clock): which units are reserved now and for whom
  (``reserved_at``), which units a request may not take (``kept_from``; ``gpus.queue`` sets them
  aside), until when a unit is free for someone it will not serve (``free_until``: the spawn
  page's "this GPU is free until 14:00, when ML101 lab starts", and the time a server's
  ``max_runtime`` must end by), which servers must stop at a window's start (``must_stop``), the
  next window per unit (``next_window``, for the spawn page's cards and the dashboard), and the
  next time any of this changes (``next_boundary``: when the hub should let the line move and
  the culler look again).

Wall-clock times that a daylight saving change makes odd: a window is the instants whose local
time reads within it that day. A start or end in the hour the clocks skip is the moment they
jump (a window wholly inside it is empty and is left out: refused when it is a single date); a
start in the hour that happens twice is its first occurrence, an end its second, so that the
window covers both.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .gpus.allocation import Assignment, GPURequest, Requester, _count_kinds
from .gpus.inventory import GPU
from .quantities import is_mig_profile

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


class ReservationError(ValueError):
    """Reservations in config that cannot be used, naming the reservation (or both) and the field."""


@dataclass(frozen=True)
class Window:
    """One stretch of a reservation: from ``start`` to ``end`` (seconds since the epoch), shown in ``zone``."""

    start: float
    end: float
    zone: ZoneInfo

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end

    @property
    def local_start(self) -> datetime:
        return datetime.fromtimestamp(self.start, self.zone)

    @property
    def local_end(self) -> datetime:
        return datetime.fromtimestamp(self.end, self.zone)

    def describe(self) -> str:
        """'Tuesday 14 April 2026, 14:00-16:00 (Europe/Berlin)'."""
        start, end = self.local_start, self.local_end
        until = _clock(end) if end.date() == start.date() or end - start <= timedelta(days=1) else _day(end)
        return f"{_day(start)}, {_clock(start)}-{until} ({self.zone.key})"


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def _day(moment: datetime | date) -> str:
    return f"{WEEKDAYS[moment.weekday()].capitalize()} {moment.day} {moment.strftime('%B %Y')}"


def when(moment: float, now: float, zone: ZoneInfo) -> str:
    """A time as a student reads it, relative to ``now``: '14:00', 'Tuesday 14:00', or 'Tuesday 14 April 14:00'."""
    at, today = datetime.fromtimestamp(moment, zone), datetime.fromtimestamp(now, zone)
    days = (at.date() - today.date()).days
    if days == 0:
        return _clock(at)
    if 0 < days < 7:
        return f"{WEEKDAYS[at.weekday()].capitalize()} {_clock(at)}"
    return f"{WEEKDAYS[at.weekday()].capitalize()} {at.day} {at.strftime('%B')} {_clock(at)}"


@dataclass(frozen=True)
class Reservation:
    """One course's lab hours: who, which units (named, or how many of a kind), which profiles, when."""

    name: str
    zone: ZoneInfo
    windows: tuple[Window, ...]  # in time order, never overlapping
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()  # empty: any profile of a member
    units: tuple[str, ...] = ()  # the units by id; empty: ``request.count`` units that fit ``request``
    request: GPURequest | None = None
    _starts: tuple[float, ...] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_starts", tuple(w.start for w in self.windows))

    def serves(self, requester: Requester, profile: str) -> bool:
        """Is a server of ``requester`` with ``profile`` one this reservation is for?"""
        member = requester.user in self.users or bool(self.groups & requester.groups)
        return member and (not self.profiles or profile in self.profiles)

    def window_at(self, t: float) -> Window | None:
        """The window ``t`` is in, if any."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.windows[i].end:
            return self.windows[i]
        return None

    def next_window(self, t: float) -> Window | None:
        """The window ``t`` is in, else the first after ``t``; None when all are past."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.windows[i].end:
            return self.windows[i]
        return self.windows[i + 1] if i + 1 < len(self.windows) else None

    def describe_who(self) -> str:
        names = [f"group {g}" for g in sorted(self.groups)] + sorted(self.users)
        return ", ".join(names)


@dataclass(frozen=True)
class Booking:
    """A reservation's window on some units: what a unit is reserved for at a time."""

    reservation: Reservation
    window: Window

    def free_until(self, now: float, noun: str = "GPU") -> str:
        """'this GPU is free until 14:00, when ML101 lab starts' (for someone it does not serve)."""
        at = when(self.window.start, now, self.reservation.zone)
        return f"this {noun} is free until {at}, when {self.reservation.name} starts"

    def stopped(self, noun: str = "GPU") -> str:
        """For the stops file and the next spawn page ('Your last server was ...')."""
        w = self.window
        return (
            f"stopped at {_clock(w.local_start)}, when {self.reservation.name} started: its {noun} is reserved"
            f" for it until {_clock(w.local_end)} ({w.zone.key})"
        )

    def stop_reason(self, noun: str = "GPU") -> str:
        """Why a server on a reserved unit was stopped at the window's start."""
        w = self.window
        return (
            f"Your server was stopped at {_clock(w.local_start)}: its {noun} is reserved for"
            f" {self.reservation.name} until {_clock(w.local_end)} ({w.zone.key}). Your files are kept;"
            " start again to get another GPU, if one is free."
        )


@dataclass(frozen=True)
class Stop:
    """A server a window's start displaces: it holds ``units`` reserved for a window that does not serve it."""

    holder: str
    user: str
    units: tuple[str, ...]
    booking: Booking

    @property
    def reason(self) -> str:
        return self.booking.stop_reason()


# --- parsing ---------------------------------------------------------------------------------

_KNOWN = {
    "name",
    "groups",
    "users",
    "profiles",
    "units",
    "gpus",
    "gpu_kind",
    "gpu_model",
    "mig_profile",
    "time_zone",
    "weekly",
    "from",
    "until",
    "dates",
}


def parse_reservations(
    entries: object,
    known_groups: Iterable[str] | None = None,
    known_profiles: Iterable[str] | None = None,
) -> tuple[Reservation, ...]:
    """Validate the whole list of reservations (dicts), as ``c.GPUSpawner.reservations`` or a file holds it.

    ``known_groups``, ``known_profiles``: the names that exist (the hub's groups, the profiles'
    slugs); a reservation naming another is refused. None: not checked. Which units exist is
    checked by ``ReservationBook.place``.
    """
    if entries is None:
        return ()
    if not isinstance(entries, (list, tuple)):
        raise ReservationError(f"reservations must be a list of dicts, got {type(entries).__name__}")
    groups = None if known_groups is None else frozenset(known_groups)
    profiles = None if known_profiles is None else frozenset(known_profiles)
    reservations = tuple(_parse_one(i, entry, groups, profiles) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for r in reservations:
        if r.name in seen:
            raise ReservationError(f"reservation {r.name!r}: field 'name': two reservations share this name")
        seen.add(r.name)
    return reservations


def _parse_one(
    position: int, entry: object, known_groups: frozenset[str] | None, known_profiles: frozenset[str] | None
) -> Reservation:
    if not isinstance(entry, dict):
        raise ReservationError(f"reservation #{position + 1}: must be a dict, got {type(entry).__name__}")
    name = entry.get("name")
    label = f"reservation {name!r}" if isinstance(name, str) and name.strip() else f"reservation #{position + 1}"

    def error(field: str, problem: str) -> ReservationError:
        return ReservationError(f"{label}: field {field!r}: {problem}")

    if not isinstance(name, str) or not name.strip():
        raise error("name", f"is required: a name people know it by, such as 'ML101 lab'; got {name!r}")
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise error(unknown[0], f"is not a reservation field; known fields: {', '.join(sorted(_KNOWN))}")

    who = {}
    for field in ("groups", "users", "profiles"):
        value = entry.get(field) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) and v for v in value):
            raise error(field, f"must be a list of names, got {value!r}")
        who[field] = frozenset(value)
    if not who["groups"] and not who["users"]:
        raise error("groups", "a reservation serves someone: name its 'groups' or 'users'")
    if known_groups is not None:
        missing = sorted(who["groups"] - known_groups)
        if missing:
            raise error(
                "groups", f"no group is called {missing[0]!r}; the groups are: {', '.join(sorted(known_groups))}"
            )
    if known_profiles is not None:
        missing = sorted(who["profiles"] - known_profiles)
        if missing:
            raise error(
                "profiles",
                f"no profile has the slug {missing[0]!r}; the profiles are: {', '.join(sorted(known_profiles))}",
            )

    units, request = _parse_units(entry, error)

    zone_name = entry.get("time_zone")
    if not isinstance(zone_name, str) or not zone_name:
        raise error("time_zone", f"is required: a time zone such as 'Europe/Berlin'; got {zone_name!r}")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise error("time_zone", f"{zone_name!r} is not a time zone; write one such as 'Europe/Berlin'") from None

    windows = _parse_weekly(entry, zone, error) + _parse_dates(entry.get("dates"), zone, error)
    if "weekly" not in entry and "dates" not in entry:
        raise error("weekly", "a reservation needs a time: 'weekly' (with 'from' and 'until'), 'dates', or both")
    if not windows:
        raise error("weekly" if entry.get("weekly") else "dates", "gives no window at all")
    return Reservation(
        name=name.strip(),
        zone=zone,
        windows=_merged(windows),
        groups=who["groups"],
        users=who["users"],
        profiles=who["profiles"],
        units=units,
        request=request,
    )


def _parse_units(entry: dict, error) -> tuple[tuple[str, ...], GPURequest | None]:
    constraints = [f for f in ("gpu_kind", "gpu_model", "mig_profile") if f in entry]
    if "units" in entry:
        if "gpus" in entry:
            raise error("units", "name the units or say how many ('gpus'), not both")
        if constraints:
            raise error(constraints[0], "chooses among units for 'gpus'; with 'units' named, leave it out")
        units = entry["units"]
        if isinstance(units, str):
            units = [units]
        if not isinstance(units, (list, tuple)) or not units or not all(isinstance(u, str) and u for u in units):
            raise error("units", f"must be a list of unit ids (GPU-... or MIG-...), got {units!r}")
        if len(set(units)) != len(units):
            raise error("units", "names a unit twice")
        return tuple(units), None
    gpus = entry.get("gpus")
    if gpus is None:
        raise error("gpus", "is required: how many units (or name them in 'units')")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise error("gpus", f"must be a whole number of units >= 1, got {gpus!r}")
    mig_profile = entry.get("mig_profile", "")
    if not isinstance(mig_profile, str) or (mig_profile and not is_mig_profile(mig_profile)):
        raise error("mig_profile", f"must be a MIG profile such as '1g.10gb', got {mig_profile!r}")
    kind = entry.get("gpu_kind", "mig" if mig_profile else "gpu")
    if kind not in ("gpu", "mig", "any"):
        raise error("gpu_kind", f"must be 'gpu' (whole GPUs), 'mig' (MIG instances) or 'any', got {kind!r}")
    if mig_profile and kind == "gpu":
        raise error("gpu_kind", "is 'gpu' (whole GPUs), but 'mig_profile' asks for MIG instances")
    model = entry.get("gpu_model", "")
    if not isinstance(model, str):
        raise error("gpu_model", f"must be a part of a GPU name such as 'A100', got {model!r}")
    return (), GPURequest(count=gpus, kind=kind, model=model.strip(), mig_profile=mig_profile)


def _parse_weekly(entry: dict, zone: ZoneInfo, error) -> list[Window]:
    weekly = entry.get("weekly")
    if weekly is None:
        for field in ("from", "until"):
            if field in entry:
                raise error(field, "bounds the 'weekly' schedule, and there is none")
        return []
    if isinstance(weekly, dict):
        weekly = [weekly]
    if not isinstance(weekly, (list, tuple)) or not weekly:
        raise error("weekly", f"must be a list of {{days, start, end}}, got {weekly!r}")
    first = _date(entry.get("from"), "from", error, required="the first day of the weekly schedule")
    last = _date(entry.get("until"), "until", error, required="the last day of the weekly schedule")
    if last < first:
        raise error("until", f"{last.isoformat()} is before 'from' ({first.isoformat()})")
    windows = []
    for item in weekly:
        if not isinstance(item, dict) or not {"days", "start", "end"} <= item.keys():
            raise error("weekly", f"each entry needs 'days', 'start' and 'end', got {item!r}")
        if item.keys() - {"days", "start", "end"}:
            raise error("weekly", f"unknown key(s) {sorted(item.keys() - {'days', 'start', 'end'})}")
        days = item["days"]
        if isinstance(days, str):
            days = [days]
        if not isinstance(days, (list, tuple)) or not days:
            raise error("weekly", f"'days' must be weekdays such as [tuesday], got {days!r}")
        numbers = set()
        for day in days:
            number = _weekday(day)
            if number is None:
                raise error("weekly", f"{day!r} is not a weekday; write one of {', '.join(WEEKDAYS)}")
            numbers.add(number)
        start, end = _span(item, "weekly", error)
        falls = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        falls = [d for d in falls if d.weekday() in numbers]
        if not falls:
            names = " or ".join(WEEKDAYS[n].capitalize() for n in sorted(numbers))
            raise error("weekly", f"no {names} falls between 'from' {first.isoformat()} and 'until' {last.isoformat()}")
        for day in falls:
            window = _window(day, start, end, zone)
            if window is not None:  # None: wholly in the hour the clocks skip that day
                windows.append(window)
    return windows


def _parse_dates(dates: object, zone: ZoneInfo, error) -> list[Window]:
    if dates is None:
        return []
    if isinstance(dates, dict):
        dates = [dates]
    if not isinstance(dates, (list, tuple)) or not dates:
        raise error("dates", f"must be a list of {{day, start, end}} or {{start, end}}, got {dates!r}")
    windows = []
    for item in dates:
        if not isinstance(item, dict) or not {"start", "end"} <= item.keys():
            raise error("dates", f"each entry needs 'start' and 'end' (and 'day' for times of one day), got {item!r}")
        if item.keys() - {"day", "start", "end"}:
            raise error("dates", f"unknown key(s) {sorted(item.keys() - {'day', 'start', 'end'})}")
        if "day" in item:
            day = _date(item["day"], "dates", error)
            start, end = _span(item, "dates", error)
            window = _window(day, start, end, zone)
            what = f"{day.isoformat()} {start.strftime('%H:%M')}-{'24:00' if end is None else end.strftime('%H:%M')}"
        else:
            begin = _datetime(item["start"], error)
            finish = _datetime(item["end"], error)
            what = f"{item['start']} to {item['end']}"
            start_at, end_at = _instant(begin, zone, end=False), _instant(finish, zone, end=True)
            window = Window(start_at, end_at, zone) if end_at > start_at else None
            both_local = begin.tzinfo is None and finish.tzinfo is None
            if window is None and (not both_local or finish <= begin):
                raise error("dates", f"{what}: the end is not after the start")
        if window is None:
            raise error("dates", f"{what} lies wholly in the hour the clocks skip in {zone.key}: it never happens")
        windows.append(window)
    return windows


def _weekday(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    for number, name in enumerate(WEEKDAYS):
        if len(text) >= 3 and name.startswith(text):
            return number
    return None


def read_date(value: object) -> date | None:
    """A day as config gives it: a YAML date, or '2026-04-14'; None when it is not one."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _date(value: object, field: str, error, required: str = "") -> date:
    if value is None and required:
        raise error(field, f"is required: {required}, such as 2026-04-14")
    day = read_date(value)
    if day is None:
        raise error(field, f"{value!r} is not a date; write it as 2026-04-14")
    return day


def _datetime(value: object, error) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise error("dates", f"{value!r} is not a date and time; write it as '2026-05-02 09:00' (or give 'day')")


def _time(value: object, field: str, error, end: bool) -> time | None:
    """A wall-clock time; None for an end at '24:00' (midnight after the day)."""
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        m = _TIME.match(value.strip())
        if m and (m.group(1) != "24" or (end and m.group(2) == "00")):
            if m.group(1) == "24":
                return None
            return time(int(m.group(1)), int(m.group(2)))
    hint = " (in quotes in YAML: unquoted, 14:00 is read as a number)" if isinstance(value, int) else ""
    raise error(field, f"{value!r} is not a time of day; write it as '14:00'{hint}")


def _span(item: dict, field: str, error) -> tuple[time, time | None]:
    start = _time(item["start"], field, error, end=False)
    end = _time(item["end"], field, error, end=True)
    if end is not None and end <= start:
        raise error(
            field,
            f"ends at {end.strftime('%H:%M')}, not after its start at {start.strftime('%H:%M')}"
            " (a window ends on its own day; '24:00' is midnight)",
        )
    return start, end


def _window(day: date, start: time, end: time | None, zone: ZoneInfo) -> Window | None:
    """The window from ``start`` to ``end`` (None: midnight) on ``day`` in ``zone``; None when it never happens."""
    begin = datetime.combine(day, start)
    finish = datetime.combine(day + timedelta(days=1), time()) if end is None else datetime.combine(day, end)
    start_at, end_at = _instant(begin, zone, end=False), _instant(finish, zone, end=True)
    return Window(start_at, end_at, zone) if end_at > start_at else None


def _instant(wall: datetime, zone: ZoneInfo, *, end: bool) -> float:
    """The instant a wall-clock time in ``zone`` stands for, as a window's ``start`` or ``end``.

    A time that happens twice (the clocks go back): the first for a start, the second for an
    end. A time that never happens (the clocks jump over it): the moment of the jump.
    """
    if wall.tzinfo is not None:
        return wall.timestamp()
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    second = wall.replace(tzinfo=zone, fold=1).timestamp()
    if first == second:
        return first
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == wall:  # it happens twice
        return max(first, second) if end else min(first, second)
    # In the gap: the offset changes somewhere between the two readings; find the second it does.
    low, high = int(min(first, second)), int(max(first, second)) + 1
    after = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return float(high)


def _merged(windows: list[Window]) -> tuple[Window, ...]:
    """In time order, overlapping or touching windows joined into one."""
    out: list[Window] = []
    for w in sorted(windows, key=lambda w: w.start):
        if out and w.start <= out[-1].end:
            if w.end > out[-1].end:
                out[-1] = Window(out[-1].start, w.end, out[-1].zone)
        else:
            out.append(w)
    return tuple(out)


def first_overlap(a: Iterable[Window], b: Iterable[Window]) -> Window | None:
    """The first stretch of time two reservations' windows share (shown in ``a``'s zone), or None."""
    a, b = list(a), list(b)
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i].start, b[j].start), min(a[i].end, b[j].end)
        if start < end:
            return Window(start, end, a[i].zone)
        if a[i].end <= b[j].end:
            i += 1
        else:
            j += 1
    return None


# --- the book: reservations placed on units ----------------------------------------------------


def _names(reservations: Iterable[Reservation]) -> str:
    quoted = [repr(r.name) for r in reservations]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


class ReservationBook:
    """Reservations placed on the units of an inventory, and the questions asked of them at a time ``now``.

    Made by ``place``; empty (``ReservationBook()``) where there are none. Every question
    takes ``now`` in seconds since the epoch.
    """

    def __init__(self, reservations: Iterable[Reservation] = (), units: Mapping[str, tuple[str, ...]] | None = None):
        self.reservations = tuple(reservations)
        self.units: dict[str, tuple[str, ...]] = dict(units or {})  # reservation name -> its unit ids
        self._on_unit: dict[str, tuple[Reservation, ...]] = {}
        for r in self.reservations:
            for unit in self.units.get(r.name, ()):
                self._on_unit[unit] = self._on_unit.get(unit, ()) + (r,)
        self.reserved_units = frozenset(self._on_unit)

    def __bool__(self) -> bool:
        return bool(self.reservations)

    @classmethod
    def place(cls, reservations: Iterable[Reservation], inventory: Iterable[GPU]) -> ReservationBook:
        """Put ``reservations`` on the units of ``inventory``; ``ReservationError`` when they do not fit.

        Named units must be in the inventory, and no unit may serve two reservations at one time.
        A counted reservation gets that many units that fit it, among those no reservation
        overlapping it in time has: the units of labs that never overlap first, then the last in
        inventory order.
        """
        reservations = tuple(reservations)
        inventory = tuple(inventory)
        order = {u.id: n for n, u in enumerate(inventory)}
        overlaps: dict[tuple[str, str], Window | None] = {}

        def overlap(a: Reservation, b: Reservation) -> Window | None:
            key = (a.name, b.name)
            if key not in overlaps:
                overlaps[key] = first_overlap(a.windows, b.windows)
            return overlaps[key]

        placed: dict[str, tuple[str, ...]] = {}
        for r in reservations:
            if not r.units:
                continue
            for unit in r.units:
                if unit not in order:
                    raise ReservationError(
                        f"reservation {r.name!r}: field 'units': {unit!r} is not one of this hub's units"
                        f" ({', '.join(order) or 'it has none'})"
                    )
            for other in placed:
                o = next(x for x in reservations if x.name == other)
                shared = sorted(set(r.units) & set(placed[other]), key=order.get)
                when_both = overlap(o, r) if shared else None
                if when_both is not None:
                    raise ReservationError(
                        f"reservations {o.name!r} and {r.name!r} both reserve unit {shared[0]!r} on"
                        f" {when_both.describe()}: a unit serves one reservation at a time"
                    )
            placed[r.name] = r.units

        counted = [r for r in reservations if not r.units]
        fitting = {r.name: [u for u in inventory if r.request.matches(u)] for r in counted}
        for r in sorted(counted, key=lambda r: len(fitting[r.name])):
            want = r.request.count
            if len(fitting[r.name]) < want:
                raise ReservationError(
                    f"reservation {r.name!r}: field 'gpus': asks for {r.request.describe()},"
                    f" and this hub has {len(fitting[r.name])} that fit"
                )
            clashing = [o for o in reservations if o.name in placed and overlap(r, o) is not None]
            taken = {unit for o in clashing for unit in placed[o.name]}
            free = [u for u in fitting[r.name] if u.id not in taken]
            if len(free) < want:
                rivals = [o for o in clashing if set(placed[o.name]) & {u.id for u in fitting[r.name]}]
                when_both = overlap(r, rivals[0])
                raise ReservationError(
                    f"reservations {_names(rivals + [r])} overlap ({when_both.describe()}) and together ask for"
                    f" more units than fit: {r.name!r} needs {r.request.describe()} and finds"
                    f" {len(free)} of the {len(fitting[r.name])} that fit ({_count_kinds(fitting[r.name])})"
                    " not reserved by the others"
                )
            elsewhere = {unit for units in placed.values() for unit in units}
            free.sort(key=lambda u: (u.id not in elsewhere, -order[u.id]))
            placed[r.name] = tuple(sorted((u.id for u in free[:want]), key=order.get))
        return cls(reservations, placed)

    # --- questions at a time

    def active(self, now: float) -> tuple[Booking, ...]:
        """The reservations in a window at ``now``."""
        out = []
        for r in self.reservations:
            window = r.window_at(now)
            if window is not None:
                out.append(Booking(r, window))
        return tuple(out)

    def reserved_at(self, now: float) -> dict[str, Booking]:
        """Unit id -> the booking it is reserved for at ``now`` (units in no window are left out)."""
        return {unit: b for b in self.active(now) for unit in self.units.get(b.reservation.name, ())}

    def kept_from(self, requester: Requester, profile: str, now: float) -> frozenset[str]:
        """The units a server of ``requester`` with ``profile`` may not take at ``now``: reserved for a window
        that does not serve it."""
        kept: set[str] = set()
        for r in self.reservations:
            if r.window_at(now) is not None and not r.serves(requester, profile):
                kept.update(self.units.get(r.name, ()))
        return frozenset(kept)

    def may_take(self, unit: str, requester: Requester, profile: str, now: float) -> bool:
        """May a server of ``requester`` with ``profile`` take ``unit`` at ``now``?"""
        return all(r.window_at(now) is None or r.serves(requester, profile) for r in self._on_unit.get(unit, ()))

    def next_window(self, unit: str, now: float) -> Booking | None:
        """The booking ``unit`` is in at ``now``, else its next one; None when it has none ahead."""
        best: Booking | None = None
        for r in self._on_unit.get(unit, ()):
            window = r.next_window(now)
            if window is not None and (best is None or window.start < best.window.start):
                best = Booking(r, window)
        return best

    def describe_unit(self, unit: str, now: float) -> str:
        """For the dashboard and the spawn page: 'reserved for ML101 lab until 16:00 (Europe/Berlin)', or
        'next lab hours: ML101 lab, Tuesday 14 April 2026, 14:00-16:00 (Europe/Berlin)'; '' when none ahead."""
        booking = self.next_window(unit, now)
        if booking is None:
            return ""
        w = booking.window
        if now in w:
            return f"reserved for {booking.reservation.name} until {_clock(w.local_end)} ({w.zone.key})"
        return f"next lab hours: {booking.reservation.name}, {w.describe()}"

    def describe_units(self, units: Iterable[str], requester: Requester, profile: str, now: float) -> str:
        """For a spawn page's card (the units its profile fits): 'Lab hours: 2 reserved for ML101 lab
        (yours) until 16:00 (Europe/Berlin)', else the next window on them; '' when none ahead."""
        units = tuple(units)
        reserved = self.reserved_at(now)
        counts: dict[str, list] = {}
        for unit in units:
            booking = reserved.get(unit)
            if booking is not None:
                counts.setdefault(booking.reservation.name, [booking, 0])[1] += 1
        parts = []
        for name, (booking, n) in counts.items():
            yours = " (yours)" if booking.reservation.serves(requester, profile) else ""
            w = booking.window
            parts.append(f"{n} reserved for {name}{yours} until {_clock(w.local_end)} ({w.zone.key})")
        if not parts:
            ahead = [b for b in (self.next_window(u, now) for u in units) if b is not None]
            if ahead:
                first = min(ahead, key=lambda b: b.window.start)
                yours = " (yours)" if first.reservation.serves(requester, profile) else ""
                parts.append(f"next: {first.reservation.name}{yours}, {first.window.describe()}")
        return "Lab hours: " + "; ".join(parts) if parts else ""

    def free_until(
        self, units: Iterable[str], requester: Requester, profile: str, now: float, horizon: float | None = None
    ) -> Booking | None:
        """The first window, at or after ``now``, on any of ``units``, that will not serve a server of
        ``requester`` with ``profile``: that server must end by its start. None when there is none
        (before ``now + horizon``, when given)."""
        best: Booking | None = None
        for unit in units:
            for r in self._on_unit.get(unit, ()):
                if r.serves(requester, profile):
                    continue
                window = r.next_window(now)
                if window is None or (horizon is not None and window.start > now + horizon):
                    continue
                if best is None or window.start < best.window.start:
                    best = Booking(r, window)
        return best

    def soon_kept_from(self, requester: Requester, profile: str, now: float, horizon: float) -> frozenset[str]:
        """The units whose next window that does not serve ``requester`` with ``profile`` starts by
        ``now + horizon``: a server there would be cut short."""
        soon: set[str] = set()
        for r in self.reservations:
            if r.serves(requester, profile):
                continue
            window = r.next_window(now)
            if window is not None and window.start <= now + horizon:
                soon.update(self.units.get(r.name, ()))
        return frozenset(soon)

    def must_stop(
        self, holdings: Iterable[Assignment], now: float, profile_of: Callable[[str], str]
    ) -> tuple[Stop, ...]:
        """The servers on units reserved at ``now`` for a window that does not serve them: the culler stops
        them (their homes are kept). ``profile_of``: a holder's profile slug."""
        reserved = self.reserved_at(now)
        if not reserved:
            return ()
        stops = []
        for a in holdings:
            hit = [(u.id, reserved[u.id]) for u in a.units if u.id in reserved]
            if not hit:
                continue
            requester = Requester(a.user, a.groups)
            profile = profile_of(a.holder)
            against = [(unit, b) for unit, b in hit if not b.reservation.serves(requester, profile)]
            if against:
                stops.append(Stop(a.holder, a.user, tuple(unit for unit, _ in against), against[0][1]))
        return tuple(stops)

    def next_start(self, now: float) -> float | None:
        """When the next window of any reservation starts, after ``now``; None when none is ahead."""
        return min((w.start for r in self.reservations for w in r.windows if w.start > now), default=None)

    def next_boundary(self, now: float) -> float | None:
        """The next time after ``now`` a window starts or ends: when the line should move and the culler look."""
        best: float | None = None
        for r in self.reservations:
            window = r.next_window(now)
            if window is None:
                continue
            moment = window.start if window.start > now else window.end
            if best is None or moment < best:
                best = moment
        return best


class ReservationsFile:
    """Reservations read from a YAML file (a list, or a dict with ``reservations:``), re-read when it
    changes or when the known groups or profiles do.

    A broken edit keeps the last good reservations and logs why; the first read must succeed.
    """

    def __init__(self, path: str, log: logging.Logger | None = None):
        self.path = Path(path)
        self.log = log or logging.getLogger("gpuspawner")
        self._stamp: tuple | None = None
        self._reservations: tuple[Reservation, ...] | None = None

    def load(
        self, known_groups: Iterable[str] | None = None, known_profiles: Iterable[str] | None = None
    ) -> tuple[Reservation, ...]:
        groups = None if known_groups is None else frozenset(known_groups)
        profiles = None if known_profiles is None else frozenset(known_profiles)
        try:
            stat = self.path.stat()
        except OSError as e:
            return self._keep(f"cannot read {self.path}: {e.strerror}")
        stamp = (stat.st_mtime_ns, stat.st_size, groups, profiles)
        if stamp == self._stamp and self._reservations is not None:
            return self._reservations
        try:
            data = yaml.safe_load(self.path.read_text())
            if isinstance(data, dict) and "reservations" in data:
                data = data["reservations"]
            reservations = parse_reservations(data, groups, profiles)
        except (OSError, yaml.YAMLError, ReservationError) as e:
            self._stamp = stamp  # do not re-parse (and re-log) until something changes
            return self._keep(f"{self.path}: {e}")
        if self._reservations is not None:
            self.log.info("Reservations reloaded from %s: %s", self.path, ", ".join(r.name for r in reservations))
        self._stamp, self._reservations = stamp, reservations
        return reservations

    def _keep(self, why: str) -> tuple[Reservation, ...]:
        if self._reservations is None:
            raise ReservationError(why)
        self.log.error("Keeping the last good reservations: %s", why)
        return self._reservations
