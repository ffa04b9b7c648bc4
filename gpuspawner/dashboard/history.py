"""The last hour of each unit's use, kept by the dashboard itself: a ring of time slots per unit.

NVML says only what a GPU does now; the map's sparklines need the hour before. The service
samples every view it builds (the page's, the API's, and its own every ``interval`` seconds),
and keeps, per unit, one slot per ``interval``: the mean of the samples that fell in it.
Memory is fixed by the window: ``window / interval`` slots of a few bytes per unit, whatever
the number of requests; a unit unseen for a whole window is dropped. Pure: the time is given.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import replace

from .model import DashboardView, UnitView

NO_DATA = None


class _Ring:
    """One unit's slots: for each position, which slot it holds now and the sums of its samples."""

    __slots__ = ("_older", "_older_for", "count", "memory", "slot", "utilization")

    def __init__(self, size: int):
        # The slots before the newest change no more once it has begun: kept, for every page until the next.
        self._older: tuple[tuple[int | None, ...], tuple[int | None, ...]] = ((), ())
        self._older_for = -1
        self.slot = array("q", [-1]) * size  # the slot number a position holds (-1: none yet)
        self.utilization = array("H", [0]) * size  # sums of percentages (at most MAX_SAMPLES of 100)
        self.memory = array("H", [0]) * size
        self.count = array("H", [0]) * size  # samples of utilisation | samples of memory << 8

    def add(self, slot: int, utilization: int | None, memory: int | None) -> None:
        pos = slot % len(self.slot)
        if slot != self._older_for:  # a new slot (or the clock went back): the older ones are read again
            self._older_for = -1
        if self.slot[pos] != slot:  # a slot of an hour ago, or never written: start it afresh
            self.slot[pos], self.utilization[pos], self.memory[pos], self.count[pos] = slot, 0, 0, 0
        n_util, n_mem = self.count[pos] & 0xFF, self.count[pos] >> 8
        if utilization is not None and n_util < UsageHistory.MAX_SAMPLES:
            self.utilization[pos] += utilization
            n_util += 1
        if memory is not None and n_mem < UsageHistory.MAX_SAMPLES:
            self.memory[pos] += memory
            n_mem += 1
        self.count[pos] = n_util | n_mem << 8

    def newest(self) -> int:
        return max(self.slot)

    def _values(self, first: int, last: int) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        size = len(self.slot)
        util: list[int | None] = []
        mem: list[int | None] = []
        for slot in range(first, last + 1):
            pos = slot % size
            n_util, n_mem = (self.count[pos] & 0xFF, self.count[pos] >> 8) if self.slot[pos] == slot else (0, 0)
            util.append(round(self.utilization[pos] / n_util) if n_util else NO_DATA)
            mem.append(round(self.memory[pos] / n_mem) if n_mem else NO_DATA)
        return tuple(util), tuple(mem)

    def series(self, last: int) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        """(utilisation, memory) per slot, oldest first, ending at slot ``last``; None where no sample."""
        if self._older_for != last:
            self._older = self._values(last - len(self.slot) + 1, last - 1)
            self._older_for = last
        (util,), (mem,) = self._values(last, last)
        return (*self._older[0], util), (*self._older[1], mem)


class UsageHistory:
    """Utilisation and memory (percent of the unit's memory) of every unit over the last ``window`` seconds."""

    MAX_SAMPLES = 255  # per slot and series: a burst of requests cannot overflow a slot's sum

    def __init__(self, window: float = 3600, interval: float = 30):
        if interval <= 0 or window < interval:
            raise ValueError(f"a history needs 0 < interval <= window, not interval={interval}, window={window}")
        self.interval = interval
        self.size = int(-(-window // interval))  # slots in the window, rounded up
        self._rings: dict[str, _Ring] = {}

    def __len__(self) -> int:
        return len(self._rings)

    def slot(self, when: float) -> int:
        return int(when // self.interval)

    def record(self, units: Iterable[UnitView], when: float) -> None:
        """One sample of each unit whose use NVML gave (``when``: seconds since the epoch)."""
        slot = self.slot(when)
        for u in units:
            usage = u.usage
            if usage is None:
                continue
            memory = min(100, round(100 * usage.memory_used / usage.memory_total)) if usage.memory_total else None
            utilization = usage.utilization_gpu
            ring = self._rings.get(u.id)
            if ring is None:
                ring = self._rings[u.id] = _Ring(self.size)
            ring.add(slot, None if utilization is None else max(0, min(100, int(utilization))), memory)
        # Units gone from the inventory (a node left the Swarm) for a whole window: forgotten.
        stale = [unit for unit, ring in self._rings.items() if ring.newest() <= slot - self.size]
        for unit in stale:
            del self._rings[unit]

    def series(self, unit: str, when: float) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        """(utilisation, memory) of ``unit``, one value per slot of the window ending at ``when``."""
        ring = self._rings.get(unit)
        if ring is None:
            return (NO_DATA,) * self.size, (NO_DATA,) * self.size
        return ring.series(self.slot(when))

    def sample(self, view: DashboardView) -> DashboardView:
        """Record ``view``'s usage, and return it with each unit's history up to now."""
        when = view.generated_at.timestamp()
        self.record(view.units, when)
        units = []
        for u in view.units:
            utilization, memory = self.series(u.id, when)
            units.append(replace(u, utilization_history=utilization, memory_history=memory))
        return replace(view, units=tuple(units), history_interval=self.interval)
