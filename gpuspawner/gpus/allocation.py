"""The allocation core: which units (whole GPUs, MIG instances, shared slots) each server holds.

Pure: no Docker, no NVML, no clock. ``decide`` is a function of the inventory,
the current holdings, a request and the policy; it returns the units to hold or
raises ``NoCapacity`` saying what is in use and what is free. ``Ledger`` keeps
the holdings of one hub and applies the decisions. After a hub restart the
ledger is rebuilt from what the running containers' labels say (``adopt``).

The promise it keeps: a unit held exclusively has exactly one holder; a shared
unit has at most ``share_limit`` holders, all of them shared; quotas hold for
everyone not exempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from ..traits import format_bytes
from .inventory import GPU

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
    """The ledger key of one user server."""
    return f"{user}/{server}"


class NoCapacity(Exception):
    """A request that cannot be met now. ``reason`` is 'no_gpu', 'user_quota' or 'group_quota'."""

    def __init__(self, reason: str, message: str, *, request: GPURequest, free: tuple[GPU, ...] = ()):
        self.reason = reason
        self.message = message
        self.request = request
        self.free = free
        super().__init__(message)


def gpus_counted(units: int, shared: bool, share_limit: int) -> Fraction:
    """What holding ``units`` counts against quotas: 1 per unit, 1/K per shared slot."""
    return Fraction(units, max(share_limit, 1)) if shared else Fraction(units)


def gpus_held(assignment: Assignment, share_limit: int) -> Fraction:
    return gpus_counted(len(assignment.units), assignment.shared, share_limit)


def _fmt(amount: Fraction | float) -> str:
    return f"{float(amount):g}"


def check_quotas(
    holdings: Iterable[Assignment], request: GPURequest, requester: Requester, policy: Policy, holder: str
) -> None:
    """Raise ``NoCapacity`` when the request would take ``requester`` or a group of theirs past its quota."""
    if requester.exempt or request.slots == 0:
        return
    others = [a for a in holdings if a.holder != holder]
    wanted = gpus_counted(request.slots, request.shared, policy.share_limit)
    limit = policy.max_gpus_per_user
    if limit is not None:
        mine = sum((gpus_held(a, policy.share_limit) for a in others if a.user == requester.user), Fraction(0))
        if mine + wanted > Fraction(limit).limit_denominator(1000):
            raise NoCapacity(
                "user_quota",
                f"You already hold {_fmt(mine)} GPU(s) across your servers, and the limit is"
                f" {_fmt(limit)} per user. Stop one of your servers to start this one.",
                request=request,
            )
    for group in sorted(requester.groups):
        if group not in policy.group_quotas:
            continue
        quota = Fraction(policy.group_quotas[group]).limit_denominator(1000)
        used = sum((gpus_held(a, policy.share_limit) for a in others if group in a.groups), Fraction(0))
        if used + wanted > quota:
            raise NoCapacity(
                "group_quota",
                f"Your group '{group}' is using {_fmt(used)} of its {_fmt(quota)} GPU(s)."
                " Try again when a classmate stops a server, or ask your teacher.",
                request=request,
            )


def _candidates(
    inventory: tuple[GPU, ...], holdings: list[Assignment], request: GPURequest, policy: Policy
) -> tuple[list[GPU], list[GPU]]:
    """(the units that could take ``request`` now, best first; all units that fit it at all)."""
    holders_of: dict[str, list[Assignment]] = {}
    for a in holdings:
        for unit in a.units:
            holders_of.setdefault(unit.id, []).append(a)

    # How busy each physical GPU and each node is (its units held), for pack/spread.
    busy: dict[str, int] = {}
    node_busy: dict[str, int] = {}
    for unit in inventory:
        if holders_of.get(unit.id):
            busy[unit.gpu_uuid] = busy.get(unit.gpu_uuid, 0) + 1
            node_busy[unit.node] = node_busy.get(unit.node, 0) + 1

    matching = [u for u in inventory if request.matches(u)]
    pack = policy.placement == PACK
    if request.shared:

        def room(unit: GPU) -> bool:
            holders = holders_of.get(unit.id, [])
            return all(a.shared for a in holders) and len(holders) < policy.share_limit

        def order(unit: GPU):
            sharing = len(holders_of.get(unit.id, []))
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

    else:

        def room(unit: GPU) -> bool:
            return not holders_of.get(unit.id)

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

    return sorted((u for u in matching if room(u)), key=order), matching


def availability(
    inventory: tuple[GPU, ...], holdings: Iterable[Assignment], request: GPURequest, policy: Policy
) -> tuple[int, int]:
    """(units that could take ``request`` now, units that fit it at all): "3 of 4 free"."""
    candidates, matching = _candidates(inventory, list(holdings), request, policy)
    return len(candidates), len(matching)


def decide(
    inventory: tuple[GPU, ...],
    holdings: Iterable[Assignment],
    request: GPURequest,
    requester: Requester,
    policy: Policy,
    holder: str,
) -> tuple[GPU, ...]:
    """The units ``holder`` should hold for ``request``, or ``NoCapacity``.

    ``holdings`` are everyone's current assignments; ``holder``'s own are
    ignored, since a server that starts gives up what it held.
    """
    if request.slots == 0:
        return ()
    holdings = [a for a in holdings if a.holder != holder]
    check_quotas(holdings, request, requester, policy, holder)
    candidates, matching = _candidates(inventory, holdings, request, policy)
    # Every unit of one server is on one node: the first node, in candidate order, with enough.
    by_node: dict[str, list[GPU]] = {}
    for unit in candidates:
        by_node.setdefault(unit.node, []).append(unit)
    for units in by_node.values():
        if len(units) >= request.slots:
            chosen = {u.id for u in units[: request.slots]}
            return tuple(u for u in inventory if u.id in chosen)  # in nvidia-smi's order: CUDA device 0 first
    held = {unit.id for a in holdings for unit in a.units}
    free = tuple(u for u in inventory if u.id not in held)
    raise NoCapacity("no_gpu", _no_capacity_message(request, matching, candidates, free), request=request, free=free)


def _no_capacity_message(request: GPURequest, matching: list[GPU], candidates: list[GPU], free: tuple[GPU, ...]) -> str:
    want = request.describe()
    if not matching:
        return f"This hub has no unit that fits {want}."
    if not request.shared and request.count > len(matching):
        return f"Needs {want}, and this hub has only {len(matching)} that fit."
    names = sorted({u.name for u in matching})
    kind = "MIG instances" if matching[0].is_mig else "GPUs"
    what = f"{names[0]} {kind}" if len(names) == 1 else kind
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
        key = f"MIG {unit.mig_profile} instance" if unit.is_mig else f"{unit.name} GPU"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}{'s' if n != 1 else ''}" for key, n in sorted(counts.items())) or "none"


class Ledger:
    """Who holds which unit, for one hub: the holdings and the decisions applied to them."""

    def __init__(self, inventory: Iterable[GPU], policy: Policy | None = None):
        self.inventory: tuple[GPU, ...] = tuple(inventory)
        self.policy = policy or Policy()
        self._by_id = {unit.id: unit for unit in self.inventory}
        self._order = {unit.id: n for n, unit in enumerate(self.inventory)}
        self._holders: dict[str, Assignment] = {}

    def update_inventory(self, units: Iterable[GPU]) -> None:
        """The units that exist now (a node joined, was drained or was lost); holdings are kept.

        A unit that left the inventory is no longer free; whoever still holds it
        keeps holding it until released.
        """
        self.inventory = tuple(units)
        self._by_id = {unit.id: unit for unit in self.inventory}
        self._order = {unit.id: n for n, unit in enumerate(self.inventory)}

    # --- questions

    def held_ids(self) -> set[str]:
        return {unit.id for a in self._holders.values() for unit in a.units}

    def free(self) -> tuple[GPU, ...]:
        """The units no server holds, in inventory order."""
        held = self.held_ids()
        return tuple(unit for unit in self.inventory if unit.id not in held)

    def assignment(self, holder: str) -> Assignment | None:
        return self._holders.get(holder)

    def assignments(self) -> tuple[Assignment, ...]:
        return tuple(self._holders.values())

    def holders_of(self, unit_id: str) -> tuple[Assignment, ...]:
        return tuple(a for a in self._holders.values() if unit_id in a.ids)

    def availability(self, request: GPURequest) -> tuple[int, int]:
        """(units that could take ``request`` now, units that fit it at all)."""
        return availability(self.inventory, self._holders.values(), request, self.policy)

    def can_fit(self, request: GPURequest, requester: Requester, holder: str = "") -> NoCapacity | None:
        """Why ``request`` cannot start now, or None when it can (for the spawn page)."""
        try:
            decide(self.inventory, self._holders.values(), request, requester, self.policy, holder)
        except NoCapacity as e:
            return e
        return None

    # --- decisions

    def assign(self, holder: str, request: GPURequest | int, requester: Requester | None = None) -> Assignment:
        """Decide and record what ``holder`` holds, or raise ``NoCapacity`` holding nothing.

        A holder that already holds units gives them up first: a server starts fresh.
        """
        if isinstance(request, int):
            if request < 0:
                raise ValueError(f"GPU count must be >= 0, got {request}")
            request = GPURequest(count=request)
        requester = requester or Requester(user=holder.split("/", 1)[0])
        self.release(holder)
        units = decide(self.inventory, self._holders.values(), request, requester, self.policy, holder)
        assignment = Assignment(holder, requester.user, units, request.shared and bool(units), requester.groups)
        if units:
            self._holders[holder] = assignment
        return assignment

    def release(self, holder: str) -> Assignment | None:
        """Free what ``holder`` holds; returns it (None when it held nothing)."""
        return self._holders.pop(holder, None)

    def adopt(
        self,
        holder: str,
        unit_ids: Iterable[str],
        *,
        user: str | None = None,
        shared: bool = False,
        groups: Iterable[str] = (),
    ) -> tuple[str, ...]:
        """Record what a running container already holds (after a hub restart).

        Ids unknown to the inventory are skipped and returned, so the caller can
        warn. A unit found held twice stays held by both: the truth on the host
        wins over the promise, and the unit stays out of the free pool until both stop.
        """
        unit_ids = list(unit_ids)
        known = [self._by_id[i] for i in unit_ids if i in self._by_id]
        unknown = tuple(i for i in unit_ids if i not in self._by_id)
        if known:
            previous = self._holders.get(holder)
            units = {u.id: u for u in (previous.units if previous else ())}
            units.update((u.id, u) for u in known)
            self._holders[holder] = Assignment(
                holder,
                user if user is not None else holder.split("/", 1)[0],
                tuple(sorted(units.values(), key=lambda u: self._order[u.id])),
                shared,
                frozenset(groups),
            )
        return unknown
