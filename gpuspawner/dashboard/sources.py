"""The dashboard's I/O: Docker, NVML, the hub's REST API, the denials and the stops files.

Each source is read afresh for every request; a source that fails is reported
in the view (``*_error``) and nothing cached from before stands in for it. Of the
denials and stops files only a bounded tail is read (``tail_bytes``), so a page
takes as long with a file of gigabytes as with one of kilobytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .. import labels as label
from ..docker_client import LazyClient
from ..eventfiles import DEFAULT_TAIL_BYTES, Skipped, read_snapshot, read_tail
from ..gpus import Inventory, Policy
from ..gpus.nvml import NVMLUnavailable, UnitUsage, read_usage
from ..quarantine import QuarantineFile
from .history import UsageHistory
from .model import (
    DashboardView,
    Waiter,
    activity_from_users,
    build_view,
    groups_from_users,
    parse_events,
    waiters_from_snapshot,
)

PAGINATION = "application/jupyterhub-pagination+json"


def usage_from_file(path: str) -> dict[str, UnitUsage]:
    """GPU usage as NVML would read it, from a JSON file (a simulation of a lab with no GPU)::

    {"GPU-...": {"utilization_gpu": 35, "memory_used": 1073741824, "memory_total": 17179869184,
                 "temperature": 41}}
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {
        unit: UnitUsage(
            utilization_gpu=entry.get("utilization_gpu"),
            memory_used=int(entry.get("memory_used", 0)),
            memory_total=int(entry.get("memory_total", 0)),
            temperature=entry.get("temperature"),
            processes=tuple(entry["processes"]) if entry.get("processes") is not None else None,
        )
        for unit, entry in data.items()
    }


class HubAPI:
    """The few hub REST calls the dashboard makes, with the service's own token."""

    def __init__(self, api_url: str, token: str, client: AsyncHTTPClient | None = None):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.client = client or AsyncHTTPClient()

    async def _fetch(self, method: str, path: str, accept: str = "application/json"):
        request = HTTPRequest(
            f"{self.api_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}", "Accept": accept},
            request_timeout=10,
            allow_nonstandard_methods=True,
        )
        return await self.client.fetch(request)

    async def active_users(self) -> list[dict]:
        """Every user with a running or pending server (needs list:users, read:servers,
        read:users:activity; read:users:groups for their groups)."""
        users, offset = [], 0
        while True:
            response = await self._fetch("GET", f"/users?state=active&offset={offset}&limit=200", PAGINATION)
            page = json.loads(response.body)
            if isinstance(page, list):  # a hub without pagination
                return page
            users += page["items"]
            following = (page.get("_pagination") or {}).get("next")
            if not following:
                return users
            offset = following["offset"]

    async def services(self) -> list[dict]:
        """The hub's services with a page, as its own Services menu lists them (``display`` and a URL),
        in the hub's order: ``[{"name", "prefix"}]`` (needs list:services and read:services)."""
        response = await self._fetch("GET", "/services")
        models = json.loads(response.body)
        models = models.values() if isinstance(models, dict) else models
        return [
            {"name": m["name"], "prefix": m["prefix"]}
            for m in models
            if m.get("display") and m.get("url") and m.get("prefix")
        ]

    async def stop_server(self, user: str, server: str) -> None:
        """Ask the hub to stop a server (needs delete:servers): the spawner frees its GPUs."""
        path = f"/users/{quote(user, safe='')}/" + (f"servers/{quote(server, safe='')}" if server else "server")
        await self._fetch("DELETE", path)


