"""The allocation core: which units (whole GPUs, MIG instances, shared slots) each server holds.

Pure: no Docker, no NVML, no clock. ``decide`` is a function of the inventory,
the current holdings, a request and the policy; it returns the units to hold or
raises ``NoCapacity`` saying what is in use and what is free. ``Ledger`` keeps
the holdings of one hub and applies the decisions, and, beside the units, the
CPUs and memory each server counts against the caps (``resources.py``). After a hub restart the
ledger is rebuilt from what the running containers' labels say (``adopt``).

The promise it keeps: a unit held exclusively has exactly one holder; a shared
unit has at most ``share_limit`` holders, all of them shared; quotas hold for
everyone not exempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

from ..quantities import format_bytes
from .inventory import GPU
from .resources import NO_RESOURCES, Caps, ServerResources, Usage
from .resources import refusal as caps_refusal

PACK = "pack"
SPREAD = "spread"


@dataclass(frozen=True)
class GPURequest:
    """What a profile asks for.

    ``count`` units held exclusively, or (``shared``) one slot on a shared unit.
    ``kind`` is ``"gpu"`` (whole GPUs), ``"mig"`` (MIG instances) or ``"any"``.
    """

    count: int = 0
    shared: bool = False
    kind: str = "gpu"
    model: str = ""  # a case-insensitive part of the unit's name, e.g. "A100"
    min_memory: int = 0  # bytes
    mig_profile: str = ""  # e.g. "1g.10gb"; implies kind "mig"

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"GPU count must be >= 0, got {self.count}")

    @property
    def slots(self) -> int:
        """How many units this request holds: a shared slot is one unit, shared."""
        return 1 if self.shared else self.count

    def matches(self, unit: GPU) -> bool:
        if self.kind == "gpu" and unit.is_mig:
            return False
        if self.kind == "mig" and not unit.is_mig:
            return False
        if self.mig_profile and unit.mig_profile != self.mig_profile:
            return False
        if self.model and self.model.lower() not in unit.name.lower():
            return False
        return unit.memory >= self.min_memory

    def describe(self) -> str:
        """'1 whole GPU (A100, >= 40 GiB)' or 'a slot on a shared GPU'."""
        constraints = []
        if self.model:
            constraints.append(self.model)
        if self.min_memory:
            constraints.append(f">= {format_bytes(self.min_memory)}")
        if self.mig_profile:
            noun = f"MIG {self.mig_profile} instance"
        else:
            noun = {"gpu": "whole GPU", "mig": "MIG instance", "any": "GPU or MIG instance"}[self.kind]
        if self.shared:
            text = f"a slot on a shared {'GPU' if self.kind == 'gpu' else noun}"
        else:
            text = f"{self.count} {noun}{'s' if self.count != 1 else ''}"
        return text + (f" ({', '.join(constraints)})" if constraints else "")


@dataclass(frozen=True)
class Requester:
    """Who asks: the user, their groups, and whether quotas apply to them."""

    user: str
    groups: frozenset[str] = frozenset()
    exempt: bool = False  # an admin exempted from quotas


@dataclass(frozen=True)
class Policy:
    """The admin's rules for placement, sharing and quotas."""

    placement: str = PACK  # "pack": fill used GPUs first; "spread": prefer idle GPUs
    share_limit: int = 4  # K: users per shared unit
    max_gpus_per_user: float | None = None  # across all of a user's servers
    group_quotas: Mapping[str, float] = field(default_factory=dict)  # group -> GPUs
    resource_caps: Caps = Caps()  # CPUs and memory, per user and per group


@dataclass(frozen=True)
class Assignment:
    """The units one server holds. ``holder`` is ``"user/server"`` (server '' for the default)."""

    holder: str
    user: str
    units: tuple[GPU, ...] = ()
    shared: bool = False
    groups: frozenset[str] = frozenset()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(unit.id for unit in self.units)


def holder_key(user: str, server: str = "") -> str:
    """The ledger key of one user server: ``"alice/"``, ``"alice/big"``."""
    return f"{user}/{server}"


