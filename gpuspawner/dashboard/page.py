"""The dashboard page: server-rendered HTML on the hub's own page template, autoescaped, no front-end build.

The page extends JupyterHub's ``page.html`` (its navigation bar, Bootstrap 5 and the
light/dark toggle, from the hub's static files under ``/hub/static/``), so it looks like
the hub and follows its theme. It works without JavaScript: a small inline script (allowed by its
hash) reloads it every ``refresh`` seconds unless the reader pauses it, a "Refresh now" link does
the same without one; it stops a server with a plain POST form carrying tornado's ``_xsrf`` token, and
draws the map's bars with Bootstrap and its sparklines as SVG made here. Where the hub's
templates are not installed, a plain page with the same blocks stands in.

Three views of one page: ``overview`` (the map, then the table), ``map`` (for a screen on the
wall) and ``table`` (``?view=``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import jinja2
from markupsafe import Markup

from ..traits import format_bytes
from .model import DashboardView

VIEWS = ("overview", "map", "table")  # the first is the default

# The sparklines' look, on every page that draws them (the map, My GPU).
SPARK_STYLE = """
.spark { display: block; width: 100%; height: 2rem; margin-top: .3rem; color: var(--bs-primary); }
.spark .memory { stroke: var(--bs-info-text-emphasis); stroke-dasharray: 2 2; }
.spark .axis { stroke: var(--bs-border-color); }
.spark polyline, .spark line { vector-effect: non-scaling-stroke; }
"""

# What the page adds to the hub's look: the map's tiles and the table's widths. Colours come
# from Bootstrap's variables, so dark mode is the hub's own.
STYLE = (
    """
#noscript { display: none; }  /* the hub's page needs JavaScript; this one does not */
.gpu-dashboard h2 { font-size: 1.25rem; margin-top: 1.5rem; }
.gpu-dashboard .totals span { margin-right: 1.25rem; }
.lab-map { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: .75rem;
  list-style: none; padding: 0; margin: 0 0 1rem; }
.tile { border: 1px solid var(--bs-border-color); border-left-width: .5rem; border-radius: var(--bs-border-radius);
  padding: .5rem .65rem; background: var(--bs-body-bg); min-width: 0; }
/* One colour a state, the same on the map and in the table. The hub's palette makes Bootstrap's
   "success" its primary blue, so free (green) and reserved (purple) get colours of their own. */
