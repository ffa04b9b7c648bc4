"""The allocation core: which GPUs each server holds.

Pure: no Docker, no NVML, no clock. The spawner asks it for a decision and
records the outcome on the container; after a hub restart the ledger is rebuilt
from what the running containers' labels say (``Ledger.adopt``).

JupyterHub runs spawners on one asyncio loop, and no method here awaits, so a
check-and-record in ``assign`` cannot interleave with another spawn's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .inventory import GPU


class NoGPUAvailable(Exception):
    """Not enough free GPUs for a request. Carries what is free, for the message."""

    def __init__(self, requested: int, free: tuple[GPU, ...], total: int):
        self.requested = requested
        self.free = free
        self.total = total
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.requested > self.total:
            has = f"only {self.total}" if self.total else "no GPUs"
            return f"This profile needs {self.requested} GPU(s), and this hub has {has}."
        return (
            f"No GPU free: this profile needs {self.requested} GPU(s),"
            f" and {len(self.free)} of {self.total} are free now."
        )


@dataclass(frozen=True)
class Assignment:
    """The GPUs one server holds. ``holder`` is ``"user/server"`` (server '' for the default)."""

    holder: str
    gpus: tuple[GPU, ...]


def holder_key(user: str, server: str = "") -> str:
    """The ledger key of one user server."""
    return f"{user}/{server}"


class Ledger:
    """Who holds which GPU, for one hub. Whole GPUs are exclusive."""

    def __init__(self, inventory: Iterable[GPU]):
        self.inventory: tuple[GPU, ...] = tuple(sorted(inventory, key=lambda g: g.index))
        self._by_id = {gpu.id: gpu for gpu in self.inventory}
        self._holders: dict[str, Assignment] = {}

    # --- questions

    def held_ids(self) -> set[str]:
        return {gpu.id for a in self._holders.values() for gpu in a.gpus}

    def free(self) -> tuple[GPU, ...]:
        """The GPUs no server holds, by index."""
        held = self.held_ids()
        return tuple(gpu for gpu in self.inventory if gpu.id not in held)

    def assignment(self, holder: str) -> Assignment | None:
        return self._holders.get(holder)

    def assignments(self) -> tuple[Assignment, ...]:
        return tuple(self._holders.values())

    # --- decisions

    def assign(self, holder: str, count: int) -> Assignment:
        """Give ``holder`` ``count`` free GPUs, lowest index first, or raise ``NoGPUAvailable``.

        A holder that already holds GPUs gives them up first: a server starts fresh.
        """
        if count < 0:
            raise ValueError(f"GPU count must be >= 0, got {count}")
        self.release(holder)
        free = self.free()
        if count > len(free):
            raise NoGPUAvailable(count, free, len(self.inventory))
        assignment = Assignment(holder, free[:count])
        if count:
            self._holders[holder] = assignment
        return assignment

    def release(self, holder: str) -> Assignment | None:
        """Free what ``holder`` holds; returns it (None when it held nothing)."""
        return self._holders.pop(holder, None)

    def adopt(self, holder: str, gpu_ids: Iterable[str]) -> tuple[str, ...]:
        """Record what a running container already holds (after a hub restart).

        Ids unknown to the inventory are skipped and returned, so the caller can warn.
        A GPU recorded for two holders is kept for both: the truth on the host wins
        over the promise, and the GPU stays out of the free pool until both stop.
        """
        known, unknown = [], []
        for gpu_id in gpu_ids:
            (known if gpu_id in self._by_id else unknown).append(gpu_id)
        if known:
            previous = self._holders.get(holder)
            gpus = {g.id: g for g in (previous.gpus if previous else ())}
            gpus.update((gpu_id, self._by_id[gpu_id]) for gpu_id in known)
            self._holders[holder] = Assignment(holder, tuple(sorted(gpus.values(), key=lambda g: g.index)))
        return tuple(unknown)