def split_holder(holder: str) -> tuple[str, str]:
    """(user, server) of a ledger key; a JupyterHub user name has no ``/``."""
    user, _, server = holder.partition("/")
    return user, server


class NoCapacity(Exception):
    """A request that cannot be met now. ``reason`` is 'no_gpu', 'user_quota', 'group_quota',
    or a CPU or memory cap's (``resources.REASONS``: 'user_memory_quota', ...).

    ``message`` and ``free`` may be given as functions: they are then made only when
    someone reads them (a refusal the hub shows), not for every refusal along the way.
    """

    def __init__(
        self,
        reason: str,
        message: str | Callable[[], str],
        *,
        request: GPURequest,
        free: tuple[GPU, ...] | Callable[[], tuple[GPU, ...]] = (),
    ):
        self.reason = reason
        self._message = message
        self.request = request
        self._free = free
        super().__init__()

    @property
    def free(self) -> tuple[GPU, ...]:
        """The units no server holds, when the refusal was made (in inventory order)."""
        if callable(self._free):
            self._free = self._free()
        return self._free

    @property
    def message(self) -> str:
        if callable(self._message):
            self._message = self._message()
        return self._message

    def __str__(self) -> str:
        return self.message


class NoFreeUnit(NoCapacity):
    """Refused only because the units that fit are in use now (held, quarantined or set aside):
    the units this hub has could meet the request, so it may wait for one (``gpus.queue``).

    Its ``reason`` is ``'no_gpu'``. A refusal for a quota or a cap, or for a request no unit of
    the hub (or no node, for several units) could ever meet, is a plain ``NoCapacity``.
    """


def _fmt(amount: Fraction | float) -> str:
    return f"{float(amount):g}"


class Occupancy:
    """What the holdings add up to, for decisions: who holds each unit, each user's and
    group's load, how busy each GPU and node is.

    Loads are whole numbers of 1/K GPU (K = ``share_limit``): a unit held whole counts K,
    a shared slot 1, so quotas are compared exactly and without fractions. Built from
    holdings (``of``), or kept by a ``Ledger`` as it assigns and releases, so that a
    decision costs the same with 10 holdings as with 1,000.
    """

    def __init__(self, share_limit: int):
        self.k = max(share_limit, 1)
        self.holders_of: dict[str, list[Assignment]] = {}  # unit id -> its holders
        self.user_load: dict[str, int] = {}
        self.group_load: dict[str, int] = {}
        self.gpu_busy: dict[str, int] = {}  # physical GPU -> how many of its units are held
        self.node_busy: dict[str, int] = {}  # node -> how many of its units are held

    @classmethod
    def of(cls, holdings: Iterable[Assignment], share_limit: int) -> Occupancy:
        occupancy = cls(share_limit)
        for a in holdings:
            occupancy.add(a)
        return occupancy

    def load(self, assignment: Assignment) -> int:
        return len(assignment.units) * (1 if assignment.shared else self.k)

    def add(self, a: Assignment) -> None:
        w = self.load(a)
        self.user_load[a.user] = self.user_load.get(a.user, 0) + w
        for group in a.groups:
            self.group_load[group] = self.group_load.get(group, 0) + w
        for unit in a.units:
            holders = self.holders_of.setdefault(unit.uuid, [])
            if not holders:
                self.gpu_busy[unit.gpu_uuid] = self.gpu_busy.get(unit.gpu_uuid, 0) + 1
                self.node_busy[unit.node] = self.node_busy.get(unit.node, 0) + 1
            holders.append(a)

    def without(self, a: Assignment) -> Occupancy:
        """A copy of these totals less one holding (these stay as they are)."""
        other = Occupancy(self.k)
        other.holders_of = {unit: list(holders) for unit, holders in self.holders_of.items()}
        other.user_load = dict(self.user_load)
        other.group_load = dict(self.group_load)
        other.gpu_busy = dict(self.gpu_busy)
        other.node_busy = dict(self.node_busy)
        other.remove(a)
        return other

    def remove(self, a: Assignment) -> None:
        w = self.load(a)
        self.user_load[a.user] -= w
        for group in a.groups:
            self.group_load[group] -= w
        for unit in a.units:
            holders = self.holders_of[unit.uuid]
            holders.remove(a)
            if not holders:
                del self.holders_of[unit.uuid]
                self.gpu_busy[unit.gpu_uuid] -= 1
                self.node_busy[unit.node] -= 1


