""" "My GPU": a student's own servers, what they hold, their use, and how long until a rule stops them.

Pure: ``my_gpu`` takes the dashboard's view, the GPU culler's clocks (``culler.clocks``), the
viewer's name and the time, and keeps only the viewer's own servers: what each holds (a shared GPU
says with how many others, never who), its use now and over the last hour, and each rule as a
sentence with its countdown ("Idle for 22 of 30 minutes: this server stops in 8 minutes unless the
GPU is used"). ``annotate`` puts a spent budget's coming stop on the admins' view. ``ClocksFile``
reads the culler's file, again only when it changes; ``render_mine`` draws the page on the hub's
own page template, like the dashboard's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from markupsafe import Markup

from ..culler.clocks import (
    BUDGET,
    IDLE,
    IDLE_WHEN_WAITING,
    RESERVATION,
    RUNTIME,
    Clock,
    ClocksReport,
    ServerClocks,
    parse_report,
)
from ..culler.policy import CullRules
from ..quantities import format_duration
from ..reservations import when as moment
from ..traits import format_bytes
from .model import DashboardView, Holding, LabEvent, Reach, UnitView, Waiter, restrict
from .page import (
    SPARK_STYLE,
    HubLinks,
    _environment,
    bar,
    hub_page_vars,
    hub_templates,
    sparkline,
)

#: A clock this close to its stop is said first, and marked.
SOON = 600


@dataclass(frozen=True)
class RuleLine:
    """One rule of one server, in words, with its countdown."""

    rule: str
    text: str
    stops_at: datetime | None = None  # None: it does not stop the server as things are now
    seconds_left: int | None = None
    soon: bool = False  # within SOON of its stop, or a spent budget
    headline: str = ""  # the stop it makes, said first when it is the soonest ('' when it makes none)

    def as_json(self) -> dict:
        return {
            "rule": self.rule,
            "text": self.text,
            "headline": self.headline or None,
            "stops_at": _iso(self.stops_at),
            "seconds_left": self.seconds_left,
            "soon": self.soon,
        }


@dataclass(frozen=True)
class MyUnit:
    """A unit one of the viewer's servers holds; ``others``: how many other servers share it."""

    unit: UnitView
    shared: bool
    others: int
    slots: int  # a shared GPU's slots (share_limit)


@dataclass(frozen=True)
class MyServer:
    holding: Holding
    profile_name: str
    units: tuple[MyUnit, ...]
    rules: tuple[RuleLine, ...]
    checked: bool  # whether the GPU culler has judged it (its clocks are known)

    @property
    def name(self) -> str:
        return self.holding.server

    @property
    def next_stop(self) -> RuleLine | None:
        timed = [r for r in self.rules if r.stops_at is not None]
        return min(timed, key=lambda r: r.stops_at) if timed else None


