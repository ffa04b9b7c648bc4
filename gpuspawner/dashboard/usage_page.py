"""The dashboard's usage page (``<prefix>usage``) and its JSON (``<prefix>api/usage``): GPU-hours per day.

Server-rendered on the hub's own ``page.html``, as the dashboard's page is (``page.py``): no script
of its own, no charting bundle. The chart is an SVG made here, with a title and a description in
words; a table beside it gives every day's number; a second table gives each course (or student) its
own small chart on one shared scale, its GPU-hours, servers, and the utilisation and peak memory of
its servers' own processes where NVML measured them ("n/a" where not, never 0). The period and the
grouping are a plain GET form.

Who sees what is ``usage_view``'s (pure); the records come from the hub's usage database
(``GPUDashboard.usage_db_url``), opened read-only (``UsageSource``), on a thread off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from urllib.parse import urlencode

import jinja2
from jupyterhub.utils import url_path_join
from markupsafe import Markup
from tornado import web

from ..services import MINE_SCOPE
from ..usage.budgets import Budget, Standing, budget_use
from ..usage.records import utc
from ..usage.report import memory_text, utilisation_text
from ..usage.store import UsageStore, UsageStoreError
from .app import _Handler, page_csp
from .page import HubLinks, _env, hub_page_vars, inline_script_hashes
from .usage_view import (
    BY_WORDS,
    QueryError,
    UsageAccess,
    UsageQuery,
    UsageView,
    build_usage_view,
    parse_query,
    usage_json,
    usage_reach,
)

STYLE = """
#noscript { display: none; }
.gpu-usage h2 { font-size: 1.25rem; margin-top: 1.5rem; }
.gpu-usage .summary span { margin-right: 1.25rem; }
.usage-chart { display: block; width: 100%; max-width: 56rem; height: auto; color: var(--bs-body-color); }
.usage-chart .bar, .usage-spark .bar { fill: var(--bs-primary); }  /* 4.5:1 on the light page */
[data-bs-theme=dark] .gpu-usage .bar { fill: var(--bs-primary-text-emphasis); }  /* 8:1 on the dark one */
.gpu-usage caption { caption-side: top; }
.usage-chart .grid { stroke: var(--bs-border-color); }
.usage-chart .axis { stroke: var(--bs-body-color); }
.usage-chart text { fill: currentColor; font-size: 11px; }
.usage-spark { display: block; width: 100%; min-width: 8rem; height: 1.75rem; }
.usage-spark .base { stroke: var(--bs-border-color); vector-effect: non-scaling-stroke; }
.usage-days { max-height: 24rem; overflow-y: auto; }
.gpu-usage td.num, .gpu-usage th.num { text-align: end; white-space: nowrap; }
.gpu-usage td.chart { width: 40%; }
"""

TEMPLATE = """{% extends "page.html" %}
{% block title %}GPU-hours{% endblock title %}
{% block stylesheet %}{{ super() }}<style>{{ style }}</style>{% endblock stylesheet %}
{% block main %}
<main class="container-fluid gpu-usage" id="usage">
<h1 class="h3">GPU-hours</h1>
<p class="text-body-secondary">{% if view %}Showing {% if view.own_only %}your own GPU use{% else %}{{ view.seen_as }}{% endif %}
 &middot; days in {{ time_zone }}{% if not view.own_only %} &middot; <a href="{{ dashboard_href }}">GPU dashboard</a>{% endif %}
 &middot; <a href="{{ json_href }}">JSON</a>{% else %}<a href="{{ dashboard_href }}">GPU dashboard</a>{% endif %}</p>

<form method="get" action="usage" class="row gx-3 gy-2 align-items-end mb-3" id="usage-form" aria-label="Period and grouping">
 <div class="col-auto"><label class="form-label" for="since">From</label>
  <input class="form-control" type="date" id="since" name="since" value="{{ form.since }}"></div>
 <div class="col-auto"><label class="form-label" for="until">To (included)</label>
  <input class="form-control" type="date" id="until" name="until" value="{{ form.until }}"></div>
 <div class="col-auto"><label class="form-label" for="group">Course</label>
  <select class="form-select" id="group" name="group">
   <option value=""{% if not form.group %} selected{% endif %}>All</option>
   {% for g in group_choices %}<option value="{{ g }}"{% if g == form.group %} selected{% endif %}>{{ g }}</option>{% endfor %}
  </select></div>
 <div class="col-auto"><label class="form-label" for="by">Rows</label>
  <select class="form-select" id="by" name="by">
   <option value="group"{% if form.by == "group" %} selected{% endif %}>per course</option>
   <option value="user"{% if form.by == "user" %} selected{% endif %}>per student</option>
  </select></div>
 <div class="col-auto"><button type="submit" class="btn btn-primary">Show</button></div>
