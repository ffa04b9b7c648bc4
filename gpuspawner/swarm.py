"""SwarmGPUSpawner: gpuspawner on a Docker Swarm of GPU hosts.

How the parts fit (see docs/how-to/multi-host.md for the why):

- **What exists** is read from Swarm: each node advertises its units as
  generic resources (``NVIDIA-GPU=GPU-<uuid>``, ``NVIDIA-MIG-1g.10gb=MIG-<uuid>``).
  Units of nodes that are not ready and active (drained, paused, down) are not
  in the inventory, so never free. Model and memory come from the ``gpus``
  list when it describes a unit (matched by uuid).
- **What fits** is still decided by gpuspawner's own ledger, across all nodes,
  before Swarm is asked: profiles, quotas, fail-fast refusals naming what is
  free on each node. Every unit of one server is on one node.
- **Which unit** a server gets is Swarm's: the service asks for N units of a
  kind and is constrained to the node the ledger chose; Swarm hands out unit
  ids it has not given to any other task, and sets ``DOCKER_RESOURCE_<KIND>``
  in the container, which the NVIDIA toolkit's ``swarm-resource`` setting turns
  into the visible devices. The ids Swarm assigned are read back from the task
  and recorded in the ledger. Every other kind's variable is set empty, and an
  image that sets such a variable itself is refused before any unit is assigned,
  so no variable but Swarm's can name a unit.
- **After a hub restart** the ledger is rebuilt from Swarm: services labelled
  by gpuspawner, their running tasks and the units assigned to them.
- **Homes** are local volumes: a user is pinned to the node that holds their
  home (recorded as a label on that node). A home on a drained or lost node is
  a clear refusal, never a new empty home elsewhere.
- **Network**: each server in a network namespace of its own on the lab
  network (``network_name``, a Swarm-scoped bridge with no traffic between
  containers, made by deploy/swarm/lab-network.sh with node rules that leave
  servers only the hub's API), its port published on its node in ``host``
  mode. Not an overlay: on Docker 20.10 a node joining an overlay makes Swarm
  reject the GPU tasks on it. ``network_name = "host"``: the node's network.
- **internal_ssl**: a server's key and certificates are Swarm secrets (only
  its node receives them), its certificate names every node's address.
- **Culling**: the service's container spec carries the GPU culler's labels
  (user, server, profile, rules); one culler on each GPU node
  (``gpuspawner.culler --node-local``) reads them from its engine, with the units
  Swarm assigned from the container's ``DOCKER_RESOURCE_<KIND>`` variables.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import docker.errors
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    TaskTemplate,
)
from dockerspawner import SwarmSpawner
from traitlets import Float, Int, Unicode, default

from . import labels as label
from .container import ServerContainer
from .gpus import GPU, NO_RESOURCES, GPURequest, Inventory, Ledger, NoCapacity, ServerResources
from .gpus.inventory import parse_static_inventory
from .gpus.queue import Admission
from .spawner import GPUSpawner, LabSpawnException
from .traits import is_mig_profile

# --- the pure part: Swarm's answers in, lab values out


@dataclass(frozen=True)
class SwarmNode:
    """One Swarm node as the lab sees it."""

    id: str
    name: str  # its hostname (made unique)
    addr: str  # where the hub reaches its servers (their ports published there, or bound there on "host")
    state: str  # Swarm's: ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    units: tuple[GPU, ...] = ()
    kinds: dict[str, str] = field(default_factory=dict)  # unit id -> generic resource kind
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Ready and active: its units can be handed out."""
        return self.state == "ready" and self.availability == "active"

    @property
    def condition(self) -> str:
        """'drained', 'paused', 'down', ... or '' when usable."""
        if self.state != "ready":
            return self.state
        return {"drain": "drained", "pause": "paused"}.get(self.availability, "") if not self.usable else ""


def unit_from_resource(kind: str, uuid: str, position: int, node: str, described: dict[str, GPU]) -> GPU:
    """A unit a node advertises: as ``gpus`` describes it, else as much as the kind says."""
    known = described.get(uuid)
    if known is not None:
        return replace(known, uuid=uuid, node=node)  # every other field as described, new ones included
    rest = kind.split("-", 2)[-1] if kind.upper().startswith("NVIDIA-MIG-") else ""
    mig = rest.lower() if rest and is_mig_profile(rest.lower()) else ""
    if uuid.startswith("MIG-") and not mig:
        mig = "unknown"
    return GPU(index=position, uuid=uuid, name=kind, memory=0, mig_profile=mig, node=node)


