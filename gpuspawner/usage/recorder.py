"""The hub's usage book at work: what the spawners tell it, written on a thread of its own.

A spawner tells the recorder when units are assigned (``assigned``), released (``released``, with
the reason), and what runs after a restart (``rebuilt``). Each call takes its time at once, on the
event loop, and the database write happens on one thread of its own, in the order of the calls:
a slow disk never holds up the hub, and a record is never closed before it is opened. A write that
fails is logged and the hub goes on (the GPU ledger, not the usage record, decides who holds what).

Reads for budgets (``uses``) go through the same thread, so they see every write told before them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from fractions import Fraction

from prometheus_client import Counter

from .book import Running, UsageBook
from .records import Record, Use
from .store import UsageStore

#: In JupyterHub's own /hub/metrics: GPU-seconds of closed records, per group and profile (a student
#: in two groups counts in both, as the report by group does; one in none, under group "").
GPU_SECONDS = Counter(
    "gpuspawner_gpu_seconds", "GPU-seconds held by servers that stopped, per group and profile.", ["group", "profile"]
)


class UsageRecorder:
    """The hub's ``UsageBook`` on ``url``, written in order on one thread."""

    def __init__(self, url: str, log: logging.Logger | None = None, clock: Callable[[], datetime] | None = None):
        self.url = url
        self.log = log or logging.getLogger("gpuspawner")
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpuspawner-usage")
        self._book: UsageBook | None = None

    @property
    def book(self) -> UsageBook:
        """Opened (and its schema upgraded) on first use, on the recorder's thread."""
        if self._book is None:
            self._book = UsageBook(UsageStore(self.url))
        return self._book

    def _submit(self, what: str, call: Callable[[], object]) -> Future:
        def run():
            try:
                return call()
            except Exception as e:  # noqa: BLE001 - the record is lost, the hub goes on
                self.log.error("Could not record GPU usage (%s) in %s: %s", what, self.url, e)
                return None

        return self._executor.submit(run)

    def assigned(self, holder: str, *, units: Iterable[str], share: Fraction | int = 1, **record) -> Future:
        """``holder`` was given ``units`` now (a slot on a GPU shared by K: ``share`` 1/K)."""
        units, at = tuple(units), self.clock()
        return self._submit(
            f"{holder} assigned", lambda: self.book.assigned(holder, units=units, share=share, at=at, **record)
        )

    def released(self, holder: str, reason: str) -> Future:
        """``holder``'s units were released now, for ``reason`` (``records.STOP_REASONS``)."""
        at = self.clock()

        def close():
            record = self.book.released(holder, reason, at=at)
            if record is not None:
                _count(record)
            return record

        return self._submit(f"{holder} released", close)

    def rebuilt(self, running: Mapping[str, Running]) -> Future:
        """The servers running when the hub's ledger was rebuilt: open records matched to them."""
        at = self.clock()

        def rebuild():
            result = self.book.rebuilt(running, at=at)
            for record in result.closed:
                _count(record)
            if result.closed or result.adopted:
                self.log.info(
                    "Usage records after the restart: %d kept, %d closed, %d opened",
                    len(result.kept),
                    len(result.closed),
                    len(result.adopted),
                )
            return result

        return self._submit("rebuilt", rebuild)

    async def uses(self, since: datetime | None = None) -> list[Use]:
        """The records that held units since ``since``, after every write told before."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.book.store.uses(since=since)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _count(record: Record) -> None:
    seconds = float(record.gpu_seconds or 0)
    for group in record.groups or ("",):
        GPU_SECONDS.labels(group, record.profile).inc(seconds)
