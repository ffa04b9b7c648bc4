"""``python -m gpuspawner.dashboard``: the GPU dashboard, a hub-managed JupyterHub service.

Users log in through the hub's OAuth (``HubOAuthenticated``). Reading needs the
custom scope ``custom:gpu-dashboard:read``: unfiltered, it shows every unit; filtered
(``!group=physics``, ``!user=ana``), or as ``custom:gpu-dashboard:read-groups`` (the
viewer's own groups), it shows only those users' units. Stopping a server needs
``custom:gpu-dashboard:stop`` reaching its user; putting a quarantined unit back
needs that scope unfiltered (an admin's). ``custom:gpu-dashboard:mine`` (every user's)
opens "My GPU" (``mine``, ``api/v1/mine``): the viewer's own servers only, the viewer
being whoever the hub says logged in; the usage page (``usage``, ``api/usage``: GPU-hours
per day, ``usage_page.py``) shows them their own records. Everyone else gets 403. The service itself uses
its own token for the hub API with ``list:users``, ``read:users:activity``,
``read:users:groups``, ``read:servers`` and ``delete:servers``, and ``list:services``
with ``read:services`` for the Services menu, nothing more.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from textwrap import dedent
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate
from traitlets.config import Application

from ..config import ConfigError, load_service_config
from ..gpus import split_holder
from ..hub_child import exit_at_once, stop_with_the_hub
from ..quarantine import put_back
from ..services import MINE_SCOPE, READ_GROUPS_SCOPE, READ_SCOPE, STOP_SCOPE  # the scopes add_dashboard defines
from ..usage.budgets import parse_budgets
from .dcgm import job_mapping, sync_job_mapping
from .history import UsageHistory
from .metrics import CONTENT_TYPE, render_metrics
from .mine import ClocksFile, annotate, my_gpu, render_mine
from .model import DashboardView, Reach, reach_from_scopes, restrict
from .page import UPDATES_HASH, VIEWS, HubLinks, inline_script_hashes, render_page
from .sources import HubAPI, Sources


class _Handler(HubOAuthenticated, web.RequestHandler):
    """Every page of the service: authenticated by the hub, allowed by ``READ_SCOPE``."""

    def initialize(self, dashboard: GPUDashboard):
        self.dashboard = dashboard
        self.hub_auth = dashboard.hub_auth

    @property
    def hub_scopes(self):
        return {self.dashboard.read_scope, self.dashboard.read_groups_scope}

    def check_hub_user(self, model):
        """Allow the read scopes filtered too (``!group=physics``): HubAuth's own check
        wants them unfiltered. What a filtered one shows is decided by ``reach``."""
        allowed = set(self.hub_scopes)
        if any(scope.partition("!")[0] in allowed for scope in model.get("scopes") or ()):
            return model
        self.dashboard.log.warning("%s %s lacks scope %s", model.get("kind", "user"), model.get("name"), allowed)
        raise UserNotAllowed(model)

    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")  # never an old view shown as live
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")

    def require_user(self) -> dict:
        """For API and metrics: 403 rather than a redirect to the login page."""
        if self.current_user is None:
            raise web.HTTPError(403, "needs a hub login or token with scope " + self.dashboard.read_scope)
        return self.current_user

    def reach(self, user: dict, scope: str) -> Reach:
        groups_scope = self.dashboard.read_groups_scope if scope == self.dashboard.read_scope else ""
        return reach_from_scopes(
            user.get("scopes") or (),
            scope,
            groups_scope=groups_scope,
            viewer=user.get("name", ""),
            viewer_groups=user.get("groups") or (),
        )

    async def view(self, user: dict) -> DashboardView:
        """The view as ``user`` may see it: every unit, or their groups' users' only; with the GPU
        culler's warnings (a spent budget's coming stop)."""
        view = restrict(await self.dashboard.sources.view(), self.reach(user, self.dashboard.read_scope))
        return annotate(view, self.dashboard.clocks.read()[0])

    def may_stop(self, user: dict) -> bool:
        """Whether any stop button shows: the stop scope, filtered or not (each stop is checked)."""
        return bool(self.reach(user, self.dashboard.stop_scope))


class PageHandler(_Handler):
    @property
    def hub_scopes(self):  # a student (My GPU only) is sent to their own page, not refused
        return {self.dashboard.read_scope, self.dashboard.read_groups_scope, self.dashboard.mine_scope}

    @web.authenticated
    async def get(self):
        readers = {self.dashboard.read_scope, self.dashboard.read_groups_scope}
        if not any(s.partition("!")[0] in readers for s in self.current_user.get("scopes") or ()):
            self.redirect(url_path_join(self.dashboard.service_prefix, "mine"))
            return
        shown = self.get_query_argument("view", VIEWS[0])
        if shown not in VIEWS:
            raise web.HTTPError(404, f"no view {shown!r}: one of {', '.join(VIEWS)}")
        view = await self.view(self.current_user)
        page = render_page(
            view,
            user=self.current_user["name"],
            can_stop=self.may_stop(self.current_user),
            can_put_back=self.reach(self.current_user, self.dashboard.stop_scope).everyone,
            xsrf_form_html=self.xsrf_form_html(),
            refresh=self.dashboard.refresh,
            shown=shown,
            hub=await self.dashboard.links(),
            xsrf_token=self.xsrf_token.decode("ascii"),
            scopes=self.current_user.get("scopes") or (),
        )
        hashes = [*inline_script_hashes(page), UPDATES_HASH]  # the hub template's script, and the updates
        self.set_header("Content-Security-Policy", page_csp(self.dashboard.hub_links.host, hashes))
        self.write(page)


def page_csp(hub_host: str, script_hashes: list[str]) -> str:
    """The page's Content-Security-Policy: the API's (nothing but inline styles, forms to itself),
    and the hub's static files (its stylesheet, fonts, images and scripts) and the hub template's
    one inline script, by its hash. No other script runs."""
    hub = f" {hub_host}" if hub_host else ""
    return (
        "default-src 'none'; form-action 'self'; base-uri 'none'; "
        f"style-src 'self'{hub} 'unsafe-inline'; img-src 'self'{hub} data:; font-src 'self'{hub}; "
        f"script-src 'self'{hub} {' '.join(script_hashes)}".rstrip()
    )


def _back_to(dashboard: GPUDashboard, shown: str) -> str:
    """The page a form came from: the view it showed."""
    return dashboard.service_prefix + (f"?view={shown}" if shown in VIEWS[1:] else "")


class GPUsAPIHandler(_Handler):
    async def get(self):
        view = await self.view(self.require_user())
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(view.as_json()))


class MetricsHandler(_Handler):
    async def get(self):
        user = self.require_user()
        view = await self.view(user)
        # The budgets' standing names users and groups: for an unfiltered read scope only.
        everyone = self.reach(user, self.dashboard.read_scope).everyone
        budgets = await self.dashboard.budget_use() if everyone else None
        self.set_header("Content-Type", CONTENT_TYPE)
        self.write(render_metrics(view, budgets))


class _MineHandler(_Handler):
    """My GPU: the viewer's own servers, whoever they are (a student, a teacher, an admin). The viewer
    is the hub's identity of the login or token; nothing in the URL names anyone."""

    @property
    def hub_scopes(self):
        return {self.dashboard.mine_scope}

    async def mine(self, user: dict):
        dashboard = self.dashboard
        report, error = dashboard.clocks.read()
        return my_gpu(
            await dashboard.shared_view(),
            report,
            user["name"],
            datetime.now(timezone.utc),
            profile_names=dashboard.profile_names(),
            clocks_error=error,
        )


