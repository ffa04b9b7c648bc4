"""The usage book: what the spawner tells the usage database, at the moments the ledger changes.

- ``assigned`` when a server is given units (before its container starts: a start that fails is
  closed with ``failed_start``). Called again for a holder whose record is open with the same
  units, it does nothing; with other units, the old record closes (``reassigned``) and a new one
  opens, as the ledger gives up a server's units before it assigns new ones.
- ``released`` when the ledger frees them, with the reason (``records.STOP_REASONS``). A holder
  with no open record (released twice, or never recorded) closes nothing.
- ``rebuilt`` when the ledger is rebuilt from the running containers after a hub restart:
  each open record whose holder still runs with the same units stays open; every other open
  record is closed (``hub_restart``); each running holder left without an open record is adopted
  (a record opens for it).

The time of a close at ``rebuilt``: ``at``, the moment of the rebuild, unless ``ended`` gives the
container's own end (Docker's ``State.FinishedAt`` of a container that is still there). Between a
hub's death and its rebuild no one can tell when a server that is gone ended; until the rebuild
the units were out of everyone's reach (the dead hub's ledger held them, and no new one had
looked), so that is what is charged: GPU time is never lost, at the price of charging the time a
hub was down to the servers that ended meanwhile. The time of an adoption: the container's
``started_at`` when given (Docker's ``State.StartedAt``: nothing lost), else ``at``; never before
the holder's last record closed, so that no second is counted twice.

Each method is one transaction; a close is an ``UPDATE ... WHERE stop_us IS NULL``, so two
books on one database (a hub restarting while the old one still ends) never close a record twice.
The clock is injected: each method takes ``at`` (an aware datetime), else reads ``clock()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..gpus.allocation import split_holder
from .records import HUB_RESTART, REASSIGNED, Record, check_reason, from_us, gpu_seconds, share_of, to_us, utc
from .store import UsageRow, UsageStore

_C = UsageRow.__table__.c


@dataclass(frozen=True)
class Running:
    """A server found running when the ledger is rebuilt, as its container's labels describe it."""

    units: tuple[str, ...]
    user: str | None = None  # None: the holder's user
    groups: tuple[str, ...] = ()
    profile: str = ""
    image_digest: str = ""
    share: Fraction | int = 1
    host: str = ""
    started_at: datetime | None = None  # Docker's State.StartedAt; None: adopted from the rebuild


@dataclass(frozen=True)
class Rebuilt:
    """What ``rebuilt`` did: the records kept open, the ones it closed and the ones it opened."""

    kept: tuple[Record, ...] = ()
    closed: tuple[Record, ...] = ()
    adopted: tuple[Record, ...] = ()


def as_record(row: UsageRow) -> Record:
    return Record(
        row.id,
        row.holder,
        row.user,
        row.server,
        tuple(json.loads(row.groups)),
        row.profile,
        row.image_digest,
        tuple(json.loads(row.units)),
        row.share_of,
        row.host,
        from_us(row.start_us),
        None if row.stop_us is None else from_us(row.stop_us),
        row.stop_reason,
        row.gpu_seconds,
        row.utilisation,
        row.peak_memory,
    )