@dataclass(frozen=True)
class MyGPU:
    """The page's (and ``api/v1/mine``'s) content for one viewer."""

    user: str
    generated_at: datetime
    servers: tuple[MyServer, ...]
    waiting: tuple[Waiter, ...] = ()
    stops: tuple[LabEvent, ...] = ()  # the GPU culler's recent stops of the viewer's servers
    history_interval: float = 0
    clocks_time: datetime | None = None
    cull_every: float = 0
    clocks_error: str = ""  # why the clocks could not be read ('' when read, or none are kept)
    clocks_stale: bool = False  # the culler has missed rounds: its clocks may be out of date
    docker_error: str = ""

    def as_json(self) -> dict:
        return {
            "version": 1,
            "generated_at": _iso(self.generated_at),
            "user": self.user,
            "servers": [
                {
                    "server": s.name,
                    "profile": s.holding.profile,
                    "profile_name": s.profile_name,
                    "since": _iso(s.holding.since),
                    "units": [
                        {
                            "id": u.unit.id,
                            "label": u.unit.label,
                            "model": u.unit.model,
                            "mig_profile": u.unit.mig_profile or None,
                            "memory": u.unit.memory,
                            "shared": u.shared,
                            "other_servers": u.others,
                            "slots": u.slots if u.shared else None,
                            "usage": None
                            if u.unit.usage is None
                            else {
                                "utilization_gpu": u.unit.usage.utilization_gpu,
                                "memory_used": u.unit.usage.memory_used,
                                "memory_total": u.unit.usage.memory_total,
                            },
                            "history": {
                                "interval_seconds": self.history_interval,
                                "utilization_gpu": list(u.unit.utilization_history),
                                "memory_used_percent": list(u.unit.memory_history),
                            }
                            if self.history_interval
                            else None,
                        }
                        for u in s.units
                    ],
                    "rules": [r.as_json() for r in s.rules],
                    "checked": s.checked,
                    "next_stop": s.next_stop.as_json() if s.next_stop else None,
                }
                for s in self.servers
            ],
            "waiting": [
                {"server": w.server, "profile": w.profile, "kind": w.kind, "position": w.position, "in_line": w.in_line}
                for w in self.waiting
            ],
            "stops": [
                {"time": e.time, "server": e.server, "reason": e.reason, "message": e.message} for e in self.stops
            ],
            "clocks": {
                "as_of": _iso(self.clocks_time),
                "cull_every": self.cull_every or None,
                "stale": self.clocks_stale,
                "error": self.clocks_error or None,
            },
            "sources": {"docker": {"ok": not self.docker_error, "error": self.docker_error or None}},
        }


# --- the sentences --------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A countdown as people read it on a page that reloads: seconds under two minutes, then minutes."""
    seconds = max(0, round(seconds))
    return format_duration(seconds if seconds < 120 else round(seconds / 60) * 60)


def part_of(part: float, whole: float) -> str:
    """'22 of 30 minutes', '6 of 15 seconds', '1 hour 10 minutes of 4 hours'."""
    part = max(0, part)
    if whole < 120:
        return f"{int(part)} of {format_duration(whole)}"
    if whole < 7200 and whole % 60 == 0:
        return f"{int(part // 60)} of {int(whole // 60)} minutes"
    return f"{duration(part)} of {format_duration(whole)}"


def at(when: datetime, now: datetime, zone=None) -> str:
    """'17:40' today, 'Tuesday 09:40' this week, else with the date; in ``zone`` (None: the host's)."""
    return moment(when.timestamp(), now.timestamp(), zone)


def say(clock: Clock, now: datetime, zone=None) -> RuleLine:
    """One clock as the page says it."""
    left = (clock.stops_at - now).total_seconds() if clock.stops_at is not None else None
    seconds = None if left is None else max(0, int(left))
    due = left is not None and left <= 0
    stops = "this server stops at the lab's next check" if due else f"this server stops in {duration(left or 0)}"
    limit = format_duration(clock.limit)
    soon = left is not None and left <= SOON
    if clock.rule in (IDLE, IDLE_WHEN_WAITING):
        waiting = clock.rule == IDLE_WHEN_WAITING
        if waiting and not clock.applies:
            text = f"While others wait in line for its GPU, it stops after {limit} without GPU use. Nobody waits now."
        elif clock.since is None:
            lead = "Others wait in line for its GPU: it" if waiting else "It"
            text = f"{lead} stops after {limit} without GPU use. Its GPU is in use now."
        else:
            lead = "Others wait in line for its GPU. " if waiting else ""
            idle = part_of((now - clock.since).total_seconds(), clock.limit)
            text = f"{lead}Idle for {idle}: {stops} unless the GPU is used."
            if clock.grace:
                text += (
                    f" Working in Jupyter puts it off until {format_duration(clock.grace)} after your last activity."
                )
    elif clock.rule == RUNTIME:
        if clock.stops_at is None:
            text = f"Runs at most {limit}."
        elif due:
            text = f"Runs at most {limit}: its time is up, and it stops at the lab's next check."
        else:
            text = f"Runs at most {limit}: stops at {at(clock.stops_at, now, zone)} (in {duration(left)})."
    elif clock.rule == BUDGET:
        whose = f"{clock.name}'s" if clock.name else "Your"
        if clock.since is not None:  # spent: the warning window
            text = f"{whose} GPU budget is spent: {stops}. {clock.note[:1].upper()}{clock.note[1:]}."
            soon = True
        elif clock.stops_at is not None:
            runs_out = clock.stops_at - timedelta(seconds=clock.limit)
            later = f", and this server stops {format_duration(clock.limit)} later" if clock.limit else ""
            text = f"{clock.note}. At this rate it runs out at {at(runs_out, now, zone)}{later}."
        else:
            text = f"{clock.note}."
    elif clock.rule == RESERVATION:
        if due:
            text = f"Its GPU is reserved for {clock.name} now: {stops}."
        else:
            start = at(clock.stops_at, now, zone)
            text = f"Its GPU is reserved for {clock.name} from {start}: {stops}. Lab hours: {clock.note}."
    else:  # a rule a newer culler knows
        text = f"{clock.rule}: {stops}." if left is not None else f"{clock.rule}."
    return RuleLine(clock.rule, text, clock.stops_at, seconds, soon, headline(clock, now, zone))