@lru_cache(maxsize=256)
def _in_slots(limit: float, k: int) -> int:
    """A quota as the most 1/K GPU a load may reach: a load (a whole number) passes a quota
    written as 0.5, 2 or 1.25 exactly when it passes this number."""
    return math.floor(Fraction(limit).limit_denominator(1000) * k)


def check_quotas(occupancy: Occupancy, request: GPURequest, requester: Requester, policy: Policy) -> None:
    """Raise ``NoCapacity`` when the request would take ``requester`` or a group of theirs past its quota.

    ``occupancy`` is everyone else's holdings (not those of the server that starts).
    """
    if requester.exempt or request.slots == 0:
        return
    k = occupancy.k
    wanted = request.slots * (1 if request.shared else k)
    limit = policy.max_gpus_per_user
    if limit is not None:
        mine = occupancy.user_load.get(requester.user, 0)
        if mine + wanted > _in_slots(limit, k):
            raise NoCapacity(
                "user_quota",
                lambda: (
                    f"You already hold {_fmt(Fraction(mine, k))} GPU(s) across your servers, and the limit"
                    f" is {_fmt(limit)} per user. Stop one of your servers to start this one."
                ),
                request=request,
            )
    for group in sorted(requester.groups):
        quota = policy.group_quotas.get(group)
        if quota is None:
            continue
        used = occupancy.group_load.get(group, 0)
        if used + wanted > _in_slots(quota, k):
            raise NoCapacity(
                "group_quota",
                lambda: (
                    f"Your group '{group}' is using {_fmt(Fraction(used, k))} of its"
                    f" {_fmt(Fraction(quota).limit_denominator(1000))} GPU(s)."
                    " Try again when a classmate stops a server, or ask your teacher."
                ),
                request=request,
            )


def _candidates(
    inventory: tuple[GPU, ...],
    occupancy: Occupancy,
    request: GPURequest,
    policy: Policy,
    matching: list[GPU] | None = None,
    best_only: bool = False,
    quarantined: frozenset[str] = frozenset(),
) -> tuple[list[GPU], list[GPU]]:
    """(the units that could take ``request`` now, best first; all units that fit it at all).

    ``best_only``: only the best of the units that could take it (none when none can).
    ``quarantined``: units set aside (``gpus.health``, or kept for others): they fit, but take nothing.
    """
    holders_of = occupancy.holders_of
    # How busy each physical GPU and each node is (its units held), for pack/spread.
    busy = occupancy.gpu_busy
    node_busy = occupancy.node_busy

    if matching is None:
        matching = [u for u in inventory if request.matches(u)]
    pack = policy.placement == PACK
    if request.shared:

        def room(unit: GPU) -> bool:
            holders = holders_of.get(unit.uuid, ())
            return len(holders) < policy.share_limit and all(a.shared for a in holders)

        def order(unit: GPU):
            sharing = len(holders_of.get(unit.uuid, ()))
            on_node = node_busy.get(unit.node, 0)
            # pack: join the fullest shared unit, keeping idle ones whole for others
            return (
                -sharing if pack else sharing,
                unit.memory,
                -on_node if pack else on_node,
                unit.node,
                unit.index,
                unit.mig_index or 0,
            )

        fitting = [u for u in matching if room(u) and u.uuid not in quarantined]
    else:
        # no holder: room
        fitting = [u for u in matching if u.uuid not in holders_of and u.uuid not in quarantined]

        def order(unit: GPU):
            # the smallest unit that fits leaves the most room for others; then the
            # node and the GPU: pack fills busy ones, spread prefers idle ones
            used = busy.get(unit.gpu_uuid, 0)
            on_node = node_busy.get(unit.node, 0)
            return (
                unit.memory,
                -on_node if pack else on_node,
                -used if pack else used,
                unit.node,
                unit.index,
                unit.mig_index or 0,
            )

    if best_only:
        return ([min(fitting, key=order)] if fitting else []), matching
    return sorted(fitting, key=order), matching