class MinePageHandler(_MineHandler):
    @web.authenticated
    async def get(self):
        user = self.current_user
        page = render_mine(
            await self.mine(user),
            refresh=self.dashboard.refresh,
            hub=await self.dashboard.links(),
            xsrf_token=self.xsrf_token.decode("ascii"),
            scopes=user.get("scopes") or (),
        )
        hashes = [*inline_script_hashes(page), UPDATES_HASH]  # the hub template's script, and the updates
        self.set_header("Content-Security-Policy", page_csp(self.dashboard.hub_links.host, hashes))
        self.write(page)


class MineAPIHandler(_MineHandler):
    async def get(self):
        if self.current_user is None:
            raise web.HTTPError(403, "needs a hub login or token with scope " + self.dashboard.mine_scope)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps((await self.mine(self.current_user)).as_json()))


class StopHandler(_Handler):
    @web.authenticated
    async def post(self):
        holder = self.get_body_argument("holder", "")  # the page's buttons; user and server, for scripts
        user, server = (
            split_holder(holder) if holder else (self.get_body_argument("user"), self.get_body_argument("server", ""))
        )
        reach = self.reach(self.current_user, self.dashboard.stop_scope)
        if not reach.everyone:  # a filtered stop scope: the target's groups, as the hub says now
            view = await self.dashboard.sources.view()
            if not reach or not reach.covers(user, view.user_groups.get(user, ())):
                raise web.HTTPError(403, f"stopping {user}'s servers needs scope {self.dashboard.stop_scope}")
        try:
            await self.dashboard.hub.stop_server(user, server)
        except HTTPClientError as e:
            raise web.HTTPError(502, f"the hub refused to stop {user}/{server}: {e.code}") from None
        self.dashboard.log.info(
            "%s stopped server %s/%s from the GPU dashboard", self.current_user["name"], user, server
        )
        self.redirect(_back_to(self.dashboard, self.get_body_argument("view", "")))