def read_nodes(nodes: Iterable[dict], described: dict[str, GPU], prefix: str = "NVIDIA-") -> tuple[SwarmNode, ...]:
    """The nodes of ``docker node ls`` (API ``nodes()``), with the units each advertises."""
    raw = sorted(nodes, key=lambda n: ((n.get("Description") or {}).get("Hostname", ""), n["ID"]))
    names: dict[str, int] = {}
    for n in raw:
        host = (n.get("Description") or {}).get("Hostname", "") or n["ID"][:12]
        names[host] = names.get(host, 0) + 1
    result = []
    for n in raw:
        desc = n.get("Description") or {}
        host = desc.get("Hostname", "") or n["ID"][:12]
        name = host if names[host] == 1 else f"{host}-{n['ID'][:6]}"
        units, kinds = [], {}
        resources = (desc.get("Resources") or {}).get("GenericResources") or []
        for position, res in enumerate(r.get("NamedResourceSpec") for r in resources):
            if not res or not res.get("Kind", "").upper().startswith(prefix.upper()):
                continue
            unit = unit_from_resource(res["Kind"], res["Value"], position, name, described)
            units.append(unit)
            kinds[unit.id] = res["Kind"]
        status = n.get("Status") or {}
        spec = n.get("Spec") or {}
        result.append(
            SwarmNode(
                id=n["ID"],
                name=name,
                addr=status.get("Addr", ""),
                state=status.get("State", "unknown"),
                availability=spec.get("Availability", "active"),
                units=tuple(units),
                kinds=kinds,
                labels=dict(spec.get("Labels") or {}),
            )
        )
    return tuple(result)


def usable_units(nodes: Iterable[SwarmNode]) -> tuple[GPU, ...]:
    """The inventory: units of ready, active nodes only."""
    return tuple(u for n in nodes if n.usable for u in n.units)


def home_nodes(configs: Iterable[dict]) -> dict[str, str]:
    """volume -> node id, from the home records (Swarm configs labelled ``gpuspawner.home``)."""
    found = {}
    for config in sorted(configs, key=lambda c: c.get("CreatedAt", "")):
        labels = (config.get("Spec") or {}).get("Labels") or {}
        if labels.get(label.HOME) and labels.get(label.NODE):
            found.setdefault(labels[label.HOME], labels[label.NODE])  # the first record wins
    return found


def home_record_name(volume: str) -> str:
    """A Swarm config name for the record of ``volume`` (64 characters at most)."""
    name = f"gpuspawner-home.{volume}"
    if len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name):
        return name
    return "gpuspawner-home." + hashlib.sha256(volume.encode()).hexdigest()[:40]


def resource_request(units: Iterable[GPU], kinds: dict[str, str]) -> dict[str, int]:
    """What to ask Swarm for: how many units of each kind."""
    wanted: dict[str, int] = {}
    for unit in units:
        kind = kinds[unit.id]
        wanted[kind] = wanted.get(kind, 0) + 1
    return wanted


def withheld_kinds(nodes: Iterable[SwarmNode], wanted: Iterable[str]) -> tuple[str, ...]:
    """The GPU kinds of the Swarm (any node's, usable or not) that a server asking for ``wanted`` is not given."""
    given = {kind.upper() for kind in wanted}
    every = {kind.upper(): kind for node in nodes for kind in node.kinds.values()}
    return tuple(every[k] for k in sorted(every) if k not in given)


def assigned_ids(task: dict) -> tuple[str, ...]:
    """The unit ids Swarm assigned to a task (``GenericResources`` of the task)."""
    return tuple(
        r["NamedResourceSpec"]["Value"] for r in task.get("GenericResources") or () if r.get("NamedResourceSpec")
    )


