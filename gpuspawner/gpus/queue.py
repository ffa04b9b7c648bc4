"""The wait queue: students waiting in line for a kind of unit, instead of pressing Start again.

Pure, like ``allocation``: no Docker, no clock (every call takes ``now``, seconds since the
epoch), no I/O. The hub keeps one ``WaitQueue`` beside its ``Ledger`` and calls it under the same
lock.

**What a kind is.** A request (``GPURequest``) fits the units it ``matches``: whole GPUs or MIG
instances, of a model, with enough memory, of a MIG profile, on the request's node when its
decision is limited to one (a Swarm home). Its *kind* is that set of units and whether it takes
them whole or as a shared slot (``Kind``). Two profiles asking for the same thing stand in one
line. Kinds may overlap (a request for "a GPU or MIG instance" and one for "a MIG 1g.10gb
instance" share the instances): a student's *line* is everyone waiting for a kind that shares a
unit with theirs, and a freed unit goes to the first waiting request, over all lines, that it fits.

**Who may wait.** Only a request refused because every unit it fits is in use now
(``allocation.NoFreeUnit``). A quota or a cap, a request no unit of the hub (or of its node)
could ever meet, a forbidden profile or an unmet CUDA version are refused at once, as before:
``admit`` answers with the plain ``NoCapacity`` (the spawner checks profiles and CUDA before it
asks). The two are told apart by their type, not by their message.

**The order.** First come, first served, with one fairness rule: a student who holds a unit of
the kind they wait for (with another server) waits behind everyone who holds none. It is judged
from the ledger at each decision, so a student whose other server stops moves up.

**The rules of a decision** (``next_grants``, and ``admit`` for a new request), walking the line
in order:

- A waiting request that can be met now (its units, its quotas and caps, on its node) is granted:
  its units are recorded in the ledger at once, and it leaves the line.
- One that cannot be met for lack of units keeps the free units it fits from everyone after it:
  a unit that frees goes to the first waiting request it fits, and stays free (not held) while
  that request waits for more (a request for 2 GPUs behind which others wait for 1). One waiting
  for whole units also keeps as many partly shared units as it still lacks (the fewest-shared
  first), so that they drain to it instead of taking new shared slots. A new request comes after
  everyone in the line (or after those who hold none, if it holds none), so it never takes a
  unit a request waiting before it fits.
- One that can no longer be met for another reason (a classmate's server filled the group's
  quota) leaves the line refused, with the reason a new request would get.
- Units reserved at ``now`` for a lab that does not serve a request (``reservations``) are kept
  from it; units a lab will take before the request's ``runtime`` would end are taken only when
  nothing else fits, so that fewer servers are stopped or cut short at a window's start.
- The walk is made again until nothing moves: a grant may fill a quota, or give a student a
  unit of the kind their other server waits for, which changes what those passed over may have.

Waiting holds nothing: neither units nor CPUs nor memory, in the ledger or anywhere.

Cost: only the lines of kinds with a unit open (free, or with room for a shared slot) are
walked, in order, and only until no open unit is left for anyone, so a decision costs about the
same with 1,000 waiting as with 10 (``benchmarks/allocation.py``). ``standings`` is the one call
that looks at everyone (for 600 waiting, a few ms): the glue computes it once when the line
changes and hands each waiting spawn its own, rather than once per progress page.

**What is stored:** per waiting server (``Waiting``), its holder key, who asks and what
(requester, request, profile slug and a label for people), its node, the CPUs and memory it
would count, when it came, its deadline (``queue_timeout``) and its ``max_runtime``. Nothing is
written anywhere: the line is the hub's, in memory.

**The glue** (not here) is meant to call it like this, always under the hub's lock:

- *spawn*: ``admit(ledger, holder, request, requester, now, wait=profile queues,
  timeout=profile's queue_timeout, ...)``. It returns the assignment (start the container as
  today), the ``Waiting`` entry (the spawn then reports ``standing(...).describe()`` as its
  progress until a ``Grant`` or a ``Refusal`` for it arrives, and keeps waiting: JupyterHub's
  ``start_timeout`` must be longer than ``queue_timeout``), or the ``NoCapacity`` that is the
  spawn's refusal, as today.
- after *anything that may free or unblock a unit*: a server stops or crashes, a waiting spawn is
  stopped (``leave``), a deadline passes (``expired``), a window starts or ends
  (``reservations.next_boundary``), the inventory or the quarantine changes: ``next_grants``.
  Every ``Grant`` wakes its waiting spawn with its assignment (and ``Grant.until``: the window it
  must end by, to cut its ``max_runtime``); every ``Refusal`` fails it with its message. ``admit``
  returns the same for the others it moved on the way (``Admission.moved``).
- *timers*: at ``next_deadline()`` call ``expired(now)``, and at the book's ``next_boundary``
  let the culler stop ``must_stop`` servers, then ``next_grants``.
- *dashboard and metrics*: ``order`` (who waits for what, since when), ``standings`` (positions,
  estimates), ``lengths`` (per kind); ``Grant.waited`` for a wait-time histogram.
- *culler*: ``waiting_for`` tells which units someone waits for, for a shorter GPU-idle limit
  (``gpu_idle_timeout_when_waiting``) on servers holding them.
- *restart*: the line is not kept. A waiting spawn has a server in JupyterHub's database but
  no container: the restarted hub polls it, finds it stopped ("appears to have stopped while the
  Hub was down") and stops it, so the student sees a stopped server and starts again, standing
  in a new line in the order they ask. Nobody holds anything while waiting, so the rebuilt
  ledger (from the containers' labels) has nothing of theirs and nothing is left held.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ..quantities import format_duration
from .allocation import (
    Assignment,
    GPURequest,
    Ledger,
    NoCapacity,
    NoFreeUnit,
    Requester,
    _count_units,
)
from .resources import NO_RESOURCES, ServerResources

if TYPE_CHECKING:  # the book sits above the allocation core; the queue asks it only the questions below
    from ..reservations import Booking, ReservationBook

#: How far ahead a request with no ``max_runtime`` looks for lab hours it would meet (one week's labs).
LOOKAHEAD = 7 * 86400.0


@dataclass(frozen=True)
class Kind:
    """What a request can use: the units it fits (on its node), taken whole or as shared slots."""

    units: frozenset[str]
    shared: bool
    text: str  # '8 NVIDIA A100 GPUs', per node when on several

    def describe(self) -> str:
        return f"shared slots on {self.text}" if self.shared else self.text


@dataclass(frozen=True)
class Waiting:
    """One server waiting in line. Holds nothing."""

    holder: str
    requester: Requester
    request: GPURequest
    since: float
    seq: int  # arrival order
    profile: str = ""  # its profile's slug (reservations serve profiles)
    label: str = ""  # what it waits for, for people: the profile's name ("ML101")
    node: str | None = None  # its decision is limited to this node
    resources: ServerResources = NO_RESOURCES
    deadline: float | None = None  # since + queue_timeout; None: no limit
    runtime: float | None = None  # its max_runtime once started; None: none

    @property
    def user(self) -> str:
        return self.requester.user

    def what(self) -> str:
        return self.label or self.request.describe()


@dataclass(frozen=True)
class Grant:
    """A waiting server given its units (recorded in the ledger): its spawn goes on."""

    entry: Waiting
    assignment: Assignment
    at: float
    until: Booking | None = None  # the first lab window on its units that will not serve it

    @property
    def waited(self) -> float:
        return self.at - self.entry.since


@dataclass(frozen=True)
class Refusal:
    """A waiting server that left the line without units: its spawn fails with ``message``."""

    entry: Waiting
    reason: str  # a NoCapacity reason ('user_quota', ...) or 'queue_timeout'
    why: NoCapacity | str  # the ledger's refusal (its sentence is made when read), or the sentence

    @property
    def message(self) -> str:
        """For the student: 'ML101: Your group 'ml101' is using 4 of its 4 GPU(s). ...'."""
        return f"{self.entry.what()}: {self.why if isinstance(self.why, str) else self.why.message}"


@dataclass(frozen=True)
class Moves:
    """What a decision did to those waiting: some granted, some refused."""

    granted: tuple[Grant, ...] = ()
    refused: tuple[Refusal, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.granted or self.refused)


@dataclass(frozen=True)
class Admission:
    """A new request's answer, one of: its units now (``assignment``), its place in line (``waiting``),
    or why it is refused (``refusal``: the spawn's refusal, as without a queue). And in every case,
    what it moved on the way for those already waiting (``moved``), which the glue must act on."""

    assignment: Assignment | None = None
    waiting: Waiting | None = None
    refusal: NoCapacity | None = None
    moved: Moves = Moves()
    until: Booking | None = None  # granted now: the first lab window on its units that will not serve it


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Standing:
    """Where one waiting server stands, for its progress page and the dashboard."""

    entry: Waiting
    kind: Kind
    position: int  # 1: next in its line
    in_line: int  # how many wait in its line, itself included
    in_use: int  # of its kind's units, those held (a shared unit: full, or held whole)
    reserved: tuple[str, ...] = ()  # of the others, one reservation name per unit reserved now for a lab not its own
    quarantined: int = 0  # of the others, those set aside after failed starts
    estimate: float | None = None  # when enough units should have freed for it, if every holder stops at its end

    def describe(self, now: float, zone: ZoneInfo | None = None) -> str:
        """'Waiting for a GPU: 3rd in line for ML101 (8 NVIDIA A100 GPUs, all in use).' and an estimate.

        ``zone``: the time zone of the times shown (None: the hub's local time)."""
        units = len(self.kind.units)
        parts = []
        if self.in_use >= units:
            parts.append("all in use")
        elif self.in_use:
            parts.append(f"{self.in_use} in use")
        for name in sorted(set(self.reserved)):
            parts.append(f"{self.reserved.count(name)} reserved for {name}")
        if self.quarantined:
            parts.append(f"{self.quarantined} set aside after failed starts")
        others = units - self.in_use - len(self.reserved) - self.quarantined
        if others > 0:
            parts.append(f"{others} kept for those ahead")
        if self.kind.shared:
            what = "a slot on a shared GPU"
        else:
            what = "a GPU" if self.entry.request.slots == 1 else f"{self.entry.request.slots} GPUs"
        text = (
            f"Waiting for {what}: {ordinal(self.position)} in line for {self.entry.what()}"
            f" ({self.kind.describe()}, {', '.join(parts)})."
        )
        if self.estimate is not None:
            at, today = datetime.fromtimestamp(max(self.estimate, now), zone), datetime.fromtimestamp(now, zone)
            shown = at.strftime("%H:%M" if at.date() == today.date() else "%A %H:%M")
            text += f" Expected by about {shown}, when running servers reach their time limits."
        if self.entry.deadline is not None:
            text += f" Waits {format_duration(max(self.entry.deadline - now, 0))} more at most."
        return text


def _arrival(e: Waiting) -> int:
    return e.seq


def _in_arrival_order(lines: list[tuple[Kind, Iterable[Waiting]]], alive: Callable[[Kind], bool]) -> Iterator[Waiting]:
    """The entries of ``lines`` (each in arrival order) merged in arrival order, a line left out from
    the moment ``alive`` says its kind can no longer move (it is asked before each entry)."""
    heap = []
    for n, (kind, entries) in enumerate(lines):
        it = iter(entries)
        first = next(it, None)
        if first is not None:
            heap.append((first.seq, n, first, it, kind))
    heapq.heapify(heap)
    while heap:
        _, n, e, it, kind = heap[0]
        if not alive(kind):
            heapq.heappop(heap)
            continue
        yield e
        following = next(it, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.seq, n, following, it, kind))


class WaitQueue:
    """The hub's line of servers waiting for units. See the module's docstring for the rules."""

    def __init__(self, reservations: ReservationBook | None = None, *, lookahead: float = LOOKAHEAD):
        self.reservations = reservations  # None: no lab hours
        self.lookahead = lookahead
        self._entries: dict[str, Waiting] = {}  # holder -> entry, in arrival order
        self._seq = 0
        # Kinds are of one inventory: all three are made again when it changes (``_sync``).
        self._inventory: tuple | None = None
        self._kinds: dict[tuple[GPURequest, str | None], Kind] = {}
        self._kind_of: dict[str, Kind] = {}  # holder -> the kind it waits for
        self._lines: dict[Kind, dict[str, Waiting]] = {}  # kind -> those waiting for it, in arrival order

    # --- the line

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, holder: str) -> bool:
        return holder in self._entries

    def entry(self, holder: str) -> Waiting | None:
        return self._entries.get(holder)

    def waiting(self) -> tuple[Waiting, ...]:
        """Everyone waiting, in arrival order."""
        return tuple(self._entries.values())

    def kind(self, ledger: Ledger, request: GPURequest, node: str | None = None) -> Kind:
        """The kind of unit ``request`` waits for, in ``ledger``'s inventory."""
        self._sync(ledger)
        return self._kind(ledger, request, node)

    def _kind(self, ledger: Ledger, request: GPURequest, node: str | None) -> Kind:
        kind = self._kinds.get((request, node))
        if kind is None:
            units = [u for u in ledger.inventory if request.matches(u) and (node is None or u.node == node)]
            kind = Kind(frozenset(u.id for u in units), request.shared, _count_units(units))
            self._kinds[request, node] = kind
        return kind

    def _sync(self, ledger: Ledger) -> None:
        """Sort everyone waiting by kind again when the inventory changed (a node joined or left)."""
        if ledger.inventory is self._inventory:
            return
        self._inventory = ledger.inventory
        self._kinds.clear()
        self._kind_of.clear()
        self._lines.clear()
        for e in self._entries.values():
            self._file(ledger, e)

    def _file(self, ledger: Ledger, e: Waiting) -> None:
        kind = self._kind(ledger, e.request, e.node)
        self._kind_of[e.holder] = kind
        self._lines.setdefault(kind, {})[e.holder] = e

    def _drop(self, holder: str) -> Waiting | None:
        e = self._entries.pop(holder, None)
        kind = self._kind_of.pop(holder, None)
        if kind is not None:
            line = self._lines[kind]
            del line[holder]
            if not line:
                del self._lines[kind]
        return e

    def order(self, ledger: Ledger) -> tuple[Waiting, ...]:
        """Everyone waiting, in the order units go to them: first come, first served, those who hold a
        unit of the kind they wait for behind those who hold none."""
        self._sync(ledger)
        holds = self._holds(ledger)
        first, behind = [], []
        for e in self._entries.values():
            (behind if holds(e) else first).append(e)
        return tuple(first + behind)

    def leave(self, holder: str) -> Waiting | None:
        """Take ``holder`` out of the line (its spawn was stopped); its entry, or None if it was not waiting.

        Call ``next_grants`` after: the units it kept for itself may now go to others."""
        return self._drop(holder)

    def expired(self, now: float) -> tuple[Refusal, ...]:
        """Take out of the line everyone whose ``queue_timeout`` has run out at ``now``; call ``next_grants`` after."""
        gone = [e for e in self._entries.values() if e.deadline is not None and e.deadline <= now]
        for e in gone:
            self._drop(e.holder)
        return tuple(
            Refusal(
                e,
                "queue_timeout",
                f"waited {format_duration(now - e.since)} in line and no unit freed in time"
                " (the profile's queue_timeout). Try again later, or choose another profile.",
            )
            for e in gone
        )

    def next_deadline(self) -> float | None:
        """The earliest ``queue_timeout`` to run out, for a timer; None when nobody's can."""
        return min((e.deadline for e in self._entries.values() if e.deadline is not None), default=None)

    def waiting_for(self, ledger: Ledger) -> frozenset[str]:
        """The units someone is waiting for (that their request fits): for demand-aware culling."""
        units: set[str] = set()
        for request, node in {(e.request, e.node) for e in self._entries.values()}:
            units |= self.kind(ledger, request, node).units
        return frozenset(units)

    def lengths(self, ledger: Ledger) -> dict[str, int]:
        """How many wait, per kind ('1 NVIDIA A100 GPU' ...): the metrics' queue length."""
        counts: dict[str, int] = {}
        for e in self._entries.values():
            label = self.kind(ledger, e.request, e.node).describe()
            counts[label] = counts.get(label, 0) + 1
        return counts

    # --- decisions

    def admit(
        self,
        ledger: Ledger,
        holder: str,
        request: GPURequest,
        requester: Requester,
        now: float,
        *,
        profile: str = "",
        label: str = "",
        node: str | None = None,
        resources: ServerResources = NO_RESOURCES,
        wait: bool = True,
        timeout: float | None = None,
        runtime: float | None = None,
    ) -> Admission:
        """A server asks for units: grant them now, put it in line (``wait``, and only when no unit it fits
        is free), or refuse it (``Admission.refusal``: a quota, a cap, a request the hub can never meet;
        or no unit free and not ``wait``).

        Those already waiting go first (``next_grants``, reported in ``Admission.moved``): a new
        request never takes a unit a request waiting before it fits. ``holder`` gives up what it
        held or waited for. ``timeout``: its ``queue_timeout`` (None: no limit); ``runtime``: its
        ``max_runtime`` (None: none), to keep it off units a lab takes before it would end.
        """
        self._sync(ledger)
        self._drop(holder)
        ledger.release(holder)
        moved, kept_first, kept_all = self._settle(ledger, now)
        self._seq += 1
        entry = Waiting(
            holder,
            requester,
            request,
            now,
            self._seq,
            profile,
            label,
            node,
            resources,
            None if timeout is None else now + timeout,
            runtime,
        )
        behind = request.slots > 0 and self._holds(ledger)(entry)
        try:
            assignment = self._assign(ledger, entry, kept_all if behind else kept_first, now)
        except NoFreeUnit as refusal:
            if not wait:
                return Admission(refusal=refusal, moved=moved)
            self._entries[holder] = entry
            self._file(ledger, entry)
            return Admission(waiting=entry, moved=moved)
        except NoCapacity as refusal:
            return Admission(refusal=refusal, moved=moved)
        if assignment.units:  # what it takes may change what those kept waiting may have
            after = self._settle(ledger, now)[0]
            moved = Moves(moved.granted + after.granted, moved.refused + after.refused)
        return Admission(assignment, moved=moved, until=self._until(entry, assignment, now))

    def next_grants(self, ledger: Ledger, now: float) -> Moves:
        """Give the free units to those waiting, in order (see the rules): the grants are recorded in
        ``ledger`` and leave the line, as do those refused now for another reason than units."""
        return self._settle(ledger, now)[0]

    def _settle(self, ledger: Ledger, now: float) -> tuple[Moves, frozenset[str], frozenset[str]]:
        """Walk the line until it stands still: a grant may change what those passed over may have (a
        quota it fills, a unit of their kind it gives their student)."""
        granted: list[Grant] = []
        refused: list[Refusal] = []
        if not self._entries:
            return Moves(), frozenset(), frozenset()
        free, open_ = (set(units) for units in ledger.room())  # kept up to date by each walk
        while True:
            moves, kept_first, kept_all = self._walk(ledger, now, free, open_)
            granted += moves.granted
            refused += moves.refused
            if not moves:
                return Moves(tuple(granted), tuple(refused)), kept_first, kept_all

    def _walk(
        self, ledger: Ledger, now: float, free: set[str], open_: set[str]
    ) -> tuple[Moves, frozenset[str], frozenset[str]]:
        """``next_grants``; also the free units kept for those waiting: by those who hold none, by all.
        ``free``, ``open_``: ``ledger.room()``, as sets this walk keeps up to date.

        Only the lines of kinds with a unit open (free, or with room for a shared slot) are walked,
        in order, and only until no open unit is left for anyone: the others can neither be granted
        nor keep anything, so a decision costs about the same with 1,000 waiting as with 10.
        """
        if not self._entries or not open_:
            return Moves(), frozenset(), frozenset()
        self._sync(ledger)
        live = [(kind, line.values()) for kind, line in self._lines.items() if not kind.units.isdisjoint(open_)]
        if not live:
            return Moves(), frozenset(), frozenset()
        holds = self._holds(ledger)
        behind: list[Waiting] = []  # those who hold a unit of their kind: after all who hold none
        leaving: list[str] = []  # out of the line once the walk is over (the lines are walked meanwhile)
        kept: set[str] = set()
        kept_first: frozenset[str] | None = None
        granted: list[Grant] = []
        refused: list[Refusal] = []
        got: dict[str, set[str]] = {}  # user -> units granted in this walk
        moved_back: list[Waiting] = []

        def keep(e: Waiting, kind: Kind, fits: set[str]) -> None:
            """What ``e`` keeps from those after it while it waits: the free units it fits, and for
            whole units, as many shared ones as it still lacks, the fewest-shared first, so that they
            drain to it instead of taking new slots."""
            kept.update(fits)
            lacking = e.request.slots - len(fits)
            if e.request.shared or lacking <= 0:
                return
            draining = (kind.units & open_) - free - kept
            if self.reservations and draining:
                draining -= self.reservations.kept_from(e.requester, e.profile, now)
            kept.update(sorted(draining, key=lambda unit: (len(ledger.holders_of(unit)), unit))[:lacking])

        def refuse(e: Waiting, why: NoCapacity) -> bool:
            leaving.append(e.holder)
            refused.append(Refusal(e, why.reason, why))
            return bool(open_ - kept)

        def step(e: Waiting) -> bool:
            """Try one entry; False when no free unit is left for anyone after it."""
            kind = self._kind_of[e.holder]
            pool = open_ if e.request.shared else free
            fits = (kind.units & pool) - kept
            if fits and self.reservations:
                fits -= self.reservations.kept_from(e.requester, e.profile, now)
            if not fits or (not e.request.shared and len(fits) < e.request.slots):
                # Too few units free for it: it keeps them, if units are all that stand in its way.
                why = fits and ledger.can_fit(e.request, e.requester, e.holder, node=e.node, resources=e.resources)
                if why and not isinstance(why, NoFreeUnit):
                    return refuse(e, why)
                keep(e, kind, fits)
                return bool(open_ - kept)
            try:
                assignment = self._assign(ledger, e, frozenset(kept), now)
            except NoFreeUnit:
                keep(e, kind, fits)
                return bool(open_ - kept)
            except NoCapacity as why:
                return refuse(e, why)
            leaving.append(e.holder)
            granted.append(Grant(e, assignment, now, self._until(e, assignment, now)))
            got.setdefault(e.user, set()).update(assignment.ids)
            for unit in assignment.ids:
                free.discard(unit)
                holders = ledger.holders_of(unit)
                if not (len(holders) < ledger.policy.share_limit and all(a.shared for a in holders)):
                    open_.discard(unit)
            return bool(open_ - kept)

        def alive(kind: Kind) -> bool:
            """Has ``kind`` an open unit nobody before kept? Once not, none of its line can move."""
            return not kind.units.isdisjoint(open_ - kept)

        going = True
        for e in _in_arrival_order(live, alive):
            if holds(e):
                behind.append(e)
            elif e.user in got and not self._kind_of[e.holder].units.isdisjoint(got[e.user]):
                moved_back.append(e)  # it holds a unit of its kind now: behind those who hold none
            else:
                going = step(e)
                if not going:
                    break
        kept_first = frozenset(kept)
        if going:
            for e in heapq.merge(moved_back, behind, key=_arrival):
                if alive(self._kind_of[e.holder]) and not step(e):
                    break
        for holder in leaving:
            self._drop(holder)
        return Moves(tuple(granted), tuple(refused)), kept_first, frozenset(kept)

    def _assign(self, ledger: Ledger, e: Waiting, kept: frozenset[str], now: float) -> Assignment:
        """Decide ``e``'s units with ``kept`` and the lab hours against it set aside; units a lab takes
        before ``e`` would end only when nothing else fits."""
        book = self.reservations
        if book:
            kept = kept | book.kept_from(e.requester, e.profile, now)
            soon = book.soon_kept_from(e.requester, e.profile, now, e.runtime or self.lookahead) - kept
            if soon:
                try:
                    return self._assign_now(ledger, e, kept | soon)
                except NoFreeUnit:
                    pass
        return self._assign_now(ledger, e, kept)

    @staticmethod
    def _assign_now(ledger: Ledger, e: Waiting, kept: frozenset[str]) -> Assignment:
        return ledger.assign(e.holder, e.request, e.requester, node=e.node, resources=e.resources, set_aside=kept)

    def _until(self, e: Waiting, assignment: Assignment, now: float) -> Booking | None:
        if not self.reservations or not assignment.units:
            return None
        return self.reservations.free_until(assignment.ids, e.requester, e.profile, now)

    def _holds(self, ledger: Ledger):
        """A test of whether a waiting server's student holds a unit of the kind it waits for (the
        fairness rule), asking the ledger once per student."""
        held: dict[str, frozenset[str]] = {}

        def holds(e: Waiting) -> bool:
            mine = held.get(e.user)
            if mine is None:
                mine = held[e.user] = ledger.units_of_user(e.user)
            return bool(mine) and not self._kind(ledger, e.request, e.node).units.isdisjoint(mine)

        return holds

    # --- where everyone stands

    def standings(self, ledger: Ledger, now: float, ends: Mapping[str, float] | None = None) -> tuple[Standing, ...]:
        """Where everyone waiting stands, in line order (once for all: cheaper than one ``standing`` each).

        ``ends``: holder -> when its server's ``max_runtime`` ends (absent: no limit). With it, an
        estimate is given where the rules allow one: every unit that may free for the waiting
        server has holders whose time ends, and everyone ahead in its line takes units the same
        way (whole, or shared slots); none otherwise. It assumes nobody new goes ahead.
        """
        order = self.order(ledger)
        kinds = [self._kind_of[e.holder] for e in order]
        distinct = list(dict.fromkeys(kinds))
        touching = {k: [o for o in distinct if not o.units.isdisjoint(k.units)] for k in distinct}
        total = {k: 0 for k in distinct}
        for k in kinds:
            total[k] += 1
        count = dict.fromkeys(distinct, 0)
        slots = dict.fromkeys(distinct, 0)
        shared = dict.fromkeys(distinct, 0)  # of those counted, how many ask for shared slots
        booked = self.reservations.reserved_at(now) if self.reservations else {}
        busy = {k: frozenset(u for u in k.units if self._busy(ledger, u, k.shared)) for k in distinct}
        releases: dict[tuple[Kind, frozenset[str]], list[tuple[float, int]] | None] = {}
        result = []
        for e, k in zip(order, kinds):
            ahead = sum(count[o] for o in touching[k])
            kept = (
                frozenset(k.units & self.reservations.kept_from(e.requester, e.profile, now)) if booked else frozenset()
            )
            estimate = None
            same_way = all(shared[o] == (count[o] if k.shared else 0) for o in touching[k])
            if ends is not None and same_way:
                key = (k, kept)
                if key not in releases:
                    releases[key] = self._releases(ledger, k, kept, ends, now)
                need = sum(slots[o] for o in touching[k]) + e.request.slots
                estimate = self._when(releases[key], need)
            aside = sorted(kept - busy[k])
            result.append(
                Standing(
                    e,
                    k,
                    ahead + 1,
                    sum(total[o] for o in touching[k]),
                    len(busy[k]),
                    tuple(booked[u].reservation.name for u in aside),
                    sum(1 for u in k.units - busy[k] - kept if u in ledger.quarantined),
                    estimate,
                )
            )
            count[k] += 1
            slots[k] += e.request.slots
            shared[k] += e.request.shared
        return tuple(result)

    def standing(
        self, holder: str, ledger: Ledger, now: float, ends: Mapping[str, float] | None = None
    ) -> Standing | None:
        """Where ``holder`` stands; None when it is not waiting."""
        if holder not in self._entries:
            return None
        return next(s for s in self.standings(ledger, now, ends) if s.entry.holder == holder)

    @staticmethod
    def _busy(ledger: Ledger, unit: str, shared: bool) -> bool:
        holders = ledger.holders_of(unit)
        if not holders:
            return False
        return not shared or len(holders) >= ledger.policy.share_limit or not all(a.shared for a in holders)

    @staticmethod
    def _releases(
        ledger: Ledger, kind: Kind, kept: frozenset[str], ends: Mapping[str, float], now: float
    ) -> list[tuple[float, int]]:
        """When units (shared: slots) of ``kind`` free, if every holder stops at its end: (time, how many),
        in time order; units with a holder whose time never ends are left out, as are ``kept`` ones."""
        limit = ledger.policy.share_limit
        events: list[tuple[float, int]] = []
        for unit in kind.units:
            if unit in kept or unit in ledger.quarantined:
                continue
            holders = ledger.holders_of(unit)
            times = [ends.get(a.holder) for a in holders]
            if kind.shared and holders and all(a.shared for a in holders):
                events.append((now, limit - len(holders)))
                events.extend((max(t, now), 1) for t in times if t is not None)
            elif all(t is not None for t in times):
                events.append((max([now, *times]), limit if kind.shared else 1))
        return sorted(events)

    @staticmethod
    def _when(events: list[tuple[float, int]], need: int) -> float | None:
        total = 0
        for moment, count in events:
            total += count
            if total >= need:
                return moment
        return None
