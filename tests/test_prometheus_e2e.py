"""A real Prometheus scrapes the GPU dashboard and the hub; every query of the Grafana dashboard answers.

Debian's ``prometheus`` on loopback, configured as ``deploy/prometheus/prometheus.yml`` says (the
same jobs, paths and token; the target and scheme of this test's hub), scrapes the dashboard's
``/metrics`` with the token of a service that has its read scope, and the hub's ``/hub/metrics``.
A hub with two simulated GPUs (their readings from a file, as NVML would give them), two servers
running and one refused, one stopped (a closed usage record). Then every PromQL expression of
``deploy/grafana/gpu-dashboard.json`` is evaluated through Prometheus's HTTP API, with the
dashboard's variables as Grafana's "All" sends them, and each must return series; so must the
hub's own gpuspawner metrics.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time

import pytest
import requests
import yaml

from .realhub import (
    REPO,
    RealHub,
    debian_binary,
    free_port,
    read_testbed,
    running_hub,
    simulated_gpus,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-9e00{i:04d}-0000-4000-8000-00000000000{i}" for i in range(2)]
TOKEN = secrets.token_hex(16)
PROMETHEUS = "/usr/bin/prometheus"
GRAFANA = REPO / "deploy" / "grafana" / "gpu-dashboard.json"
SCRAPE = REPO / "deploy" / "prometheus" / "prometheus.yml"


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    readings = workdir / "gpu-usage.json"
    readings.write_text(
        json.dumps(
            {
                gpu: {"utilization_gpu": 40 + i, "memory_used": 2 << 30, "memory_total": 80 << 30, "temperature": 41}
                for i, gpu in enumerate(GPUS)
            }
        )
    )
    small = {"image": read_testbed("image"), "mem_limit": "512M", "cpu_limit": 0.5}
    config = f"""
    from gpuspawner import services
    c.GPUSpawner.gpus = {simulated_gpus(GPUS)!r}
    c.GPUSpawner.profiles = [dict(slug="gpu", display_name="One A100", gpus=1, **{small!r})]
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}", args=[{f"--usage-file={readings}"!r}])
    c.JupyterHub.services.append({{"name": "prometheus", "api_token": {TOKEN!r}}})
    c.JupyterHub.load_roles += [
        {{"name": "prometheus", "services": ["prometheus"],
          "scopes": ["custom:gpu-dashboard:read", "read:metrics"]}},
    ]
    """
    with running_hub(workdir, config, RUN) as h:
        yield h


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
    api, shipped = prometheus
    ann, bob, cat, dan = (user(n) for n in ("ann", "bob", "cat", "dan"))
    hub.spawn(ann, "gpu")
    hub.spawn(cat, "gpu")
    hub.stop_server(cat)  # a closed usage record: GPU-seconds in the hub's metrics
    hub.spawn(bob, "gpu")
    r = hub.start_server(dan, "gpu")  # both GPUs held: a denial
    assert r.status_code == 503, r.text

    def targets_up() -> bool:
        active = requests.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
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
    assert holders == {ann, bob}
    seconds = query('sum(gpuspawner_gpu_seconds_total{job="jupyterhub"})')
    assert seconds and float(seconds[0]["value"][1]) > 0
    print(f"\n{len(queries)} Grafana queries, each with series; GPU-seconds closed: {seconds[0]['value'][1]}")