</form>
{% if error %}<div class="alert alert-danger py-2" role="alert" id="usage-error">{{ error }}</div>{% endif %}
{% if view %}
{% set d = view.daily %}
{% if view.note %}<p class="text-body-secondary" id="usage-note">{{ view.note }}</p>{% endif %}
<p class="summary" id="summary">
 <span>GPU-hours: <b id="total-gpu-hours">{{ hours(d.total.gpu_hours) }}</b></span>
 <span>Servers: <b>{{ d.total.servers }}</b></span>
 <span>Students: <b>{{ d.total.users }}</b></span>
 <span>GPU use: <b>{{ util(d.total.utilisation) }}</b></span>
 <span>Peak memory: <b>{{ memory(d.total.peak_memory) }}</b></span>
</p>

<h2 id="per-day-title">GPU-hours per day{% if view.query.group %}, {{ view.query.group }}{% endif %}</h2>
{% if d.total.servers %}
<div class="row">
 <div class="col-lg-8 mb-3">{{ chart }}</div>
 <div class="col-lg-4 mb-3">
  <div class="usage-days" tabindex="0" role="region" aria-labelledby="days-caption">
  <table class="table table-sm" id="usage-days">
   <caption id="days-caption">GPU-hours on each day, {{ d.time_zone }}</caption>
   <thead><tr><th scope="col">Day</th><th scope="col" class="num">GPU-hours</th></tr></thead>
   <tbody>{% for day in d.days %}<tr><th scope="row" class="fw-normal"><time datetime="{{ day.isoformat() }}">{{ day_words(day) }}</time></th>
    <td class="num">{{ hours(d.total.hours[loop.index0]) }}</td></tr>{% endfor %}</tbody>
  </table></div>
 </div>
</div>

<h2 id="rows-title">Per {{ by_words[d.by] }}</h2>
{% if d.by == "group" and not view.query.group and d.series|length > 1 %}<p class="small text-body-secondary">A student in
 two courses counts fully in each (the courses they were in when each server started), so the rows add up to more than the total.</p>{% endif %}
<p class="small text-body-secondary">Each {{ by_words[d.by] }}'s days on one scale: the tallest bar is {{ "%g"|format(scale) }} GPU-hours.</p>
<div class="table-responsive">
<table class="table table-sm align-middle" id="usage-rows">
 <caption>GPU-hours per {{ by_words[d.by] }}, {{ day_words(d.days[0]) }} to {{ day_words(d.days[-1]) }}; GPU use and peak memory
  of the servers' own processes, where NVML measured them (n/a: not measured)</caption>
 <thead><tr><th scope="col">{{ by_words[d.by]|capitalize }}</th><th scope="col">Per day</th>
  <th scope="col" class="num">GPU-hours</th><th scope="col" class="num">Servers</th>
  {% if d.by == "group" %}<th scope="col" class="num">Students</th>{% endif %}
  <th scope="col" class="num">GPU use</th><th scope="col" class="num">Peak memory</th></tr></thead>
 <tbody>
 {% for s in view.shown_rows %}
  <tr data-key="{{ s.key }}"><th scope="row" class="fw-normal">{{ s.key }}</th>
   <td class="chart">{{ spark(s) }}</td>
   <td class="num">{{ hours(s.gpu_hours) }}</td><td class="num">{{ s.servers }}</td>
   {% if d.by == "group" %}<td class="num">{{ s.users }}</td>{% endif %}
   <td class="num">{{ util(s.utilisation) }}</td><td class="num">{{ memory(s.peak_memory) }}</td></tr>
 {% endfor %}
 </tbody>
