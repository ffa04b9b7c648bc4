"""The allocation promise on the real hub, proxy and engine: bursts, hub crashes,
MIG instances, shared slots, quotas, CPU and memory caps, user deletion; and the
GPU dashboard's map of it all, against what Docker runs; and, last, a real Prometheus
that scrapes the dashboard and the hub, where every query of the Grafana dashboard
returns series.

Four simulated whole GPUs and one GPU in MIG mode (two 1g.10gb instances);
the engine's test double of the NVIDIA hook puts the ids into each container's
PID-1 environment, as the real toolkit would.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import statistics
import subprocess
import time

import pytest
import requests
import yaml

from gpuspawner import labels

from .axe import assert_accessible
from .realhub import (
    REPO,
    RealHub,
    debian_binary,
    engine,
    free_port,
    mig_instances,
    read_testbed,
    running_hub,
    simulated_gpus,
    stop_process,
    wait_for,
)
from .test_browser_e2e import save
from .test_dashboard_e2e import log_in_to_dashboard

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
WHOLE = [f"GPU-a110{i:04d}-0000-4000-8000-00000000000{i}" for i in range(4)]
MIG_PARENT = "GPU-a1100004-0000-4000-8000-000000000004"
MIGS = [f"MIG-a110{i:04d}-0000-4000-8000-0000000000m{i}" for i in range(2)]
BURST = 12  # a class of 12 pressing "Start" on 4 GPUs; benchmarks/refusal.py times 30


def user(name: str) -> str:
    return f"{name}-{RUN}"


ADMIN = user("admin")
TOKEN = secrets.token_hex(16)  # Prometheus's: a service with the dashboard's read scope
PROMETHEUS = "/usr/bin/prometheus"
GRAFANA = REPO / "deploy" / "grafana" / "gpu-dashboard.json"
SCRAPE = REPO / "deploy" / "prometheus" / "prometheus.yml"
IDLE, BUSY = 0, 85  # utilisation in percent, as NVML would say it (the dashboard's --usage-file)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    readings = workdir / "gpu-usage.json"
    readings.write_text("{}")
    image = read_testbed("image")
    gpus = simulated_gpus(WHOLE) + mig_instances(MIGS, index=4, parent_uuid=MIG_PARENT)
    small = {"image": image, "mem_limit": "512M", "cpu_limit": 0.5}
    config = f"""
    c.JupyterHub.allow_named_servers = True
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        dict(slug="cpu", display_name="CPU only", **{small!r}),
        dict(slug="gpu", display_name="One A100", gpus=1, **{small!r}),
        dict(slug="mig", display_name="A100 slice", gpus=1, mig_profile="1g.10gb", **{small!r}),
        dict(slug="shared", display_name="Shared A100", shared_gpu=True, gpu_kind="gpu", **{small!r}),
        dict(slug="big", display_name="Big CPU", image={image!r}, mem_limit="1G", cpu_limit=0.5),
    ]
    c.GPUSpawner.shared_gpu_users = 2
    c.GPUSpawner.max_gpus_per_user = 1
    c.GPUSpawner.group_gpu_quotas = {{"ml101": 1}}
    # A course budget far from spent: its standing is in the dashboard's metrics (the Grafana test, last).
    c.GPUSpawner.gpu_budgets = [{{"group": "ml101", "name": "ML101", "gpu_hours": 1000, "per": "week",
                                  "time_zone": "UTC"}}]
    c.GPUSpawner.max_memory_per_user = "1536M"
    c.JupyterHub.named_server_limit_per_user = 2  # as the shipped configs
    c.JupyterHub.load_groups = {{"ml101": {{"users": [{user("mia")!r}, {user("max")!r}]}}}}
    # JupyterHub answers 202 for a spawn still pending after slow_spawn_timeout (10 s). On 2 cores a burst's
    # last refusals can come later than that (JupyterHub's own serial work per failed spawn; the spawner's
    # refusal is at once, which the test checks in the log): 30 s, so that the REST answers are the refusals.
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 30}}
    from gpuspawner import services
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}",
                           args=["--refresh=0", "--usage-file={readings}"])
    c.JupyterHub.services.append({{"name": "prometheus", "api_token": {TOKEN!r}}})
    c.JupyterHub.load_roles += [
        {{"name": "prometheus", "services": ["prometheus"],
          "scopes": ["custom:gpu-dashboard:read", "read:metrics"]}},
    ]
    """
    with running_hub(workdir, config, RUN) as h:
        h.readings = readings
        yield h


def gpu_holders() -> dict[str, str]:
    """container name -> the units it holds (comma-separated), for every e2e container on the engine."""
    records = {c.name: labels.read_server(c.labels) for c in engine().containers.list(filters={"label": labels.GPUS})}
    return {
        name: ",".join(record.unit_ids)
        for name, record in records.items()
        if record and record.user.endswith(RUN) and record.unit_ids
    }


def test_a_class_burst_gets_exactly_the_free_gpus_and_clean_refusals(hub: RealHub):
    names = [user(f"s{i:02d}") for i in range(BURST)]
    r = hub.request("POST", "/users", data=json.dumps({"usernames": names}))
    assert r.status_code == 201, r.text

    def request(name):
        started = time.monotonic()
        response = hub.start_server(name, "gpu")
        return name, response, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(request, names))

    started = [n for n, r, _ in results if r.status_code in (201, 202)]
    refused = [(n, r, t) for n, r, t in results if r.status_code not in (201, 202)]
    assert len(started) == 4, [(n, r.status_code, r.text) for n, r, _ in results]
    assert len(refused) == BURST - 4
    for name, response, _ in refused:
        assert response.status_code == 503, response.text
        assert response.json()["message"].startswith(
            "One A100: Needs 1 whole GPU: all 4 NVIDIA A100-SXM4-80GB GPUs are taken (4/4 in use)."
        )
        assert hub.server_model(name) is None
        # Refused at once, never after a start timeout: by the spawner, before any container.
        hub.refused_before_start(name)
        # An expected refusal: WARNING lines in the hub's log, no ERROR and no traceback.
        errors = [line for line in hub.log_text().splitlines() if line.startswith("[E") and name in line]
        assert not errors, errors
    seconds = sorted(t for _, _, t in refused)
    print(
        f"\nburst of {BURST}: 4 started, {len(refused)} refused;"
        f" refusal latency median {statistics.median(seconds):.2f}s, max {seconds[-1]:.2f}s"
        " (measured by benchmarks/refusal.py, not asserted)"
    )

    for name in started:
        hub.wait_ready(name)
    holders = gpu_holders()
    assert len(holders) == 4
    assert sorted(holders.values()) == sorted(WHOLE)
    assert sorted(hub.visible_devices(n) for n in started) == sorted(WHOLE)


def test_a_killed_hub_restarts_with_the_same_assignments(hub: RealHub):
    before = gpu_holders()
    hub.kill()
    hub.start()
    for name, units in before.items():
        owner = engine().containers.get(name).labels["gpuspawner.user"]
        assert hub.server_model(owner)["ready"]
    assert gpu_holders() == before
    started = time.monotonic()
    r = hub.start_server(user("late"), "gpu")
    print(f"\none refusal after the restart: {time.monotonic() - started:.3f}s")
    assert r.status_code == 503, r.text  # no unit handed out twice


def test_a_mig_instance_and_the_per_user_cap_across_named_servers(hub: RealHub):
    mia = user("mia")
    hub.spawn(mia, "mig")
    assert hub.visible_devices(mia) == MIGS[0]
    r = hub.start_server(mia, "cpu", server="notes")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(mia, "notes")
    assert hub.visible_devices(mia, "notes") == "void"
    r = hub.start_server(mia, "mig", server="second")
    assert r.status_code == 403, r.text
    assert "You already hold 1 GPU(s) across your servers, and the limit is 1 per user" in r.json()["message"]
    assert hub.server_model(mia, "second") is None


def test_the_course_group_quota(hub: RealHub):
    r = hub.start_server(user("max"), "mig")  # mia, also in ml101, holds the group's one GPU
    assert r.status_code == 403, r.text
    assert "Your group 'ml101' is using 1 of its 1 GPU(s)" in r.json()["message"]
    hub.spawn(user("noor"), "mig")  # not in ml101
    assert hub.visible_devices(user("noor")) == MIGS[1]


def test_shared_slots_and_a_deleted_user_frees_theirs(hub: RealHub):
    holder = next(n for n in (user(f"s{i:02d}") for i in range(BURST)) if hub.server_model(n))
    freed = hub.visible_devices(holder)
    hub.stop_server(holder)
    a, b, c = user("ana"), user("ben"), user("cai")
    hub.spawn_all((a, "shared"), (b, "shared"))  # the only GPU with room: both on it
    assert hub.visible_devices(a) == hub.visible_devices(b) == freed  # K = 2 on one GPU
    r = hub.start_server(c, "shared")
    assert r.status_code == 503 and "full or held whole" in r.json()["message"], r.text
    r = hub.start_server(user("dan"), "gpu")
    assert r.status_code == 503, r.text  # a shared GPU is not handed out whole

    assert hub.request("DELETE", f"/users/{b}").status_code in (202, 204)  # stops the server first
    wait_for(lambda: hub.request("GET", f"/users/{b}").status_code == 404, 30, f"{b} deleted", details=hub.log_tail)
    hub.spawn(c, "shared")
    assert hub.visible_devices(c) == freed


def docker_truth() -> dict[str, list[tuple[str, bool]]]:
    """unit -> [(user, shared)] of the containers the engine runs for this module, from their labels."""
    truth: dict[str, list[tuple[str, bool]]] = {unit: [] for unit in WHOLE + MIGS}
    for c in engine().containers.list(filters={"label": labels.GPUS}):
        record = labels.read_server(c.labels)
        if record and record.user.endswith(RUN):
            for unit in record.unit_ids:
                truth[unit].append((record.user, record.shared))
    return truth


def test_the_dashboards_map_says_what_docker_runs_whole_shared_mig_idle_and_free(hub: RealHub, browser, tmp_path):
    """Each tile's state, in colour and in words, and its holders, are those of the containers the engine
    runs (read from their labels here): GPUs held whole, a GPU shared by two, MIG instances, free ones;
    an idle server's GPU reads 0 % and a busy one's 85 %."""
    truth = docker_truth()
    shared = next(unit for unit, held in truth.items() if len(held) == 2)
    idle, busy = [unit for unit, held in truth.items() if len(held) == 1 and unit in WHOLE][:2]
    assert all(truth[m] for m in MIGS), truth  # mia and noor on the two MIG instances
    hub.readings.write_text(json.dumps({idle: {"utilization_gpu": IDLE}, busy: {"utilization_gpu": BUSY}}))

    context, page = log_in_to_dashboard(browser, hub, ADMIN, then="/services/gpu-dashboard/?view=map")

    def the_map_with_readings() -> bool:
        page.goto(f"{hub.url}/services/gpu-dashboard/?view=map")
        return page.locator("li[data-tile]").count() == 6 and page.locator("[role=progressbar]").count() >= 2

    wait_for(the_map_with_readings, 30, "the map, with the readings", details=hub.log_tail)
    for unit, held in truth.items():
        tile = page.locator(f'li[data-tile="{unit}"]')
        state, words = tile.get_attribute("data-map-state"), tile.locator(".state").inner_text()
        users = sorted(tile.locator(".tile-user").all_inner_texts())
        if not held:
            assert (state, words, users) == ("free", "free", []), unit
        elif unit == shared:
            assert all(s for _, s in held) and (state, words) == ("shared", "shared 2 of 2"), unit
            assert users == sorted(u for u, _ in held)
        else:
            assert (state, words, users) == ("held", "held", [held[0][0]]), unit
        if unit in MIGS:
            assert "MIG 1g.10gb" in tile.locator(".tile-model").inner_text()
    for unit, percent in ((idle, IDLE), (busy, BUSY)):
        meter = page.locator(f'li[data-tile="{unit}"] [role=progressbar]').first
        assert meter.get_attribute("aria-valuenow") == str(percent), unit
    assert_accessible(page, "the dashboard's map, for an admin")
    # The admin tutorial's pictures (docs/tutorials/img/): this map, in the hub's two themes.
    page.set_viewport_size({"width": 1280, "height": 820})
    theme = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    save(page, tmp_path, f"admin-dashboard-map{'-dark' if theme == 'dark' else ''}.png")
    page.click("#dark-theme-toggle")
    page.wait_for_timeout(600)  # the navigation bar's colours fade into the other theme's
    theme = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    save(page, tmp_path, f"admin-dashboard-map{'-dark' if theme == 'dark' else ''}.png")
    assert_accessible(page, f"the dashboard's map, for an admin, {theme}")
    api = page.request.get(f"{hub.url}/services/gpu-dashboard/api/v1/gpus").json()
    assert {u["id"]: u["map_state"]["kind"] for u in api["units"]} == {
        unit: "free" if not held else "shared" if unit == shared else "held" for unit, held in truth.items()
    }
    context.close()


def test_a_user_at_their_memory_cap_is_refused_at_once_and_told_why(hub: RealHub):
    kim = user("kim")
    assert hub.start_server(kim, "big").status_code in (201, 202)  # 1G of kim's 1.5G
    started = time.monotonic()
    r = hub.start_server(kim, "big", server="more")
    took = time.monotonic() - started
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert message.startswith(
        "Big CPU: Your servers use 1 GiB of your 1.5 GiB of memory, and this one needs 1 GiB (512 MiB left)."
        " Stop one of your servers, or choose a smaller profile. Can start now: "
    ), message
    assert "CPU only (0.5 CPUs, 512 MiB RAM)" in message
    hub.refused_before_start(kim, "more")  # no container, no start timeout
    print(f"\nmemory cap refusal over REST: {took:.3f}s")
    # JupyterHub's own limit on named servers (2, as in the shipped configs) says what to do:
    # mia has two named servers already (test_a_mig_instance_and_the_per_user_cap_across_named_servers).
    r = hub.start_server(user("mia"), "cpu", server="third")
    assert r.status_code == 400, r.text
    assert "already has the maximum of 2 named servers.  One must be deleted" in r.json()["message"]
    # The spawn page's card says why, and offers only what can start.
    hub.wait_ready(kim)
    page = " ".join(hub.login(kim).get(f"{hub.url}/hub/spawn/{kim}/more", timeout=60).text.split())
    assert "Unavailable now: Your servers use 1 GiB of your 1.5 GiB of memory" in page
    assert 'value="big" disabled' in page and 'value="cpu" disabled' not in page
    hub.stop_server(kim)
    hub.spawn(kim, "big", server="more")  # room again


@pytest.fixture(scope="module")
def prometheus(hub: RealHub, tmp_path_factory):
    """Prometheus with the shipped scrape config, pointed at this hub: its HTTP API's URL."""
    binary = debian_binary(PROMETHEUS, "prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "token").write_text(TOKEN)
    shipped = yaml.safe_load(SCRAPE.read_text())
    host = hub.url.split("://", 1)[1]
    for job in shipped["scrape_configs"]:  # the same jobs, paths and token; this hub, over HTTP, every second
        job["static_configs"] = [{"targets": [host]}]
        job["scheme"] = "http"
        job["authorization"]["credentials_file"] = str(folder / "token")
        job["scrape_interval"] = "1s"
    (folder / "prometheus.yml").write_text(yaml.safe_dump(shipped))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        yield api, shipped
    finally:
        stop_process(proc)
        log.close()


def grafana_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, its variables as Grafana's "All" sends them."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("expr"), str) and "datasource" not in x.get("type", ""):
                found.append(x["expr"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads(GRAFANA.read_text()))
    return [re.sub(r"\$(job|node|user)\b", ".*", q) for q in dict.fromkeys(found)]


def test_every_grafana_query_returns_series_from_a_real_prometheus(hub: RealHub, prometheus):
    """After the tests above: servers on whole GPUs, a shared one and MIG instances, refusals, stopped
    servers (closed usage records), and a reading of every unit, as NVML would give it."""
    api, shipped = prometheus
    readings = {"utilization_gpu": 40, "memory_used": 2 << 30, "memory_total": 80 << 30, "temperature": 41}
    hub.readings.write_text(json.dumps({unit: readings for unit in WHOLE + MIGS}))
    holding = {user for held in docker_truth().values() for user, _ in held}

    def targets_up() -> bool:
        try:
            active = requests.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        except requests.ConnectionError:
            return False  # Prometheus still starting
        jobs = {t["labels"]["job"]: t["health"] for t in active}
        return jobs == {job["job_name"]: "up" for job in shipped["scrape_configs"]}

    wait_for(targets_up, 60, "Prometheus scraping the dashboard and the hub", every=0.5)
    time.sleep(3)  # a few scrapes: increase() needs two samples

    def query(expr: str) -> list:
        answer = requests.get(f"{api}/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    queries = grafana_queries()
    assert len(queries) >= 10
    empty = [q for q in queries if not query(q)]
    assert not empty, f"Grafana queries with no series: {empty}"
    holders = {s["metric"]["user"] for s in query('gpuspawner_unit_assigned{job=~".*"} == 1')}
    assert holders == holding
    seconds = query('sum(gpuspawner_gpu_seconds_total{job="jupyterhub"})')
    assert seconds and float(seconds[0]["value"][1]) > 0
    print(f"\n{len(queries)} Grafana queries, each with series; GPU-seconds closed: {seconds[0]['value'][1]}")
