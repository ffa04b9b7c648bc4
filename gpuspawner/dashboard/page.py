"""The dashboard page: one server-rendered HTML page, autoescaped, no front-end build.

It refreshes itself with a meta refresh (no JavaScript needed) and stops a
server with a plain POST form carrying tornado's ``_xsrf`` token. The template
lives here, not in a data file, so an installed wheel always has it.
"""

from __future__ import annotations

from datetime import datetime

import jinja2
from markupsafe import Markup

from ..traits import format_bytes
from .model import DashboardView

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>GPU dashboard{% if view.host %} - {{ view.host }}{% endif %}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
 table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
 th, td { border-bottom: 1px solid #ddd; padding: .35rem .5rem; text-align: left; vertical-align: top; }
 th { background: #f4f4f4; }
 .free { color: #176f2c; font-weight: 600; } .used { color: #a33; font-weight: 600; }
 .shared { color: #a60; font-weight: 600; } .unknown { color: #666; font-weight: 600; }
 .quarantined { color: #7a1f7a; font-weight: 600; } .quarantine { font-weight: normal; }
 .error { background: #fde8e8; border: 1px solid #e99; padding: .5rem .75rem; margin: .5rem 0; }
 .totals span { margin-right: 1.5rem; font-size: 1.1rem; }
 .muted { color: #666; font-size: .9em; }
 form { display: inline; }
 button { cursor: pointer; }
</style>
</head>
<body>
<h1>GPU dashboard{% if view.host %} <span class="muted">{{ view.host }}</span>{% endif %}</h1>
<p class="muted">As of <time id="generated-at" datetime="{{ iso(view.generated_at) }}">{{ iso(view.generated_at) }}</time>
 (refreshes every {{ refresh }} s) &middot; user {{ user }} &middot;
 <a href="api/v1/gpus">JSON</a> &middot; <a href="metrics">metrics</a></p>
{# A static inventory without NVML (a simulation, a machine without the driver) is expected: a note, not an alarm. #}
{% set nvml_expected_absent = view.inventory_source == "static" %}
{% for source, error in [("Docker", view.docker_error), ("the hub", view.hub_error),
                          ("NVML", "" if nvml_expected_absent else view.nvml_error),
                          ("the denials file", view.denials_error),
                          ("the stops file", view.stops_error),
                          ("the queue file", view.queue_error)] %}
 {% if error %}<div class="error" data-source="{{ source }}">Cannot read {{ source }}: {{ error }}</div>{% endif %}
{% endfor %}
{% if nvml_expected_absent and view.nvml_error %}<p class="muted" data-source="NVML">No GPU usage figures: the GPUs are a
 static list in the hub's config, and NVML does not answer ({{ view.nvml_error }}).</p>{% endif %}
{% if view.restricted_to %}<p class="muted" id="restricted">Showing only the GPUs of {{ view.restricted_to }} (and the free ones).</p>
 {% if view.groups_error %}<div class="error" data-source="groups">Cannot read the users' groups: {{ view.groups_error }}</div>{% endif %}
{% endif %}
{% for warning in view.warnings %}<div class="error">{{ warning }}</div>{% endfor %}

<p class="totals" id="totals">
 <span>Units: <b id="total-units">{{ view.totals.units }}</b></span>
 <span>Free: <b id="total-free">{{ na(view.totals.free) }}</b></span>
 <span>Used: <b id="total-used">{{ na(view.totals.used) }}</b></span>
 <span>Shared: <b id="total-shared">{{ na(view.totals.shared) }}</b></span>
 {% if view.totals.quarantined %}<span>Quarantined: <b id="total-quarantined">{{ view.totals.quarantined }}</b></span>{% endif %}
 {% if view.servers_without_gpu is not none %}<span class="muted">Servers without GPU: {{ view.servers_without_gpu }}</span>{% endif %}
</p>
{% if view.inventory_retry %}<div class="error" data-source="inventory" id="nvml-retry">NVML does not answer
 ({{ view.inventory_note }}): the hub hands out no GPU for now, asks again every {{ view.inventory_retry|int }} s, and
 hands its GPUs out once it answers. Check that <code>nvidia-smi</code> works on the host (<code>gpuspawner doctor</code>).</div>
{% elif not view.units %}<p>The hub hands out no GPU ({{ view.inventory_source }}{% if view.inventory_note %}: {{ view.inventory_note }}{% endif %}).</p>{% endif %}

{% if view.units %}
<table id="units">
<thead><tr><th>Unit</th><th>Model</th><th>Memory</th><th>Use</th><th>State</th>
<th>User</th><th>Server</th><th>Profile</th><th>Image</th><th>Since</th><th>Last activity</th><th></th></tr></thead>
<tbody>
{% for u in view.units %}
 {% set rows = u.holders or [none] %}
 {% for h in rows %}
 <tr class="unit" data-unit="{{ u.id }}" data-state="{{ u.state }}"{% if h %} data-holder="{{ h.holder }}"{% endif %}>
  {% if loop.first %}
  <td rowspan="{{ rows|length }}" title="{{ u.id }}">{{ u.label }}</td>
  <td rowspan="{{ rows|length }}">{{ u.model }}{% if u.mig_profile %} <span class="muted">MIG {{ u.mig_profile }}</span>{% endif %}</td>
  <td rowspan="{{ rows|length }}">{% if u.usage %}{{ bytes(u.usage.memory_used) }} / {{ bytes(u.usage.memory_total) }}{% else %}{{ bytes(u.memory) }}{% endif %}</td>
  <td rowspan="{{ rows|length }}">{% if u.usage %}{{ na(u.usage.utilization_gpu, "%") }}{% if u.usage.temperature is not none %}, {{ u.usage.temperature }}&deg;C{% endif %}{% else %}<span class="muted">n/a</span>{% endif %}</td>
  <td rowspan="{{ rows|length }}" class="{{ u.state }}">{{ u.state }}
   {%- if u.lab_hours %}<div class="lab-hours muted">{{ u.lab_hours }}</div>{% endif %}
   {%- if u.quarantine %}<div class="quarantine muted" data-quarantine="{{ u.id }}">set aside {{ ago(u.quarantine.since) }}
   after {{ u.quarantine.failures }} failed start(s): {{ u.quarantine.reason }}</div>
   {%- if can_put_back %}<form method="post" action="put-back">{{ xsrf_form_html }}
   <input type="hidden" name="unit" value="{{ u.id }}"><button type="submit" class="put-back" data-unit="{{ u.id }}">Put back</button></form>{% endif %}
   {%- endif %}</td>
  {% endif %}
  {% if h %}
  <td class="user">{{ h.user }}</td>
  <td class="server">{{ h.server or "(default)" }}</td>
  <td class="profile">{{ h.profile }}</td>
  <td class="image">{{ h.image }}</td>
  <td>{{ ago(h.since) }}</td>
  <td>{{ ago(h.last_activity) }}</td>
  <td>{% if can_stop %}<form method="post" action="stop">{{ xsrf_form_html }}
   <input type="hidden" name="user" value="{{ h.user }}"><input type="hidden" name="server" value="{{ h.server }}">
   <button type="submit" class="stop" data-holder="{{ h.holder }}">Stop server</button></form>{% endif %}</td>
  {% else %}
  <td colspan="7"></td>
  {% endif %}
 </tr>
 {% endfor %}
{% endfor %}
</tbody>
</table>
{% endif %}

{% macro events(id, rows) %}
{% if rows %}
<table id="{{ id }}">
<thead><tr><th>Time</th><th>User</th><th>Server</th><th>Profile</th><th>Reason</th><th>Message</th></tr></thead>
<tbody>
{% for d in rows %}
 <tr><td>{{ d.time }}</td><td>{{ d.user }}</td><td>{{ d.server or "(default)" }}</td><td>{{ d.profile }}</td>
 <td>{{ d.reason }}</td><td>{{ d.message }}{% if d.count > 1 %}
 <span class="count muted">({{ d.count }} times{% if d.first %} since {{ d.first }}{% endif %})</span>{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="muted">None recorded.</p>{% endif %}
{% endmacro %}
<h2>Waiting in line</h2>
{% if view.waiting %}
<table id="waiting">
<thead><tr><th>Place</th><th>User</th><th>Server</th><th>Profile</th><th>Waits for</th><th>Since</th><th>Expected</th></tr></thead>
<tbody>
{% for w in view.waiting %}
 <tr><td>{{ w.position }} of {{ w.in_line }}</td><td>{{ w.user }}</td><td>{{ w.server or "(default)" }}</td>
 <td>{{ w.profile }}</td><td>{{ w.kind }}</td><td>{{ ago(w.since) }}</td>
 <td>{% if w.estimate %}{{ iso(w.estimate) }}{% else %}<span class="muted">no estimate</span>{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="muted">Nobody is waiting.</p>{% endif %}
<h2>Recent denials</h2>
{{ events("denials", view.denials) }}
<h2>Recently stopped by the GPU culler</h2>
{{ events("stops", view.stops) }}
</body>
</html>
"""

_env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_template = _env.from_string(TEMPLATE)


def render_page(
    view: DashboardView, *, user: str, can_stop: bool, xsrf_form_html: str, refresh: int, can_put_back: bool = False
) -> str:
    """The page for ``user``; stop buttons only for those allowed to stop servers, and
    put-back buttons of quarantined units only for those who may stop every server."""
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
        user=user,
        can_stop=can_stop,
        can_put_back=can_put_back,
        xsrf_form_html=Markup(xsrf_form_html),  # tornado builds it escaped
        refresh=refresh,
        ago=ago,
        iso=lambda d: d.isoformat(timespec="seconds"),
        bytes=format_bytes,
        na=lambda value, suffix="": "n/a" if value is None else f"{value}{suffix}",
    )