.gpu-dashboard { --free: #198754; --free-bg: #d1e7dd; --free-fg: #0a3622;
  --reserved: #6f42c1; --reserved-bg: #e2d9f3; --reserved-fg: #432874; }
[data-bs-theme=dark] .gpu-dashboard { --free-bg: #051b11; --free-fg: #75b798; --reserved-bg: #160d27; --reserved-fg: #a98eda; }
.is-free { --state: var(--free); --state-bg: var(--free-bg); --state-fg: var(--free-fg); }
.is-held { --state: var(--bs-primary); --state-bg: var(--bs-primary-bg-subtle); --state-fg: var(--bs-primary-text-emphasis); }
.is-shared { --state: var(--bs-warning); --state-bg: var(--bs-warning-bg-subtle); --state-fg: var(--bs-warning-text-emphasis); }
.is-reserved { --state: var(--reserved); --state-bg: var(--reserved-bg); --state-fg: var(--reserved-fg); }
.is-quarantined { --state: var(--bs-danger); --state-bg: var(--bs-danger-bg-subtle); --state-fg: var(--bs-danger-text-emphasis); }
.is-unknown { --state: var(--bs-secondary); --state-bg: var(--bs-secondary-bg-subtle); --state-fg: var(--bs-secondary-text-emphasis); }
.tile { border-color: var(--state); }
.tile .state { background: var(--state-bg); color: var(--state-fg); }
.tile .state { font-weight: 600; border-radius: var(--bs-border-radius-sm); padding: 0 .4rem; white-space: nowrap; }
.tile-head { display: flex; justify-content: space-between; gap: .5rem; align-items: baseline; }
.tile-model, .tile-holder { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tile-holders li { display: flex; gap: .4rem; align-items: baseline; }
.tile-holder { flex: 1; min-width: 0; } .tile-holders form { flex: none; }
.tile-holders { list-style: none; padding: 0; margin: .25rem 0; font-size: .9rem; }
.tile .meter { display: grid; grid-template-columns: 4.5rem 1fr 6.5rem; gap: .4rem; align-items: center;
  font-size: .8rem; margin-top: .2rem; }
.tile .progress { height: .55rem; } .tile .meter span:last-child { text-align: end; white-space: nowrap; }
.gpu-dashboard td.model, .gpu-dashboard td.unit-label, .gpu-dashboard td.memory,
.gpu-dashboard td.since { white-space: nowrap; }
.gpu-dashboard #units { font-size: .875rem; }
.gpu-dashboard td.image { overflow-wrap: anywhere; min-width: 8rem; max-width: 12rem; }
.gpu-dashboard td.state { min-width: 8rem; max-width: 16rem; }
td.state { color: var(--state-fg); font-weight: 600; }
td.state div { font-weight: normal; }
.gpu-dashboard form { display: inline; } .gpu-dashboard button { white-space: nowrap; }
/* The hub's danger red on its dark background is 3:1; Bootstrap's dark-theme red text is 6:1. */
[data-bs-theme=dark] .gpu-dashboard .btn-outline-danger { --bs-btn-color: #ea868f; --bs-btn-border-color: #ea868f; }
/* A warning said in words (a spent budget's stop), with a warning's colours, not by colour alone. */
.holder-warning { color: var(--bs-warning-text-emphasis); background: var(--bs-warning-bg-subtle);
  border-radius: var(--bs-border-radius-sm); padding: 0 .3rem; font-size: .85rem; font-weight: 600; }
"""
    + SPARK_STYLE
)

# The page's updates: a reload every ``refresh`` seconds while it is shown, which the reader can
# pause (WCAG 2.2.1: a meta refresh could not be paused); without JavaScript, "Refresh now".
# One constant script, allowed by its hash (UPDATES_HASH) wherever a page of the service has it.
UPDATES_SCRIPT = """
(function () {
  var button = document.getElementById("pause-updates"), paused = false;
  button.hidden = false;
  button.addEventListener("click", function () {
    paused = !paused;
    button.textContent = paused ? "Resume updates" : "Pause updates";
    button.setAttribute("aria-pressed", paused ? "true" : "false");
  });
  setInterval(function () {
    if (!paused && !document.hidden) { location.reload(); }
  }, 1000 * parseInt(button.dataset.every, 10));
})();
"""
UPDATES_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(UPDATES_SCRIPT.encode()).digest()).decode() + "'"


def updates_line(refresh: int, again: str) -> Markup:
    """What a page says of its updates: every ``refresh`` s with the Pause button the script shows
    (none for 0), and **Refresh now** (``again``), which works without JavaScript."""
    every = Markup(
        ' (updates every {0} s<button type="button" id="pause-updates" class="btn btn-link btn-sm p-0 ms-1'
        ' align-baseline" aria-pressed="false" data-every="{0}" hidden>Pause updates</button>)'
    ).format(refresh)
    return (every if refresh else Markup("")) + Markup(
        ' &middot; <a href="{}" id="refresh-now">Refresh now</a>'
    ).format(again)


def updates_script(refresh: int) -> Markup:
    """The updates script's element (none for ``refresh`` 0): its text is ``UPDATES_SCRIPT``, whose hash
    the page's CSP allows."""
    return Markup('<script id="updates">{}</script>').format(Markup(UPDATES_SCRIPT)) if refresh else Markup("")


TEMPLATE = (
    """{% extends "page.html" %}
{% block title %}GPU dashboard{% if view.host %} - {{ view.host }}{% endif %}{% endblock title %}
{% block stylesheet %}{{ super() }}<style>{{ style }}</style>{% endblock stylesheet %}
{% block main %}
<div class="container-fluid gpu-dashboard">
<h1 class="h3">GPU dashboard{% if view.host %} <small class="text-body-secondary">{{ view.host }}</small>{% endif %}</h1>
<p class="text-body-secondary">As of <time id="generated-at" datetime="{{ iso(view.generated_at) }}">"""
    """{{ iso(view.generated_at) }}</time>
{{ updates(refresh, view_href(shown)) }}
 &middot; user {{ user.name }} &middot; <a href="api/v1/gpus">JSON</a> &middot; <a href="metrics">metrics</a> &middot; <a href="usage" id="usage-link">GPU-hours</a></p>
<ul class="nav nav-tabs mb-3" id="views">
{% for name, words in [("overview", "Map and table"), ("map", "Map"), ("table", "Table")] %}
 <li class="nav-item"><a class="nav-link{% if name == shown %} active{% endif %}"
 {%- if name == shown %} aria-current="page"{% endif %} href="{{ view_href(name) }}">{{ words }}</a></li>
{% endfor %}
</ul>
{# A static inventory without NVML (a simulation, a machine without the driver) is expected: a note, not an alarm. #}
{% set nvml_expected_absent = view.inventory_source == "static" %}
{% for source, error in [("Docker", view.docker_error), ("the hub", view.hub_error),
                          ("NVML", "" if nvml_expected_absent else view.nvml_error),
                          ("the denials file", view.denials_error),
                          ("the stops file", view.stops_error),
                          ("the queue file", view.queue_error)] %}
 {% if error %}<div class="error alert alert-danger py-2" data-source="{{ source }}">Cannot read {{ source }}: {{ error }}</div>{% endif %}
{% endfor %}
{% if nvml_expected_absent and view.nvml_error %}<p class="text-body-secondary" data-source="NVML">No GPU usage figures: the GPUs are a
 static list in the hub's config, and NVML does not answer ({{ view.nvml_error }}).</p>{% endif %}
{% if view.restricted_to %}<p class="text-body-secondary" id="restricted">Showing only the GPUs of {{ view.restricted_to }} (and the free ones).</p>
 {% if view.groups_error %}<div class="error alert alert-danger py-2" data-source="groups">Cannot read the users' groups: {{ view.groups_error }}</div>{% endif %}
{% endif %}
{% for warning in view.warnings %}<div class="error alert alert-warning py-2">{{ warning }}</div>{% endfor %}

<p class="totals" id="totals">
 <span>Units: <b id="total-units">{{ view.totals.units }}</b></span>
 <span>Free: <b id="total-free">{{ na(view.totals.free) }}</b></span>
 <span>Used: <b id="total-used">{{ na(view.totals.used) }}</b></span>
 <span>Shared: <b id="total-shared">{{ na(view.totals.shared) }}</b></span>
 {% if view.totals.quarantined %}<span>Quarantined: <b id="total-quarantined">{{ view.totals.quarantined }}</b></span>{% endif %}
 {% if view.servers_without_gpu is not none %}<span class="text-body-secondary">Servers without GPU: {{ view.servers_without_gpu }}</span>{% endif %}
</p>
{% if view.inventory_retry %}<div class="error alert alert-danger py-2" data-source="inventory" id="nvml-retry">NVML does not answer
 ({{ view.inventory_note }}): the hub hands out no GPU for now, asks again every {{ view.inventory_retry|int }} s, and
 hands its GPUs out once it answers. Check that <code>nvidia-smi</code> works on the host (<code>gpuspawner doctor</code>).</div>
{% elif not view.units %}<p>The hub hands out no GPU ({{ view.inventory_source }}{% if view.inventory_note %}: {{ view.inventory_note }}{% endif %}).</p>{% endif %}
"""
    """
{# One form for every stop button (each names its server): one xsrf token on the page, not one a holder. #}
{% if can_stop %}<form id="stop-form" method="post" action="stop">{{ xsrf_form_html }}<input type="hidden" name="view" value="{{ shown }}"></form>{% endif %}
{% macro put_back_form(u, css) %}{% if can_put_back %}<form method="post" action="put-back">{{ xsrf_form_html }}
 <input type="hidden" name="unit" value="{{ u.id }}"><input type="hidden" name="view" value="{{ shown }}">
 <button type="submit" class="{{ css }}" data-unit="{{ u.id }}">Put back</button></form>{% endif %}{% endmacro %}

{% if view.units and shown != "table" %}
<h2 id="map-title">The lab</h2>
{% if view.history_interval %}<p class="small text-body-secondary">Each line: the last {{ (view.units[0].utilization_history|length * view.history_interval / 60)|round|int }} minutes of GPU
 utilisation (solid) and memory used (dotted), as this service sampled them every {{ view.history_interval|int }} s.</p>{% endif %}
{% for node, units in view.nodes() %}
<h3 class="h6 mt-3">{{ node or "This host" }} <span class="text-body-secondary">&middot; {{ units|length }} unit(s)</span></h3>
<ul class="lab-map" data-node="{{ node }}" aria-label="GPUs of {{ node or 'this host' }}">
{% for u in units %}{% set look = u.look(view.share_limit) %}
 <li class="tile is-{{ look[0] }}" data-tile="{{ u.id }}" data-map-state="{{ look[0] }}">
  <div class="tile-head"><b class="tile-label" title="{{ u.id }}">GPU {{ u.index }}{% if u.mig_index is not none %} MIG {{ u.mig_index }}{% endif %}</b>
   <span class="state">{{ look[1] }}</span></div>
  <div class="tile-model text-body-secondary" title="{{ u.model }}">{{ u.model }}{% if u.mig_profile %} &middot; MIG {{ u.mig_profile }}{% endif %}</div>
  <ul class="tile-holders">
  {% for h in u.holders %}<li data-holder="{{ h.holder }}"><span class="tile-holder" title="{{ h.user }}{% if h.server %}/{{ h.server }}{% endif %}: {{ h.profile }}">
   <span class="tile-user">{{ h.user }}</span>{% if h.server %}/{{ h.server }}{% endif %} &middot; <span class="text-body-secondary">{{ h.profile }}</span></span>
   {% if can_stop %}<button type="submit" form="stop-form" name="holder" value="{{ h.holder }}" class="map-stop btn btn-link btn-sm p-0 align-baseline" data-holder="{{ h.holder }}">Stop server</button>{% endif %}</li>
  {% if h.warning %}<li class="holder-warning" data-warning="{{ h.holder }}"><span aria-hidden="true">&#9888;</span> {{ h.warning }}</li>{% endif %}
  {% else %}<li class="text-body-secondary">{% if u.state == "unknown" %}holder unknown{% else %}nobody{% endif %}</li>{% endfor %}
  </ul>
  {% if u.lab_hours %}<div class="lab-hours small">{{ u.lab_hours }}</div>{% endif %}
  {% if u.quarantine %}<div class="small" data-tile-quarantine="{{ u.id }}">set aside {{ ago(u.quarantine.since) }}: {{ u.quarantine.reason }}
   {{ put_back_form(u, "map-put-back btn btn-outline-danger btn-sm py-0") }}</div>{% endif %}
  {% set util = u.usage.utilization_gpu if u.usage else none %}
  <div class="meter"><span>Utilisation</span>{{ bar(util, "GPU utilisation of GPU " ~ u.index) }}<span>{{ na(util, "%") }}</span></div>
  <div class="meter"><span>Memory</span>{% if u.usage and u.usage.memory_total %}{{ bar(100 * u.usage.memory_used // u.usage.memory_total, "memory used on GPU " ~ u.index) }}
   <span>{{ bytes(u.usage.memory_used) }} / {{ bytes(u.usage.memory_total) }}</span>{% else %}{{ bar(none, "memory") }}<span>{{ bytes(u.memory) }}</span>{% endif %}</div>
  {% if view.history_interval %}{{ sparkline(u.utilization_history, u.memory_history, view.history_interval) }}{% endif %}
 </li>
{% endfor %}
</ul>
{% endfor %}
{% endif %}
"""
    """
{% if view.units and shown != "map" %}
<h2 id="table-title">Who holds what</h2>
<div class="table-responsive">
<table id="units" class="table table-sm align-top">
<thead><tr><th>Unit</th><th>Model</th><th>Memory</th><th>Use</th><th>State</th>
<th>User</th><th>Server</th><th>Profile</th><th>Image</th><th>Since</th><th>Last activity</th><th></th></tr></thead>
<tbody>
{% for u in view.units %}
 {% set rows = u.holders or [none] %}
 {% for h in rows %}
 <tr class="unit" data-unit="{{ u.id }}" data-state="{{ u.state }}"{% if h %} data-holder="{{ h.holder }}"{% endif %}>
  {% if loop.first %}
  <td rowspan="{{ rows|length }}" class="unit-label" title="{{ u.id }}">{{ u.label }}</td>
  <td rowspan="{{ rows|length }}" class="model">{{ u.model }}{% if u.mig_profile %}<div class="text-body-secondary">MIG {{ u.mig_profile }}</div>{% endif %}</td>
  <td rowspan="{{ rows|length }}" class="memory">{% if u.usage %}{{ bytes(u.usage.memory_used) }} / {{ bytes(u.usage.memory_total) }}{% else %}{{ bytes(u.memory) }}{% endif %}</td>
  <td rowspan="{{ rows|length }}">{% if u.usage %}{{ na(u.usage.utilization_gpu, "%") }}{% if u.usage.temperature is not none %}, {{ u.usage.temperature }}&deg;C{% endif %}{% else %}<span class="text-body-secondary">n/a</span>{% endif %}</td>
  <td rowspan="{{ rows|length }}" class="state {{ u.state }} is-{{ u.look(view.share_limit)[0] }}">{{ u.state }}
   {%- if u.lab_hours %}<div class="lab-hours text-body-secondary">{{ u.lab_hours }}</div>{% endif %}
   {%- if u.quarantine %}<div class="quarantine text-body-secondary" data-quarantine="{{ u.id }}">set aside {{ ago(u.quarantine.since) }}
   after {{ u.quarantine.failures }} failed start(s): {{ u.quarantine.reason }}</div>
   {{- put_back_form(u, "put-back btn btn-outline-danger btn-sm") }}
   {%- endif %}</td>
  {% endif %}
  {% if h %}
  <td class="user">{{ h.user }}{% if h.warning %}<div class="holder-warning" data-warning="{{ h.holder }}"><span aria-hidden="true">&#9888;</span> {{ h.warning }}</div>{% endif %}</td>
  <td class="server">{{ h.server or "(default)" }}</td>
  <td class="profile">{{ h.profile }}</td>
  <td class="image">{{ h.image }}</td>
  <td class="since">{{ ago(h.since) }}</td>
  <td class="since">{{ ago(h.last_activity) }}</td>
  <td>{% if can_stop %}<button type="submit" form="stop-form" name="holder" value="{{ h.holder }}" class="stop btn btn-outline-danger btn-sm px-1" data-holder="{{ h.holder }}">Stop server</button>{% endif %}</td>
  {% else %}
  <td colspan="7"></td>
  {% endif %}
 </tr>
 {% endfor %}
{% endfor %}
</tbody>
</table>
</div>
{% endif %}
"""
    """
{% macro events(id, rows) %}
{% if rows %}
<div class="table-responsive">
<table id="{{ id }}" class="table table-sm">
<thead><tr><th>Time</th><th>User</th><th>Server</th><th>Profile</th><th>Reason</th><th>Message</th></tr></thead>
<tbody>
{% for d in rows %}
 <tr><td>{{ d.time }}</td><td>{{ d.user }}</td><td>{{ d.server or "(default)" }}</td><td>{{ d.profile }}</td>
 <td>{{ d.reason }}</td><td>{{ d.message }}{% if d.count > 1 %}
 <span class="count text-body-secondary">({{ d.count }} times{% if d.first %} since {{ d.first }}{% endif %})</span>{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
</div>
{% else %}<p class="text-body-secondary">None recorded.</p>{% endif %}
{% endmacro %}
{% if shown != "map" %}
<h2>Waiting in line</h2>
{% if view.waiting %}
<div class="table-responsive">
<table id="waiting" class="table table-sm">
<thead><tr><th>Place</th><th>User</th><th>Server</th><th>Profile</th><th>Waits for</th><th>Since</th><th>Expected</th></tr></thead>
<tbody>
{% for w in view.waiting %}
 <tr><td>{{ w.position }} of {{ w.in_line }}</td><td>{{ w.user }}</td><td>{{ w.server or "(default)" }}</td>
 <td>{{ w.profile }}</td><td>{{ w.kind }}</td><td>{{ ago(w.since) }}</td>
 <td>{% if w.estimate %}{{ iso(w.estimate) }}{% else %}<span class="text-body-secondary">no estimate</span>{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
</div>
{% else %}<p class="text-body-secondary">Nobody is waiting.</p>{% endif %}
<h2>Recent denials</h2>
{{ events("denials", view.denials) }}
<h2>Recently stopped by the GPU culler</h2>
{{ events("stops", view.stops) }}
{% endif %}
</div>
{{ updates_script(refresh) }}
{% endblock main %}
"""
)

# Where JupyterHub's own templates are not installed (a wheel without its data files):
# a plain page with the blocks the dashboard fills, and no script.
FALLBACK_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock title %}</title>
{% block stylesheet %}{% endblock stylesheet %}
{% block meta %}{% endblock meta %}
</head>
<body>
<nav><a href="{{ base_url }}home">Home</a></nav>
{% block main %}{% endblock main %}
</body>
</html>
"""


def hub_templates() -> str | None:
    """The directory of the hub's own templates (``page.html``), or None where it is not installed."""
    try:
        from jupyterhub._data import DATA_FILES_PATH
    except ImportError:
        return None
    path = os.path.join(DATA_FILES_PATH, "templates")
    return path if os.path.isfile(os.path.join(path, "page.html")) else None


def _environment(templates: str | None, pages: dict[str, str] | None = None) -> jinja2.Environment:
    """The service's pages (``pages``: name -> template) on the hub's ``page.html`` from ``templates``."""
    loaders: list[jinja2.BaseLoader] = [jinja2.DictLoader(pages or {"dashboard.html": TEMPLATE})]
    loaders.append(jinja2.FileSystemLoader(templates) if templates else jinja2.DictLoader({"page.html": FALLBACK_PAGE}))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(updates=updates_line, updates_script=updates_script)  # each page's updates, said alike
    return env


_env = _environment(hub_templates())
_template = _env.get_template("dashboard.html")


@dataclass(frozen=True)
class HubLinks:
    """Where the hub is, for its page template: its pages, its static files, its Services menu.

    ``host`` is the hub's origin when the dashboard is on a host of its own (per-user
    subdomains), '' when they share one."""

    prefix: str = "/hub/"  # the hub's URL prefix (HubAuth.hub_prefix)
    host: str = ""
    base_url: str = "/"  # the whole JupyterHub's (JUPYTERHUB_BASE_URL)
    login_url: str = "/hub/login"
    services: Sequence[tuple[str, str]] = ()  # (name, href) of the Services menu

    def url(self, path: str) -> str:
        return f"{self.host}{self.prefix}{path}"

    def static_url(self, path: str, include_version: bool = True) -> str:
        return self.url(f"static/{path}")


@dataclass(frozen=True)
class _Viewer:
    """What the hub's page template reads of ``user``: the name, and the name as a JavaScript string."""

    name: str

    @property
    def json_escaped_name(self) -> str:
        # Inside a "..." of an inline script: quotes and backslashes by JSON, and no '<'
        # (no </script>), '>' or '&' left to end the script or be read as HTML.
        return json.dumps(self.name)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(
    view: DashboardView,
    *,
    user: str,
    can_stop: bool,
    xsrf_form_html: str,
    refresh: int,
    can_put_back: bool = False,
    shown: str = VIEWS[0],
    hub: HubLinks | None = None,
    xsrf_token: str = "",
    scopes: Sequence[str] = (),
) -> str:
    """The page for ``user``; stop buttons only for those allowed to stop servers, and
    put-back buttons of quarantined units only for those who may stop every server.
    ``shown`` is one of ``VIEWS``; ``scopes`` are the viewer's (the hub's menu shows Admin for ``admin-ui``)."""
    if shown not in VIEWS:
        raise ValueError(f"no view {shown!r}: one of {', '.join(VIEWS)}")
    hub = hub or HubLinks()
    now = view.generated_at

    def ago(when: datetime | None) -> str:
        if when is None:
            return "-"
        seconds = int((now - when).total_seconds())
        if seconds < 60:
            return "just now" if seconds < 5 else f"{seconds} s ago"
        if seconds < 3600:
            return f"{seconds // 60} min ago"
        if seconds < 86400:
            return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
        return f"{seconds // 86400} d ago"

    return _template.render(
        view=view,
        can_stop=can_stop,
        can_put_back=can_put_back,
        xsrf_form_html=Markup(xsrf_form_html),  # tornado builds it escaped
        refresh=refresh,
        shown=shown,
        view_href=lambda name: "./" if name == VIEWS[0] else f"?view={name}",
        style=Markup(STYLE),
        ago=ago,
        iso=lambda d: d.isoformat(timespec="seconds"),
        bytes=format_bytes,
        na=lambda value, suffix="": "n/a" if value is None else f"{value}{suffix}",
        bar=bar,
        sparkline=sparkline,
        **hub_page_vars(hub, user, scopes, xsrf_token),
    )


def hub_page_vars(hub: HubLinks, user: str, scopes: Sequence[str], xsrf_token: str) -> dict:
    """What the hub's ``page.html`` reads: its pages and static files, its Services menu, the viewer
    (the menu shows Admin for ``admin-ui`` in ``scopes``)."""
    return {
        "user": _Viewer(user),
        "base_url": hub.url(""),
        "prefix": hub.base_url,
        "static_url": hub.static_url,
        "version_hash": "",
        "logo_url": "",
        "login_url": hub.login_url,
        "logout_url": hub.url("logout"),
        "services": [{"name": name, "href": href} for name, href in hub.services],
        "parsed_scopes": {s.partition("!")[0] for s in scopes},
        "admin_access": False,
        "no_spawner_check": True,
        "xsrf_token": xsrf_token,
        "announcement": "",
    }


def bar(percent: int | None, label: str) -> Markup:
    """A Bootstrap progress bar of ``percent`` (None: an empty one, said so to screen readers)."""
    if percent is None:
        return Markup('<div class="progress" role="img" aria-label="{} not measured"></div>').format(label)
    value = max(0, min(100, int(percent)))
    return Markup(
        '<div class="progress" role="progressbar" aria-label="{}" aria-valuenow="{}" aria-valuemin="0"'
        ' aria-valuemax="100"><div class="progress-bar" style="width: {}%"></div></div>'
    ).format(label, value, value)


SPARK_HEIGHT = 24
_Y = [f"{SPARK_HEIGHT - 1 - v * (SPARK_HEIGHT - 2) / 100:.1f}" for v in range(101)]  # percent -> y, made once


def _polylines(values: Sequence[int | None], css: str) -> list[str]:
    """One ``<polyline>`` per run of values without a gap; a lone value, a short dash.
    (Run on every tile of every page: string joins, no formatting per point.)"""
    lines = []
    start = None
    for x, v in enumerate((*values, None)):
        if v is not None:
            if start is None:
                start = x
            continue
        if start is None:
            continue
        if x - start == 1:
            y = _Y[values[start]]
            points = f"{start - 0.4:g},{y} {start + 0.4:g},{y}"
        else:
            points = " ".join([f"{i},{_Y[values[i]]}" for i in range(start, x)])
        lines.append(f'<polyline class="{css}" points="{points}"/>')
        start = None
    return lines


def sparkline(utilization: Sequence[int | None], memory: Sequence[int | None], interval: float) -> Markup:
    """The last hour as a small SVG: utilisation (solid) and memory used (dashed), in percent;
    its title says the same in words. Only numbers go into it."""
    width = max(len(utilization), 2) - 1
    measured = [v for v in utilization if v is not None]
    minutes = round(len(utilization) * interval / 60)
    if measured:
        words = f"GPU utilisation over the last {minutes} min: now {na_last(utilization)}, peak {max(measured)}%, mean {round(sum(measured) / len(measured))}%"
    else:
        words = f"No GPU utilisation measured in the last {minutes} min"
    mem = [v for v in memory if v is not None]
    if mem:
        words += f"; memory used peak {max(mem)}%"
    body = [f'<line class="axis" x1="0" y1="{SPARK_HEIGHT - 0.5}" x2="{width}" y2="{SPARK_HEIGHT - 0.5}"/>']
    body += _polylines(memory, "memory")
    body += _polylines(utilization, "utilization")
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {SPARK_HEIGHT}" preserveAspectRatio="none" role="img"'
        f' aria-label="{words}"><title>{words}</title>'
        f'<g fill="none" stroke="currentColor" stroke-width="1.5">{"".join(body)}</g></svg>'
    )


def na_last(values: Sequence[int | None]) -> str:
    return "n/a" if not values or values[-1] is None else f"{values[-1]}%"


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) of the page's inline scripts: the hub's page template has one
    (its ``require.config`` and ``window.jhdata``), which a ``script-src`` without it would block."""
    head = html[: html.find("</head>") + 1 or None]
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(head)
    ]
