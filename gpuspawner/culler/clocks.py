"""The GPU culler's clocks: for each running GPU server, each rule that can stop it, since when it
has been counting and when it would stop the server if nothing changes.

Pure: the culler hands in what it knows at a round (the server's rules and start, since when its
GPUs have been idle, whether someone waits in line for them, its budgets' standings and when one was
first seen spent, the next lab hours on its units that do not serve it) and the time; out come the
clocks, and the JSON the culler writes each round to ``GPUSpawner.clocks_file``, which the dashboard
reads for the students' "My GPU" page and the admins' budget warnings.

A clock's ``stops_at`` is when the rule says the server stops; the culler acts at its first round
after that (``cull_every``), so a stop comes up to a round later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..gpus.allocation import holder_key
from .policy import GPUServer

#: The rules, by the names of their settings.
IDLE = "gpu_idle_timeout"
IDLE_WHEN_WAITING = "gpu_idle_timeout_when_waiting"
RUNTIME = "max_runtime"
BUDGET = "budget"
RESERVATION = "reservation"
RULES = (IDLE, IDLE_WHEN_WAITING, RUNTIME, BUDGET, RESERVATION)

VERSION = 1


@dataclass(frozen=True)
class Clock:
    """One rule on one server."""

    rule: str  # one of RULES
    limit: float = 0.0  # seconds it allows: the idle timeout, the time limit, the budget's grace (0: none)
    since: datetime | None = None  # when it began counting (idle since, started, spent since); None: not now
    stops_at: datetime | None = None  # when it stops the server, as things are now; None: it does not
    applies: bool = True  # False: a rule of some times only (the when-waiting timeout while nobody waits)
    grace: float = 0.0  # the idle rules: Jupyter activity this recent spares the server (jupyter_activity_grace)
    name: str = ""  # whose budget ('' for the user's own), or the lab hours' reservation
    note: str = ""  # the budget's standing, or the lab hours, in the lab's words

    def as_json(self) -> dict:
        return {
            "rule": self.rule,
            "limit": self.limit,
            "since": _iso(self.since),
            "stops_at": _iso(self.stops_at),
            "applies": self.applies,
            "grace": self.grace,
            "name": self.name,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Clock:
        """One clock of the file; raises ValueError (or TypeError) on one that cannot be read."""
        rule = str(data["rule"])
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}")
        return cls(
            rule=rule,
            limit=float(data.get("limit") or 0),
            since=_time(data.get("since")),
            stops_at=_time(data.get("stops_at")),
            applies=bool(data.get("applies", True)),
            grace=float(data.get("grace") or 0),
            name=str(data.get("name") or ""),
            note=str(data.get("note") or ""),
        )


@dataclass(frozen=True)
class ServerClocks:
    """The clocks of one running GPU server."""

    user: str
    server: str  # '' for the default server
    profile: str
    units: tuple[str, ...]
    clocks: tuple[Clock, ...] = ()
    container: str = ""  # its container's id, for the culler only (not written)

    @property
    def holder(self) -> str:
        return holder_key(self.user, self.server)

    def first_stop(self) -> Clock | None:
        """The clock that stops the server soonest, as things are now; None when none would."""
        timed = [c for c in self.clocks if c.stops_at is not None]
        return min(timed, key=lambda c: c.stops_at) if timed else None

    def as_json(self) -> dict:
        return {
            "user": self.user,
            "server": self.server,
            "profile": self.profile,
            "units": list(self.units),
            "clocks": [c.as_json() for c in self.clocks],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ServerClocks:
        return cls(
            user=str(data["user"]),
            server=str(data.get("server") or ""),
            profile=str(data.get("profile") or ""),
            units=tuple(str(u) for u in data.get("units") or ()),
            clocks=tuple(Clock.from_json(c) for c in data.get("clocks") or ()),
        )


@dataclass(frozen=True)
class ClocksReport:
    """The clocks file as the culler last wrote it."""

    time: datetime | None  # when it was written (None: never)
    cull_every: float  # seconds between the culler's rounds
    servers: Mapping[str, ServerClocks]  # by holder ("user/server")
    skipped: int = 0  # entries that could not be read

    def stale(self, now: datetime) -> bool:
        """Whether the culler has missed rounds: nothing written for three rounds, and at least a minute."""
        return self.time is None or (now - self.time).total_seconds() > max(3 * self.cull_every, 60)


def idle_clocks(server: GPUServer, idle_since: datetime | None, wanted: bool, last_activity: datetime | None):
    """The idle rules' clocks: ``idle_since`` is when its GPUs were first seen idle (None: in use now);
    ``wanted``: someone waits in line for one of its units."""
    rules = server.rules
    grace = rules.jupyter_activity_grace

    def stop(limit: float) -> datetime | None:
        if idle_since is None:
            return None
        at = idle_since + timedelta(seconds=limit)
        if grace and last_activity is not None:  # the culler spares it while Jupyter was used this recently
            at = max(at, last_activity + timedelta(seconds=grace))
        return at

    clocks = []
    if rules.gpu_idle_timeout:
        clocks.append(Clock(IDLE, rules.gpu_idle_timeout, idle_since, stop(rules.gpu_idle_timeout), grace=grace))
    if rules.gpu_idle_timeout_when_waiting:
        limit = rules.gpu_idle_timeout_when_waiting
        clocks.append(
            Clock(
                IDLE_WHEN_WAITING,
                limit,
                idle_since if wanted else None,
                stop(limit) if wanted else None,
                applies=wanted,
                grace=grace,
            )
        )
    return clocks


def runtime_clock(server: GPUServer) -> list[Clock]:
    """``max_runtime`` from the hub's start of the server (None: the hub did not say when)."""
    limit = server.rules.max_runtime
    if not limit:
        return []
    started = server.started
    return [Clock(RUNTIME, limit, started, started + timedelta(seconds=limit) if started else None)]


