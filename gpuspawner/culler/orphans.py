"""Containers that hold GPU units for a server the hub no longer knows: when to stop them.

The hub can forget a server whose container still runs: Docker was away when
the hub started (its poll raised, and JupyterHub cleared the server), the hub
was killed between creating a container and recording it, a ``stop()`` failed,
or the server's row was lost. The container's labels keep its units out of
the free pool, and nothing would ever stop it. The culler's reconciler lists
the hub's servers and the labelled containers each round; a container whose
server the hub has not listed for ``grace`` seconds, round after round, is
stopped (its home volume is kept), and the hub's ledger frees its units at its
next check. Pure: the rounds' findings and the time are passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..quantities import format_duration

ORPHAN = "orphan"  # the reason in the stops file


def orphan_message(grace: float) -> str:
    """What the stops file and the dashboard say about such a stop."""
    return (
        f"stopped: it held GPUs, but the hub had no record of its server for {format_duration(grace)}"
        " (the home volume is kept)"
    )


@dataclass
class OrphanClocks:
    """Since when each labelled container has been found without a server in the hub.

    A clock starts at the first round that finds a container unknown to the hub,
    and is dropped at the first round that finds its server listed (a spawn that
    was only slow to be listed) or the container gone: only an unbroken stretch
    of ``grace`` seconds stops a container. A restarted culler starts every clock
    again, so it only ever waits longer.
    """

    grace: float
    first_seen: dict[str, datetime] = field(default_factory=dict)  # container id -> first round unknown

    def due(self, holders: Mapping[str, str], known: Collection[str], now: datetime) -> list[str]:
        """The container ids to stop now, of ``holders`` ({container id: "user/server"}) as read this
        round, given the servers the hub lists (``known``, "user/server" keys)."""
        unknown = {cid for cid, holder in holders.items() if holder not in known}
        for cid in list(self.first_seen):
            if cid not in unknown:
                del self.first_seen[cid]
        due = []
        for cid in sorted(unknown):
            since = self.first_seen.setdefault(cid, now)
            if (now - since).total_seconds() >= self.grace:
                due.append(cid)
        return due


__all__ = ["ORPHAN", "OrphanClocks", "orphan_message"]
