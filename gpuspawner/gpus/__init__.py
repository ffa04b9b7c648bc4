"""GPUs: what the host has (inventory) and who holds which (allocation)."""

from .allocation import (
    PACK,
    SPREAD,
    Assignment,
    GPURequest,
    Ledger,
    NoCapacity,
    Policy,
    Requester,
    decide,
    holder_key,
    split_holder,
)
from .inventory import GPU, Inventory, InventoryError, parse_static_inventory

__all__ = [
    "GPU",
    "PACK",
    "SPREAD",
    "Assignment",
    "GPURequest",
    "Inventory",
    "InventoryError",
    "Ledger",
    "NoCapacity",
    "Policy",
    "Requester",
    "decide",
    "holder_key",
    "parse_static_inventory",
    "split_holder",
]