def _units_on(inventory: Iterable[GPU], node: str | None) -> tuple[GPU, ...]:
    """The units of ``node``; all of them when ``node`` is None."""
    return tuple(inventory) if node is None else tuple(u for u in inventory if u.node == node)


def availability(
    inventory: tuple[GPU, ...],
    holdings: Iterable[Assignment],
    request: GPURequest,
    policy: Policy,
    node: str | None = None,
) -> tuple[int, int]:
    """(units that could take ``request`` now, units that fit it at all): "3 of 4 free".

    ``node``: count only the units of that node.
    """
    occupancy = Occupancy.of(holdings, policy.share_limit)
    candidates, matching = _candidates(_units_on(inventory, node), occupancy, request, policy)
    return len(candidates), len(matching)


def decide(
    inventory: tuple[GPU, ...],
    holdings: Iterable[Assignment],
    request: GPURequest,
    requester: Requester,
    policy: Policy,
    holder: str,
    node: str | None = None,
    quarantined: Iterable[str] = (),
) -> tuple[GPU, ...]:
    """The units ``holder`` should hold for ``request``, or ``NoCapacity``.

    ``holdings`` are everyone's current assignments; ``holder``'s own are
    ignored, since a server that starts gives up what it held. ``node``: take
    units of that node only (a Swarm server goes where its home is); quotas
    and the holdings stay the whole hub's. ``quarantined``: unit ids never taken.
    """
    if request.slots == 0:
        return ()
    others = Occupancy.of((a for a in holdings if a.holder != holder), policy.share_limit)
    return _decide(_units_on(inventory, node), others, request, requester, policy, None, frozenset(quarantined))


def _decide(
    inventory: tuple[GPU, ...],
    others: Occupancy,
    request: GPURequest,
    requester: Requester,
    policy: Policy,
    matching: list[GPU] | None = None,
    quarantined: frozenset[str] = frozenset(),
    set_aside: frozenset[str] = frozenset(),
) -> tuple[GPU, ...]:
    """``decide`` over the holdings of everyone else, summed up in ``others``.

    ``set_aside``: units this request may not take, though free (kept for requests waiting
    before it, or reserved for a lab it is not part of: ``gpus.queue``, ``reservations``).
    """
    if request.slots == 0:
        return ()
    check_quotas(others, request, requester, policy)
    one = request.slots == 1
    excluded = quarantined | set_aside if set_aside else quarantined
    candidates, matching = _candidates(inventory, others, request, policy, matching, one, excluded)
    if one and candidates:
        return (candidates[0],)
    # Every unit of one server is on one node: the first node, in candidate order, with enough.
    by_node: dict[str, list[GPU]] = {}
    for unit in candidates:
        by_node.setdefault(unit.node, []).append(unit)
    for units in by_node.values():
        if len(units) >= request.slots:
            chosen = {u.uuid for u in units[: request.slots]}
            return tuple(u for u in inventory if u.uuid in chosen)  # in nvidia-smi's order: CUDA device 0 first

    def free() -> tuple[GPU, ...]:
        return tuple(u for u in inventory if u.uuid not in others.holders_of and u.uuid not in excluded)

    def message() -> str:
        kept = sum(u.uuid in set_aside and u.uuid not in quarantined for u in matching)
        shown = candidates
        if kept:  # the units kept are free: count them so, not as in use
            shown = _candidates(inventory, others, request, policy, matching, False, quarantined)[0]
        if kept and len(shown) >= request.slots:
            return (
                f"Needs {request.describe()}: {len(shown)} of the {len(matching)} units that fit"
                f" {'is' if len(shown) == 1 else 'are'} free, but kept for requests waiting in line"
                " or for a course's reserved lab hours."
            )
        text = _no_capacity_message(request, matching, shown, free())
        aside = sum(u.uuid in quarantined for u in matching)
        if aside:
            text += f" {aside} of them {'is' if aside == 1 else 'are'} set aside after failed starts (quarantined)."
        if kept:
            text += (
                f" {kept} of them {'is' if kept == 1 else 'are'} kept for requests waiting in line"
                " or for a course's reserved lab hours."
            )
        return text

    refusal = NoFreeUnit if _could_ever_meet(request, matching) else NoCapacity
    raise refusal("no_gpu", message, request=request, free=free)


