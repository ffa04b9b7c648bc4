"""The GPU culler: jupyterhub-idle-culler 2.0 with GPU rules in its ``cull_arbiter_hook``.

jupyterhub-idle-culler already walks the hub's servers each round and stops the
ones its arbiter picks through the hub's REST API (``DELETE /users/…/server``),
so the hub, the proxy, the GPU ledger and the dashboard all see the same stop,
and the home volume is left alone. This app is that culler with one arbiter:

- a server that holds GPUs is judged by the rules it started with (the
  ``gpuspawner.*`` labels on its container: ``gpu_idle_timeout``,
  ``max_runtime``, ``jupyter_activity_grace`` of its profile or the hub's
  defaults), on GPU usage read through NVML (or ``--usage-file``);
- every server may also be culled for Jupyter inactivity, as the plain idle
  culler does, when ``--timeout`` is more than 0 (off by default).

Before a GPU stop it appends a record to the stops file, which the spawner reads
to tell the student why and the dashboard lists. Each round it also writes its clocks
(``clocks.py``): per running GPU server, each rule's start and when it would stop the
server, for the dashboard's "My GPU" page.

Where the hub records usage (``GPUSpawner.usage_db_url``), each round also keeps
the utilisation and peak memory of each GPU server's own processes on its open
usage record (``figures.py``), and a server whose GPU-hour budget is spent is
stopped after ``budget_grace``, unless the budget exempts admins and the hub says
its user is one (``GET /users/<name>``'s ``admin``: the scope ``read:users:name``).

Each round it also reconciles: a labelled container that holds GPU units but
belongs to no server the hub lists, for ``orphan_grace`` seconds in a row, is
stopped and removed (its home volume is kept), with a stop record of reason
``orphan``; the hub's ledger frees its units at its next check (``orphans.py``).

On a Docker Swarm (``--node-local``), one culler runs on each GPU node, as an
external service of the hub: it reads the task containers of its own engine
(the units Swarm assigned are in their ``DOCKER_RESOURCE_<KIND>`` variables),
GPU usage of its own host, and judges only the servers that run on its node.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from textwrap import dedent
from urllib.parse import quote

from jupyterhub.traitlets import ByteSpecification
from jupyterhub_idle_culler import IdleCuller, parse_date
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import url_concat
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Any, Bool, Callable, Float, Int, Unicode, default

from .. import labels as label
from ..config import ConfigError, load_service_config
from ..docker_client import LazyClient
from ..eventfiles import read_snapshot, write_snapshot
from ..gpus.allocation import Requester, holder_key
from ..hub_child import exit_at_once, stop_with_the_hub
from ..usage.budgets import parse_budgets
from ..usage.budgets import standings as budget_standings
from ..usage.store import UsageStore, UsageStoreError
from .clocks import ServerClocks, report_json, server_clocks
from .figures import FigureBook, OpenRecord, sample
from .orphans import ORPHAN, OrphanClocks, orphan_message
from .policy import BUDGET, RESERVATION, GPUServer, IdleClocks, UnitReading
from .records import record_stop
from .usage import FileUsage, NVMLUsage


def utcnow() -> datetime:
    """The culler's clock by default: the time now, in UTC."""
    return datetime.now(timezone.utc)


def gpu_servers(containers: list[dict]) -> dict[str, GPUServer]:
    """{"user/server": GPUServer} for the containers that hold GPUs, from their labels."""
    servers = {}
    for c in containers:
        record = label.read_server(c.get("Labels"))
        if record is None or not record.unit_ids:
            continue
        servers[record.holder] = GPUServer(
            user=record.user,
            server=record.server,
            container=c.get("Id", ""),
            units=record.unit_ids,
            rules=record.rules,
            started=None,  # the hub's start time, from its server model
            profile=record.profile,
            groups=record.groups,
        )
    return servers


SWARM_SERVICE = "com.docker.swarm.service.id"  # Docker's label on a Swarm task's container


