"""What GPUs a host has: the inventory the allocation core hands out.

The units come from a static list in config (``c.GPUSpawner.gpus``) or from
NVML (``nvml.py``); both yield the same ``GPU`` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quantities import format_bytes, is_mig_profile, parse_bytes


@dataclass(frozen=True)
class GPU:
    """One unit the allocator hands out: a whole GPU, or one MIG instance of a GPU.

    ``uuid`` is NVIDIA's id, ``GPU-...`` for a whole GPU and ``MIG-...`` for a
    MIG instance: stable across reboots, unlike indices, so it is what a
    container is given and what its labels record. A GPU in MIG mode appears
    only as its MIG instances, never whole.
    """

    index: int  # the GPU's index, as nvidia-smi numbers it (a MIG instance: its GPU's)
    uuid: str
    name: str  # the model, e.g. "NVIDIA A100-SXM4-80GB"
    memory: int  # bytes
    mig_profile: str = ""  # a MIG instance's profile, e.g. "1g.10gb"; "" for a whole GPU
    parent_uuid: str = ""  # a MIG instance's GPU (GPU-...); "" for a whole GPU
    mig_index: int | None = None  # a MIG instance's index on its GPU
    node: str = ""  # the host it is on, when the hub has several (a Swarm node's hostname); "" for one host

    @property
    def id(self) -> str:
        """The device id handed to Docker and recorded on the container."""
        return self.uuid

    @property
    def is_mig(self) -> bool:
        return bool(self.mig_profile)

    @property
    def gpu_uuid(self) -> str:
        """The physical GPU this unit is on."""
        return self.parent_uuid or self.uuid

    def describe(self) -> str:
        if self.is_mig:
            where = f"GPU {self.index}" + (f" MIG {self.mig_index}" if self.mig_index is not None else " MIG")
            return f"{self._on}{where} ({self.name} {self.mig_profile}, {format_bytes(self.memory)})"
        return f"{self._on}GPU {self.index} ({self.name}, {format_bytes(self.memory)})"

    @property
    def _on(self) -> str:
        return f"{self.node}: " if self.node else ""


@dataclass(frozen=True)
class Inventory:
    """All units of a host, and what its driver can run."""

    units: tuple[GPU, ...] = ()
    source: str = "static"  # "static", "nvml", or "none" (auto found no driver)
    driver_version: str = ""  # e.g. "550.54.15"
    cuda_version: str = ""  # the highest CUDA the driver supports, e.g. "12.4"
    note: str = ""  # why there are no units, when discovery found none


class InventoryError(ValueError):
    """A static GPU list in config that cannot be used, naming the entry and field."""


_FIELDS = {"index", "uuid", "name", "memory"}
_MIG_FIELDS = {"mig_profile", "parent_uuid", "mig_index"}
_OPTIONAL_FIELDS = {"node"}


def parse_static_inventory(entries: list) -> tuple[GPU, ...]:
    """Validate ``c.GPUSpawner.gpus`` given as a list of dicts.

    Each entry needs ``index`` (int), ``uuid`` (``GPU-...``; the prefix is added
    when missing), ``name`` and ``memory`` (a byte size such as ``"80G"``).
    A MIG instance has a ``MIG-...`` uuid and also ``mig_profile`` (``"1g.10gb"``)
    and ``parent_uuid`` (its GPU), optionally ``mig_index``. Uuids must be unique,
    indices of whole GPUs too, and no GPU may be listed both whole and as MIG.
    """
    if not isinstance(entries, (list, tuple)):
        raise InventoryError(f"gpus must be a list of GPUs, got {type(entries).__name__}")
    gpus: list[GPU] = []
    for position, entry in enumerate(entries):
        where = f"gpus[{position}]"
        if not isinstance(entry, dict):
            raise InventoryError(f"{where}: must be a dict with {sorted(_FIELDS)}")
        missing = _FIELDS - entry.keys()
        if missing:
            raise InventoryError(f"{where}: missing field(s) {sorted(missing)}")
        unknown = entry.keys() - _FIELDS - _MIG_FIELDS - _OPTIONAL_FIELDS
        if unknown:
            raise InventoryError(
                f"{where}: unknown field(s) {sorted(unknown)};"
                f" known: {sorted(_FIELDS | _MIG_FIELDS | _OPTIONAL_FIELDS)}"
            )
        node = entry.get("node", "")
        if not isinstance(node, str):
            raise InventoryError(f"{where}: field 'node': must be a string (a host name), got {node!r}")
        index = entry["index"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InventoryError(f"{where}: field 'index': must be an int >= 0, got {index!r}")
        uuid = entry["uuid"]
        if not isinstance(uuid, str) or not uuid.strip():
            raise InventoryError(f"{where}: field 'uuid': must be a non-empty string, got {uuid!r}")
        uuid = uuid.strip()
        mig_profile = entry.get("mig_profile", "")
        if mig_profile:
            if not is_mig_profile(mig_profile):
                raise InventoryError(f"{where}: field 'mig_profile': must look like '1g.10gb', got {mig_profile!r}")
            if not uuid.startswith("MIG-"):
                raise InventoryError(f"{where}: field 'uuid': a MIG instance's uuid starts with 'MIG-', got {uuid!r}")
            parent = entry.get("parent_uuid")
            if not isinstance(parent, str) or not parent.startswith("GPU-"):
                raise InventoryError(f"{where}: field 'parent_uuid': a MIG instance needs its GPU's 'GPU-...' uuid")
            mig_index = entry.get("mig_index")
            if mig_index is not None and (
                not isinstance(mig_index, int) or isinstance(mig_index, bool) or mig_index < 0
            ):
                raise InventoryError(f"{where}: field 'mig_index': must be an int >= 0, got {mig_index!r}")
        else:
            if entry.keys() & _MIG_FIELDS:
                raise InventoryError(f"{where}: {sorted(entry.keys() & _MIG_FIELDS)} need 'mig_profile'")
            if uuid.startswith("MIG-"):
                raise InventoryError(f"{where}: field 'mig_profile': a 'MIG-...' uuid needs its MIG profile")
            parent, mig_index = "", None
            if not uuid.startswith("GPU-"):
                uuid = "GPU-" + uuid
        if "," in uuid or any(c.isspace() for c in uuid):
            raise InventoryError(f"{where}: field 'uuid': must not contain commas or spaces, got {uuid!r}")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise InventoryError(f"{where}: field 'name': must be a non-empty string, got {name!r}")
        try:
            memory = parse_bytes(entry["memory"])
        except ValueError as e:
            raise InventoryError(f"{where}: field 'memory': {e}") from None
        gpus.append(
            GPU(
                index=index,
                uuid=uuid,
                name=name.strip(),
                memory=memory,
                mig_profile=mig_profile,
                parent_uuid=parent,
                mig_index=mig_index,
                node=node.strip(),
            )
        )
    check_inventory(gpus)
    return sort_units(gpus)


def sort_units(units) -> tuple[GPU, ...]:
    """Units in the order nvidia-smi lists them: by GPU index, then MIG index (by node first, if several)."""
    return tuple(sorted(units, key=lambda g: (g.node, g.index, g.mig_index if g.mig_index is not None else -1, g.uuid)))


def check_inventory(units) -> None:
    """Refuse an inventory that could hand out one GPU twice."""
    seen: set[str] = set()
    whole_index: dict[tuple[str, int], GPU] = {}
    for gpu in units:
        if gpu.uuid in seen:
            raise InventoryError(f"gpus: two units share uuid {gpu.uuid!r}")
        seen.add(gpu.uuid)
        if not gpu.is_mig:
            if (gpu.node, gpu.index) in whole_index:  # each host numbers its own GPUs from 0
                where = f" on node {gpu.node}" if gpu.node else ""
                raise InventoryError(f"gpus: two GPUs share index {gpu.index}{where}")
            whole_index[gpu.node, gpu.index] = gpu
    whole = {g.uuid for g in units if not g.is_mig}
    for gpu in units:
        if gpu.is_mig and gpu.parent_uuid in whole:
            raise InventoryError(
                f"gpus: {gpu.parent_uuid} is listed whole and as MIG instance {gpu.uuid}:"
                " a GPU in MIG mode is handed out only as its instances"
            )