</table>
</div>
{% if view.rows_left_out %}<p class="text-body-secondary" id="rows-left-out">And {{ view.rows_left_out }} more {{ by_words[d.by] }}s
 with less use: the <a href="{{ json_href }}">JSON</a> lists them all.</p>{% endif %}
{% else %}
<p id="no-use">No GPU use recorded in this period.</p>
{% endif %}
{% endif %}
</main>
{% endblock main %}
"""

_template = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.DictLoader({"usage.html": TEMPLATE}), _env.loader]),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
).get_template("usage.html")


# --- the chart


def nice_ceiling(value: float) -> float:
    """The axis's top: 1, 2, 2.5 or 5 times a power of ten, at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def hours_text(value: float) -> str:
    """GPU-hours for people, to a hundredth (columns line up): '12.50', '0.25', '0', '< 0.01', '1,250'."""
    if value == 0:
        return "0"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 0.005 else "< 0.01"


def day_words(day: date) -> str:
    """'Mon 2 Mar 2026'."""
    return f"{day:%a} {day.day} {day:%b %Y}"


def _label_days(days: Sequence[date]) -> list[int]:
    """Which days get a label on the axis: every Monday up to nine weeks, then each month's first day."""
    if len(days) <= 14:
        return list(range(len(days)))
    if len(days) <= 63:
        return [i for i, d in enumerate(days) if d.weekday() == 0]
    return [i for i, d in enumerate(days) if d.day == 1]


CHART_WIDTH, CHART_HEIGHT = 640, 200
_LEFT, _BOTTOM, _TOP = 44, 22, 8