def service_mounts(described: ServerContainer) -> list[Mount]:
    """A server's mounts as a Swarm service's: ``/dev/shm`` a tmpfs of the shm size (a service has no ShmSize)."""
    mounts = [
        Mount(
            target=m.target,
            source=m.source,
            type="bind" if m.source.startswith("/") else "volume",
            read_only=m.read_only,
        )
        for m in described.mounts
    ]
    if described.limits.shm_size is not None:
        mounts.append(Mount(target="/dev/shm", source="", type="tmpfs", tmpfs_size=int(described.limits.shm_size)))
    return mounts


@dataclass(frozen=True)
class RunningServer:
    """A gpuspawner service with a running task: what a restarted hub adopts."""

    holder: str
    user: str
    node_id: str
    unit_ids: tuple[str, ...]
    shared: bool
    groups: tuple[str, ...]
    resources: ServerResources = NO_RESOURCES  # its CPU and memory limits, for the caps


def running_servers(services: Iterable[dict], tasks: Iterable[dict]) -> list[RunningServer]:
    """gpuspawner's services whose task runs, with the units Swarm gave them."""
    running: dict[str, dict] = {}
    for task in tasks:
        if task.get("DesiredState") == "running" and (task.get("Status") or {}).get("State") == "running":
            running[task["ServiceID"]] = task
    found = []
    for service in services:
        record = label.read_server((service.get("Spec") or {}).get("Labels"))
        task = running.get(service["ID"])
        if record is None or task is None:
            continue
        found.append(
            RunningServer(
                holder=record.holder,
                user=record.user,
                node_id=task.get("NodeID", ""),
                unit_ids=assigned_ids(task),  # Swarm's choice, not the labels'
                shared=record.shared,
                groups=tuple(sorted(record.groups)),
                resources=record.resources,
            )
        )
    return found


def not_usable_note(nodes: Iterable[SwarmNode]) -> str:
    """' Not in use: gpu-node-3 (drained).' for nodes whose units are out of the inventory."""
    out = [f"{n.name} ({n.condition})" for n in nodes if not n.usable and n.units]
    return f" Not in use: {', '.join(out)}." if out else ""


def explain_refusal(
    refusal: NoCapacity, nodes: Iterable[SwarmNode], home: SwarmNode | None, free: Iterable[GPU]
) -> NoCapacity:
    """A refusal on a Swarm, saying where the user's home is, what other nodes have free,
    and which nodes are not in use. ``free``: the hub's free units, on every node."""
    if refusal.reason != "no_gpu":
        return refusal
    message = refusal.message
    if home is not None:
        others = [u for u in free if u.node != home.name and refusal.request.matches(u)]
        message = f"Your home is on {home.name}. {message}"
        if others:
            message += (
                f" Other nodes have {len(others)} free, but your files are on {home.name}; an admin can move your home."
            )
    message += not_usable_note(nodes)
    return NoCapacity(refusal.reason, message, request=refusal.request, free=lambda: refusal.free)


#: The label of the Swarm secrets that carry one server's internal_ssl key and certificates.
SSL = "gpuspawner.ssl"

#: The default ``network_name`` of a Swarm lab: made by deploy/swarm/lab-network.sh.
LAB_NETWORK = "gpuspawner-lab"

SHARED_NOT_OFFERED = "Shared GPU slots are not offered on a Swarm: a Swarm unit has one holder."


def dashboard_inputs(client, described: Iterable[GPU], prefix: str = "NVIDIA-") -> tuple[Inventory, list[dict]]:
    """What the dashboard reads on one host, read from a Swarm manager instead.

    (the inventory: the units of every usable node, each with its node, and a
    note naming the nodes that are not usable; container-like entries, one per
    running server, whose labels carry the units Swarm assigned.)
    """
    nodes = read_nodes(client.nodes(), {u.uuid: u for u in described}, prefix)
    services = client.services(filters={"label": label.USER})
    by_id = {s["ID"]: s for s in services}
    containers = []
    for task in client.tasks(filters={"desired-state": "running"}):
        service = by_id.get(task.get("ServiceID"))
        if service is None or (task.get("Status") or {}).get("State") != "running":
            continue
        spec = service.get("Spec") or {}
        labels = label.with_units(spec.get("Labels") or {}, assigned_ids(task))
        containers.append(
            {
                "Id": service["ID"],
                "Names": ["/" + spec.get("Name", service["ID"][:12])],
                "Image": ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", ""),
                "Created": task.get("CreatedAt"),
                "Labels": labels,
            }
        )
    units = usable_units(nodes)  # a drained node's units are not free: not listed, but named in the note
    down = [f"{n.name} ({n.condition})" for n in nodes if not n.usable]
    note = ("not in use: " + ", ".join(down)) if down else ""
    return Inventory(units=units, source="swarm", note=note), containers