def headline(clock: Clock, now: datetime, zone=None) -> str:
    """The stop a clock makes, in one line for the top of a server's card; '' when it makes none."""
    if clock.stops_at is None:
        return ""
    left = (clock.stops_at - now).total_seconds()
    if left <= 0:
        when = "This server stops at the lab's next check"
    elif left < 3600:
        when = f"This server stops in {duration(left)}"
    else:
        when = f"This server stops at {at(clock.stops_at, now, zone)} (in {duration(left)})"
    whose = f"{clock.name}'s" if clock.name else "your"
    why = {
        IDLE: " unless its GPU is used.",
        IDLE_WHEN_WAITING: " unless its GPU is used: others wait in line for it.",
        RUNTIME: ", when it reaches its time limit.",
        RESERVATION: f", when {clock.name} starts on its GPU.",
    }.get(clock.rule, ".")
    if clock.rule == BUDGET:
        why = f": {whose} GPU budget is spent." if clock.since is not None else f", when {whose} GPU budget runs out."
    return when + why


def said_rules(rules: CullRules | None) -> tuple[RuleLine, ...]:
    """A server's rules from its labels, without clocks: for one the culler has not judged yet."""
    if rules is None:
        return ()
    lines = []
    if rules.gpu_idle_timeout:
        lines.append(RuleLine(IDLE, f"Stops after {format_duration(rules.gpu_idle_timeout)} without GPU use."))
    if rules.gpu_idle_timeout_when_waiting:
        limit = format_duration(rules.gpu_idle_timeout_when_waiting)
        lines.append(
            RuleLine(
                IDLE_WHEN_WAITING, f"While others wait in line for its GPU, it stops after {limit} without GPU use."
            )
        )
    if rules.max_runtime:
        lines.append(RuleLine(RUNTIME, f"Runs at most {format_duration(rules.max_runtime)}."))
    return tuple(lines)


def rule_lines(clocks: ServerClocks | None, rules: CullRules | None, now: datetime, zone=None) -> tuple[RuleLine, ...]:
    """The server's rules in words, the soonest stop first; from its clocks, else from its labels."""
    if clocks is None:
        return said_rules(rules)
    lines = [say(c, now, zone) for c in clocks.clocks]
    far = datetime.max.replace(tzinfo=now.tzinfo)
    return tuple(sorted(lines, key=lambda r: (r.stops_at is None, r.stops_at or far)))


# --- the view ---------------------------------------------------------------------------------------