class Sources:
    """Reads the sources and builds the view: the only place the dashboard does I/O."""

    def __init__(
        self,
        inventory: Inventory,
        policy: Policy,
        docker_client: Callable[[], object],
        hub: HubAPI | None,
        denials_file: str,
        denials_shown: int = 20,
        nvml: bool = True,
        host: str | None = None,
        stops_file: str = "",
        queue_file: str = "",
        usage_file: str = "",
        reservations: Callable[[], object] | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        log: logging.Logger | None = None,
        quarantine_file: str = "",
        reload_inventory: Callable[[], Inventory] | None = None,
        inventory_retry: float = 0,
        history: UsageHistory | None = None,
    ):
        self.inventory = inventory
        self.history = history  # the units' last hour, sampled at each view (None: none kept)
        self._described = inventory.units  # on a Swarm: what the config says of each unit
        self.policy = policy
        self._docker = LazyClient(docker_client)
        self.hub = hub
        self.denials_file = denials_file
        self.denials_shown = denials_shown
        self._denials_cache: dict = {}
        self.stops_file = stops_file
        self.queue_file = queue_file
        self.usage_file = usage_file  # GPU usage from a file instead of NVML (a simulation, a test)
        self.reservations = reservations  # the hub's lab hours (a ReservationBook), read at each view; None: none
        self._stops_cache: dict = {}
        self.tail_bytes = tail_bytes
        self.log = log or logging.getLogger("gpuspawner.dashboard")
        self.nvml = nvml
        self.host = socket.gethostname() if host is None else host
        self.quarantine = QuarantineFile(quarantine_file)
        # NVML that did not answer when the dashboard started: asked again, as the hub does.
        self._reload_inventory = reload_inventory
        self.inventory_retry = inventory_retry if reload_inventory else 0
        self._inventory_tried = time.monotonic()

    async def _retry_inventory(self) -> None:
        if self.inventory.source != "none" or not self.inventory_retry:
            return
        if time.monotonic() - self._inventory_tried < self.inventory_retry:
            return
        self._inventory_tried = time.monotonic()
        try:
            self.inventory = await asyncio.to_thread(self._reload_inventory)
        except Exception:  # noqa: BLE001 - a GPU fallen off the bus: still none, said as before
            return

    def _containers(self) -> list[dict]:
        with self._docker.use() as client:  # a failure: a new client next time (the engine may have restarted)
            if self.inventory.source == "swarm":  # SwarmGPUSpawner: every node, from the Swarm manager
                from ..swarm import dashboard_inputs

                self.inventory, found = dashboard_inputs(client, self._described)
                return found
            return client.containers(filters={"label": label.USER})

    def _events(self, path: str, cache: dict):
        """(recent events, counts by reason) of the tail of a JSON-lines file, and an error ('' when read)."""
        if not path:
            return ((), {}), ""
        try:
            # The same file, unchanged (inode, size, mtime): the same parse, not an old one.
            st = os.stat(path)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, self.denials_shown, self.tail_bytes)
            if cache.get("key") != key:
                lines, torn = read_tail(path, self.tail_bytes)
                skipped = Skipped()
                parsed = parse_events(lines, self.denials_shown, skipped)
                if torn.strip():  # the writer's line in progress, or one a crash cut short
                    skipped.add("a torn last line", torn)
                skipped.warn(path, self.log)
                cache.update(key=key, parsed=parsed)
            return cache["parsed"], ""
        except FileNotFoundError:
            return ((), {}), ""  # nothing recorded yet
        except OSError as e:
            return ((), {}), f"{path}: {e.strerror or e}"

    async def view(self) -> DashboardView:
        await self._retry_inventory()

        async def containers():
            try:
                return await asyncio.to_thread(self._containers), ""
            except Exception as e:  # noqa: BLE001 - any engine failure is "cannot read Docker"
                return None, f"{type(e).__name__}: {e}"

        async def usage():
            if self.usage_file:
                try:
                    return await asyncio.to_thread(usage_from_file, self.usage_file), ""
                except (OSError, ValueError, TypeError, AttributeError) as e:
                    return None, f"{self.usage_file}: {e}"
            if not self.nvml:
                return None, "disabled (--no-nvml)"
            try:
                return await asyncio.to_thread(read_usage), ""
            except NVMLUnavailable as e:
                return None, str(e)
            except Exception as e:  # noqa: BLE001 - a GPU fallen off the bus
                return None, f"NVML failed: {e}"

        async def activity():
            if self.hub is None:
                return ({}, None), "no hub API token (JUPYTERHUB_API_TOKEN)"
            try:
                users = await self.hub.active_users()
                return (activity_from_users(users), groups_from_users(users)), ""
            except HTTPClientError as e:
                return ({}, None), f"GET /users: {e.code} {e.message}"
            except Exception as e:  # noqa: BLE001 - connection refused, timeouts
                return ({}, None), f"GET /users: {e}"

        (found, docker_error), (used, nvml_error), ((seen, groups), hub_error) = await asyncio.gather(
            containers(), usage(), activity()
        )
        denials, denials_error = self._events(self.denials_file, self._denials_cache)
        stops, stops_error = self._events(self.stops_file, self._stops_cache)
        waiting, queue_error = self._line()
        view = build_view(
            self.inventory,
            self.policy,
            found,
            now=datetime.now(timezone.utc),
            host=self.host,
            usage=used,
            activity=seen,
            denials=denials,
            docker_error=docker_error,
            nvml_error=nvml_error,
            hub_error=hub_error,
            denials_error=denials_error,
            groups=groups,
            stops=stops,
            stops_error=stops_error,
            quarantined=self.quarantine.current(),
            inventory_retry=self.inventory_retry,
            waiting=waiting,
            queue_error=queue_error,
        )
        view = self._with_lab_hours(view)
        return self.history.sample(view) if self.history is not None else view

    def _with_lab_hours(self, view: DashboardView) -> DashboardView:
        """Each unit's lab hours, now or next (nothing when there are none, or they cannot be read)."""
        if self.reservations is None:
            return view
        try:
            book = self.reservations()
        except Exception as e:  # noqa: BLE001 - a broken reservations file: the rest of the page still shows
            return replace(view, warnings=(*view.warnings, f"the lab's reservations cannot be read: {e}"))
        now = view.generated_at.timestamp()
        return replace(view, units=tuple(replace(u, lab_hours=book.describe_unit(u.id, now)) for u in view.units))

    def _line(self) -> tuple[tuple[Waiter, ...], str]:
        """Who waits in line, from the hub's queue file (none, and why, when it cannot be read)."""
        if not self.queue_file:
            return (), ""
        try:
            return waiters_from_snapshot(read_snapshot(self.queue_file)), ""
        except (OSError, ValueError, TypeError, AttributeError) as e:
            return (), f"{self.queue_file}: {e}"