# --- the glue


class SwarmGPUSpawner(GPUSpawner, SwarmSpawner):
    """GPUSpawner on a Docker Swarm: each server is a Swarm service on a GPU node.

    Profiles, quotas, fail-fast refusals and the GPU ledger work as on one
    host, across all nodes. Units are Swarm generic resources; a user's server
    always runs on the node that holds their home volume, in a network
    namespace of its own on the lab network.
    """

    # A server is a service whose task runs on another node's engine: start_object already waits for the
    # task, and the ledger is rebuilt from the tasks only at the hub's start (not checked against one engine).
    watches_start = False
    enforces_disk_quotas = False  # homes live on the nodes' engines (``_claim_home``): check_config refuses quotas

    async def _resync_ledger(self, ledger: Ledger) -> None:
        return None

    gpu_resource_prefix = Unicode(
        "NVIDIA-",
        help="""Generic resources whose kind starts with this are GPU units.

        Each GPU node advertises its units in its daemon settings, one kind per
        unit type: ``"node-generic-resources": ["NVIDIA-GPU=GPU-<uuid>", ...]``
        for whole GPUs, ``"NVIDIA-MIG-1g.10gb=MIG-<uuid>"`` for MIG instances.
        The NVIDIA toolkit's ``swarm-resource`` setting must list the matching
        ``DOCKER_RESOURCE_<KIND>`` variables (upper case).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    nodes_refresh = Float(
        2.0,
        min=0,
        help="""How long (seconds) the node list read from Swarm is reused before it is read again.

        Every decision reads which nodes are ready and active; this keeps a burst
        of spawns and polls from asking the manager for each.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    task_pending_timeout = Float(
        30.0,
        min=1,
        help="""How long (seconds) a new server's task may wait for Swarm to place it.

        The ledger only asks Swarm for units it counts as free on that node, so a
        task that stays pending means Swarm disagrees (a unit held by a service
        the hub did not start, a node just lost): the spawn fails with Swarm's
        reason and frees what it held.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    server_port = Int(
        8888,
        min=1,
        max=65535,
        help="""The port a server listens on in its own network namespace, on a lab network.

        On a lab network (``network_name``, by default ``"gpuspawner-lab"``; see
        docs/how-to/multi-host.md, "A lab network of its own"), each server
        listens on this port in its own namespace; Swarm publishes it on the
        server's node in ``host`` mode (no routing mesh) at a port the hub chose,
        where the hub and the proxy reach it.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @default("network_name")
    def _default_network_name(self):
        # Each server in a namespace of its own; "host" (the node's network) only when an admin says so.
        return LAB_NETWORK

    @default("ssl_alt_names")
    def _default_ssl_alt_names(self):
        # With internal_ssl: JupyterHub makes a server's certificate before start() chooses its node,
        # and the hub and the proxy check the address they connect to, so it names every node's.
        async def every_node(spawner: SwarmGPUSpawner) -> list[str]:
            nodes = await spawner.swarm_nodes(fresh=True)
            return [*spawner.trusted_alt_names, *sorted({f"IP:{n.addr}" for n in nodes if n.addr})]

        return every_node

    def load_inventory(self) -> Inventory:
        # The units come from the nodes (see swarm_nodes()); ``gpus`` only describes them.
        described = () if isinstance(self.gpus, str) else parse_static_inventory(self.gpus)
        return Inventory(units=described, source="swarm")

    def _described(self) -> dict[str, GPU]:
        if isinstance(self.gpus, str) or not self.gpus:
            return {}
        return {u.uuid: u for u in parse_static_inventory(self.gpus)}

    async def swarm_nodes(self, fresh: bool = False) -> tuple[SwarmNode, ...]:
        """The nodes, read from the manager at most every ``nodes_refresh`` seconds."""
        shared = self.shared
        if fresh or time.monotonic() - shared.nodes_read_at > self.nodes_refresh:
            shared.nodes = read_nodes(await self.docker("nodes"), self._described(), self.gpu_resource_prefix)
            shared.nodes_read_at = time.monotonic()
            shared.ledger.update_inventory(usable_units(shared.nodes))
        return shared.nodes

    def _home_volume(self) -> str:
        return self.format_volume_name(self.home_volume_name, self) if self.home_volume_name else ""

    async def home_node(self) -> SwarmNode | None:
        """The node that holds this user's home volume, from the home records; None before the first start."""
        volume = self._home_volume()
        if not volume:
            return None
        configs = await self.docker("configs", filters={"label": label.HOME})
        node_id = home_nodes(configs).get(volume)
        if node_id is None:
            return None
        nodes = await self.swarm_nodes()
        known = next((n for n in nodes if n.id == node_id), None)
        # A node that left the Swarm: a record still pins the home there.
        return known or SwarmNode(id=node_id, name=node_id[:12], addr="", state="gone", availability="")

    async def _adopt_running_containers(self, ledger: Ledger) -> None:
        """Rebuild the ledger from Swarm: gpuspawner's services, their running tasks, their units."""
        await self.swarm_nodes(fresh=True)
        services = await self.docker("services", filters={"label": label.USER})
        tasks = await self.docker("tasks", filters={"desired-state": "running"})
        shared = self.shared
        for server in running_servers(services, tasks):
            shared.node_of[server.holder] = server.node_id
            shared.confirmed.add(server.holder)
            unknown = ledger.adopt(
                server.holder,
                server.unit_ids,
                user=server.user,
                shared=server.shared,
                groups=server.groups,
                resources=server.resources,
            )
            if not server.unit_ids:
                continue
            if unknown:
                self.log.warning("Adopting %s: units not on a usable node: %s", server.holder, ",".join(unknown))
            self.log.info("Adopted GPUs %s of running server %s", ",".join(server.unit_ids), server.holder)

    # --- decisions: on the home's node, explained

    @property
    def decision_node(self) -> str | None:
        return self._home_node.name if self._home_node is not None else None

    def _explained(self, refusal: NoCapacity, ledger: Ledger) -> NoCapacity:
        return explain_refusal(refusal, self.shared.nodes, self._home_node, ledger.free())

    def _can_fit(
        self, ledger: Ledger, request: GPURequest, resources: ServerResources = NO_RESOURCES
    ) -> NoCapacity | None:
        refusal = super()._can_fit(ledger, request, resources)
        return None if refusal is None else self._explained(refusal, ledger)

    def _admit(self, ledger: Ledger, profile):
        """As on one host, on the home's node; no shared slots on a Swarm; refusals say which node."""
        if profile.gpu_request.shared:
            return Admission(refusal=NoCapacity("no_gpu", SHARED_NOT_OFFERED, request=profile.gpu_request)), None
        admission, ticket = super()._admit(ledger, profile)
        if admission.refusal is not None:
            admission = replace(admission, refusal=self._explained(admission.refusal, ledger))
        return admission, ticket

    async def _find_home(self) -> SwarmNode | None:
        """Read the nodes and where this user's home is, for the decisions that follow."""
        await self.swarm_nodes()
        self._home_node = await self.home_node()
        return self._home_node

    async def render_profile_form(self) -> str:
        await self._find_home()
        return await super().render_profile_form()

    # --- the spawn

    async def start(self):
        try:
            return await self._start()
        except BaseException:
            # A refused or failed start keeps no internal_ssl secrets (JupyterHub made them before start).
            await self._forget_ssl_secrets()
            raise

    async def _start(self):
        await self.swarm_nodes(fresh=True)
        volume = self._home_volume()
        home = await self._find_home()
        if home is not None and not home.usable:
            raise LabSpawnException(
                f"Your home ({volume}) is on {home.name}, which is {home.condition}."
                " Your server can start again when that node is back, or when an admin moves"
                " your home to another node. Nothing was started, so nothing is lost.",
                reason="home_node",
                status_code=503,
            )
        self.node = None  # chosen afresh for this start
        return await super().start()

    def _choose_port(self) -> int:
        """Also choose the node: the units' node, else the home's, else the one with fewest servers."""
        port = super()._choose_port()
        shared = self.shared
        usable = [n for n in shared.nodes if n.usable]
        by_name = {n.name: n for n in shared.nodes}
        node = None
        if self.gpu_ids:
            unit = next((u for u in shared.ledger.inventory if u.id == self.gpu_ids[0]), None)
            node = by_name.get(unit.node) if unit else None
            if node is None:  # its node left between the decision and now
                raise LabSpawnException(
                    "The node chosen for your GPU just left the Swarm. Start again.", reason="no_node"
                )
        else:
            node = self._home_node
        if node is None:
            if not usable:
                raise LabSpawnException("No Swarm node is ready and active.", reason="no_node", status_code=503)
            load = {n.id: 0 for n in usable}
            for other, node_id in shared.node_of.items():
                if node_id in load and other != self.holder:
                    load[node_id] += 1
            node = min(usable, key=lambda n: (load[n.id], n.name))
        shared.node_of[self.holder] = node.id
        shared.confirmed.discard(self.holder)
        self.node = node
        if self.on_lab_network:
            # The hub's port is published on the node; the server listens on its own port in its namespace.
            self.published_port = port
            self.ip = "0.0.0.0"
            return self.server_port
        self.ip = node.addr
        return port

    node: SwarmNode | None = None
    _home_node: SwarmNode | None = None
    published_port = 0  # on a lab network: where on its node the hub reaches the server

    @property
    def server_network(self) -> str:
        """The lab network (a Swarm lab has no internet network of its own)."""
        return self.network_name

    @property
    def on_lab_network(self) -> bool:
        """Servers in namespaces of their own on ``network_name``, not on their node's network."""
        return self.network_name not in ("host", "")

    async def get_ip_and_port(self):
        if self.on_lab_network:
            return self.node.addr, self.published_port
        return self.ip, self.port

    async def _check_network(self, name: str) -> None:
        """GPUSpawner's check before any unit is assigned or any home recorded: the lab network is one
        of the Swarm, and a profile asks for no internet, which a Swarm lab network does not offer."""
        if not self.on_lab_network:
            return
        await self._check_lab_network()
        if self.profile is not None and self.profile.internet:
            raise LabSpawnException(
                f"{self.profile.display_name} asks for the internet, which a Swarm lab network does not"
                " offer yet: an admin can run this profile's servers with network_name = 'host'.",
                reason="network",
                status_code=503,
            )

    async def _check_lab_network(self) -> None:
        """The lab network exists on the Swarm: a clear refusal, not Swarm's, when it does not."""
        try:
            found = await self.docker("inspect_network", self.network_name)
        except docker.errors.NotFound:
            found = None
        if found is None or found.get("Scope") != "swarm":
            raise LabSpawnException(
                f"The lab network {self.network_name} is not a network of the Swarm. An admin makes it once"
                " (docs/how-to/multi-host.md, 'A lab network of its own'), or sets network_name = 'host'.",
                reason="network",
                status_code=503,
            )

    # --- internal_ssl: the server's key and certificates as Swarm secrets

    def _ssl_label(self) -> str:
        return hashlib.sha256(self.service_name.encode()).hexdigest()[:16]

    async def move_certs(self, paths):
        """The server's key, certificate and CA bundle (JupyterHub's ``internal_ssl``) as Swarm secrets.

        Only the node that runs the task receives them (over Swarm's mutual TLS),
        at ``/run/secrets/jupyterhub-<key>``; they are removed with the service.
        DockerSpawner's local volume would stay on the manager.
        """
        await self._remove_ssl_secrets()  # a failed start's
        mine, stamp = self._ssl_label(), secrets.token_hex(4)
        labels = {**((self.extra_create_kwargs or {}).get("labels") or {}), label.USER: self.user.name, SSL: mine}
        self._ssl_secrets = []
        in_container = {}
        for key, path in paths.items():
            with open(path, "rb") as f:
                data = f.read()
            name = f"gpuspawner-ssl-{mine}-{stamp}-{key}"  # (at most 64 characters)
            created = await self.docker("create_secret", name, data, labels=labels)
            target = f"jupyterhub-{key}"
            self._ssl_secrets.append(SecretReference(created["ID"], name, filename=target, mode=0o444))
            in_container[key] = f"/run/secrets/{target}"
        return in_container

    _ssl_secrets: list = []

    async def _remove_ssl_secrets(self, keep: Iterable[SecretReference] = ()) -> None:
        """This server's secrets, but those of ``keep`` (this start's, while an old service is removed)."""
        kept = {ref["SecretID"] for ref in keep}
        for found in await self.docker("secrets", filters={"label": f"{SSL}={self._ssl_label()}"}):
            if found["ID"] in kept:
                continue
            try:
                await self.docker("remove_secret", found["ID"])
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:  # still in use: the next start of this server removes it
                self.log.warning("Could not remove secret %s: %s", found["Spec"]["Name"], e.explanation or e)

    async def create_object(self):
        """The service: pinned to the chosen node, asking Swarm for the units' kinds, never restarted."""
        if self.node is None:  # (GPUSpawner chose it with the port, unless network_name is not "host")
            self.port = self._choose_port()
        node = self.node
        await self._record_home()
        wanted = {}
        if self.gpu_ids:
            units = [u for u in self.shared.ledger.inventory if u.id in self.gpu_ids]
            wanted = resource_request(units, node.kinds)
        # Swarm sets DOCKER_RESOURCE_<KIND> for what it assigns; every other kind is blanked.
        blank = withheld_kinds(self.shared.nodes, wanted)
        described = self.container = self.describe_container(units_by_swarm=True, blank_kinds=blank)
        labels = {**described.labels, label.NODE: node.id, **((self.extra_create_kwargs or {}).get("labels") or {})}
        limits = described.limits
        container = ContainerSpec(
            image=self.image,
            env=dict(described.environment),
            args=await self.get_command(),
            mounts=service_mounts(described),
            labels=dict(labels),
            cap_drop=list(described.cap_drop) or None,
            secrets=list(self._ssl_secrets) or None,
            **self.extra_container_spec,
        )
        resources = Resources(
            mem_limit=limits.mem_limit,
            cpu_limit=int(limits.cpu_limit * 1e9) if limits.cpu_limit else None,
            generic_resources=wanted or None,
            **self.extra_resources_spec,
        )
        if described.pids_limit:
            resources.setdefault("Limits", {})["Pids"] = described.pids_limit  # API 1.41; docker-py has no argument
        endpoint = dict(self.extra_endpoint_spec)
        if self.on_lab_network:
            # Published on its node only ("host" mode); dnsrr: no virtual IP, which needs IPVS.
            endpoint = {"mode": "dnsrr", "ports": {self.published_port: (self.server_port, "tcp", "host")}, **endpoint}
        networks = [self.network_name] if self.network_name else []
        template = TaskTemplate(
            container_spec=container,
            resources=resources,
            # A crashed server stays down (poll sees it, the units are freed), and a
            # server never moves: its home is on this node.
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=[f"node.id=={node.id}"], **self.extra_placement_spec),
            networks=networks,
            **self.extra_task_spec,
        )
        service = await self.docker(
            "create_service",
            task_template=template,
            name=self.service_name,
            labels=labels,
            endpoint_spec=EndpointSpec(**endpoint) if endpoint else None,
        )
        return service

    async def start_object(self):
        """Wait until the task runs; then record the units Swarm actually assigned, and the home's node."""
        deadline = time.monotonic() + self.task_pending_timeout
        delay = 0.5
        while True:
            task = await self.get_task()
            status = (task or {}).get("Status") or {}
            state = status.get("State", "")
            if state == "running":
                break
            # Right after create_service the orchestrator may not have made the task yet:
            # no task is "pending" until the deadline, not a failure.
            if state in ("failed", "rejected", "shutdown", "complete", "orphaned", "remove"):
                raise LabSpawnException(
                    f"Swarm could not start the server on {self.node.name}: {status.get('Err') or state}",
                    reason="swarm_task",
                )
            if time.monotonic() > deadline:
                raise LabSpawnException(
                    f"Swarm did not place the server on {self.node.name} within {self.task_pending_timeout:g} s:"
                    f" {status.get('Err') or status.get('Message') or state or 'Swarm made no task'}",
                    reason="swarm_pending",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 3)
        await self._record_assigned(task)

    async def _record_assigned(self, task: dict) -> None:
        actual = assigned_ids(task)
        shared = self.shared
        ledger = shared.ledger
        async with shared.lock:
            decided = list(self.gpu_ids)
            if set(actual) != set(decided):
                # Swarm picked other units of the same kind on this node. Whoever the
                # ledger had given them to (a spawn not yet read back) takes ours instead,
                # so that the per-node counts stay exact.
                spare = [i for i in decided if i not in actual]
                for unit_id in actual:
                    for other in ledger.holders_of(unit_id):
                        if other.holder == self.holder or other.holder in shared.confirmed or not spare:
                            continue
                        ids = [spare.pop() if i == unit_id else i for i in other.ids]
                        kept = ledger.resources_held(other.holder)
                        ledger.release(other.holder)
                        ledger.adopt(other.holder, ids, user=other.user, groups=other.groups, resources=kept)
                self.log.info(
                    "Swarm assigned %s to %s (ledger chose %s)", ",".join(actual), self.holder, ",".join(decided)
                )
            kept = ledger.resources_held(self.holder)
            ledger.release(self.holder)
            ledger.adopt(self.holder, actual, user=self.user.name, groups=self.requester.groups, resources=kept)
            shared.confirmed.add(self.holder)
        self.gpu_ids = tuple(actual)

    async def _record_home(self) -> None:
        """Record where the home volume will be, before its first server is created there.

        A Swarm config, not a node label: updating a node (labels, availability)
        makes Swarm 20.10 reject the running tasks on it that hold generic
        resources, so the hub never updates nodes.
        """
        volume = self._home_volume()
        if not volume or self._home_node is not None:
            return
        try:
            await self.docker(
                "create_config",
                home_record_name(volume),
                self.node.id.encode(),
                labels={label.HOME: volume, label.NODE: self.node.id},
            )
            self.log.info("Home %s of %s is on %s", volume, self.user.name, self.node.name)
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise LabSpawnException(f"Could not record where your home is: {e}", reason="home_node") from None
            # Another server of this user recorded it first, just now: only its node will do.
            home = await self.home_node()
            if home is not None and home.id != self.node.id:
                raise LabSpawnException(
                    f"Your home is being created on {home.name} by your other server. Start this one again.",
                    reason="home_node",
                    status_code=503,
                ) from None

    async def _claim_home(self) -> None:
        """Not on a Swarm (yet): a home lives on its node's engine, which the manager cannot inspect."""

    async def _retire_home(self) -> None:
        """Not on a Swarm (yet): see ``_claim_home``."""

    async def _discard_container(self) -> None:
        if self.object_id:
            await self.remove_object()
        self.object_id = ""
        self.shared.node_of.pop(self.holder, None)
        await self._forget_ssl_secrets()

    async def _forget_ssl_secrets(self) -> None:
        if self.internal_ssl:
            await self._remove_ssl_secrets()
            self._ssl_secrets = []

    async def remove_object(self):
        try:
            await self.docker("remove_service", self.object_id)
        except docker.errors.NotFound:
            pass
        if self.internal_ssl:  # (DockerSpawner removes an old service at start, after move_certs)
            await self._remove_ssl_secrets(keep=self._ssl_secrets)

    async def poll(self):
        """Running only while the service's task runs: a crash, a drained or a lost node stops it.

        The stopped service stays (``docker service logs`` still has its output) until
        the server starts again; with restart condition ``none`` Swarm never revives it.
        """
        await self.swarm_nodes()
        await self.ledger()  # a restarted hub adopts before it decides
        task = await self.get_task()
        state = ((task or {}).get("Status") or {}).get("State", "")
        if state == "running":
            return None
        if task is not None:  # (a service that never started, or was removed, is no news)
            self.log.warning("Server %s: its task is %s %s", self.holder, state, task["Status"].get("Err", ""))
        self._release_gpus(f"task {state or 'gone'}")
        self.shared.node_of.pop(self.holder, None)
        return f"task {state or 'gone'}" if task else 0

    async def stop(self, now=False):
        await super().stop(now=now)
        self.shared.node_of.pop(self.holder, None)
        await self._forget_ssl_secrets()

    def get_state(self):
        state = super().get_state()
        if self.node is not None:
            state["node"] = self.node.id
        return state


__all__ = [
    "SwarmGPUSpawner",
    "SwarmNode",
    "explain_refusal",
    "read_nodes",
    "running_servers",
    "service_mounts",
    "usable_units",
    "withheld_kinds",
]