def my_gpu(
    view: DashboardView,
    report: ClocksReport | None,
    user: str,
    now: datetime,
    *,
    profile_names: Mapping[str, str] | None = None,
    clocks_error: str = "",
    zone=None,
    recent: timedelta = timedelta(hours=12),
) -> MyGPU:
    """``user``'s own servers in ``view`` (the dashboard's whole view), with their clocks from ``report``."""
    own = restrict(view, Reach(users=frozenset({user})))
    profile_names = profile_names or {}
    by_server: dict[str, tuple[Holding, list[MyUnit]]] = {}
    for u in own.units:
        for h in u.holders:
            if h.user != user:  # restrict() keeps only theirs; said again where it matters most
                continue
            others = max(u.servers, len(u.holders)) - 1
            entry = by_server.setdefault(h.server, (h, []))
            entry[1].append(MyUnit(u, h.shared, others, max(view.share_limit, others + 1)))
    servers = []
    for server, (holding, units) in sorted(by_server.items()):
        clocks = report.servers.get(holding.holder) if report is not None else None
        if clocks is not None and set(clocks.units) != {u.unit.id for u in units}:
            clocks = None  # an earlier server of the same name: this one is not judged yet
        servers.append(
            MyServer(
                holding,
                profile_names.get(holding.profile, holding.profile),
                tuple(units),
                rule_lines(clocks, holding.rules, now, zone),
                clocks is not None,
            )
        )
    cutoff = now - recent
    stops = tuple(e for e in own.stops if e.user == user and _after(e.time, cutoff))
    return MyGPU(
        user=user,
        generated_at=now,
        servers=tuple(servers),
        waiting=tuple(w for w in own.waiting if w.user == user),
        stops=stops,
        history_interval=view.history_interval,
        clocks_time=report.time if report else None,
        cull_every=report.cull_every if report else 0,
        clocks_error=clocks_error,
        clocks_stale=report is not None and report.stale(now),
        docker_error=view.docker_error,
    )


def annotate(view: DashboardView, report: ClocksReport | None, zone=None) -> DashboardView:
    """``view`` with each holder's coming stop for a spent budget (for the admins' map and table)."""
    if report is None or not view.units:
        return view
    now = view.generated_at
    units = []
    changed = False
    for u in view.units:
        holders = []
        for h in u.holders:
            clocks = report.servers.get(h.holder)
            spent = [c for c in (clocks.clocks if clocks else ()) if c.rule == BUDGET and c.since is not None]
            if spent:
                first = min(spent, key=lambda c: c.stops_at or now)
                whose = f"{first.name}'s" if first.name else "the user's"
                left = (first.stops_at - now).total_seconds() if first.stops_at else 0
                when = "at the lab's next check" if left <= 0 else f"in {duration(left)}"
                h = replace(h, warning=f"{whose} GPU budget is spent: stops {when}")
                changed = True
            holders.append(h)
        units.append(replace(u, holders=tuple(holders)) if changed else u)
    return replace(view, units=tuple(units)) if changed else view


def _after(time: str, cutoff: datetime) -> bool:
    try:
        when = datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when.tzinfo is not None and when >= cutoff


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# --- the GPU culler's clocks file -----------------------------------------------------------------


class ClocksFile:
    """The culler's clocks file (``GPUSpawner.clocks_file``), parsed again only when it changes."""

    def __init__(self, path: str):
        self.path = path
        self._key: tuple | None = None
        self._read: tuple[ClocksReport | None, str] = (None, "")

    def read(self) -> tuple[ClocksReport | None, str]:
        """(the report, ''), (None, '') where none is kept or written yet, or (None, why it cannot be read)."""
        if not self.path:
            return None, ""
        try:
            st = os.stat(self.path)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key != self._key:
                with open(self.path, encoding="utf-8") as f:
                    self._read = (parse_report(json.load(f)), "")
                self._key = key
            return self._read
        except FileNotFoundError:
            return None, ""  # the culler has not written it (yet), or does not run
        except (OSError, ValueError) as e:
            self._key = None
            return None, f"{self.path}: {getattr(e, 'strerror', None) or e}"


# --- the page -----------------------------------------------------------------------------------------