def task_container(inspected: dict, prefix: str = "NVIDIA-") -> dict:
    """A Swarm task's container (``inspect_container``) as :func:`gpu_servers` reads a listed one.

    Its labels are the service's container labels (user, server, profile, rules);
    the units are the ones Swarm assigned, which Docker puts in the container's
    environment as ``DOCKER_RESOURCE_<KIND>=<id>[,<id>...]``, one variable a kind.
    """
    config = inspected.get("Config") or {}
    units = []
    want = "DOCKER_RESOURCE_" + prefix.upper()
    for entry in config.get("Env") or ():
        name, _, value = entry.partition("=")
        if name.upper().startswith(want):
            units.extend(u for u in value.split(",") if u)  # Docker's list, not a label
    return {"Id": inspected.get("Id", ""), "Labels": label.with_units(config.get("Labels") or {}, units)}


class GPUCuller(IdleCuller):
    name = "gpuspawner-culler"
    description = dedent("""
    Stop GPU servers whose GPUs stay idle, or that ran past their time limit.

    jupyterhub-idle-culler with GPU rules, run by the hub as a managed service
    (see docs/how-to/culling.md). The rules come from each server's profile
    (or GPUSpawner's hub-wide defaults) and are read from its container's labels;
    GPU usage from NVML; the Docker engine and the stops file from the hub's
    config (-f). Needs the scopes list:users, read:users:activity, read:servers,
    delete:servers and read:users:name (who is an admin, for budgets).
    """).strip()

    hub_config = Unicode(
        "jupyterhub_config.py", help="The hub's config file: its Docker settings and GPUSpawner.stops_file."
    ).tag(config=True)
    usage_file = Unicode(
        "",
        help="""Read GPU usage from this JSON file instead of NVML (a simulation, or a test).

        ``{"GPU-...": {"utilization": 0, "processes": [host pids],
        "process_utilization": {"pid": percent}}}``; a unit left out is unknown,
        never idle. '' (the default): NVML.""",
    ).tag(config=True)
    busy_threshold = Int(
        5,
        min=0,
        max=100,
        help="""A GPU is in use when its server's kernels run at least this % of the time
        (NVML's utilisation); below it, and it counts as idle.""",
    ).tag(config=True)
    stops_file = Unicode(
        help="Where GPU stops are recorded (default: GPUSpawner.stops_file of the hub's config; '' for none)."
    ).tag(config=True)
    queue_file = Unicode(
        help="""Who waits in line for which units, as the hub writes it (default: GPUSpawner.queue_file of
        the hub's config; '' for none): for ``gpu_idle_timeout_when_waiting``."""
    ).tag(config=True)
    clocks_file = Unicode(
        help="""Where the culler writes its clocks each round (default: GPUSpawner.clocks_file of the hub's
        config, or '' with ``--node-local``; '' for none): for each running GPU server, each rule that
        can stop it, since when it counts and when it would stop the server. The dashboard's "My GPU"
        page reads it.

        .. versionadded:: 0.2
        """
    ).tag(config=True)
    stops_file_max_size = ByteSpecification(
        "10M",
        help="Rotate the stops file when a line would make it larger than this; 0: never. It becomes FILE.1"
        " (FILE.1 becomes FILE.2, ...), by the standard library's RotatingFileHandler.",
    ).tag(config=True)
    stops_file_backups = Int(3, min=1, help="How many rotated generations of the stops file are kept.").tag(config=True)
    proc = Unicode("/proc", help="The host's /proc, to place GPU processes in their containers.").tag(config=True)
    timeout = Int(
        0,
        min=0,
        help="""Also cull any server inactive in Jupyter for this many seconds, as
        jupyterhub-idle-culler does; 0 (the default): GPU rules only.""",
    ).tag(config=True)
    cull_every = Int(min=1, help="Seconds between rounds: how often GPU usage is read.").tag(config=True)
    usage_source = Any(help="What reads GPU usage (``.read() -> {unit: UnitReading}``); default from usage_file.")
    clock = Callable(
        utcnow,
        help="""The time now, as an aware datetime (default: the system's, in UTC).

        Every decision of a round reads it: when a server's GPUs were first seen
        idle, how long it ran, whether its last round's reading is still fresh.
        Tests pass a clock they move forward, so that no test waits.""",
    )
    node_local = Bool(
        False,
        help="""Run on one Docker Swarm node and judge only the servers running there.

        GPU servers are read from this node's own engine (``DOCKER_HOST``, else the
        default socket), not the hub's: the Swarm task containers gpuspawner made,
        with the units Swarm assigned them. A server whose container is not on this
        node is left to its node's culler (and, with ``--timeout``, not judged
        either). Run one per GPU node as an external hub service; give
        ``--stops-file`` the hub's stops file on a shared filesystem so that
        students are told why (docs/how-to/culling.md).""",
    ).tag(config=True)
    orphan_grace = Float(
        600,
        min=0,
        help="""Stop a container that holds GPUs for a server the hub does not know, after this many seconds.

        The hub forgets a server whose container still runs when Docker was away as
        it started, when it was killed during a spawn, or when a stop failed. Each
        round the culler lists the hub's servers (pending ones included) and the
        containers gpuspawner labelled with units of this hub's GPUs (the inventory
        of its config: another hub's containers on the same engine are left alone);
        one found without its server in
        every round for this long is stopped and removed, its home volume kept, and
        recorded in the stops file with reason ``orphan``. The hub's ledger frees its
        units at its next check (``GPUSpawner.ledger_sync_interval``). 0: never
        (not on a Swarm with ``--node-local`` either, where a server is a service).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)
    gpu_resource_prefix = Unicode(
        "NVIDIA-",
        help="With --node-local: Swarm generic resources whose kind starts with this are GPU units "
        "(as SwarmGPUSpawner.gpu_resource_prefix).",
    ).tag(config=True)

    aliases = {
        **IdleCuller.aliases,
        ("f", "config"): ("GPUCuller.hub_config", "The hub's config file (default: ./jupyterhub_config.py)"),
        "usage-file": "GPUCuller.usage_file",
        "busy-threshold": "GPUCuller.busy_threshold",
        "stops-file": "GPUCuller.stops_file",
        "clocks-file": "GPUCuller.clocks_file",
        "timeout": "GPUCuller.timeout",
        "cull-every": "GPUCuller.cull_every",
        "orphan-grace": "GPUCuller.orphan_grace",
        "gpu-resource-prefix": "GPUCuller.gpu_resource_prefix",
    }
    flags = {
        **IdleCuller.flags,
        "node-local": ({"GPUCuller": {"node_local": True}}, "Judge only this Swarm node's servers (see node_local)."),
    }

    @default("cull_every")
    def _default_cull_every(self):
        return 60

    @default("usage_source")
    def _default_usage_source(self):
        return FileUsage(self.usage_file, self.proc) if self.usage_file else NVMLUsage(self.proc)

    @default("cull_arbiter_hook")
    def _default_arbiter(self):
        return self.arbiter

    def initialize(self, argv=None):
        super().initialize(argv)
        hub = load_service_config(self, self.hub_config)
        if "stops_file" not in self.config.get("GPUCuller", {}):
            self.stops_file = hub.spawner.stops_file
        if "queue_file" not in self.config.get("GPUCuller", {}):
            self.queue_file = hub.spawner.queue_file
        if "clocks_file" not in self.config.get("GPUCuller", {}):
            # One file per hub: the node-local cullers of a Swarm each write their own only when told where.
            self.clocks_file = "" if self.node_local else hub.spawner.clocks_file
        self.new_docker_client = self._local_client if self.node_local else hub.spawner.new_docker_client
        self._local: set[str] = set()  # with node_local: "user/server" of every gpuspawner server on this node
        self._record_as: dict[str, str] = {}  # container id -> the id the hub's spawner knows (a service's)
        self.clocks = IdleClocks(busy_threshold=self.busy_threshold)
        # Looked up at each new client, so that new_docker_client may be replaced (a test's engine).
        self._docker = LazyClient(lambda: self.new_docker_client())
        self._round: tuple[datetime, dict[str, GPUServer], dict[str, UnitReading]] | None = None
        self._round_lock = asyncio.Lock()
        self._usage_error = ""
        self.orphans = OrphanClocks(self.orphan_grace)
        self._hub = hub
        self._units: frozenset[str] | None = None  # this hub's unit ids, read once
        self._budgets = None  # the hub's gpu_budgets, parsed once
        self._store = None  # the usage database, opened on first need
        self._uses = None  # ((round, since), the records read for that round's budgets)
        self._spent_since: dict[str, datetime] = {}  # server@container -> the first round its budget was spent
        self._admins: dict[str, tuple[datetime | None, bool | None]] = {}  # user -> (round, admin?) asked of the hub
        self._admin_field_missing = False  # said once: the token cannot read the admin field
        self._exempted: set[str] = set()  # servers whose exemption was logged
        self.figures = FigureBook(self.cull_every)
        self._figures_error = ""
        self._budget_seen: dict[str, list] = {}  # holder -> [(Standing, spent since or None)] at its last judgement
        self._published: dict[str, ServerClocks] = {}  # holder -> its clocks at its last judgement
        self._clocks_timer: asyncio.TimerHandle | None = None
        self._clocks_error = ""

    # --- one round's view, read once and shared by the round's servers

    @staticmethod
    def _local_client():
        import docker
        from docker.utils import kwargs_from_env

        return docker.APIClient(version="auto", **kwargs_from_env())

    def _containers(self) -> list[dict]:
        try:
            with self._docker.use() as client:  # a failure: a new client next time (the engine may have restarted)
                if not self.node_local:
                    return client.containers(filters={"label": label.GPUS})
                # The service's labels are on its containers; the assigned units only in their environment.
                listed = client.containers(filters={"label": [label.USER, SWARM_SERVICE]})
                found = []
                for c in listed:
                    try:
                        found.append(task_container(client.inspect_container(c["Id"]), self.gpu_resource_prefix))
                    except Exception as e:  # noqa: BLE001 - gone since listed
                        self.log.debug("Container %s: %s", c["Id"][:12], e)
        except Exception:
            self._local = set()  # where nothing can be read, nothing is judged
            raise
        self._local = {record.holder for x in found if (record := label.read_server(x["Labels"]))}
        self._record_as = {c["Id"]: (c.get("Labels") or {}).get(SWARM_SERVICE, c["Id"]) for c in listed}
        return found

    async def _view(self) -> tuple[dict[str, GPUServer], dict[str, UnitReading]]:
        async with self._round_lock:
            fresh_for = min(5.0, self.cull_every / 2)
            now = self.clock()
            # A clock set back (age < 0) also makes the last round stale.
            if self._round is None or not 0 <= (now - self._round[0]).total_seconds() <= fresh_for:
                try:
                    servers = gpu_servers(await asyncio.to_thread(self._containers))
                except Exception as e:  # noqa: BLE001 - no engine: no GPU server judged this round
                    self.log.warning("Cannot read the GPU servers from Docker: %s", e)
                    servers = {}
                try:
                    readings = await asyncio.to_thread(self.usage_source.read)
                    self._usage_error = ""
                except Exception as e:  # noqa: BLE001 - unreadable usage is never idleness
                    # Said once (and again when it changes), not every round.
                    error = f"{type(e).__name__}: {e}"
                    log = self.log.warning if error != self._usage_error else self.log.debug
                    log("Cannot read GPU usage, so no GPU server counts as idle (max_runtime still applies): %s", e)
                    self._usage_error = error
                    readings = {}
                self.clocks.forget_others(servers.values())
                self._forget_clocks_of_others(servers)
                self.log.debug("GPU round: %d GPU server(s), usage of %d unit(s)", len(servers), len(readings))
                self._round = (now, servers, readings)
                await self._keep_figures(now, servers, readings)
            return self._round[1], self._round[2]

    async def arbiter(self, *, inactive, inactive_limit, server, **kwargs) -> bool:
        """Stop this server? (jupyterhub-idle-culler's ``cull_arbiter_hook``)"""
        servers, readings = await self._view()
        if self.node_local and server.get("full_name", "") not in self._local:
            return False  # another node's server: its own culler judges it
        found = servers.get(server.get("full_name", ""))
        if found is not None and await self._stops(found, server, readings):
            self._publish(found.key, None)
            return True
        if self.timeout > 0 and inactive is not None:
            return inactive.total_seconds() >= inactive_limit
        return False

    async def _stops(self, found: GPUServer, server: dict, readings: dict[str, UnitReading]) -> bool:
        """Whether a GPU server stops now: its lab hours, its budget, its GPU rules, in that order. One
        that runs on has its clocks published."""
        now = self.clock()
        booking = self._reserved_against(found, now)
        container = self._record_as.get(found.container, found.container)
        if booking is not None:
            message = booking.stopped()
            self.log.info("Stopping %s (GPUs %s): %s", found.key, ",".join(found.units), message)
            self._record_stop(found, container, RESERVATION, message, now)
            return True
        spent = await self._budget_spent(found, now)
        if spent is not None:
            self.log.info("Stopping %s (GPUs %s): %s", found.key, ",".join(found.units), spent)
            self._record_stop(found, container, BUDGET, f"stopped: {spent}", now)
            return True
        started = parse_date(server["started"]) if server.get("started") else None
        last_activity = parse_date(server["last_activity"]) if server.get("last_activity") else None
        gpu_server = replace(found, started=started)
        wanted = bool(found.rules.gpu_idle_timeout_when_waiting) and not self._waited_for().isdisjoint(found.units)
        if found.rules.active:
            verdict = self.clocks.judge(gpu_server, readings, now, last_activity, wanted=wanted)
            if verdict.stop:
                self.log.info("Stopping %s (GPUs %s): %s", found.key, ",".join(found.units), verdict.message)
                self._record_stop(found, container, verdict.reason, verdict.message, now)
                return True
        if self.clocks_file:
            clocks = server_clocks(
                gpu_server,
                idle_since=self.clocks.idle_since.get(f"{found.key}@{found.container}"),
                wanted=wanted,
                last_activity=last_activity,
                budgets=self._budget_seen.get(found.key, ()),
                budget_grace=self._hub.spawner.budget_grace,
                booking=self._next_lab_hours(found, now),
            )
            self._publish(found.key, clocks)
        return False

    def _book(self):
        """The lab's reservations, or None when it has none (or they cannot be read)."""
        spawner = self._hub.spawner
        if not (spawner.reservations or spawner.reservations_file):
            return None
        try:
            return spawner.reservation_book()
        except Exception as e:  # noqa: BLE001 - a broken file on first read: nobody is stopped for it
            self.log.warning("Cannot read the lab's reservations: %s", e)
            return None

    def _next_lab_hours(self, server: GPUServer, now: datetime):
        """The next lab hours on ``server``'s units that do not serve it (a Booking), or None: for its clocks."""
        book = self._book()
        if book is None:
            return None
        return book.free_until(server.units, Requester(server.user, server.groups), server.profile, now.timestamp())

    def _reserved_against(self, server: GPUServer, now: datetime):
        """The lab hours under way on one of ``server``'s units that do not serve it (its booking), or None."""
        book = self._book()
        if book is None:
            return None
        reserved = book.reserved_at(now.timestamp())
        requester = Requester(server.user, server.groups)
        for unit in server.units:
            booking = reserved.get(unit)
            if booking is not None and not booking.reservation.serves(requester, server.profile):
                return booking
        return None

    async def _budget_spent(self, server: GPUServer, now: datetime) -> str | None:
        """Why ``server`` must stop for a spent GPU-hour budget (after ``budget_grace``), or None.
        Keeps where its budgets stand, for its clocks."""
        spawner = self._hub.spawner
        found = await self._budget_standings(server, now)
        if any(s.spent and s.budget.admins_exempt for s in found):
            admin = await self.is_admin(server.user)
            if admin is None:
                return None  # the hub cannot say now: asked again next round
            if admin:  # an admin answers only to the budgets that do not exempt admins
                exempt = [s for s in found if s.spent and s.budget.admins_exempt]
                found = [s for s in found if not s.budget.admins_exempt]
                if server.key not in self._exempted:
                    self._exempted.add(server.key)
                    self.log.info(
                        "%s: %s; %s is an admin, exempt (admins_exempt)", server.key, exempt[0].refusal(), server.user
                    )
        spent = next((s for s in found if s.spent), None)
        key = f"{server.key}@{server.container}"
        if spent is None:
            self._spent_since.pop(key, None)
            self._budget_seen[server.key] = [(s, None) for s in found]
            return None
        since_spent = self._spent_since.setdefault(key, now)
        self._budget_seen[server.key] = [(s, since_spent if s.spent else None) for s in found]
        left = spawner.budget_grace - (now - since_spent).total_seconds()
        if left > 0:
            self.log.info("%s: %s; stopped in %.0f s", server.key, spent.refusal(), left)
            return None
        return spent.refusal()

    async def _budget_standings(self, server: GPUServer, now: datetime) -> list:
        """Where each GPU-hour budget ``server`` answers to stands now (none when there are none, or the
        usage database cannot be read: nobody is stopped for a budget then)."""
        spawner = self._hub.spawner
        if not spawner.gpu_budgets or not spawner.usage_db_url:
            return []
        try:
            if self._budgets is None:
                self._budgets = parse_budgets(list(spawner.gpu_budgets))
            applying = [b for b in self._budgets if b.applies(server.user, server.groups, server.profile)]
            windows = [w for w in (b.window(now) for b in applying) if w is not None]
            if not windows:
                return []
            since = min(w.start for w in windows)
            round_at = self._round[0] if self._round else None
            if self._uses is None or self._uses[0] != (round_at, since):
                store = await asyncio.to_thread(self._usage_store)
                self._uses = ((round_at, since), await asyncio.to_thread(store.uses, since=since))
            return budget_standings(applying, self._uses[1], now, server.user, server.groups, server.profile)
        except Exception as e:  # noqa: BLE001 - no usage database (yet): nobody is stopped for a budget
            self.log.warning("Cannot read the GPU-hour budgets' use: %s", e)
            return []

    # --- the clocks file: what each running GPU server's rules say, for the dashboard

    #: Seconds after a judgement before the clocks file is written: one write for a round's servers.
    clocks_delay = 0.5

    def _publish(self, holder: str, clocks: ServerClocks | None) -> None:
        """Keep ``holder``'s clocks (None: it stops) and write the file soon."""
        if not self.clocks_file:
            return
        if clocks is None:
            self._published.pop(holder, None)
        else:
            self._published[holder] = clocks
        if self._clocks_timer is None:
            self._clocks_timer = asyncio.get_running_loop().call_later(self.clocks_delay, self.write_clocks)

    def _forget_clocks_of_others(self, servers: dict[str, GPUServer]) -> None:
        """Drop the clocks and budget standings of servers whose container no longer runs."""
        for holder, clocks in list(self._published.items()):
            running = servers.get(holder)
            if running is None or running.container != clocks.container:
                del self._published[holder]
        for holder in set(self._budget_seen) - set(servers):
            del self._budget_seen[holder]

    def write_clocks(self) -> None:
        """Write the clocks file now (atomically); a failure is logged once, never raised."""
        if self._clocks_timer is not None:
            self._clocks_timer.cancel()
            self._clocks_timer = None
        if not self.clocks_file:
            return
        try:
            write_snapshot(self.clocks_file, report_json(self._published.values(), self.clock(), self.cull_every))
            self._clocks_error = ""
        except OSError as e:
            error = f"{self.clocks_file}: {e.strerror or e}"
            if error != self._clocks_error:
                self.log.warning("Could not write the clocks to %s", error)
            self._clocks_error = error

    async def publish_round(self) -> None:
        """Each round, also with no server to judge: forget servers that are gone, and write the file."""
        try:
            await self._view()
        except Exception as e:  # noqa: BLE001 - the round's own judgement says more
            self.log.debug("GPU round for the clocks: %s", e)
        self.write_clocks()

    def _usage_store(self) -> UsageStore:
        """The hub's usage database, opened (never made, never upgraded) at first need."""
        if self._store is None:
            self._store = UsageStore.open_existing(self._hub.spawner.usage_db_url)
        return self._store

    async def is_admin(self, user: str) -> bool | None:
        """Whether the hub says ``user`` is an admin now (asked once a round); None when it cannot say."""
        round_at = self._round[0] if self._round else None
        asked = self._admins.get(user)
        if asked is not None and asked[0] == round_at and round_at is not None:
            return asked[1]
        try:
            model = await self.hub_user(user)
        except Exception as e:  # noqa: BLE001 - the hub restarts: asked again next round
            self.log.warning("Cannot ask the hub whether %s is an admin: %s", user, e)
            return None
        if "admin" not in model:
            if not self._admin_field_missing:
                self._admin_field_missing = True
                self.log.warning(
                    "The culler's token cannot read the users' admin field (it needs the scope read:users:name,"
                    " which services.add_culler grants): budgets' admins_exempt cannot apply to running servers"
                )
            admin = False
        else:
            admin = bool(model["admin"])
        self._admins[user] = (round_at, admin)
        return admin

    async def hub_user(self, user: str) -> dict:
        """The hub's model of ``user`` (``GET /users/<name>``), as this service's token may read it."""
        headers = {"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"}
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(f"{self.url}/users/{quote(user, safe='')}", headers=headers)
        )
        return json.loads(response.body.decode("utf-8", "replace"))

    async def _keep_figures(self, now: datetime, servers: dict[str, GPUServer], readings: dict) -> None:
        """This round's utilisation and peak memory of each GPU server's own processes, onto its open
        usage record (where the hub records usage, and NVML or the usage file measured something)."""
        if not self._hub.spawner.usage_db_url or not servers or not readings:
            return
        taken = {key: sample(s.container, s.units, readings) for key, s in servers.items()}
        taken = {key: s for key, s in taken.items() if s.measured}
        if not taken:
            return

        def write() -> int:
            store = self._usage_store()
            records = store.records(open_only=True)
            opened = {r.holder: OpenRecord(r.id, r.holder, r.started_at, r.utilisation, r.peak_memory) for r in records}
            changed = self.figures.round(now, opened, taken)
            store.set_figures(changed)
            return len(changed)

        try:
            written = await asyncio.to_thread(write)
            self._figures_error = ""
            self.log.debug("Usage figures: %d record(s) updated", written)
        except Exception as e:  # noqa: BLE001 - the figures wait for the next round; culling goes on
            error = f"{type(e).__name__}: {e}"
            if error != self._figures_error:  # said once, and again when it changes
                self.log.warning("Cannot keep the GPU servers' utilisation on their usage records: %s", e)
            self._figures_error = error
            if not isinstance(e, UsageStoreError):
                self._store = None  # opened again next round

    def _waited_for(self) -> frozenset[str]:
        """The units someone waits in line for, as the hub last wrote its line (none when unreadable)."""
        if not self.queue_file:
            return frozenset()
        try:
            return frozenset(read_snapshot(self.queue_file).get("waiting_for", ()))
        except (OSError, ValueError) as e:
            self.log.debug("Cannot read the line in %s: %s", self.queue_file, e)
            return frozenset()

    def _record_stop(self, server, container: str, reason: str, message: str, now) -> None:
        """A line in the stops file for the dashboard and the next spawn page (``server``: its user,
        server and profile), rotated as configured; a write that fails is logged, never raised."""
        if not self.stops_file:
            return
        try:
            record_stop(
                self.stops_file,
                user=server.user,
                server=server.server,
                profile=server.profile,
                container=container,
                reason=reason,
                message=message,
                now=now,
                max_bytes=self.stops_file_max_size,
                backups=self.stops_file_backups,
            )
        except OSError as e:
            self.log.warning("Could not record the stop in %s: %s", self.stops_file, e)

    # --- the reconciler: containers holding units for servers the hub does not know

    async def hub_servers(self) -> set[str]:
        """The "user/server" of every server the hub lists, pending ones included (``GET /users``)."""
        headers = {
            "Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
            "Accept": "application/jupyterhub-pagination+json",
        }
        client = AsyncHTTPClient()
        url: str | None = url_concat(f"{self.url}/users", {"state": "active"})
        known = set()
        while url:
            response = await client.fetch(HTTPRequest(url, headers=headers))
            page = json.loads(response.body.decode("utf-8", "replace"))
            users = page["items"] if isinstance(page, dict) else page
            for user in users:
                known.update(holder_key(user["name"], name) for name in user.get("servers") or {})
            following = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            url = following["url"] if following else None
        return known

    def _hub_units(self) -> frozenset[str]:
        """The ids of the units this hub hands out (its inventory): only their holders are its business."""
        if self._units is None:
            inventory = self._hub.inventory
            if not inventory.units:
                raise RuntimeError(f"the hub's GPU inventory is empty ({inventory.note or inventory.source})")
            self._units = frozenset(u.id for u in inventory.units)
        return self._units

    def _stop_container(self, container: str) -> None:
        with self._docker.use() as client:
            client.stop(container, timeout=10)
            client.remove_container(container)  # never v=True: the home volume stays

    async def reconcile(self) -> list[str]:
        """One round of the reconciler; returns the holders whose containers it stopped.

        Only containers holding units of this hub's inventory are judged (another hub
        may share the engine). Nothing is stopped in a round where the inventory,
        Docker or the hub cannot be read.
        """
        if not self.orphan_grace or self.node_local:
            return []
        try:
            units = await asyncio.to_thread(self._hub_units)
            containers = await asyncio.to_thread(self._containers)
            known = await self.hub_servers()  # after the containers: a new spawn is listed before it has one
        except Exception as e:  # noqa: BLE001 - nothing known: nothing judged
            self.log.warning("Reconciler: cannot read the GPUs, the containers or the hub's servers: %s", e)
            return []
        records = {}
        for c in containers:
            record = label.read_server(c.get("Labels"))
            # Another hub's container on the same engine holds other units: never this hub's to stop.
            if record is not None and units.intersection(record.unit_ids):
                records[c["Id"]] = record
        now = self.clock()
        stopped = []
        for cid in self.orphans.due({cid: r.holder for cid, r in records.items()}, known, now):
            record = records[cid]
            message = orphan_message(self.orphan_grace)
            self.log.warning("Stopping %s (GPUs %s): %s", record.holder, ",".join(record.unit_ids), message)
            self._record_stop(record, cid, ORPHAN, message, now)
            try:
                await asyncio.to_thread(self._stop_container, cid)
            except Exception as e:  # noqa: BLE001 - tried again next round
                self.log.warning("Could not stop container %s of %s: %s", cid[:12], record.holder, e)
                continue
            stopped.append(record.holder)
        return stopped

    def start(self):
        if "JUPYTERHUB_API_TOKEN" not in os.environ:
            raise ConfigError(
                "no JUPYTERHUB_API_TOKEN: run the culler as a hub-managed service"
                " (or, with --node-local, give it the token of its external service)"
            )
        loop = IOLoop.current().asyncio_loop
        stop_with_the_hub(loop, loop.stop, self.log)
        if self.orphan_grace and not self.node_local and not self.generate_config:
            IOLoop.current().add_callback(self.reconcile)
            PeriodicCallback(self.reconcile, 1e3 * self.cull_every).start()
        if self.clocks_file and not self.generate_config:
            IOLoop.current().add_callback(self.publish_round)
            PeriodicCallback(self.publish_round, 1e3 * self.cull_every).start()
        self.log.info("GPU culler running: a round every %d s", self.cull_every)
        super().start()
        self.log.info("GPU culler stopping")


def main(argv: list[str] | None = None) -> int:
    """``python -m gpuspawner.culler``; returns the exit status."""
    try:
        app = GPUCuller.instance()
        app.initialize(argv)
        app.start()
    except ConfigError as e:
        print(f"gpuspawner-culler: {e}", file=sys.stderr)
        return 2
    exit_at_once()  # asked to stop: the hub waits on this process, polling at growing intervals
    return 0
