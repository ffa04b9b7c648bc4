"""A usage record, the part of it budgets and reports read (``Use``), and the arithmetic of GPU-seconds.

A record is one server's holding of GPU units, from the moment they were assigned to the moment
they were released (``stopped_at`` None while it lasts). Its GPU-seconds are
``units × share × seconds``: a whole GPU or MIG instance counts 1 per second, a slot on a GPU
shared by K servers ``1/K`` (``share_of`` = K), as in quotas. They are computed exactly, as a
``Fraction`` of whole microseconds, so that sums over many records neither drift nor round: what
a record stores as ``gpu_seconds`` (a float, for people and SQL) is that fraction rounded.

Times are stored, and read by budgets and reports, as whole microseconds since 1970-01-01 UTC
(``to_us``; Slurm's accounting keeps epoch seconds): a report reads 100,000 of them in a fraction
of a second, and sums them exactly. A ``Record`` shows them as aware datetimes in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import NamedTuple

#: Why a record closed: the small vocabulary the glue must use (``released`` refuses others).
STOP_REASONS = {
    "user": "the user stopped the server (spawn page, hub home page, their own token)",
    "admin": "an admin stopped it (admin page, REST API)",
    "gpu_culler": "the GPU culler stopped it (GPU idle, maximum runtime)",
    "reservation": "a lab-hours reservation began on its units",
    "budget": "its GPU-hour budget was spent",
    "quota": "a quota no longer allowed it",
    "crash": "the container exited on its own (seen by the hub's poll)",
    "failed_start": "the units were assigned but the server never started",
    "reconciler": "the reconciler freed units whose container was gone",
    "hub_restart": "after a hub restart the server was no longer running",
    "reassigned": "the same server was assigned other units (a fresh start)",
}
USER, ADMIN, GPU_CULLER, RESERVATION, BUDGET, QUOTA = "user", "admin", "gpu_culler", "reservation", "budget", "quota"
CRASH, FAILED_START, RECONCILER, HUB_RESTART, REASSIGNED = (
    "crash",
    "failed_start",
    "reconciler",
    "hub_restart",
    "reassigned",
)

MICROSECONDS = 1_000_000
_ONE_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Use(NamedTuple):
    """What budgets and reports read of a record: who, where, how much, from when to when (µs)."""

    id: int
    user: str
    groups: tuple[str, ...]
    profile: str
    unit_count: int
    share_of: int
    start_us: int
    stop_us: int | None  # None while it lasts
    utilisation: float | None = None  # mean % of its own processes (NVML); None: not measured
    peak_memory: int | None = None  # bytes (NVML); None: not measured

    def held_us(self, now_us: int, since_us: int | None = None, until_us: int | None = None) -> int:
        """The microseconds it held its units within [since, until), an open one up to ``now_us``."""
        end = self.stop_us if self.stop_us is not None else now_us
        if until_us is not None and until_us < end:
            end = until_us
        start = self.start_us if since_us is None or since_us < self.start_us else since_us
        return end - start if end > start else 0

    def gpu_seconds(self, now_us: int, since_us: int | None = None, until_us: int | None = None) -> Fraction:
        return gpu_seconds(self.unit_count, self.share_of, self.held_us(now_us, since_us, until_us))


class Record(NamedTuple):
    """One server's holding of GPU units (a NamedTuple: reports read 100,000 of them)."""

    id: int
    holder: str  # "user/server", the ledger's key
    user: str
    server: str
    groups: tuple[str, ...]  # the user's groups when it started
    profile: str
    image_digest: str
    units: tuple[str, ...]  # unit ids: GPU-..., MIG-...
    share_of: int  # K: each unit counts 1/K (1: whole units)
    host: str  # the host, or the Swarm node
    started_at: datetime
    stopped_at: datetime | None = None  # None while the server holds its units
    stop_reason: str | None = None
    gpu_seconds: float | None = None  # filled at close, rounded from ``exact_gpu_seconds``
    utilisation: float | None = None  # mean GPU utilisation of its own processes, percent (NVML)
    peak_memory: int | None = None  # peak GPU memory of its own processes, bytes (NVML)

    @property
    def is_open(self) -> bool:
        return self.stopped_at is None

    @property
    def share(self) -> Fraction:
        return Fraction(1, self.share_of)

    @property
    def use(self) -> Use:
        stop = to_us(self.stopped_at) if self.stopped_at is not None else None
        return Use(
            self.id,
            self.user,
            self.groups,
            self.profile,
            len(self.units),
            self.share_of,
            to_us(self.started_at),
            stop,
            self.utilisation,
            self.peak_memory,
        )

    def exact_gpu_seconds(
        self, now: datetime, since: datetime | None = None, until: datetime | None = None
    ) -> Fraction:
        """Its GPU-seconds within [since, until) (None: unbounded), an open record counted up to ``now``."""
        return self.use.gpu_seconds(to_us(now), _maybe_us(since), _maybe_us(until))


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive datetime is refused, since no one can tell which zone it meant."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} has no time zone: give an aware datetime (datetime.now(timezone.utc))")
    return at.astimezone(timezone.utc)


def to_us(at: datetime) -> int:
    """An aware datetime as whole microseconds since 1970-01-01 UTC (exact: a datetime is whole µs)."""
    return (utc(at) - _EPOCH) // _ONE_MICROSECOND


def from_us(us: int) -> datetime:
    """Microseconds since 1970-01-01 UTC as an aware datetime in UTC."""
    return _EPOCH + timedelta(microseconds=us)


def _maybe_us(at: datetime | None) -> int | None:
    return None if at is None else to_us(at)


def gpu_seconds(unit_count: int, share_of: int, us: int) -> Fraction:
    """``unit_count`` units at 1/``share_of`` each, for ``us`` microseconds: exact GPU-seconds."""
    return Fraction(unit_count * us, share_of * MICROSECONDS)


def share_of(share: object) -> int:
    """K of a share 1/K: 1 for whole units; a Fraction, int or float that is not 1/K is refused."""
    if isinstance(share, bool) or not isinstance(share, (int, float, Fraction)):
        raise ValueError(f"share must be 1 or 1/K (a Fraction such as Fraction(1, 4)); got {share!r}")
    exact = Fraction(share)
    if exact <= 0 or exact > 1 or exact.numerator != 1:
        raise ValueError(f"share must be 1 (whole units) or 1/K for a slot on a GPU shared by K; got {share!r}")
    return exact.denominator


def check_reason(reason: str) -> str:
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}: one of {', '.join(STOP_REASONS)}")
    return reason


__all__ = [
    "STOP_REASONS",
    "Record",
    "Use",
    "check_reason",
    "from_us",
    "gpu_seconds",
    "share_of",
    "to_us",
    "utc",
]
