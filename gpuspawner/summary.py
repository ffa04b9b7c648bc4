"""What a running server holds and the rules that stop it, in sentences for the hub's own pages.

The hub's home page (``templates/hub/home.html``) and the spawn's progress say it the way people
name things: "GPU 1 (NVIDIA L40S, 48 GiB)", "a slot on the shared GPU 2 (NVIDIA L40S, 48 GiB), with
2 other servers (3 of 4 slots taken)", "Stops after 30 minutes without GPU use; runs 4 hours at
most." Pure: the spawner hands in the profile, the units and how many others share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .culler.policy import CullRules
from .gpus import GPU


@dataclass(frozen=True)
class ServerSummary:
    """One running server, for the hub's home page."""

    profile: str  # the profile's name for people
    holds: str  # what it holds, in words
    rules: str  # the rules that stop it ('' when none)
    my_gpu: str = ""  # My GPU's path under the hub's base URL ('' when the dashboard is not set up)


def holds(units: Sequence[GPU], shared: bool, others: int = 0, slots: int = 0) -> str:
    """What a server holds: 'GPU 1 (NVIDIA L40S, 48 GiB)', 'GPU 0 (...) and GPU 1 (...)', 'a slot on
    the shared GPU 2 (...), with 2 other servers (3 of 4 slots taken)', 'no GPU'."""
    if not units:
        return "no GPU"
    named = " and ".join(u.describe() for u in units)
    if not shared:
        return named
    taken = f" ({others + 1} of {slots} slots taken)" if slots else ""
    company = f"with {others} other server{'s' if others != 1 else ''}{taken}" if others else "alone on it for now"
    return f"a slot on the shared {named}, {company}"


def summarize(
    profile: str,
    units: Sequence[GPU],
    shared: bool,
    rules: CullRules,
    *,
    others: int = 0,
    slots: int = 0,
    my_gpu: str = "",
) -> ServerSummary:
    """A running server in sentences. ``others``: other servers on its shared unit; ``slots``: its slots."""
    return ServerSummary(profile, holds(units, shared, others, slots), rules.describe() if units else "", my_gpu)