STYLE = """
#noscript { display: none; }  /* the hub's page needs JavaScript; this one does not */
.my-gpu h2 { font-size: 1.25rem; margin-top: 1.25rem; }
.my-gpu .my-server h2 { margin-top: 0; }
.my-gpu h3 { font-size: 1rem; margin-top: .75rem; }
.my-server { margin-bottom: 1rem; }
.my-server .units { list-style: none; padding: 0; margin: 0; }
.my-server .units > li { margin-bottom: .5rem; }
.my-server .meter { display: grid; grid-template-columns: 6.5rem 1fr 6.5rem; gap: .4rem; align-items: center;
  font-size: .875rem; margin-top: .2rem; }
.my-server .meter span:last-child { text-align: end; white-space: nowrap; }
.my-server .progress { height: .6rem; }
.my-server .rules { padding-left: 1.1rem; }
.my-server .rules li { margin-bottom: .25rem; }
.my-server .rules .soon { font-weight: 600; }
.next-stop { font-weight: 600; }
.next-stop.soon { color: var(--bs-warning-text-emphasis); background: var(--bs-warning-bg-subtle);
  border-radius: var(--bs-border-radius); padding: .35rem .6rem; }
.shared-note { color: var(--bs-warning-text-emphasis); font-weight: 600; }
"""

TEMPLATE = """{% extends "page.html" %}
{% block title %}My GPU{% endblock title %}
{% block stylesheet %}{{ super() }}<style>{{ style }}</style>{% endblock stylesheet %}
{% block main %}
<main class="container my-gpu" id="my-gpu">
<h1 class="h3">My GPU</h1>
<p class="text-body-secondary">As of <time id="generated-at" datetime="{{ iso(mine.generated_at) }}">{{ clock(mine.generated_at) }}</time>
{{- updates(refresh, "mine") }}
 &middot; {{ user.name }} &middot; <a href="api/v1/mine">JSON</a></p>
{% if mine.docker_error %}<div class="alert alert-danger py-2" role="alert" data-source="Docker">The lab cannot tell what your servers hold right now: Docker cannot be read ({{ mine.docker_error }}).</div>{% endif %}
{% if mine.clocks_error %}<div class="alert alert-warning py-2" data-source="clocks">The GPU culler's clocks cannot be read ({{ mine.clocks_error }}): the rules are listed without them.</div>
{% elif mine.servers and mine.clocks_stale %}<div class="alert alert-warning py-2" data-source="clocks" id="clocks-stale">The GPU culler last reported at {{ clock(mine.clocks_time) }}: the times below may be out of date.</div>{% endif %}

{% for s in mine.servers %}{% set n = loop.index %}
<section class="card my-server" aria-labelledby="server-{{ n }}" data-server="{{ s.name }}">
<div class="card-body">
<h2 class="h5 card-title" id="server-{{ n }}">{% if s.name %}Server {{ s.name }}{% else %}Your server{% endif %}
 <small class="text-body-secondary">&middot; {{ s.profile_name }}</small></h2>
{% set next = s.next_stop %}
{% if next %}<p class="next-stop{% if next.soon %} soon{% endif %}" data-next-stop="{{ next.rule }}" data-seconds-left="{{ next.seconds_left }}">
 {% if next.soon %}<span aria-hidden="true">&#9888;</span> {% endif %}{{ next.headline }}</p>
{% elif s.rules and not s.checked %}<p class="next-stop" data-next-stop="" data-unchecked>The GPU culler has not checked this server yet: the clocks of its rules show after its next round.</p>
{% elif s.rules %}<p class="next-stop" data-next-stop="">No rule stops this server as things are now.</p>
{% else %}<p class="next-stop" data-next-stop="">No rule of the lab stops this server; stop it yourself when you are done.</p>{% endif %}

<h3>What it holds</h3>
<ul class="units">
{% for u in s.units %}{% set util = u.unit.usage.utilization_gpu if u.unit.usage else none %}
 <li data-unit="{{ u.unit.id }}">
  <b>{{ u.unit.label }}</b> {{ u.unit.model }}{% if u.unit.mig_profile %} (MIG {{ u.unit.mig_profile }}){% endif %}, {{ bytes(u.unit.memory) }}
  {%- if u.shared %} &middot; <span class="shared-note" data-shared="{{ u.others }}">shared:
   {% if u.others %}{{ u.others }} other server{{ "s" if u.others != 1 }} on it ({{ u.others + 1 }} of {{ u.slots }} slots taken){% else %}nobody else on it now ({{ u.slots }} slots){% endif %}</span>{% endif %}
  <div class="meter"><span>Utilisation now</span>{{ bar(util, "GPU utilisation of " ~ u.unit.label) }}<span class="utilisation">{{ na(util, "%") }}</span></div>
  <div class="meter"><span>Memory</span>{% if u.unit.usage and u.unit.usage.memory_total %}{{ bar(100 * u.unit.usage.memory_used // u.unit.usage.memory_total, "memory used on " ~ u.unit.label) }}
   <span>{{ bytes(u.unit.usage.memory_used) }} / {{ bytes(u.unit.usage.memory_total) }}</span>{% else %}{{ bar(none, "memory used on " ~ u.unit.label) }}<span>n/a</span>{% endif %}</div>
  {% if mine.history_interval %}{{ sparkline(u.unit.utilization_history, u.unit.memory_history, mine.history_interval) }}
  <p class="small text-body-secondary mb-0">The last hour: utilisation (solid) and memory used (dotted).</p>{% endif %}
 </li>
{% endfor %}
</ul>
<h3>The lab's rules for this server</h3>
{% if s.rules %}<ul class="rules">
{% for r in s.rules %} <li data-rule="{{ r.rule }}"{% if r.seconds_left is not none %} data-seconds-left="{{ r.seconds_left }}"{% endif %}{% if r.soon %} class="soon"{% endif %}>{{ r.text }}</li>
{% endfor %}</ul>
{% else %}<p>None: no rule of the lab stops this server.</p>{% endif %}
</div>
</section>
{% else %}
<p id="no-server">You have no GPU server running.{% if not mine.waiting %} Start one from the <a href="{{ base_url }}home">hub's home page</a>.{% endif %}</p>
{% endfor %}

{% if mine.waiting %}<h2>Waiting in line</h2>
<ul id="waiting">{% for w in mine.waiting %}<li>{% if w.server %}Server {{ w.server }}{% else %}Your server{% endif %} ({{ w.profile }}):
 {{ w.position }} of {{ w.in_line }} in line for {{ w.kind }}.</li>{% endfor %}</ul>{% endif %}

{% if mine.stops %}<h2>Stopped by the lab</h2>
<ul id="stops">{% for e in mine.stops %}<li data-reason="{{ e.reason }}">{% if e.server %}Server {{ e.server }}{% else %}Your server{% endif %}
 was {{ e.message }} (at {{ event_time(e.time) }}). Your files are kept.</li>{% endfor %}</ul>{% endif %}

{% if mine.servers %}<p class="small text-body-secondary mt-3">{% if mine.cull_every %}The lab checks its rules every {{ duration(mine.cull_every) }}, so a stop can come that much after the time shown.
{% endif %}Times are the lab's ({{ zone_name }}). GPU utilisation is the share of time the GPU ran your kernels.</p>{% endif %}
</main>
{{ updates_script(refresh) }}
{% endblock main %}
"""

