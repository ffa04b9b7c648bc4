"""CPU and memory caps: what each user's and each group's servers add up to, beside their GPUs.

Pure, like the allocation core: no Docker, no clock. A server counts the limits
it runs with (its profile's ``cpu_limit`` and ``mem_limit``, else the hub-wide
ones), from its start until it stops, whatever it really uses: a cap is a
promise about what the host may be asked for, as a GPU quota is. ``Usage`` keeps
the running totals of one hub; ``refusal`` says why a server cannot start within
``Caps``, or None. The ``Ledger`` (``allocation.py``) holds a ``Usage`` beside
its GPU holdings and turns a refusal into ``NoCapacity``.

CPUs are counted in thousandths and memory in bytes, so that totals are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..quantities import format_bytes

#: The reasons of a refusal by a cap, as ``NoCapacity.reason`` and the denials file say them.
REASONS = ("user_cpu_quota", "user_memory_quota", "group_cpu_quota", "group_memory_quota")


def _milli(cpus: float) -> int:
    return round(cpus * 1000)


def format_cpus(cpus: float) -> str:
    """'1 CPU', '2.5 CPUs'."""
    return f"{cpus:g} CPU{'' if cpus == 1 else 's'}"


@dataclass(frozen=True)
class ServerResources:
    """What one server counts against the caps: its CPU limit and its memory limit (bytes); 0: none."""

    cpus: float = 0.0
    memory: int = 0

    @classmethod
    def of(cls, cpu_limit: float | None, mem_limit: int | None) -> ServerResources:
        """From a server's limits; a limit that is not set counts as 0."""
        return cls(float(cpu_limit or 0), int(mem_limit or 0))

    def __bool__(self) -> bool:
        return bool(self.cpus or self.memory)

    def describe(self) -> str:
        """'2 CPUs, 4 GiB RAM' (what is set of it)."""
        parts = []
        if self.cpus:
            parts.append(format_cpus(self.cpus))
        if self.memory:
            parts.append(f"{format_bytes(self.memory)} RAM")
        return ", ".join(parts)


NO_RESOURCES = ServerResources()


@dataclass(frozen=True)
class Caps:
    """The admin's caps on CPUs and memory, per user (across all their servers) and per group. None: no cap."""

    cpus_per_user: float | None = None
    memory_per_user: int | None = None  # bytes
    group_cpus: Mapping[str, float] = field(default_factory=dict)  # group -> CPUs
    group_memory: Mapping[str, int] = field(default_factory=dict)  # group -> bytes

    def __bool__(self) -> bool:
        return (
            self.cpus_per_user is not None
            or self.memory_per_user is not None
            or bool(self.group_cpus)
            or bool(self.group_memory)
        )


@dataclass(frozen=True)
class Held:
    """What one server holds: whose it is, the groups it counts in (at its start), its resources."""

    user: str
    groups: frozenset[str]
    resources: ServerResources


class Usage:
    """The running totals of one hub: each server's resources, and their sums per user and per group."""

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}  # holder ("user/server") -> what it holds
        self.user_cpus: dict[str, int] = {}  # thousandths of a CPU
        self.user_memory: dict[str, int] = {}
        self.group_cpus: dict[str, int] = {}
        self.group_memory: dict[str, int] = {}

    def _add(self, held: Held, sign: int) -> None:
        cpus, memory = sign * _milli(held.resources.cpus), sign * held.resources.memory
        self.user_cpus[held.user] = self.user_cpus.get(held.user, 0) + cpus
        self.user_memory[held.user] = self.user_memory.get(held.user, 0) + memory
        for group in held.groups:
            self.group_cpus[group] = self.group_cpus.get(group, 0) + cpus
            self.group_memory[group] = self.group_memory.get(group, 0) + memory

    def hold(self, holder: str, user: str, groups: Iterable[str], resources: ServerResources) -> None:
        """Record what ``holder`` holds, in place of what it held."""
        self.release(holder)
        if resources:
            held = self.held[holder] = Held(user, frozenset(groups), resources)
            self._add(held, +1)

    def release(self, holder: str) -> Held | None:
        held = self.held.pop(holder, None)
        if held is not None:
            self._add(held, -1)
        return held

    def of_user(self, user: str) -> ServerResources:
        return ServerResources(self.user_cpus.get(user, 0) / 1000, self.user_memory.get(user, 0))

    def of_group(self, group: str) -> ServerResources:
        return ServerResources(self.group_cpus.get(group, 0) / 1000, self.group_memory.get(group, 0))


@dataclass(frozen=True)
class Refusal:
    """Why a server cannot start within the caps: a reason of ``REASONS`` and the student's sentence."""

    reason: str
    message: Callable[[], str]