def day_chart(view: UsageView) -> Markup:
    """GPU-hours per day as bars, with its axis in GPU-hours and its days; ``role="img"``, its title and
    a description in words (the table beside it gives every number)."""
    d = view.daily
    values = d.total.hours
    top = nice_ceiling(max(values, default=0))
    plot_w, plot_h = CHART_WIDTH - _LEFT - 4, CHART_HEIGHT - _BOTTOM - _TOP
    step = plot_w / max(len(values), 1)
    bar_w = max(step * 0.8, 0.5)

    def y(v: float) -> float:
        return _TOP + plot_h - v / top * plot_h

    body = []
    for tick in (0, top / 2, top):
        body.append(f'<line class="grid" x1="{_LEFT}" y1="{y(tick):.1f}" x2="{CHART_WIDTH - 4}" y2="{y(tick):.1f}"/>')
        body.append(f'<text x="{_LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, v in enumerate(values):
        if v > 0:
            height = max(v / top * plot_h, 0.5)
            body.append(
                f'<rect class="bar" x="{_LEFT + i * step + (step - bar_w) / 2:.1f}" y="{_TOP + plot_h - height:.1f}"'
                f' width="{bar_w:.1f}" height="{height:.1f}"><title>{day_words(d.days[i])}: {hours_text(v)}'
                f" GPU-hours</title></rect>"
            )
    for i in _label_days(d.days):
        day = d.days[i]
        body.append(
            f'<text x="{_LEFT + (i + 0.5) * step:.1f}" y="{CHART_HEIGHT - 6}" text-anchor="middle">'
            f"{day.day} {day:%b}</text>"
        )
    body.append(f'<line class="axis" x1="{_LEFT}" y1="{y(0):.1f}" x2="{CHART_WIDTH - 4}" y2="{y(0):.1f}"/>')
    title = f"GPU-hours per day, {day_words(d.days[0])} to {day_words(d.days[-1])}"
    peak = d.total.peak_day()
    if peak is None:
        words = "No GPU use in this period."
    else:
        used = sum(1 for v in values if v > 0)
        words = (
            f"{hours_text(d.total.gpu_hours)} GPU-hours in all, on {used} of {len(values)} days;"
            f" the busiest day was {day_words(d.days[peak])} with {hours_text(values[peak])} GPU-hours."
            f" The axis runs from 0 to {top:g} GPU-hours."
        )
    return Markup(
        f'<svg class="usage-chart" id="usage-chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img"'
        ' aria-labelledby="usage-chart-title usage-chart-desc">'
        '<title id="usage-chart-title">{}</title><desc id="usage-chart-desc">{}</desc>'
        f"{''.join(body)}</svg>"
    ).format(title, words)


SPARK_HEIGHT = 20


def row_chart(series, days: Sequence[date], scale: float, by: str) -> Markup:
    """One row's days as small bars, on the page's shared ``scale``; its label says the same in words."""
    width = max(len(series.hours), 1)
    bars = []
    for i, v in enumerate(series.hours):
        if v > 0:
            h = max(v / scale * (SPARK_HEIGHT - 1), 0.4)
            bars.append(f"M{i + 0.1:g} {SPARK_HEIGHT - h:.2f}h0.8V{SPARK_HEIGHT}h-0.8z")
    peak = series.peak_day()
    words = f"{series.key}: {hours_text(series.gpu_hours)} GPU-hours"
    if peak is not None:
        words += f", the most on {day_words(days[peak])} ({hours_text(series.hours[peak])})"
    path = f'<path class="bar" d="{"".join(bars)}"/>' if bars else ""
    return Markup(
        f'<svg class="usage-spark" viewBox="0 0 {width} {SPARK_HEIGHT}" preserveAspectRatio="none" role="img"'
        ' aria-label="{}">'
        f'<line class="base" x1="0" y1="{SPARK_HEIGHT - 0.5}" x2="{width}" y2="{SPARK_HEIGHT - 0.5}"/>{path}</svg>'
    ).format(words)


def render_usage_page(
    view: UsageView | None,
    *,
    user: str,
    form: UsageQuery | dict,
    error: str = "",
    time_zone: str = "UTC",
    hub: HubLinks | None = None,
    xsrf_token: str = "",
    scopes: Sequence[str] = (),
    dashboard_href: str = "./",
) -> str:
    """The page: the form (as asked, or the defaults), the error of a bad value, and the view."""
    hub = hub or HubLinks()
    values = form.as_args() if isinstance(form, UsageQuery) else dict(form)
    values.setdefault("group", "")
    values.setdefault("by", view.query.by if view else "group")
    scale = nice_ceiling(max((max(s.hours, default=0) for s in view.daily.series), default=0)) if view else 1
    return _template.render(
        view=view,
        form=values,
        error=error,
        time_zone=time_zone,
        group_choices=view.group_choices if view else (),
        json_href="api/usage?" + urlencode(view.query.as_args()) if view else "api/usage",
        dashboard_href=dashboard_href,
        chart=day_chart(view) if view and view.daily.total.servers else "",
        spark=lambda s: row_chart(s, view.daily.days, scale, view.daily.by),
        scale=scale,
        hours=hours_text,
        util=utilisation_text,
        memory=memory_text,
        day_words=day_words,
        by_words=BY_WORDS,
        style=Markup(STYLE),
        **hub_page_vars(hub, user, scopes, xsrf_token),
    )


# --- the records, read-only


class UsageSource:
    """The hub's usage database, opened read-only at first need (again after a failure)."""

    def __init__(self, url: str, zone: tzinfo):
        self.url = url
        self.zone = zone
        self._store: UsageStore | None = None
        self._lock = threading.Lock()

    def _open(self) -> UsageStore:
        with self._lock:
            if self._store is None:
                self._store = UsageStore.open_existing(self.url, read_only=True)
            return self._store

    def view(self, query: UsageQuery, access: UsageAccess, *, now: datetime, viewer: str) -> UsageView:
        """The view of ``query`` for ``access``; a database the hub has not made yet shows nothing, with a note.
        Raises ``PermissionError`` for a course the viewer may not ask for."""
        since = datetime.combine(query.first_day, time(0), self.zone)
        until = datetime.combine(query.last_day + timedelta(days=1), time(0), self.zone)
        uses, note = [], ""
        if not self.url:
            note = "The hub records no GPU usage: its GPUSpawner.usage_db_url is empty."
        else:
            try:
                store = self._open()
            except UsageStoreError as e:
                note = f"Nothing recorded yet: {e}."
            else:
                try:
                    uses = store.uses(since=since, until=until, group=query.group, **access.store_filter())
                except Exception:
                    with self._lock:  # a database that moved or broke: opened again next time
                        self._store = None
                    raise
        return build_usage_view(uses, query, access, zone=self.zone, now=now, viewer=viewer, note=note)

    def budget_use(self, budgets: list[Budget], now: datetime) -> list[tuple[str, Standing]]:
        """Where each of ``budgets`` stands now (``usage.budgets.budget_use``), from the records of
        their current periods. Raises what the database raises (the caller leaves the series out)."""
        windows = [w for w in (b.window(now) for b in budgets) if w is not None]
        if not windows:
            return []
        try:
            uses = self._open().uses(since=min(w.start for w in windows))
        except Exception:
            with self._lock:  # opened again next time
                self._store = None
            raise
        return budget_use(budgets, uses, now)


def usage_source(dashboard) -> UsageSource:
    """The dashboard's one reader of the hub's usage database (a ``GPUDashboard``'s, made at first need)."""
    source = getattr(dashboard, "_usage_source", None)
    if source is None:
        source = dashboard._usage_source = UsageSource(dashboard.usage_db_url, dashboard.usage_zone)
    return source


def today_in(zone: tzinfo, now: datetime | None = None) -> date:
    return utc(now or datetime.now(timezone.utc)).astimezone(zone).date()


# --- the handlers (routed by ``GPUDashboard.make_app``)


def usage_handlers(prefix: str, route: dict) -> list[tuple]:
    return [
        (url_path_join(prefix, "usage"), UsagePageHandler, route),
        (url_path_join(prefix, "api/usage"), UsageAPIHandler, route),
    ]


class _UsageHandler(_Handler):
    """Let in the read scopes (filtered or not), and a student's own ``custom:gpu-dashboard:mine``."""

    @property
    def hub_scopes(self):
        return {self.dashboard.read_scope, self.dashboard.read_groups_scope, MINE_SCOPE}

    def usage_access(self, user: dict) -> UsageAccess:
        return UsageAccess(
            usage_reach(
                user.get("scopes") or (),
                viewer=user.get("name", ""),
                viewer_groups=user.get("groups") or (),
                read_scope=self.dashboard.read_scope,
                groups_scope=self.dashboard.read_groups_scope,
                mine_scope=MINE_SCOPE,
            )
        )

    def usage_source(self) -> UsageSource:
        return usage_source(self.dashboard)

    async def usage_view(self, user: dict) -> tuple[UsageView | None, UsageQuery | dict, str, int]:
        """(the view, the form's values, an error sentence, the HTTP status)."""
        access = self.usage_access(user)
        if not access:
            raise web.HTTPError(403, "your scopes reach nobody's GPU usage")
        source = self.usage_source()
        now = datetime.now(timezone.utc)
        args = {k: self.get_query_argument(k, "") for k in ("since", "until", "group", "by")}
        try:
            query = parse_query(args, today=today_in(source.zone, now), default_by=access.default_by())
        except QueryError as e:
            return None, args, str(e), 400
        try:
            view = await asyncio.to_thread(source.view, query, access, now=now, viewer=user.get("name", ""))
        except PermissionError as e:
            return None, query, str(e), 403
        return view, query, "", 200


class UsagePageHandler(_UsageHandler):
    @web.authenticated
    async def get(self):
        user = self.current_user
        view, form, error, status = await self.usage_view(user)
        self.set_status(status)
        page = render_usage_page(
            view,
            user=user["name"],
            form=form,
            error=error,
            time_zone=getattr(self.dashboard.usage_zone, "key", "UTC"),
            hub=await self.dashboard.links(),
            xsrf_token=self.xsrf_token.decode("ascii"),
            scopes=user.get("scopes") or (),
            dashboard_href=self.dashboard.service_prefix,
        )
        self.set_header("Content-Security-Policy", page_csp(self.dashboard.hub_links.host, inline_script_hashes(page)))
        self.write(page)


class UsageAPIHandler(_UsageHandler):
    async def get(self):
        view, _, error, status = await self.usage_view(self.require_user())
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(usage_json(view) if view else {"error": error}))


__all__ = [
    "UsageAPIHandler",
    "UsagePageHandler",
    "UsageSource",
    "day_chart",
    "nice_ceiling",
    "render_usage_page",
    "row_chart",
    "usage_handlers",
]
