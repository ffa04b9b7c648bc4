"""The utilisation and peak memory of a GPU server's own processes, kept on its usage record (pure).

The GPU culler reads every unit through NVML at each round and places each process in its
container (``usage.py``); so it, not the hub, measures a server's own use. At each round it
takes a ``Sample`` of each GPU server (``sample``): the share of time its own processes ran
kernels on each of its units (NVML's per-process utilisation, summed over its processes, at
most 100 %), averaged over its units, and the GPU memory its own processes use on all of them.
``FigureBook`` keeps, per open usage record, the mean of the samples weighted by the time each
covers and the highest memory, and says which records' figures changed, for the culler to
write to them (``UsageStore.set_figures``) while the server runs. So the record holds them when
the hub closes it, however it ends (a crash, a hub killed), without the hub reading NVML.

Where NVML cannot say (no driver, a unit it cannot read, utilisation on a MIG instance, a
process whose memory the driver does not report) the figure is not sampled: a record never
measured keeps them empty ("n/a" in reports), never 0. A server whose processes use no GPU is
measured as 0, which is the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .policy import UnitReading


@dataclass(frozen=True)
class Sample:
    """One round's reading of one server: None where NVML could not say."""

    utilisation: float | None  # percent of its units' time its own processes ran kernels
    memory: int | None  # bytes its own processes use on all its units

    @property
    def measured(self) -> bool:
        return self.utilisation is not None or self.memory is not None


UNMEASURED = Sample(None, None)


def sample(container: str, units: Sequence[str], readings: Mapping[str, UnitReading]) -> Sample:
    """What ``container``'s own processes did on its ``units`` in this round's ``readings``."""
    if not container or not units:
        return UNMEASURED
    shares: list[int] | None = []
    memory: int | None = 0
    for unit in units:
        reading = readings.get(unit)
        if reading is None or reading.processes is None:
            return UNMEASURED  # the unit could not be read: nothing is known of it
        own = [pid for pid, owner in reading.processes.items() if owner == container]
        if shares is not None:
            per_process = reading.process_utilization
            if per_process is None:
                shares = None
            else:
                shares.append(min(100, sum(per_process.get(pid, 0) for pid in own)))
        if memory is not None:
            used = reading.process_memory
            if used is None or any(pid not in used for pid in own):
                memory = None
            else:
                memory += sum(used[pid] for pid in own)
    return Sample(None if shares is None else sum(shares) / len(shares), memory)


class _Kept:
    __slots__ = ("util_sum", "util_seconds", "peak", "last", "written")

    def __init__(self, utilisation: float | None, peak: int | None, seconds: float):
        self.util_sum = utilisation * seconds if utilisation is not None else 0.0
        self.util_seconds = seconds if utilisation is not None else 0.0
        self.peak = peak
        self.last: datetime | None = None
        self.written = (_rounded(utilisation), peak)

    @property
    def figures(self) -> tuple[float | None, int | None]:
        mean = self.util_sum / self.util_seconds if self.util_seconds else None
        return _rounded(mean), self.peak


def _rounded(utilisation: float | None) -> float | None:
    return None if utilisation is None else round(utilisation, 1)


@dataclass(frozen=True)
class OpenRecord:
    """What the book needs of an open usage record (``usage.Record`` has these fields)."""

    id: int
    holder: str
    started_at: datetime
    utilisation: float | None = None
    peak_memory: int | None = None


class FigureBook:
    """The figures of the open records, over the rounds; ``interval``: seconds between rounds."""

    def __init__(self, interval: float):
        self.interval = float(interval)
        self._kept: dict[int, _Kept] = {}

    def round(
        self, now: datetime, open_records: Mapping[str, OpenRecord], samples: Mapping[str, Sample]
    ) -> dict[int, tuple[float | None, int | None]]:
        """Add this round's ``samples`` (by holder, "user/server") to the open records (by holder);
        returns {record id: (mean utilisation %, peak memory bytes)} of those whose figures changed.

        A record first seen with figures already on it (a restarted culler) goes on from them, as if
        they covered its time so far but this round's."""
        changed = {}
        for holder, taken in samples.items():
            record = open_records.get(holder)
            if record is None or not taken.measured:
                continue
            kept = self._kept.get(record.id)
            so_far = max((now - record.started_at).total_seconds(), 0.0)
            if kept is None:
                kept = self._kept[record.id] = _Kept(
                    record.utilisation, record.peak_memory, max(so_far - self.interval, 0.0)
                )
            seconds = (now - kept.last).total_seconds() if kept.last is not None else min(self.interval, so_far)
            if seconds <= 0:
                continue  # the same round again, or a clock set back
            kept.last = now
            if taken.utilisation is not None:
                kept.util_sum += taken.utilisation * seconds
                kept.util_seconds += seconds
            if taken.memory is not None and (kept.peak is None or taken.memory > kept.peak):
                kept.peak = taken.memory
            if kept.figures != kept.written:
                changed[record.id] = kept.written = kept.figures
        open_ids = {r.id for r in open_records.values()}
        for record_id in [i for i in self._kept if i not in open_ids]:
            del self._kept[record_id]  # closed: nothing more to add
        return changed


__all__ = ["UNMEASURED", "FigureBook", "OpenRecord", "Sample", "sample"]
