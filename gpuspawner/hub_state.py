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
import logging
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from .docker_pool import DockerCalls
from .gpus import Inventory, Ledger, Policy
from .images import ImagePuller

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
    ):
        self._load_inventory = load_inventory
        self.policy = policy
        self.log = log or logging.getLogger(__name__)
        self.lock = asyncio.Lock()  # every decision of every spawner of the hub
        self.synced = False  # the ledger rebuilt from the running containers yet?
        self.synced_at = float("-inf")  # time.monotonic() of the last check of the ledger against Docker
        self.starting: set[str] = set()  # holders assigned units whose start() has not ended: no container yet
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

    def close(self) -> None:
        """Stop the Docker pool's threads (the calls still queued are dropped)."""
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
