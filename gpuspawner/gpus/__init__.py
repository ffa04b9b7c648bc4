"""GPUs: what the host has (inventory) and who holds which (allocation)."""

from .allocation import Assignment, Ledger, NoGPUAvailable, holder_key
from .inventory import GPU, InventoryError, parse_static_inventory

__all__ = [
    "GPU",
    "Assignment",
    "InventoryError",
    "Ledger",
    "NoGPUAvailable",
    "holder_key",
    "parse_static_inventory",
]