class UsageBook:
    """Opens and closes usage records in ``store``; ``clock()``: now, an aware datetime."""

    def __init__(self, store: UsageStore, clock: Callable[[], datetime] | None = None):
        self.store = store
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def _now(self, at: datetime | None) -> datetime:
        return utc(at if at is not None else self.clock())

    def assigned(
        self,
        holder: str,
        *,
        user: str,
        units: Iterable[str],
        groups: Iterable[str] = (),
        profile: str = "",
        image_digest: str = "",
        share: Fraction | int = 1,
        host: str = "",
        at: datetime | None = None,
    ) -> Record | None:
        """Open the record of ``holder``'s new units; None when it holds none (a CPU server)."""
        units = tuple(units)
        if not units:
            return None
        k, now = share_of(share), self._now(at)
        with self.store.sessions.begin() as session:
            for row in self._open_rows(session, holder):
                if _same(row, units, k):
                    return as_record(row)
                _close(session, row, REASSIGNED, now)
            row = _new_row(holder, user, units, groups, profile, image_digest, k, host, now)
            session.add(row)
            session.flush()
            return as_record(row)

    def released(
        self,
        holder: str,
        reason: str,
        *,
        at: datetime | None = None,
        utilisation: float | None = None,
        peak_memory: int | None = None,
    ) -> Record | None:
        """Close ``holder``'s open record with ``reason``; returns it, or None when none was open.

        ``utilisation`` (mean percent) and ``peak_memory`` (bytes): of the server's own processes,
        where NVML answered.
        """
        check_reason(reason)
        now = self._now(at)
        closed = None
        with self.store.sessions.begin() as session:
            for row in self._open_rows(session, holder):
                closed = _close(session, row, reason, now, utilisation, peak_memory) or closed
        return closed

    def rebuilt(
        self,
        running: Mapping[str, Running | Iterable[str]],
        *,
        at: datetime | None = None,
        ended: Mapping[str, datetime] | None = None,
    ) -> Rebuilt:
        """Match the open records to the servers running after a restart (holder -> ``Running``, or
        just its unit ids). ``ended``: when a holder's container ended, where Docker still knows."""
        now = self._now(at)
        servers = {h: r if isinstance(r, Running) else Running(tuple(r)) for h, r in running.items()}
        servers = {h: r for h, r in servers.items() if r.units}
        kept, closed, adopted = [], [], []
        with self.store.sessions.begin() as session:
            rows = session.scalars(select(UsageRow).where(_C.stop_us.is_(None)).order_by(_C.id)).all()
            for row in rows:
                server = servers.get(row.holder)
                if server is not None and _same(row, server.units, share_of(server.share)):
                    if not any(r.holder == row.holder for r in kept):
                        kept.append(as_record(row))
                        continue
                end = min(utc(ended[row.holder]), now) if ended and row.holder in ended else now
                record = _close(session, row, HUB_RESTART, end)
                if record is not None:
                    closed.append(record)
            for holder, server in servers.items():
                if any(r.holder == holder for r in kept):
                    continue
                start = min(utc(server.started_at), now) if server.started_at is not None else now
                last = session.scalar(select(func.max(_C.stop_us)).where(_C.holder == holder))
                if last is not None and from_us(last) > start:
                    start = from_us(last)
                user = server.user if server.user is not None else split_holder(holder)[0]
                row = _new_row(
                    holder,
                    user,
                    server.units,
                    server.groups,
                    server.profile,
                    server.image_digest,
                    share_of(server.share),
                    server.host,
                    start,
                )
                session.add(row)
                session.flush()
                adopted.append(as_record(row))
        return Rebuilt(tuple(kept), tuple(closed), tuple(adopted))

    def open_records(self) -> list[Record]:
        return self.store.records(open_only=True)

    @staticmethod
    def _open_rows(session: Session, holder: str) -> list[UsageRow]:
        query = select(UsageRow).where(_C.holder == holder, _C.stop_us.is_(None)).order_by(_C.id)
        return list(session.scalars(query))


def _same(row: UsageRow, units: tuple[str, ...], k: int) -> bool:
    return sorted(json.loads(row.units)) == sorted(units) and row.share_of == k


def _new_row(holder, user, units, groups, profile, image_digest, k, host, start: datetime) -> UsageRow:
    return UsageRow(
        holder=holder,
        user=user,
        server=split_holder(holder)[1],
        groups=json.dumps(sorted(set(groups))),
        profile=profile,
        image_digest=image_digest,
        units=json.dumps(list(units)),
        unit_count=len(units),
        share_of=k,
        host=host,
        start_us=to_us(start),
    )


def _close(
    session: Session,
    row: UsageRow,
    reason: str,
    at: datetime,
    utilisation: float | None = None,
    peak_memory: int | None = None,
) -> Record | None:
    """Close ``row`` at ``at`` (never before it started), unless someone closed it already."""
    stop = max(to_us(at), row.start_us)
    seconds = gpu_seconds(row.unit_count, row.share_of, stop - row.start_us)
    values = {"stop_us": stop, "stop_reason": reason, "gpu_seconds": float(seconds)}
    # The figures the GPU culler kept while the server ran stay, unless the caller measured its own.
    if utilisation is not None:
        values["utilisation"] = utilisation
    if peak_memory is not None:
        values["peak_memory"] = peak_memory
    done = session.execute(
        update(UsageRow).where(_C.id == row.id, _C.stop_us.is_(None)).values(**values),
        execution_options={"synchronize_session": False},
    )
    if done.rowcount != 1:
        return None
    session.refresh(row)
    return as_record(row)


__all__ = ["Rebuilt", "Running", "UsageBook"]
