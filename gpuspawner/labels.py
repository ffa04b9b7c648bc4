"""The labels on every gpuspawner container: the record a restarted hub, the
``gpuspawner status`` command, the dashboard and the GPU culler all read.

Labels are written and read only here: :func:`server_labels` writes a
:class:`ServerRecord`, :func:`read_server` reads one back. A list (units,
groups) is a JSON array, so that any group name survives a restart
(``cn=ml,ou=courses`` holds a comma); a comma-separated value written by
gpuspawner 0.2 still reads.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .culler.policy import CullRules
from .gpus.allocation import Assignment, Ledger, holder_key
from .gpus.resources import NO_RESOURCES, ServerResources

USER = "gpuspawner.user"
SERVER = "gpuspawner.server"
PROFILE = "gpuspawner.profile"
GPUS = "gpuspawner.gpus"  # the unit ids (GPU-... or MIG-...); '' when none
SHARED = "gpuspawner.shared"  # "1" when the units are shared slots
GROUPS = "gpuspawner.groups"  # the user's groups at spawn time, for group quotas
IMAGE_DIGEST = "gpuspawner.image-digest"  # the sha256 of the image actually run
# The limits the server counts against the CPU and memory caps ('' or absent: none).
CPU_LIMIT = "gpuspawner.cpu-limit"  # CPUs
MEM_LIMIT = "gpuspawner.mem-limit"  # bytes
# The culling rules the server started with, in seconds ('' or 0: off), for the GPU culler.
GPU_IDLE_TIMEOUT = "gpuspawner.gpu-idle-timeout"
MAX_RUNTIME = "gpuspawner.max-runtime"
JUPYTER_ACTIVITY_GRACE = "gpuspawner.jupyter-activity-grace"
GPU_IDLE_TIMEOUT_WHEN_WAITING = "gpuspawner.gpu-idle-timeout-when-waiting"
# Swarm only: the node a service is pinned to, and the home records (Swarm configs).
NODE = "gpuspawner.node"
HOME = "gpuspawner.home"

# On images, not containers: what an image declares (CUDA), and what `gpuspawner image build` records.
IMAGE_CUDA = "gpuspawner.cuda"  # the CUDA version the image needs, where CUDA_VERSION does not say it
IMAGE_JUPYTERHUB = "gpuspawner.jupyterhub"  # the JupyterHub version installed for the hub
IMAGE_REQUIREMENTS = "gpuspawner.requirements"  # sha256 of the requirements file built in
IMAGE_DATASETS = "gpuspawner.datasets"  # the datasets copied in, comma-separated (names have no comma)


def encode_list(items: Iterable[str]) -> str:
    """A list as a label value: a JSON array, '' when empty."""
    items = list(items)
    return json.dumps(items, separators=(",", ":")) if items else ""


def decode_list(value: str | None) -> tuple[str, ...]:
    """A label value back as a list: a JSON array, or comma-separated (as gpuspawner 0.2 wrote)."""
    value = (value or "").strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            items = None
        if isinstance(items, list):
            return tuple(str(item) for item in items if item != "")
    return tuple(item for item in value.split(",") if item)


def _number(value: str | None) -> float:
    try:
        return max(float(value or 0), 0.0)
    except ValueError:
        return 0.0


def _seconds(value: str | None) -> float:
    try:
        return max(float(value or 0), 0.0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class ServerRecord:
    """What the labels of one server's container say the lab decided for it."""

    user: str
    server: str = ""
    profile: str = ""
    unit_ids: tuple[str, ...] = ()
    shared: bool = False
    groups: frozenset[str] = field(default_factory=frozenset)
    image_digest: str = ""
    rules: CullRules = CullRules()  # the GPU culler's rules; all 0 on a server without units
    resources: ServerResources = NO_RESOURCES  # its CPU and memory limits, for the caps

    @property
    def holder(self) -> str:
        return holder_key(self.user, self.server)