class PutBackHandler(_Handler):
    """Take a unit out of quarantine: for whoever may stop every server (an admin), not a teacher."""

    @web.authenticated
    async def post(self):
        unit = self.get_body_argument("unit")
        if not self.reach(self.current_user, self.dashboard.stop_scope).everyone:
            raise web.HTTPError(403, f"putting a GPU back needs scope {self.dashboard.stop_scope}, unfiltered")
        path = self.dashboard.quarantine_file
        if not path:
            raise web.HTTPError(404, "the hub keeps no quarantine file (GPUSpawner.quarantine_file)")
        try:
            removed = put_back(path, [unit])
        except OSError as e:
            raise web.HTTPError(500, f"cannot write {path}: {e.strerror or e}") from None
        if removed:
            self.dashboard.log.info("%s put unit %s back from quarantine", self.current_user["name"], unit)
        self.redirect(_back_to(self.dashboard, self.get_body_argument("view", "")))


class GPUDashboard(Application):
    name = "gpuspawner-dashboard"
    description = """The GPU dashboard: who holds which GPU, as a JupyterHub service.

    Run by the hub as a managed service (see docs/how-to/dashboard.md). It reads the
    hub's jupyterhub_config.py for the inventory, the running containers' labels on
    the hub's Docker engine (DOCKER_HOST) for the ledger, NVML for usage, the hub
    API for activity and the denials file for refused spawns.
    """
    examples = dedent("""
    python -m gpuspawner.dashboard -f /srv/jupyterhub/jupyterhub_config.py
    python -m gpuspawner.dashboard --refresh=30 --no-nvml
    """)

    hub_config = Unicode(
        "jupyterhub_config.py", help="The hub's config file (inventory, profiles, Docker settings)."
    ).tag(config=True)
    url = Unicode(help="Where to listen: http://127.0.0.1:PORT (default: $JUPYTERHUB_SERVICE_URL).").tag(config=True)
    service_prefix = Unicode(help="The URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)
    refresh = Int(15, min=0, help="Seconds between the page's own refreshes (0: never).").tag(config=True)
    denials_file = Unicode(
        help="The hub's denials file (default: GPUSpawner.denials_file of the hub's config; '' for none)."
    ).tag(config=True)
    denials_shown = Int(20, min=0, help="How many recent denials (and culler's stops) the page shows.").tag(config=True)
    queue_file = Unicode(
        help="Who waits in line for a GPU, as the hub writes it (default: GPUSpawner.queue_file of the hub's"
        " config; '' for none)."
    ).tag(config=True)
    stops_file = Unicode(
        help="The GPU culler's stops file (default: GPUSpawner.stops_file of the hub's config; '' for none)."
    ).tag(config=True)
    events_tail = ByteSpecification(
        "256K",
        help="How much of the end of the denials and stops files each page reads (continued into the rotated"
        " FILE.1 right after a rotation); the counts by reason are over this tail. Bounds a page's time.",
    ).tag(config=True)
    quarantine_file = Unicode(
        help="The hub's quarantined units (default: GPUSpawner.quarantine_file of the hub's config; '' for none)."
    ).tag(config=True)
    nvml = Bool(True, help="Read utilisation, memory and temperature through NVML.").tag(config=True)
    usage_file = Unicode(
        "",
        help="""Read GPU usage from this JSON file instead of NVML (a simulation, or a test):
        ``{"GPU-...": {"utilization_gpu": 35, "memory_used": BYTES, "memory_total": BYTES,
        "temperature": 41}}``; a unit left out has no reading. '' (the default): NVML.""",
    ).tag(config=True)
    read_scope = Unicode(READ_SCOPE, help="The custom scope that allows reading the dashboard.").tag(config=True)
    stop_scope = Unicode(STOP_SCOPE, help="The custom scope that also allows stopping servers.").tag(config=True)
    dcgm_job_mapping_dir = Unicode(
        "",
        help="Write DCGM job-mapping files here (one per GPU index, holding its users' names) for dcgm-exporter's"
        " hpc_job label; '' for none.",
    ).tag(config=True)
    dcgm_interval = Int(15, min=1, help="Seconds between updates of the DCGM job-mapping files.").tag(config=True)
    read_groups_scope = Unicode(
        READ_GROUPS_SCOPE, help="The custom scope that allows reading the units of the viewer's own groups' users."
    ).tag(config=True)
    history_interval = Int(
        30,
        min=0,
        help="Seconds per point of the map's sparklines: the service samples every unit's use this often,"
        " and at every page (0: keeps no history).",
    ).tag(config=True)
    history_window = Int(3600, min=60, help="Seconds of use the sparklines show (the last hour).").tag(config=True)
    usage_db_url = Unicode(
        help="""The hub's usage database, for the usage page (GPU-hours per day), read-only
        (default: GPUSpawner.usage_db_url of the hub's config; '' for none)."""
    ).tag(config=True)
    usage_time_zone = Unicode(
        "UTC", help="The time zone of the usage page's days (where each day starts), e.g. Europe/Berlin."
    ).tag(config=True)

    @validate("usage_time_zone")
    def _valid_zone(self, proposal):
        try:
            ZoneInfo(proposal.value)
        except (ZoneInfoNotFoundError, ValueError):
            raise TraitError(f"usage_time_zone {proposal.value!r} is not a time zone such as Europe/Berlin") from None
        return proposal.value

    @property
    def usage_zone(self) -> ZoneInfo:
        return ZoneInfo(self.usage_time_zone)

    mine_scope = Unicode(
        MINE_SCOPE, help="The custom scope that opens My GPU: the viewer's own servers (every user's)."
    ).tag(config=True)
    clocks_file = Unicode(
        help="""The GPU culler's clocks, for My GPU and the budget warnings (default: GPUSpawner.clocks_file
        of the hub's config; '' for none: the rules are listed without their clocks)."""
    ).tag(config=True)
    mine_view_age = Float(
        5,
        min=0,
        help="""My GPU pages reuse a reading of Docker, NVML and the hub this many seconds old at most,
        so that a class's open pages cost one reading, not one each (0: a reading per page). The
        countdowns are always to the time of the request; the admins' pages always read afresh.""",
    ).tag(config=True)
    menu_age = Float(
        60, min=0, help="Seconds the hub's list of services (the Services menu) is kept before it is asked again."
    ).tag(config=True)

    aliases = {
        **Application.aliases,
        ("f", "config"): ("GPUDashboard.hub_config", "The hub's config file (default: ./jupyterhub_config.py)"),
        "url": "GPUDashboard.url",
        "refresh": "GPUDashboard.refresh",
        "denials-file": "GPUDashboard.denials_file",
        "denials-shown": "GPUDashboard.denials_shown",
        "stops-file": "GPUDashboard.stops_file",
        "usage-file": "GPUDashboard.usage_file",
        "events-tail": "GPUDashboard.events_tail",
        "dcgm-job-mapping-dir": "GPUDashboard.dcgm_job_mapping_dir",
        "history-interval": "GPUDashboard.history_interval",
        "usage-time-zone": "GPUDashboard.usage_time_zone",
    }
    flags = {
        **Application.flags,
        "no-nvml": ({"GPUDashboard": {"nvml": False}}, "Do not read GPU usage through NVML."),
    }

    @default("log_level")
    def _default_log_level(self):
        return "INFO"

    @default("url")
    def _default_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    @default("service_prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-dashboard/")

    def initialize(self, argv=None):
        super().initialize(argv)
        settings = load_service_config(self, self.hub_config)  # the hub's own config file
        spawner = settings.spawner
        if not self.denials_file and "denials_file" not in self.config.get("GPUDashboard", {}):
            self.denials_file = spawner.denials_file
        if not self.stops_file and "stops_file" not in self.config.get("GPUDashboard", {}):
            self.stops_file = spawner.stops_file
        if not self.queue_file and "queue_file" not in self.config.get("GPUDashboard", {}):
            self.queue_file = spawner.queue_file
        if not self.quarantine_file and "quarantine_file" not in self.config.get("GPUDashboard", {}):
            self.quarantine_file = spawner.quarantine_file
        if not self.usage_db_url and "usage_db_url" not in self.config.get("GPUDashboard", {}):
            self.usage_db_url = spawner.usage_db_url
        if not self.clocks_file and "clocks_file" not in self.config.get("GPUDashboard", {}):
            self.clocks_file = spawner.clocks_file
        self.clocks = ClocksFile(self.clocks_file)
        self._spawner = spawner
        self._shared: tuple[float, DashboardView] | None = None
        self._shared_lock = asyncio.Lock()
        self._menu: tuple[float, tuple[tuple[str, str], ...]] | None = None
        self._budgets: list | None = None  # the hub's gpu_budgets, parsed at the first scrape
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        api_url = os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
        self.hub = HubAPI(api_url, token) if token else None
        # The one instance: the OAuth callback handler uses HubOAuth.instance() too (the PKCE verifier).
        self.hub_auth = HubOAuth.instance(api_url=api_url, api_token=token, cache_max_age=60)
        # The hub's page template links its pages and static files there; its Services menu, this service.
        self.hub_links = HubLinks(
            prefix=self.hub_auth.hub_prefix,
            host=self.hub_auth.hub_host,
            base_url=os.environ.get("JUPYTERHUB_BASE_URL") or "/",
            login_url=self.hub_auth.hub_host + url_path_join(self.hub_auth.hub_prefix, "login"),
            services=((os.environ.get("JUPYTERHUB_SERVICE_NAME") or "gpu-dashboard", self.service_prefix),),
        )
        history = (
            UsageHistory(self.history_window, self.history_interval)
            if self.history_interval and self.history_window >= self.history_interval
            else None
        )
        self.sources = Sources(
            settings.inventory,
            spawner.policy,
            spawner.new_docker_client,
            self.hub,
            self.denials_file,
            self.denials_shown,
            self.nvml,
            stops_file=self.stops_file,
            queue_file=self.queue_file,
            usage_file=self.usage_file,
            reservations=spawner.reservation_book if spawner.reservations or spawner.reservations_file else None,
            tail_bytes=self.events_tail,
            log=self.log,
            quarantine_file=self.quarantine_file,
            reload_inventory=spawner.load_inventory if spawner.inventory_retry else None,
            inventory_retry=spawner.inventory_retry,
            history=history,
        )

    async def shared_view(self) -> DashboardView:
        """The whole view, read at most every ``mine_view_age`` seconds for all My GPU pages at once."""
        async with self._shared_lock:
            if self._shared is None or time.monotonic() - self._shared[0] >= self.mine_view_age:
                self._shared = (time.monotonic(), await self.sources.view())
            return self._shared[1]

    def profile_names(self) -> dict[str, str]:
        """Each profile's name for people, by its slug (none when the profiles cannot be read now)."""
        try:
            return {p.slug: p.display_name for p in self._spawner.lab_profiles}
        except Exception as e:  # noqa: BLE001 - a broken profiles file: the slugs stand in
            self.log.debug("Cannot read the profiles' names: %s", e)
            return {}

    async def links(self) -> HubLinks:
        """The hub's links for its page template, with its Services menu as the hub lists it now (kept
        ``menu_age`` seconds; this service alone when the hub cannot be asked)."""
        if self.hub is None:
            return self.hub_links
        if self._menu is None or time.monotonic() - self._menu[0] >= self.menu_age:
            try:
                listed = await self.hub.services()
                host = self.hub_links.host
                menu = tuple((s["name"], host + s["prefix"]) for s in listed) or self.hub_links.services
            except Exception as e:  # noqa: BLE001 - an older token without list:services, the hub away
                self.log.debug("Cannot list the hub's services for the menu: %s", e)
                menu = self.hub_links.services
            self._menu = (time.monotonic(), menu)
        return replace(self.hub_links, services=self._menu[1])

    async def keep_history(self) -> None:
        """Every ``history_interval`` seconds: one sample of every unit's use, seen or not."""
        while True:
            try:
                await self.sources.view()  # Sources records it in the history
            except Exception:  # noqa: BLE001 - a failed sample is a gap in the sparklines, not a stop
                self.log.exception("sampling the GPUs' use for the history failed")
            await asyncio.sleep(self.history_interval)

    async def keep_job_mapping(self) -> None:
        """Every ``dcgm_interval`` seconds: the DCGM job-mapping files as the ledger says now."""
        while True:
            try:
                view = await self.sources.view()
                written, removed = sync_job_mapping(self.dcgm_job_mapping_dir, job_mapping(view))
                if written or removed:
                    self.log.info("DCGM job mapping: wrote %s, removed %s", written, removed)
                elif view.docker_error:
                    self.log.warning("DCGM job mapping left as it was: cannot read Docker")
            except Exception:  # noqa: BLE001 - a full disk must not stop the dashboard
                self.log.exception("DCGM job mapping in %s failed", self.dcgm_job_mapping_dir)
            await asyncio.sleep(self.dcgm_interval)

    async def budget_use(self) -> list | None:
        """Where the hub's GPU-hour budgets stand now, for the metrics (None: the hub sets none, or the
        usage database cannot be read: the series are left out, and the log says why)."""
        entries = list(getattr(self._spawner, "gpu_budgets", None) or ())
        if not entries or not self.usage_db_url:
            return None
        from .usage_page import usage_source

        try:
            if self._budgets is None:  # the hub's config, read once at the start: parsed once
                self._budgets = parse_budgets(entries)
            budgets = self._budgets
            return await asyncio.to_thread(usage_source(self).budget_use, budgets, datetime.now(timezone.utc))
        except Exception as e:  # noqa: BLE001 - a database not made yet, or away: no budget series this time
            self.log.warning("Cannot read the GPU-hour budgets' use for the metrics: %s", e)
            return None

    def make_app(self) -> web.Application:
        from .usage_page import usage_handlers  # it builds on this module's handlers

        prefix = self.service_prefix
        route = {"dashboard": self}
        return web.Application(
            [
                (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
                (prefix, PageHandler, route),
                (url_path_join(prefix, "api/v1/gpus"), GPUsAPIHandler, route),
                (url_path_join(prefix, "mine"), MinePageHandler, route),
                (url_path_join(prefix, "api/v1/mine"), MineAPIHandler, route),
                (url_path_join(prefix, "metrics"), MetricsHandler, route),
                (url_path_join(prefix, "stop"), StopHandler, route),
                (url_path_join(prefix, "put-back"), PutBackHandler, route),
                *usage_handlers(prefix, route),
            ],
            cookie_secret=secrets.token_bytes(32),
            xsrf_cookies=True,
            login_url=self.hub_auth.login_url,
            hub_auth=self.hub_auth,
        )

    def start(self):
        where = urlparse(self.url)
        app = self.make_app()

        async def serve():
            app.listen(where.port or 80, where.hostname or "127.0.0.1")
            # What is loaded by now lives as long as the process: keep it out of the cyclic
            # collector's full scans, which otherwise add 100+ ms to an occasional request.
            gc.freeze()
            self.log.info("GPU dashboard at %s%s", self.url.rstrip("/"), self.service_prefix)
            stopped = asyncio.Event()
            stop_with_the_hub(asyncio.get_running_loop(), stopped.set, self.log)
            mapping = asyncio.ensure_future(self.keep_job_mapping()) if self.dcgm_job_mapping_dir else None
            # Without NVML there is nothing to sample between pages (their views still record their gaps).
            sampling = (
                asyncio.ensure_future(self.keep_history()) if self.sources.history is not None and self.nvml else None
            )
            await stopped.wait()
            for task in (mapping, sampling):
                if task:
                    task.cancel()
            self.log.info("GPU dashboard stopping")

        asyncio.run(serve())


def main(argv: list[str] | None = None) -> int:
    """``python -m gpuspawner.dashboard``; returns the exit status."""
    try:
        app = GPUDashboard.instance()
        app.initialize(argv)
    except ConfigError as e:
        print(f"gpuspawner-dashboard: {e}", file=sys.stderr)
        return 2
    app.start()
    exit_at_once()  # asked to stop: the hub waits on this process, polling at growing intervals
    return 0
