"""The dashboard's view: who holds which unit, built from what the sources said.

Pure: no Docker, no NVML, no hub, no clock it does not receive. ``build_view``
takes the inventory, the running containers' labels (rebuilt into a ``Ledger``
by ``labels.adopt_containers``, exactly as a restarted hub does), NVML's usage,
the hub's activity and the denials file, and returns one ``DashboardView`` that
the page, the JSON API, the metrics and ``gpuspawner status`` all render. A source that could not be
read is named in the view (``*_error``), never replaced by old data.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .. import labels as label
from ..culler.policy import CullRules
from ..eventfiles import Skipped, count_of, events_from_lines
from ..gpus import Inventory, Ledger, Policy, holder_key, split_holder
from ..gpus.health import Quarantined
from ..gpus.nvml import UnitUsage

# QUARANTINED: no server holds it, and none will until an admin puts it back (gpus.health).
FREE, USED, SHARED, UNKNOWN, QUARANTINED = "free", "used", "shared", "unknown", "quarantined"


@dataclass(frozen=True)
class Holding:
    """One server on one unit: who, with what, since when, last seen when."""

    user: str
    server: str  # '' for the default server
    profile: str
    image: str
    container: str
    since: datetime | None  # the container's creation
    last_activity: datetime | None  # the server's, as the hub records it
    shared: bool
    groups: tuple[str, ...] = ()  # the user's hub groups (when the hub API gave them)
    rules: CullRules | None = None  # the GPU culler's rules it started with (its labels); None: unknown
    warning: str = ""  # the GPU culler's warning: a spent budget's stop to come (mine.annotate)

    @property
    def holder(self) -> str:
        return holder_key(self.user, self.server)


@dataclass(frozen=True)
class UnitView:
    """One whole GPU or MIG instance, its state, its holders and (when NVML answers) its use."""

    id: str
    index: int
    mig_index: int | None
    model: str
    mig_profile: str
    parent_uuid: str
    memory: int  # bytes, from the inventory
    state: str  # FREE, USED, SHARED or UNKNOWN (Docker could not be read)
    holders: tuple[Holding, ...] = ()
    usage: UnitUsage | None = None
    node: str = ""  # the Swarm node it is on; "" on one host
    quarantine: Quarantined | None = None  # set aside after failed starts (its state says so once no one holds it)
    lab_hours: str = ""  # reserved now for a course's lab, or its next lab hours ('' when none)
    # The last hour (history.UsageHistory), one value per slot, oldest first; None where nothing was read.
    utilization_history: tuple[int | None, ...] = ()  # percent
    memory_history: tuple[int | None, ...] = ()  # percent of the unit's memory
    servers: int = 0  # how many servers hold it, those a limited viewer does not see included

    @property
    def label(self) -> str:
        where = f"{self.node}: " if self.node else ""
        return where + f"GPU {self.index}" + (f" MIG {self.mig_index}" if self.mig_index is not None else "")

    @property
    def reserved_now(self) -> bool:
        return self.lab_hours.startswith("reserved")

    def look(self, share_limit: int) -> tuple[str, str]:
        """(kind, words) of its state on the map: free, held, shared N of K, reserved, quarantined, unknown.

        The kind names the colour; the words say the same without it. A free unit in its lab
        hours is reserved; a held one stays held (its lab hours are said next to it)."""
        if self.state == SHARED:
            taken = max(self.servers, len(self.holders))
            return "shared", f"shared {taken} of {max(share_limit, taken)}"
        if self.state == USED:
            return "held", "held"
        if self.state == FREE and self.reserved_now:
            return "reserved", "reserved"
        return self.state, self.state  # free, quarantined, unknown


@dataclass(frozen=True)
class Totals:
    units: int
    free: int | None  # None: unknown (Docker could not be read)
    used: int | None
    shared: int | None
    quarantined: int = 0  # set aside, whether or not a server still holds them


@dataclass(frozen=True)
class LabEvent:
    """A line of the denials file (a refused spawn) or of the stops file (a GPU culler's stop)."""

    time: str
    user: str
    server: str
    profile: str
    reason: str
    message: str
    count: int = 1  # refusals merged into this record (one user, one profile, one reason, one window)
    first: str = ""  # with a count: the time of the first of them


@dataclass(frozen=True)
class Waiter:
    """A server waiting in line for a unit (the hub's queue file)."""

    user: str
    server: str
    profile: str  # its label for people ("ML101")
    kind: str  # what it waits for ("2 NVIDIA A100 GPUs")
    since: datetime
    position: int
    in_line: int
    estimate: datetime | None = None  # when it should get its units, where the rules allow one


def waiters_from_snapshot(snapshot: Mapping) -> tuple[Waiter, ...]:
    """The queue file's entries (``eventfiles.read_snapshot``), in line order."""

    def when(value) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(float(value), timezone.utc)

    return tuple(
        Waiter(
            str(w.get("user", "")),
            str(w.get("server", "")),
            str(w.get("label") or w.get("profile") or ""),
            str(w.get("kind", "")),
            when(w.get("since")) or datetime.fromtimestamp(0, timezone.utc),
            int(w.get("position", 0)),
            int(w.get("in_line", 0)),
            when(w.get("estimate")),
        )
        for w in snapshot.get("waiting", ())
    )


@dataclass(frozen=True)
class DashboardView:
    generated_at: datetime
    host: str
    inventory_source: str
    inventory_note: str
    share_limit: int
    units: tuple[UnitView, ...]
    totals: Totals
    denials: tuple[LabEvent, ...]  # the most recent first
    denials_by_reason: Mapping[str, int]  # over the tail read (merged records count as many)
    servers_without_gpu: int | None
    docker_error: str = ""
    nvml_error: str = ""
    hub_error: str = ""
    denials_error: str = ""
    stops_error: str = ""
    stops: tuple[LabEvent, ...] = ()  # GPU culler's stops, the most recent first
    stops_by_reason: Mapping[str, int] = field(default_factory=dict)  # over the stops file's tail read
    warnings: tuple[str, ...] = field(default_factory=tuple)
    restricted_to: str = ""  # '' for the whole view; else whose units a restricted viewer sees
    groups_error: str = ""  # why the users' hub groups are unknown ('' when known)
    user_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # of the hub's active users
    inventory_retry: float = 0  # NVML did not answer: asked again every this many seconds (0: not)
    waiting: tuple[Waiter, ...] = ()  # who waits in line for what, in line order
    queue_error: str = ""
    history_interval: float = 0  # seconds per value of the units' histories (0: no history kept)

    def nodes(self) -> list[tuple[str, list[UnitView]]]:
        """The units by host or Swarm node, in the inventory's order: the map's groups."""
        by_node: dict[str, list[UnitView]] = {}
        for u in self.units:
            by_node.setdefault(u.node or self.host, []).append(u)
        return list(by_node.items())

    def as_json(self) -> dict:
        """The JSON API's body (``/api/v1/gpus``): every value the page shows."""
        return {
            "version": 1,
            "generated_at": _iso(self.generated_at),
            "host": self.host,
            "inventory": {
                "source": self.inventory_source,
                "note": self.inventory_note,
                "retry_seconds": self.inventory_retry or None,
            },
            "share_limit": self.share_limit,
            "sources": {
                "docker": _source(self.docker_error),
                "nvml": _source(self.nvml_error),
                "hub": _source(self.hub_error),
                "denials": _source(self.denials_error),
                "stops": _source(self.stops_error),
                "queue": _source(self.queue_error),
                "groups": _source(self.groups_error),
            },
            "totals": {
                "units": self.totals.units,
                "free": self.totals.free,
                "used": self.totals.used,
                "shared": self.totals.shared,
                "quarantined": self.totals.quarantined,
            },
            "servers_without_gpu": self.servers_without_gpu,
            "units": [_unit_json(u, self.share_limit, self.history_interval) for u in self.units],
            "map": [{"node": name, "units": [u.id for u in units]} for name, units in self.nodes()],
            "denials": [vars(d) for d in self.denials],
            "denials_by_reason": dict(self.denials_by_reason),
            "stops": [vars(s) for s in self.stops],
            "stops_by_reason": dict(self.stops_by_reason),
            "waiting": [{**vars(w), "since": _iso(w.since), "estimate": _iso(w.estimate)} for w in self.waiting],
            "warnings": list(self.warnings),
            "restricted_to": self.restricted_to or None,
        }


def _source(error: str) -> dict:
    return {"ok": not error, "error": error or None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _unit_json(u: UnitView, share_limit: int, history_interval: float) -> dict:
    usage = u.usage
    kind, words = u.look(share_limit)
    return {
        "id": u.id,
        "label": u.label,
        "index": u.index,
        "mig_index": u.mig_index,
        "model": u.model,
        "mig_profile": u.mig_profile or None,
        "parent_uuid": u.parent_uuid or None,
        "memory": u.memory,
        "node": u.node or None,
        "state": u.state,
        "map_state": {"kind": kind, "text": words},
        "quarantine": u.quarantine.as_json() if u.quarantine else None,
        "lab_hours": u.lab_hours or None,
        "usage": None
        if usage is None
        else {
            "utilization_gpu": usage.utilization_gpu,
            "memory_used": usage.memory_used,
            "memory_total": usage.memory_total,
            "temperature": usage.temperature,
        },
        "holders": [
            {
                "user": h.user,
                "server": h.server,
                "profile": h.profile,
                "image": h.image,
                "container": h.container,
                "since": _iso(h.since),
                "last_activity": _iso(h.last_activity),
                "shared": h.shared,
                "groups": list(h.groups),
                "warning": h.warning or None,
            }
            for h in u.holders
        ],
        "history": {
            "interval_seconds": history_interval,
            "utilization_gpu": list(u.utilization_history),
            "memory_used_percent": list(u.memory_history),
        }
        if history_interval
        else None,
    }


# --- parsing what the sources return -----------------------------------------------------------


def parse_time(value) -> datetime | None:
    """A hub timestamp (ISO 8601, 'Z' or offset) or a Docker epoch, as an aware datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def activity_from_users(users: Iterable[dict]) -> dict[str, datetime | None]:
    """``{holder: last_activity}`` of every server in the hub's ``GET /users`` models."""
    activity = {}
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            activity[holder_key(user["name"], name)] = parse_time(server.get("last_activity"))
    return activity


def groups_from_users(users: Iterable[dict]) -> dict[str, tuple[str, ...]] | None:
    """``{user: groups}`` from the hub's user models; None when the hub left groups out
    (the service's token lacks ``read:users:groups``)."""
    groups = {}
    for user in users:
        if "groups" not in user:
            return None
        groups[user["name"]] = tuple(sorted(user["groups"] or ()))
    return groups


def parse_events(
    lines: Iterable[str], keep: int, skipped: Skipped | None = None
) -> tuple[tuple[LabEvent, ...], dict[str, int]]:
    """(the last ``keep`` events, newest first; the count of every event by reason).

    A merged record (``count``) counts as that many. Lines that cannot be used (not a
    JSON object, no time or one without a timezone) are left out and counted in ``skipped``.
    """
    recent: deque[LabEvent] = deque(maxlen=keep)
    counts: Counter[str] = Counter()
    for event in events_from_lines(lines, skipped=skipped):
        count = count_of(event)
        denial = LabEvent(
            *(str(event.get(k) or "") for k in ("time", "user", "server", "profile", "reason", "message")),
            count=count,
            first=str(event.get("first") or "") if count > 1 else "",
        )
        counts[denial.reason or "unknown"] += count
        recent.append(denial)
    return tuple(reversed(recent)), dict(counts)


# --- the view ----------------------------------------------------------------------------------


def build_view(
    inventory: Inventory,
    policy: Policy,
    containers: Iterable[dict] | None,
    *,
    now: datetime,
    host: str = "",
    usage: Mapping[str, UnitUsage] | None = None,
    activity: Mapping[str, datetime | None] | None = None,
    denials: tuple[tuple[LabEvent, ...], Mapping[str, int]] = ((), {}),
    docker_error: str = "",
    nvml_error: str = "",
    hub_error: str = "",
    denials_error: str = "",
    groups: Mapping[str, tuple[str, ...]] | None = None,
    stops: tuple[tuple[LabEvent, ...], Mapping[str, int]] = ((), {}),
    stops_error: str = "",
    quarantined: Mapping[str, Quarantined] | None = None,
    inventory_retry: float = 0,
    waiting: tuple[Waiter, ...] = (),
    queue_error: str = "",
) -> DashboardView:
    """The dashboard as the sources say it is now.

    ``containers`` are docker-py ``APIClient.containers()`` entries (None: Docker
    could not be read, and every unit's state is UNKNOWN). ``usage`` is NVML's
    reading by unit uuid (None: not read). ``activity`` is ``{holder: last activity}``,
    ``groups`` is ``{user: hub groups}`` (None: unknown; a group-limited viewer then sees no holder).
    ``quarantined`` is the quarantine file's units by id.
    """
    quarantined = quarantined or {}
    activity = activity or {}
    ledger = Ledger(inventory.units, policy)
    warnings: list[str] = []
    by_holder: dict[str, tuple[dict, label.ServerRecord]] = {}  # each container's labels read once here
    servers_without_gpu = None
    if containers is not None:
        containers = list(containers)
        warnings += label.adopt_containers(ledger, containers)
        servers_without_gpu = 0
        for c in containers:
            record = label.read_server(c.get("Labels"))
            if record is None:
                continue
            by_holder[record.holder] = (c, record)
            servers_without_gpu += not record.unit_ids

    # One pass over the ledger (holders_of per unit is O(units x holders)), in the ledger's order.
    assigned: dict[str, list] = {}
    for a in ledger.assignments():
        for unit_id in dict.fromkeys(a.ids):
            assigned.setdefault(unit_id, []).append(a)
    units = []
    for gpu in inventory.units:
        holders = tuple(
            _holding(
                a.holder,
                a.user,
                a.shared,
                *by_holder.get(a.holder, ({}, None)),
                activity,
                (groups or {}).get(a.user, ()),
            )
            for a in assigned.get(gpu.id, ())
        )
        if containers is None:
            state = UNKNOWN
        elif not holders:
            state = QUARANTINED if gpu.id in quarantined else FREE
        else:
            state = SHARED if any(h.shared for h in holders) else USED
        units.append(
            UnitView(
                id=gpu.id,
                index=gpu.index,
                mig_index=gpu.mig_index,
                model=gpu.name,
                mig_profile=gpu.mig_profile,
                parent_uuid=gpu.parent_uuid,
                memory=gpu.memory,
                state=state,
                holders=holders,
                servers=len(holders),
                usage=(usage or {}).get(gpu.uuid),
                node=gpu.node,
                quarantine=quarantined.get(gpu.id),
            )
        )
    aside = sum(u.quarantine is not None for u in units)
    if containers is None:
        totals = Totals(len(units), None, None, None, aside)
    else:
        states = Counter(u.state for u in units)
        totals = Totals(len(units), states[FREE], states[USED], states[SHARED], aside)
    recent, counts = denials
    return DashboardView(
        generated_at=now,
        host=host,
        inventory_source=inventory.source,
        inventory_note=inventory.note,
        share_limit=policy.share_limit,
        units=tuple(units),
        totals=totals,
        denials=tuple(recent),
        denials_by_reason=dict(counts),
        servers_without_gpu=servers_without_gpu,
        docker_error=docker_error,
        nvml_error=nvml_error,
        hub_error=hub_error,
        denials_error=denials_error,
        stops=tuple(stops[0]),
        stops_by_reason=dict(stops[1]),
        stops_error=stops_error,
        waiting=waiting,
        queue_error=queue_error,
        warnings=tuple(warnings),
        groups_error=""
        if groups is not None
        else (hub_error and "the hub API could not be read")
        or "the hub gave no groups: the service's token needs read:users:groups",
        user_groups=dict(groups or {}),
        inventory_retry=inventory_retry if inventory.source == "none" else 0,
    )


def _holding(
    holder: str,
    user: str,
    shared: bool,
    container: dict,
    record: label.ServerRecord | None,
    activity: Mapping,
    groups=(),
) -> Holding:
    names = container.get("Names") or [str(container.get("Id", ""))[:12]]
    return Holding(
        user=user,
        server=record.server if record else split_holder(holder)[1],
        profile=record.profile if record else "",
        image=str(container.get("Image") or ""),
        container=names[0].lstrip("/"),
        since=parse_time(container.get("Created")),
        last_activity=activity.get(holder),
        shared=shared,
        groups=tuple(groups),
        rules=record.rules if record else None,
    )


# --- who sees what -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """Whose holdings a viewer may see (or act on), from the scopes the hub gave their token.

    ``everyone``: the unfiltered scope. Otherwise the users named by ``!user=`` filters and
    the members of the groups named by ``!group=`` filters or, with the groups scope, of
    the viewer's own groups. ``!server=`` and ``!service=`` filters grant nothing here.
    """

    everyone: bool = False
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users or self.groups)

    def covers(self, user: str, groups: Iterable[str] = ()) -> bool:
        return self.everyone or user in self.users or not self.groups.isdisjoint(groups)

    def describe(self) -> str:
        if self.everyone:
            return ""
        parts = [f"group {g}" for g in sorted(self.groups)] + [f"user {u}" for u in sorted(self.users)]
        return ", ".join(parts) or "nobody"


def reach_from_scopes(
    scopes: Iterable[str], scope: str, *, groups_scope: str = "", viewer: str = "", viewer_groups: Iterable[str] = ()
) -> Reach:
    """The ``Reach`` that ``scopes`` (a hub user model's ``scopes``) give through ``scope``
    (e.g. ``custom:gpu-dashboard:read``, filtered or not) and ``groups_scope`` (the viewer's own groups)."""
    everyone, users, groups = False, set(), set()
    for granted in scopes:
        name, _, filter_ = granted.partition("!")
        if groups_scope and name == groups_scope:
            groups.update(viewer_groups)
        elif name != scope:
            continue
        elif not filter_:
            everyone = True
        elif filter_ == "user":
            users.add(viewer)
        elif filter_.startswith("user="):
            users.add(filter_[len("user=") :])
        elif filter_.startswith("group="):
            groups.add(filter_[len("group=") :])
    if everyone:
        return Reach(everyone=True)
    users.discard("")
    return Reach(False, frozenset(users), frozenset(groups))


def restrict(view: DashboardView, reach: Reach) -> DashboardView:
    """``view`` as a viewer with ``reach`` may see it.

    Unlimited: the view as is. Limited (a teacher): the units held by users in reach,
    showing only those holders; free units and units of unknown state (nothing personal
    in them); the totals, the count of servers without a GPU and the denials by reason
    (counts, no names); only the denials and culler's stops of users in reach; no warnings (they name users).
    Units held only by others are left out, and so is every trace of who holds them.
    """
    if reach.everyone:
        return view
    units = []
    for u in view.units:
        seen = tuple(h for h in u.holders if reach.covers(h.user, h.groups))
        if seen or not u.holders:
            # whose start failed last is not for a limited viewer either
            aside = replace(u.quarantine, holder="") if u.quarantine else None
            units.append(replace(u, holders=seen, quarantine=aside))
    return replace(
        view,
        units=tuple(units),
        denials=tuple(d for d in view.denials if reach.covers(d.user, view.user_groups.get(d.user, ()))),
        stops=tuple(d for d in view.stops if reach.covers(d.user, view.user_groups.get(d.user, ()))),
        waiting=tuple(w for w in view.waiting if reach.covers(w.user, view.user_groups.get(w.user, ()))),
        user_groups={},
        warnings=(),
        restricted_to=reach.describe(),
    )