def _could_ever_meet(request: GPURequest, matching: list[GPU]) -> bool:
    """Could the units that fit ``request`` meet it, were they all free? (Several units: on one node.)"""
    if request.shared or request.slots == 1:
        return bool(matching)
    if len(matching) < request.slots:
        return False
    on_node: dict[str, int] = {}
    for unit in matching:
        on_node[unit.node] = on_node.get(unit.node, 0) + 1
    return max(on_node.values()) >= request.slots


def _no_capacity_message(request: GPURequest, matching: list[GPU], candidates: list[GPU], free: tuple[GPU, ...]) -> str:
    want = request.describe()
    if not matching:
        return f"This hub has no unit that fits {want}."
    if not request.shared and request.count > len(matching):
        return f"Needs {want}, and this hub has only {len(matching)} that fit."
    names = sorted({u.name for u in matching})
    kind = "MIG instances" if matching[0].is_mig else "GPUs"
    what = kind if len(names) != 1 else f"{names[0]} {kind}" if matching[0].is_mig else gpu_noun(names[0])
    in_use = len(matching) - len(candidates)
    nodes = {u.node for u in matching}
    if len(candidates) >= request.slots and len(nodes) > 1:
        # enough free in all, but no node alone has enough
        return f"Needs {want} on one node, and no node has that many free. Free now: {_count_units(free)}."
    if request.shared:
        head = f"Needs {want}: all {len(matching)} {what} that fit are full or held whole."
    elif candidates:
        head = f"Needs {want}: only {len(candidates)} of {len(matching)} {what} are free."
    else:
        head = f"Needs {want}: all {len(matching)} {what} are taken ({in_use}/{len(matching)} in use)."
    others = [u for u in free if u not in candidates]
    if others:
        head += " Free now: " + _count_units(others) + "."
    return head


def gpu_noun(model: str, *, plural: bool = True) -> str:
    """'NVIDIA L4 GPUs' ('... GPU' for one); a model named '... GPU' is not said twice: 'simulated GPUs'."""
    if model.lower().endswith(" gpu"):
        model = model[: -len(" gpu")]
    return f"{model} GPU{'s' if plural else ''}".lstrip()


def _count_units(units: Iterable[GPU]) -> str:
    """'2 NVIDIA L4 GPUs', or per node when units are on several: 'node-1: 1 L4 GPU; node-2: none'."""
    units = list(units)
    nodes = sorted({unit.node for unit in units})
    if nodes in ([], [""]):
        return _count_kinds(units)
    return "; ".join(f"{node}: {_count_kinds(u for u in units if u.node == node)}" for node in nodes)


def _count_kinds(units: Iterable[GPU]) -> str:
    counts: dict[str, int] = {}
    for unit in units:
        key = f"MIG {unit.mig_profile} instance" if unit.is_mig else gpu_noun(unit.name, plural=False)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}{'s' if n != 1 else ''}" for key, n in sorted(counts.items())) or "none"


