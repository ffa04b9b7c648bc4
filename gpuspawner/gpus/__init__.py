"""GPUs: what the host has (inventory) and who holds which (allocation)."""

from .allocation import (
    PACK,
    SPREAD,
    Assignment,
    GPURequest,
    Ledger,
    NoCapacity,
    NoFreeUnit,
    Policy,
    Requester,
    decide,
    holder_key,
    split_holder,
)
from .inventory import GPU, Inventory, InventoryError, parse_static_inventory
from .resources import NO_RESOURCES, Caps, ServerResources

__all__ = [
    "GPU",
    "NO_RESOURCES",
    "PACK",
    "SPREAD",
    "Assignment",
    "Caps",
    "GPURequest",
    "Inventory",
    "InventoryError",
    "Ledger",
    "NoCapacity",
    "NoFreeUnit",
    "Policy",
    "Requester",
    "ServerResources",
    "decide",
    "holder_key",
    "parse_static_inventory",
    "split_holder",
]