def server_labels(record: ServerRecord, *, units_known: bool = True) -> dict[str, str]:
    """The labels that record ``record`` on its container (or Swarm service).

    ``units_known=False``: the units are not written (Swarm picks them when it
    places the task; they are read back from the task, see :func:`with_units`),
    but the culling rules of a server with units still are.
    """
    labels = {
        USER: record.user,
        SERVER: record.server,
        PROFILE: record.profile,
        SHARED: "1" if record.shared else "",
        GROUPS: encode_list(sorted(record.groups)),
        IMAGE_DIGEST: record.image_digest,
    }
    if units_known:
        labels[GPUS] = encode_list(record.unit_ids)
    if record.resources.cpus:
        labels[CPU_LIMIT] = f"{record.resources.cpus:g}"
    if record.resources.memory:
        labels[MEM_LIMIT] = str(record.resources.memory)
    if record.unit_ids:  # what the GPU culler holds this server to, for as long as it runs
        labels[GPU_IDLE_TIMEOUT] = f"{record.rules.gpu_idle_timeout:g}"
        labels[MAX_RUNTIME] = f"{record.rules.max_runtime:g}"
        labels[JUPYTER_ACTIVITY_GRACE] = f"{record.rules.jupyter_activity_grace:g}"
        if record.rules.gpu_idle_timeout_when_waiting:
            labels[GPU_IDLE_TIMEOUT_WHEN_WAITING] = f"{record.rules.gpu_idle_timeout_when_waiting:g}"
    return labels


def read_server(labels: dict[str, str] | None) -> ServerRecord | None:
    """The record in a container's labels; None for a container gpuspawner did not start."""
    labels = labels or {}
    if USER not in labels:
        return None
    return ServerRecord(
        user=labels[USER],
        server=labels.get(SERVER, ""),
        profile=labels.get(PROFILE, ""),
        unit_ids=decode_list(labels.get(GPUS)),
        shared=labels.get(SHARED) == "1",
        groups=frozenset(decode_list(labels.get(GROUPS))),
        image_digest=labels.get(IMAGE_DIGEST, ""),
        rules=CullRules(
            _seconds(labels.get(GPU_IDLE_TIMEOUT)),
            _seconds(labels.get(MAX_RUNTIME)),
            _seconds(labels.get(JUPYTER_ACTIVITY_GRACE)),
            _seconds(labels.get(GPU_IDLE_TIMEOUT_WHEN_WAITING)),
        ),
        resources=ServerResources(_number(labels.get(CPU_LIMIT)), int(_number(labels.get(MEM_LIMIT)))),
    )


def with_units(labels: dict[str, str], unit_ids: Iterable[str]) -> dict[str, str]:
    """``labels`` with the units put in: Swarm assigns them after the labels are written."""
    return {**labels, GPUS: encode_list(unit_ids)}


def adopt_containers(ledger: Ledger, containers: Iterable[dict]) -> list[str]:
    """Record in ``ledger`` what running containers hold, from their labels: units, CPUs and memory.

    ``containers`` are docker-py ``APIClient.containers()`` entries (each with
    ``Labels``). Returns one warning per container holding units this inventory
    does not know.
    """
    warnings = []
    for container in containers:
        record = read_server(container.get("Labels"))
        if record is None or not (record.unit_ids or record.resources):
            continue
        unknown = ledger.adopt(
            record.holder,
            record.unit_ids,
            user=record.user,
            shared=record.shared,
            groups=record.groups,
            resources=record.resources,
        )
        if unknown:
            warnings.append(f"server {record.holder} holds units not in this inventory: {','.join(unknown)}")
    return warnings


class LedgerChanges(NamedTuple):
    adopted: list[str]  # holders whose running container the ledger lacked
    released: list[Assignment]  # what holders no running container holds had held
    warnings: list[str]  # as adopt_containers says them


def reconcile_ledger(ledger: Ledger, containers: Iterable[dict], keep: Collection[str] = ()) -> LedgerChanges:
    """Bring ``ledger`` in line with the running ``containers``, as a hub checks it now and then.

    A holder that no running container holds is released: its server exited, or
    it was a server the hub had forgotten, whose container the GPU culler has
    stopped. Holders in ``keep`` are not: their servers are starting and have no
    running container yet. A running container whose holder the ledger lacks is
    adopted, as at a restart: the truth on the host wins.
    """
    containers = list(containers)
    running = {record.holder for c in containers if (record := read_server(c.get("Labels"))) and record.unit_ids}
    released = [
        ledger.release(a.holder) for a in ledger.assignments() if a.holder not in running and a.holder not in keep
    ]
    missing = [
        c
        for c in containers
        if (record := read_server(c.get("Labels"))) and record.unit_ids and ledger.assignment(record.holder) is None
    ]
    warnings = adopt_containers(ledger, missing)
    adopted = sorted({read_server(c.get("Labels")).holder for c in missing})
    return LedgerChanges([h for h in adopted if ledger.assignment(h) is not None], released, warnings)
