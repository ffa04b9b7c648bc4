"""What all spawners of one hub share, in one object.

JupyterHub makes one spawner per user server; the GPU ledger and its lock, the
ports handed out, the Docker call pool, the image puller, the profiles files
and, on a Swarm, the nodes belong to the hub. They live in one ``HubState``:
``hub_state(spawner)`` makes it from the first spawner that asks (its config is
the hub's), and ``reset_hub_state()`` forgets it, as a restarted hub does (tests
and benchmarks use it; the running containers stay, and the next ledger is
rebuilt from their labels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING

from .docker_pool import DockerCalls
from .gpus import Inventory, Ledger, Policy
from .gpus.health import FailureCount, Quarantined, device_failure, short_reason
from .images import ImagePuller
from .quarantine import QuarantineFile, quarantine
from .reservations import Reservation, ReservationBook, ReservationsFile
from .usage.recorder import UsageRecorder
from .waiting import Line

if TYPE_CHECKING:
    from .profiles import ProfilesFile
    from .spawner import GPUSpawner
    from .swarm import SwarmNode


class HubState:
    """The hub's GPU ledger, its lock and everything else its spawners share.

    The inventory (and so the ledger) is read on first use, since reading it may
    ask NVML; the rest is made at once and starts no thread until used.
    """

    def __init__(
        self,
        load_inventory: Callable[[], Inventory],
        policy: Policy,
        *,
        docker_threads: int,
        new_docker_client: Callable,
        max_concurrent_pulls: int,
        log: logging.Logger | None = None,
        quarantine_file: str = "",
        quarantine_after: int = 0,
        inventory_retry: float = 0,
        queue_file: str = "",
        usage_db_url: str = "",
    ):
        self._load_inventory = load_inventory
        self.policy = policy
        self.log = log or logging.getLogger(__name__)
        self.lock = asyncio.Lock()  # every decision of every spawner of the hub
        self.synced = False  # the ledger rebuilt from the running containers yet?
        self.synced_at = float("-inf")  # time.monotonic() of the last check of the ledger against Docker
        self.starting: set[str] = set()  # holders assigned units whose start() has not ended: no container yet
        # Spawns waiting for units (gpuspawner.waiting); granted ones join ``starting``.
        self.line = Line(starting=self.starting, snapshot_file=queue_file, log=self.log)
        self.reservations_files: dict[str, ReservationsFile] = {}  # one per path
        # GPU-hours: every holding of units recorded (gpuspawner.usage), and the budgets, parsed once.
        self.usage = UsageRecorder(usage_db_url, self.log) if usage_db_url else None
        self.budgets: tuple | None = None
        self.config_reservations: tuple[Reservation, ...] | None = None  # c.GPUSpawner.reservations, parsed once
        self._books: tuple[tuple, ReservationBook] | None = None  # the reservations it was placed from, the book
        self._boundaries: asyncio.Task | None = None
        self._prepull: Callable[[], None] = lambda: None
        self.ports: dict[str, int] = {}  # holder -> port, while starting or running
        self.docker_calls = DockerCalls(docker_threads)
        self.puller = ImagePuller(new_docker_client, max_concurrent_pulls)
        self.profiles_files: dict[str, ProfilesFile] = {}  # one per path
        self.networks_seen: set[str] = set()  # Docker networks found on the engine (the lab's)
        # On a Swarm: the nodes as last read, and where each server runs.
        self.nodes: tuple[SwarmNode, ...] = ()
        self.nodes_read_at = float("-inf")
        self.node_of: dict[str, str] = {}  # holder -> node id, while starting or running
        self.confirmed: set[str] = set()  # holders whose units Swarm has assigned (read back)
        # Units that fail (gpus.health): failed starts in a row, and the units set aside.
        self.failures = FailureCount(quarantine_after)
        self.quarantine = QuarantineFile(quarantine_file)
        self._unrecorded: frozenset[str] = frozenset()  # quarantined, but the file could not be written
        # NVML that did not answer: asked again every this many seconds (0: never).
        self.inventory_retry = inventory_retry
        self._retrying: asyncio.Task | None = None

    @classmethod
    def for_spawner(cls, spawner: GPUSpawner) -> HubState:
        """The state a hub whose config is ``spawner``'s starts with."""
        return cls(
            spawner.load_inventory,
            spawner.policy,
            docker_threads=spawner.docker_threads,
            new_docker_client=spawner.new_docker_client,
            max_concurrent_pulls=spawner.max_concurrent_pulls,
            log=spawner.log,
            quarantine_file=spawner.quarantine_file,
            quarantine_after=spawner.quarantine_after,
            inventory_retry=spawner.inventory_retry,
            # Only the hub's own spawners (each of a user) keep the line and write its file: a spawner
            # made from the hub's config by a service (the culler reads the lab hours) or a command
            # would otherwise clear the file the hub keeps, as a new line does.
            queue_file=spawner.queue_file if spawner.user is not None else "",
            usage_db_url=spawner.usage_db_url,
        )

    @cached_property
    def inventory(self) -> Inventory:
        inventory = self._load_inventory()
        units = ", ".join(u.describe() for u in inventory.units) or f"none {inventory.note}"
        cuda = f", driver {inventory.driver_version}, CUDA {inventory.cuda_version}" if inventory.cuda_version else ""
        self.log.info("GPU inventory (%s%s): %s", inventory.source, cuda, units)
        return inventory

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.inventory.units, self.policy)

    # --- lab hours

    def book_of(self, reservations: tuple[Reservation, ...]) -> ReservationBook:
        """``reservations`` placed on the hub's units (again only when they change)."""
        if self._books is None or self._books[0] != reservations:
            book = ReservationBook.place(reservations, self.inventory.units)
            if self._books is not None or reservations:
                self.log.info("Lab hours: %s", ", ".join(r.name for r in reservations) or "none")
            self._books = (reservations, book)
        return self._books[1]

    #: How long before a lab's window the profiles' missing images are pulled again.
    prepull_lead = 900.0

    def use_reservations(self, book: ReservationBook, prepull: Callable[[], None] = lambda: None) -> None:
        """Decide with ``book``; let the line move at every window's start and end, and pull the
        profiles' missing images (``prepull``) ``prepull_lead`` seconds before each window."""
        self._prepull = prepull
        if self.line.queue.reservations is not book:
            self.line.queue.reservations = book or None
            self.line.serve(self.ledger, changed=True)
        if book and self._boundaries is None:
            self._boundaries = asyncio.get_running_loop().create_task(self._at_boundaries())

    async def _at_boundaries(self) -> None:
        """At each window's start or end, the units it reserves or frees go to those waiting; before
        each window, missing images are pulled, so that the lab does not start with a pull."""
        pulled_for: set[float] = set()
        while True:
            book = self.line.queue.reservations
            now = time.time()
            boundary = book.next_boundary(now) if book else None
            opening = book.next_start(now) if book else None
            wake = boundary or now + 60
            if opening is not None and opening not in pulled_for:
                wake = min(wake, max(opening - self.prepull_lead, now))
            await asyncio.sleep(min(max(wake - time.time(), 0) + 0.01, 60))
            try:
                now = time.time()
                if opening is not None and opening not in pulled_for and now >= opening - self.prepull_lead:
                    pulled_for.add(opening)
                    self._prepull()
                self.line.serve(self.ledger, changed=True)
            except Exception:  # noqa: BLE001 - never let the timer die: the next boundary still comes
                self.log.exception("Moving the line at a lab-hours boundary")

    # --- NVML that does not answer yet

    def retry_inventory(self) -> None:
        """While no driver answers (``gpus`` "auto", or "nvml" in a hub started without
        ``check_config``): ask again every ``inventory_retry`` seconds, in the background."""
        if self._retrying is None and self.inventory_retry and self.inventory.source == "none":
            self._retrying = asyncio.get_running_loop().create_task(self._retry_inventory())

    async def _retry_inventory(self) -> None:
        while True:
            await asyncio.sleep(self.inventory_retry)
            try:
                inventory = await asyncio.to_thread(self._load_inventory)
            except Exception as e:  # noqa: BLE001 - a GPU fallen off the bus: try again later
                self.log.warning("GPU inventory still unreadable: %s", e)
                continue
            if inventory.source != "none":
                self.__dict__["inventory"] = inventory
                self.ledger.update_inventory(inventory.units)
                units = ", ".join(u.describe() for u in inventory.units) or "none"
                self.log.info("NVML answers now: GPU inventory (%s): %s", inventory.source, units)
                return

    # --- units that fail

    def refresh_quarantine(self) -> None:
        """The units set aside, as the quarantine file says now (an admin may have put one back)."""
        units = frozenset(self.quarantine.current()) | self._unrecorded
        ledger = self.ledger
        if units != ledger.quarantined:
            back = ledger.quarantined - units
            if back:
                self.log.info("Units put back from quarantine: %s", ", ".join(sorted(back)))
            ledger.quarantined = units

    def started(self, unit_ids: Iterable[str]) -> None:
        """A container started on these units: they work."""
        self.failures.started(unit_ids)

    def start_failed(
        self, holder: str, unit_ids: Iterable[str], error: str
    ) -> tuple[tuple[str, ...], list[Quarantined]]:
        """A container of ``holder`` on ``unit_ids`` failed to start with ``error``.

        Returns (the units the error blames, none when it is not the device's; those
        now quarantined). A unit quarantined is skipped at once, and the file keeps it
        so across restarts; if the file cannot be written, only this hub skips it.
        """
        blamed = device_failure(error, unit_ids)
        if not blamed:
            return (), []
        now = datetime.now(timezone.utc)
        reason = short_reason(error)
        records = [Quarantined(u, now, reason, n, holder) for u, n in self.failures.failed(blamed).items()]
        if records:
            self.ledger.quarantined |= {q.unit for q in records}
            for q in records:
                self.log.error("Quarantined unit %s after %d failed starts in a row: %s", q.unit, q.failures, reason)
            if self.quarantine.path:
                try:
                    quarantine(self.quarantine.path, records)
                except OSError as e:
                    self._unrecorded |= {q.unit for q in records}
                    self.log.error("Could not record the quarantine in %s: %s", self.quarantine.path, e)
        return blamed, records

    def close(self) -> None:
        """Stop the Docker pool's threads (the calls still queued are dropped), and the NVML retries."""
        if self._retrying is not None:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                self._retrying.cancel()
        self.docker_calls.close()


_current: HubState | None = None


def hub_state(spawner: GPUSpawner) -> HubState:
    """The hub's one ``HubState``, made from ``spawner``'s config if there is none yet."""
    global _current
    if _current is None:
        _current = HubState.for_spawner(spawner)
    return _current


def reset_hub_state() -> None:
    """Forget the hub's state, as a restarted hub starts without it; the next spawner makes a new one."""
    global _current
    if _current is not None:
        _current.close()
    _current = None


__all__ = ["HubState", "hub_state", "reset_hub_state"]