class Ledger:
    """Who holds which unit, for one hub: the holdings and the decisions applied to them.

    A decision may be limited to the units of one ``node`` (on a Swarm, the node
    of the user's home); quotas and holdings are the whole hub's either way.
    Every server's CPUs and memory (``resources``) are kept in ``usage``, with or
    without units, and held to ``policy.resource_caps`` before any unit is decided.
    """

    def __init__(self, inventory: Iterable[GPU], policy: Policy | None = None):
        self.policy = policy or Policy()
        # Units set aside after failed starts (gpus.health): never chosen, even when free.
        self.quarantined: frozenset[str] = frozenset()
        self._holders: dict[str, Assignment] = {}
        self.usage = Usage()  # every server's CPUs and memory, and their totals
        self._occupancy_of: Occupancy | None = None
        self.update_inventory(inventory)

    def update_inventory(self, units: Iterable[GPU]) -> None:
        """The units that exist now (a node joined, was drained or was lost); holdings are kept.

        A unit that left the inventory is no longer free; whoever still holds it
        keeps holding it until released.
        """
        self.inventory = tuple(units)
        self._by_id = {unit.id: unit for unit in self.inventory}
        self._order = {unit.id: n for n, unit in enumerate(self.inventory)}
        self._units_of: dict[str | None, tuple[GPU, ...]] = {None: self.inventory}  # node -> its units
        # the units that fit each (request, node) asked so far
        self._matching: dict[tuple[GPURequest, str | None], list[GPU]] = {}

    @property
    def _occupancy(self) -> Occupancy:
        """The running totals of the holdings (made again if the share limit changed)."""
        if self._occupancy_of is None or self._occupancy_of.k != max(self.policy.share_limit, 1):
            self._occupancy_of = Occupancy.of(self._holders.values(), self.policy.share_limit)
        return self._occupancy_of

    def _units(self, node: str | None) -> tuple[GPU, ...]:
        units = self._units_of.get(node)
        if units is None:
            units = self._units_of[node] = _units_on(self.inventory, node)
        return units

    def _fitting(self, request: GPURequest, node: str | None) -> list[GPU]:
        matching = self._matching.get((request, node))
        if matching is None:
            matching = self._matching[request, node] = [u for u in self._units(node) if request.matches(u)]
        return matching

    def _decide(
        self,
        others: Occupancy,
        request: GPURequest,
        requester: Requester,
        node: str | None,
        set_aside: frozenset[str] = frozenset(),
    ) -> tuple[GPU, ...]:
        """``decide``, from ``others``: the running totals less what the holder holds."""
        return _decide(
            self._units(node),
            others,
            request,
            requester,
            self.policy,
            self._fitting(request, node),
            self.quarantined,
            set_aside,
        )

    def _hold(self, assignment: Assignment) -> None:
        self._release_units(assignment.holder)
        occupancy = self._occupancy  # made (if need be) before the new holding is in
        self._holders[assignment.holder] = assignment
        occupancy.add(assignment)

    # --- questions

    def free(self) -> tuple[GPU, ...]:
        """The units no server holds, in inventory order."""
        held = self._occupancy.holders_of
        return tuple(unit for unit in self.inventory if unit.id not in held)

    def assignment(self, holder: str) -> Assignment | None:
        return self._holders.get(holder)

    def units_of_user(self, user: str) -> frozenset[str]:
        """The unit ids ``user``'s servers hold (all of them together)."""
        if not self._occupancy.user_load.get(user):
            return frozenset()
        return frozenset(u.uuid for a in self._holders.values() if a.user == user for u in a.units)

    def room(self) -> tuple[frozenset[str], frozenset[str]]:
        """(the units no server holds; the units with room for a shared slot: those, and the ones shared
        by fewer than ``share_limit``), by id, quarantined ones left out: what a decision could take now."""
        held = self._occupancy.holders_of
        limit = self.policy.share_limit
        quarantined = self.quarantined
        free, shared = [], []
        for unit in self.inventory:
            uid = unit.uuid
            holders = held.get(uid)
            if not holders:
                if uid not in quarantined:
                    free.append(uid)
            elif len(holders) < limit and holders[0].shared and uid not in quarantined:
                if len(holders) == 1 or all(a.shared for a in holders):
                    shared.append(uid)
        return frozenset(free), frozenset(free + shared)

    def assignments(self) -> tuple[Assignment, ...]:
        return tuple(self._holders.values())

    def holders_of(self, unit_id: str) -> tuple[Assignment, ...]:
        return tuple(self._occupancy.holders_of.get(unit_id, ()))

    def availability(self, request: GPURequest, *, node: str | None = None) -> tuple[int, int]:
        """(units that could take ``request`` now, units that fit it at all), on ``node`` if given."""
        candidates, matching = _candidates(
            self._units(node),
            self._occupancy,
            request,
            self.policy,
            self._fitting(request, node),
            False,
            self.quarantined,
        )
        return len(candidates), len(matching)

    def resources_held(self, holder: str) -> ServerResources:
        """The CPUs and memory ``holder``'s server counts against the caps."""
        held = self.usage.held.get(holder)
        return held.resources if held else NO_RESOURCES

    def _check_caps(self, request: GPURequest, requester: Requester, holder: str, resources: ServerResources) -> None:
        refusal = caps_refusal(
            self.usage,
            holder,
            resources,
            self.policy.resource_caps,
            user=requester.user,
            groups=requester.groups,
            exempt=requester.exempt,
        )
        if refusal is not None:
            raise NoCapacity(refusal.reason, refusal.message, request=request)

    def can_fit(
        self,
        request: GPURequest,
        requester: Requester,
        holder: str = "",
        *,
        node: str | None = None,
        resources: ServerResources = NO_RESOURCES,
        set_aside: frozenset[str] = frozenset(),
    ) -> NoCapacity | None:
        """Why ``request`` (with ``resources``) cannot start now (on ``node`` if given), or None when it
        can (for the spawn page).

        What ``holder`` holds counts as given up, as when its server starts again.
        ``set_aside``: unit ids it may not take, though free (see ``assign``).
        """
        held = self._holders.get(holder)
        try:
            self._check_caps(request, requester, holder, resources)
            others = self._occupancy if held is None else self._occupancy.without(held)
            self._decide(others, request, requester, node, frozenset(set_aside))
        except NoCapacity as e:
            return e
        return None

    # --- decisions

    def assign(
        self,
        holder: str,
        request: GPURequest,
        requester: Requester,
        *,
        node: str | None = None,
        resources: ServerResources = NO_RESOURCES,
        set_aside: frozenset[str] = frozenset(),
    ) -> Assignment:
        """Decide and record what ``holder`` holds (its units and ``resources``), or raise
        ``NoCapacity`` holding nothing (``NoFreeUnit`` when only the units in use stand in its way).

        A holder that already holds units gives them up first: a server starts fresh.
        ``node``: the units are taken on that node only. ``set_aside``: unit ids it may not take,
        though free: kept for requests waiting before it, or reserved for a lab (``gpus.queue``).
        """
        self.release(holder)
        self._check_caps(request, requester, holder, resources)
        units = self._decide(self._occupancy, request, requester, node, frozenset(set_aside))
        assignment = Assignment(holder, requester.user, units, request.shared and bool(units), requester.groups)
        if units:
            self._hold(assignment)
        self.usage.hold(holder, requester.user, requester.groups, resources)
        return assignment

    def release(self, holder: str) -> Assignment | None:
        """Free what ``holder`` holds, its units and its resources; returns its units' assignment
        (None when it held no unit)."""
        self.usage.release(holder)
        return self._release_units(holder)

    def _release_units(self, holder: str) -> Assignment | None:
        assignment = self._holders.pop(holder, None)
        if assignment is not None and self._occupancy_of is not None:
            self._occupancy_of.remove(assignment)
        return assignment

    def adopt(
        self,
        holder: str,
        unit_ids: Iterable[str],
        *,
        user: str | None = None,
        shared: bool = False,
        groups: Iterable[str] = (),
        resources: ServerResources | None = None,
    ) -> tuple[str, ...]:
        """Record what a running container already holds (after a hub restart).

        Ids unknown to the inventory are skipped and returned, so the caller can
        warn. A unit found held twice stays held by both: the truth on the host
        wins over the promise, and the unit stays out of the free pool until both stop.
        ``resources``: its CPUs and memory, counted against the caps (None: left as recorded).
        """
        groups = frozenset(groups)
        if resources is not None:
            self.usage.hold(holder, user if user is not None else split_holder(holder)[0], groups, resources)
        unit_ids = list(unit_ids)
        known = [self._by_id[i] for i in unit_ids if i in self._by_id]
        unknown = tuple(i for i in unit_ids if i not in self._by_id)
        if known:
            previous = self._holders.get(holder)
            units = {u.id: u for u in (previous.units if previous else ())}
            units.update((u.id, u) for u in known)
            self._hold(
                Assignment(
                    holder,
                    user if user is not None else split_holder(holder)[0],
                    # in inventory order; a unit that has since left the inventory goes last
                    tuple(sorted(units.values(), key=lambda u: self._order.get(u.id, len(self._order)))),
                    shared,
                    frozenset(groups),
                )
            )
        return unknown
