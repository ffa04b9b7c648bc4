"""The hub's line: the spawns that wait for a unit, glued to the pure ``gpus.queue.WaitQueue``.

One ``Line`` per hub (in ``HubState``). Every call is synchronous and runs on the hub's event
loop, so each is one atomic step over the ledger and the queue: no lock is needed between
``await`` points. A waiting spawn holds a ``Ticket``; the line resolves it with the ``Grant`` (its
units are in the ledger already, and its holder is marked as starting, so that no check of the
ledger against the engine frees them before its container exists) or with the ``Refusal`` that
ends its wait.

The line is told of everything that may free a unit (``serve``): a server stopped or crashed, a
spawn failed, a waiting spawn stopped (``leave``), a ``queue_timeout`` run out (``expire``). After
each change it tells every waiting spawn where it stands (``announce``: the spawn page's progress),
writes the snapshot the dashboard and the culler read (``snapshot_file``), and sets the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Gauge, Histogram

from .gpus.allocation import Ledger
from .gpus.queue import Admission, Grant, Moves, Refusal, Standing, WaitQueue

#: In JupyterHub's own /hub/metrics (prometheus_client's default registry, which the hub serves).
QUEUE_LENGTH = Gauge("gpuspawner_queue_length", "Servers waiting in line for a GPU, per kind of unit.", ["kind"])
QUEUE_WAIT = Histogram(
    "gpuspawner_queue_wait_seconds",
    "How long servers waited in line before they were given their GPUs.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)


@dataclass
class Ticket:
    """A waiting spawn's claim: resolved with its ``Grant`` or ``Refusal``; told where it stands."""

    holder: str
    tell: Callable[[Standing], None]
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Line:
    """The hub's wait queue and the spawns waiting in it."""

    def __init__(
        self,
        queue: WaitQueue | None = None,
        *,
        starting: set[str] | None = None,
        snapshot_file: str = "",
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.queue = queue or WaitQueue()
        self.starting = starting if starting is not None else set()
        self.snapshot_file = snapshot_file
        self.log = log or logging.getLogger(__name__)
        self.clock = clock
        self.tickets: dict[str, Ticket] = {}
        self.ends: dict[str, float] = {}  # holder -> when its server's max_runtime ends: for estimates
        self._kinds_shown: set[str] = set()
        # A new hub's line is empty: the file must not go on showing the one a stopped hub left.
        self._write_snapshot(None, (), self.clock())

    def __contains__(self, holder: str) -> bool:
        return holder in self.queue

    # --- the calls of spawns

    def admit(
        self, ledger: Ledger, holder: str, tell: Callable[[Standing], None] = lambda standing: None, **request
    ) -> tuple[Admission, Ticket | None]:
        """A spawn asks for units (``WaitQueue.admit``'s arguments): its admission, and when it waits,
        its ticket (``tell`` hears where it stands at each change). Those it moved are told."""
        admission = self.queue.admit(ledger, holder, now=self.clock(), **request)
        if admission.assignment is not None and admission.assignment.units:
            self.starting.add(holder)
        ticket = None
        if admission.waiting is not None:
            ticket = self.tickets[holder] = Ticket(holder, tell)
        self._act(ledger, admission.moved)
        if admission.waiting is not None or admission.moved:
            self.announce(ledger)
        return admission, ticket

    def leave(self, ledger: Ledger, ticket: Ticket) -> None:
        """A waiting spawn ends (stopped, cancelled): out of the line, holding nothing.

        Granted in the same moment (its ticket resolved, its start not woken yet): the units go back."""
        holder = ticket.holder
        if self.tickets.get(holder) is ticket:
            del self.tickets[holder]
        left = self.queue.leave(holder) is not None
        if not left and ticket.outcome.done() and isinstance(ticket.outcome.result(), Grant):
            self._give_back(ledger, holder)
        elif not ticket.outcome.done():
            ticket.outcome.cancel()
        self.serve(ledger, changed=True)

    def expire(self, ledger: Ledger) -> None:
        """Refuse everyone whose ``queue_timeout`` has run out."""
        refusals = self.queue.expired(self.clock())
        self._act(ledger, Moves(refused=refusals))
        self.serve(ledger, changed=bool(refusals))

    def serve(self, ledger: Ledger, changed: bool = False) -> Moves:
        """Give the units that are free to those waiting, in order: after anything that may free one."""
        if not self.queue.waiting() and not changed:
            return Moves()
        moves = self.queue.next_grants(ledger, self.clock())
        self._act(ledger, moves)
        if moves or changed:
            self.announce(ledger)
        return moves

    def _act(self, ledger: Ledger, moves: Moves) -> None:
        for grant in moves.granted:
            if grant.assignment.units:
                self.starting.add(grant.entry.holder)
            QUEUE_WAIT.observe(grant.waited)
            self.log.info(
                "Granted %s to %s after %.1f s in line",
                ",".join(grant.assignment.ids) or "no GPU",
                grant.entry.holder,
                grant.waited,
            )
            self._resolve(ledger, grant.entry.holder, grant)
        for refusal in moves.refused:
            self.log.info("%s leaves the line: %s", refusal.entry.holder, refusal.message)
            self._resolve(ledger, refusal.entry.holder, refusal)

    def _resolve(self, ledger: Ledger, holder: str, outcome: Grant | Refusal) -> None:
        ticket = self.tickets.pop(holder, None)
        if ticket is None or ticket.outcome.done():
            if isinstance(outcome, Grant):  # nobody waits for it any more: nothing may stay held
                self.log.warning("Granted units to %s, whose spawn no longer waits: freed again", holder)
                self._give_back(ledger, holder)
            return
        ticket.outcome.set_result(outcome)

    def _give_back(self, ledger: Ledger, holder: str) -> None:
        """Units granted to a spawn that no longer waits for them: free again, the holder not starting."""
        ledger.release(holder)
        self.starting.discard(holder)

    # --- where everyone stands

    def announce(self, ledger: Ledger) -> tuple[Standing, ...]:
        """Tell every waiting spawn where it stands; write the snapshot; set the metrics."""
        now = self.clock()
        standings = self.queue.standings(ledger, now, self.ends)
        for standing in standings:
            ticket = self.tickets.get(standing.entry.holder)
            if ticket is not None and not ticket.outcome.done():
                ticket.tell(standing)
        lengths = self.queue.lengths(ledger)
        for kind in self._kinds_shown - set(lengths):
            QUEUE_LENGTH.labels(kind).set(0)
        for kind, n in lengths.items():
            QUEUE_LENGTH.labels(kind).set(n)
        self._kinds_shown |= set(lengths)
        self._write_snapshot(ledger, standings, now)
        return standings

    def snapshot(self, ledger: Ledger | None, standings: tuple[Standing, ...], now: float) -> dict:
        """What the dashboard and the culler read: who waits for what, since when, and where they stand."""
        return {
            "time": now,
            "waiting": [
                {
                    "user": s.entry.user,
                    "server": s.entry.holder.partition("/")[2],
                    "profile": s.entry.profile,
                    "label": s.entry.what(),
                    "kind": s.kind.describe(),
                    "since": s.entry.since,
                    "deadline": s.entry.deadline,
                    "position": s.position,
                    "in_line": s.in_line,
                    "estimate": s.estimate,
                    "units": sorted(s.kind.units),
                }
                for s in standings
            ],
            "waiting_for": sorted(self.queue.waiting_for(ledger)) if standings and ledger else [],
        }

    def _write_snapshot(self, ledger: Ledger | None, standings: tuple[Standing, ...], now: float) -> None:
        if not self.snapshot_file:
            return
        path = self.snapshot_file
        try:
            folder = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(prefix=".queue-", dir=folder)
            with os.fdopen(fd, "w") as f:
                json.dump(self.snapshot(ledger, standings, now), f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # readers see the old line or the new one, never half of one
        except OSError as e:
            self.log.warning("Could not write the line to %s: %s", path, e)