def refusal(
    usage: Usage,
    holder: str,
    wanted: ServerResources,
    caps: Caps,
    *,
    user: str,
    groups: Iterable[str] = (),
    exempt: bool = False,
) -> Refusal | None:
    """Why ``holder``'s server, asking ``wanted``, would take ``user`` or a group of theirs past a cap; or None.

    What ``holder`` holds now counts as given up (a server that starts again).
    ``exempt``: an admin exempted from quotas (what they hold still counts in their groups).
    """
    if exempt or not wanted or not caps:
        return None
    own = usage.held.get(holder)

    def mine(totals: dict[str, int], key: str, in_own: bool, amount: int) -> int:
        return totals.get(key, 0) - (amount if own is not None and in_own else 0)

    own_cpus = _milli(own.resources.cpus) if own else 0
    own_memory = own.resources.memory if own else 0
    want_cpus, want_memory = _milli(wanted.cpus), wanted.memory
    is_mine = own is not None and own.user == user

    if caps.memory_per_user is not None and want_memory:
        used = mine(usage.user_memory, user, is_mine, own_memory)
        if used + want_memory > caps.memory_per_user:
            return Refusal("user_memory_quota", _user_message(used, want_memory, caps.memory_per_user, _memory))
    if caps.cpus_per_user is not None and want_cpus:
        used = mine(usage.user_cpus, user, is_mine, own_cpus)
        if used + want_cpus > _milli(caps.cpus_per_user):
            return Refusal("user_cpu_quota", _user_message(used, want_cpus, _milli(caps.cpus_per_user), _cpus))
    for group in sorted(groups):
        in_own = own is not None and group in own.groups
        quota = caps.group_memory.get(group)
        if quota is not None and want_memory:
            used = mine(usage.group_memory, group, in_own, own_memory)
            if used + want_memory > quota:
                return Refusal("group_memory_quota", _group_message(group, used, want_memory, quota, _memory))
        quota = caps.group_cpus.get(group)
        if quota is not None and want_cpus:
            used = mine(usage.group_cpus, group, in_own, own_cpus)
            if used + want_cpus > _milli(quota):
                return Refusal("group_cpu_quota", _group_message(group, used, want_cpus, _milli(quota), _cpus))
    return None


def oversized(resources: ServerResources, caps: Caps, groups: Iterable[str] = ()) -> str:
    """Why a server of ``resources`` could never start under ``caps`` for a user in ``groups``
    (only an exempt admin could start it), or ''. For the hub's check of its profiles."""
    too_big = []
    if caps.memory_per_user is not None and resources.memory > caps.memory_per_user:
        too_big.append(f"{format_bytes(resources.memory)} of memory, over max_memory_per_user")
    if caps.cpus_per_user is not None and _milli(resources.cpus) > _milli(caps.cpus_per_user):
        too_big.append(f"{format_cpus(resources.cpus)}, over max_cpus_per_user")
    for group in sorted(groups):
        if resources.memory > caps.group_memory.get(group, resources.memory):
            too_big.append(f"{format_bytes(resources.memory)} of memory, over group_memory_quotas[{group!r}]")
        if _milli(resources.cpus) > _milli(caps.group_cpus.get(group, resources.cpus)):
            too_big.append(f"{format_cpus(resources.cpus)}, over group_cpu_quotas[{group!r}]")
    return "; ".join(too_big)


@dataclass(frozen=True)
class _Kind:
    """How amounts of one resource are said: memory in bytes, CPUs in thousandths."""

    bare: Callable[[int], str]  # "6 GiB", "3"
    full: Callable[[int], str]  # "6 GiB", "3 CPUs"
    total: Callable[[int], str]  # "8 GiB of memory", "4 CPUs"


_memory = _Kind(format_bytes, format_bytes, lambda n: f"{format_bytes(n)} of memory")
_cpus = _Kind(lambda n: f"{n / 1000:g}", lambda n: format_cpus(n / 1000), lambda n: format_cpus(n / 1000))


def _user_message(used: int, wanted: int, cap: int, kind: _Kind) -> Callable[[], str]:
    def message() -> str:
        if wanted > cap:
            return (
                f"This server needs {kind.total(wanted)}, more than the {kind.full(cap)} one user may have"
                " at once. Choose a smaller profile."
            )
        return (
            f"Your servers use {kind.bare(used)} of your {kind.total(cap)}, and this one needs"
            f" {kind.full(wanted)} ({kind.full(max(cap - used, 0))} left). Stop one of your servers,"
            " or choose a smaller profile."
        )

    return message


def _group_message(group: str, used: int, wanted: int, quota: int, kind: _Kind) -> Callable[[], str]:
    def message() -> str:
        return (
            f"Your group '{group}' is using {kind.bare(used)} of its {kind.total(quota)}, and this server needs"
            f" {kind.full(wanted)} ({kind.full(max(quota - used, 0))} left). Try again when a classmate"
            " stops a server, choose a smaller profile, or ask your teacher."
        )

    return message


__all__ = [
    "NO_RESOURCES",
    "REASONS",
    "Caps",
    "Held",
    "Refusal",
    "ServerResources",
    "Usage",
    "format_cpus",
    "oversized",
    "refusal",
]