_template = _environment(hub_templates(), {"mine.html": TEMPLATE}).get_template("mine.html")


def render_mine(
    mine: MyGPU,
    *,
    refresh: int,
    hub: HubLinks | None = None,
    xsrf_token: str = "",
    scopes: Sequence[str] = (),
    zone=None,
) -> str:
    """The page of ``mine.user``'s own servers, on the hub's page template."""
    now = mine.generated_at

    def event_time(value: str) -> str:
        try:
            return at(datetime.fromisoformat(value.replace("Z", "+00:00")), now, zone)
        except ValueError:
            return value

    return _template.render(
        mine=mine,
        refresh=refresh,
        style=Markup(STYLE + SPARK_STYLE),
        iso=_iso,
        clock=lambda when: at(when, now, zone) if when else "never",
        event_time=event_time,
        duration=duration,
        bytes=format_bytes,
        na=lambda value, suffix="": "n/a" if value is None else f"{value}{suffix}",
        bar=bar,
        sparkline=sparkline,
        zone_name=now.astimezone(zone).strftime("%Z") or "local time",
        **hub_page_vars(hub or HubLinks(), mine.user, scopes, xsrf_token),
    )


__all__ = [
    "ClocksFile",
    "MyGPU",
    "MyServer",
    "MyUnit",
    "RuleLine",
    "annotate",
    "my_gpu",
    "render_mine",
    "rule_lines",
    "say",
]
