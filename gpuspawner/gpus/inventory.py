"""What GPUs a host has: the inventory the allocation core hands out.

The foundation reads a static list from config (``c.GPUSpawner.gpus``);
discovery through NVML plugs in here later and yields the same ``GPU`` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..traits import format_bytes, parse_bytes


@dataclass(frozen=True)
class GPU:
    """One whole GPU of the host.

    ``uuid`` is NVIDIA's ``GPU-...`` id: stable across reboots, unlike the index,
    so it is what a container is given and what its labels record.
    """

    index: int
    uuid: str
    name: str
    memory: int  # bytes

    @property
    def id(self) -> str:
        """The device id handed to Docker and recorded on the container."""
        return self.uuid

    def describe(self) -> str:
        return f"GPU {self.index} ({self.name}, {format_bytes(self.memory)})"


class InventoryError(ValueError):
    """A static GPU list in config that cannot be used, naming the entry and field."""


_FIELDS = {"index", "uuid", "name", "memory"}


def parse_static_inventory(entries: list) -> tuple[GPU, ...]:
    """Validate ``c.GPUSpawner.gpus`` given as a list of dicts.

    Each entry needs ``index`` (int), ``uuid`` (``GPU-...``; the prefix is added
    when missing), ``name`` and ``memory`` (a byte size such as ``"80G"``).
    Indices and uuids must be unique.
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
        unknown = entry.keys() - _FIELDS
        if unknown:
            raise InventoryError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
        index = entry["index"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InventoryError(f"{where}: field 'index': must be an int >= 0, got {index!r}")
        uuid = entry["uuid"]
        if not isinstance(uuid, str) or not uuid.strip():
            raise InventoryError(f"{where}: field 'uuid': must be a non-empty string, got {uuid!r}")
        uuid = uuid.strip()
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
        gpus.append(GPU(index=index, uuid=uuid, name=name.strip(), memory=memory))

    for attr in ("index", "uuid"):
        seen: dict = {}
        for gpu in gpus:
            value = getattr(gpu, attr)
            if value in seen:
                raise InventoryError(f"gpus: two GPUs share {attr} {value!r}")
            seen[value] = gpu
    return tuple(sorted(gpus, key=lambda g: g.index))
