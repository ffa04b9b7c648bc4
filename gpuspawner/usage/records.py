"""A usage record, as the pure parts (budgets, reports) see it, and the arithmetic of GPU-seconds.

A record is one server's holding of GPU units, from the moment they were assigned to the moment
they were released (``stopped_at`` None while it lasts). Its GPU-seconds are
``units × share × seconds``: a whole GPU or MIG instance counts 1 per second, a slot on a GPU
shared by K servers ``1/K`` (``share_of`` = K), as in quotas. They are computed exactly, as a
``Fraction`` of microseconds, so that sums over many records neither drift nor round: what a
record stores as ``gpu_seconds`` (a float, for people and SQL) is that fraction rounded.

Times are aware datetimes in UTC here; the store keeps them as naive UTC, as JupyterHub does.
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

    def exact_gpu_seconds(
        self, now: datetime, since: datetime | None = None, until: datetime | None = None
    ) -> Fraction:
        """Its GPU-seconds within [since, until) (None: unbounded), an open record counted up to ``now``."""
        return gpu_seconds(len(self.units), self.share_of, held_us(self, now, since, until))


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive datetime is refused, since no one can tell which zone it meant."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} has no time zone: give an aware datetime (datetime.now(timezone.utc))")
    return at.astimezone(timezone.utc)


def microseconds(span: timedelta) -> int:
    """A duration in whole microseconds (a timedelta is one exactly)."""
    return span // _ONE_MICROSECOND


def held_us(record: Record, now: datetime, since: datetime | None = None, until: datetime | None = None) -> int:
    """The microseconds ``record`` held its units within [since, until), an open one up to ``now``."""
    end = record.stopped_at or now
    if until is not None and until < end:
        end = until
    start = record.started_at if since is None or since < record.started_at else since
    return microseconds(end - start) if end > start else 0


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
    "check_reason",
    "gpu_seconds",
    "held_us",
    "microseconds",
    "share_of",
    "utc",
]