def budget_clocks(standings: Iterable[tuple[object, datetime | None]], grace: float) -> list[Clock]:
    """One clock per budget the server answers to: ``(usage.budgets.Standing, when the culler first saw it
    spent or None)``. Spent: it stops ``grace`` after that; else when the running servers spend the rest,
    and ``grace`` after."""
    clocks = []
    for standing, spent_since in standings:
        budget = standing.budget
        whose = f"{budget.name}'s budget" if budget.name else "Your budget"
        if standing.spent:
            since = spent_since or standing.now
            clocks.append(
                Clock(BUDGET, grace, since, since + timedelta(seconds=grace), name=budget.name, note=standing.refusal())
            )
            continue
        runs_out = standing.runs_out_at
        stops_at = runs_out + timedelta(seconds=grace) if runs_out is not None else None
        clocks.append(Clock(BUDGET, grace, None, stops_at, name=budget.name, note=f"{whose}: {standing.card_line()}"))
    return clocks


def reservation_clock(booking) -> list[Clock]:
    """The next lab hours on its units that do not serve it (a ``reservations.Booking``): it stops at
    their start. None: no such hours ahead."""
    if booking is None:
        return []
    start = datetime.fromtimestamp(booking.window.start, timezone.utc)
    return [Clock(RESERVATION, 0.0, None, start, name=booking.reservation.name, note=booking.window.describe())]


def server_clocks(
    server: GPUServer,
    *,
    idle_since: datetime | None = None,
    wanted: bool = False,
    last_activity: datetime | None = None,
    budgets: Sequence[tuple[object, datetime | None]] = (),
    budget_grace: float = 0.0,
    booking=None,
) -> ServerClocks:
    """Every clock of ``server`` (its ``started`` set from the hub), in the order of ``RULES``."""
    clocks = [
        *idle_clocks(server, idle_since, wanted, last_activity),
        *runtime_clock(server),
        *budget_clocks(budgets, budget_grace),
        *reservation_clock(booking),
    ]
    return ServerClocks(
        server.user, server.server, server.profile, tuple(server.units), tuple(clocks), server.container
    )


def report_json(servers: Iterable[ServerClocks], now: datetime, cull_every: float) -> dict:
    """The clocks file's body."""
    return {
        "version": VERSION,
        "time": _iso(now),
        "cull_every": cull_every,
        "servers": [s.as_json() for s in sorted(servers, key=lambda s: s.holder)],
    }


def parse_report(data: object) -> ClocksReport:
    """The clocks file's body as written by ``report_json``; entries that cannot be read are counted in
    ``skipped``, never raised. Raises ValueError when the body is not a clocks report at all."""
    if not isinstance(data, Mapping) or not isinstance(data.get("servers", []), list):
        raise ValueError("not a clocks report (a JSON object with a list of servers)")
    servers, skipped = {}, 0
    for entry in data.get("servers", []):
        try:
            clocks = ServerClocks.from_json(entry)
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped += 1
            continue
        servers[clocks.holder] = clocks
    try:
        cull_every = float(data.get("cull_every") or 60)
    except (TypeError, ValueError):
        cull_every = 60.0
    return ClocksReport(_time(data.get("time")), cull_every, servers, skipped)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _time(value) -> datetime | None:
    """An aware time of the file; None for none. A time without a timezone is refused (whose clock?)."""
    if value in (None, ""):
        return None
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"a time without a timezone: {value!r}")
    return when
