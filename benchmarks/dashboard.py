"""Server-side time of the GPU dashboard's requests with 500 users on 64 units.

The real pure code and template (``build_view`` through ``Sources.view``, ``restrict``,
``render_page``, ``as_json``, ``render_metrics``, and My GPU's ``my_gpu`` and ``render_mine`` with
the GPU culler's clocks of every server) with fakes for the I/O: a Docker client
that returns 500 labelled containers, a hub API that returns their 500 user models, NVML
usage for the 64 units and a denials file of 2,000 lines (``--denials``). It prints the median
and p95 per request over ``--runs`` runs; the issue's target is 100 ms. Not a test: no assertion.

``--append`` appends one refusal to the denials file before every request, as a REST loop of
refusals does, so that the dashboard never finds the file unchanged.

    .venv/bin/python benchmarks/dashboard.py [--runs 200] [--users 500] [--units 64]
    .venv/bin/python benchmarks/dashboard.py --denials 1000000 --append   # a 1,000,000-line file
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from gpuspawner import labels  # noqa: E402
from gpuspawner.culler.clocks import Clock, ServerClocks, parse_report, report_json  # noqa: E402
from gpuspawner.dashboard import sources as sources_module  # noqa: E402
from gpuspawner.dashboard.history import UsageHistory  # noqa: E402
from gpuspawner.dashboard.metrics import render_metrics  # noqa: E402
from gpuspawner.dashboard.mine import annotate, my_gpu, render_mine  # noqa: E402
from gpuspawner.dashboard.model import Reach, restrict  # noqa: E402
from gpuspawner.dashboard.page import render_page  # noqa: E402
from gpuspawner.dashboard.sources import Sources  # noqa: E402
from gpuspawner.gpus import GPU, Inventory, Policy  # noqa: E402
from gpuspawner.gpus.nvml import UnitUsage  # noqa: E402

G = 1024**3
NOW = datetime.now(timezone.utc)


class FakeDocker:
    def __init__(self, containers):
        self._containers = containers

    def containers(self, filters=None):
        return self._containers


class FakeHub:
    def __init__(self, users):
        self._users = users

    async def active_users(self):
        return self._users


def denial_line(n: int) -> str:
    return json.dumps(
        {
            "time": NOW.isoformat(),
            "user": f"late{n}",
            "server": "",
            "profile": "gpu",
            "reason": ("no_gpu", "user_quota", "group_quota")[n % 3],
            "message": "refused",
        }
    )


def fixtures(n_users: int, n_units: int, share_limit: int):
    units = tuple(GPU(i, f"GPU-{i:04d}", "NVIDIA H100 80GB HBM3", 80 * G) for i in range(n_units))
    containers, users = [], []
    for n in range(n_users):
        name = f"student{n:04d}"
        unit = units[n % n_units]
        created = NOW - timedelta(minutes=n)
        containers.append(
            {
                "Id": f"{n:012d}",
                "Names": [f"/jupyter-{name}"],
                "Image": "registry.example.edu/lab/pytorch:2025.1",
                "Created": int(created.timestamp()),
                # As the spawner writes them (JSON lists), read back through labels.read_server.
                "Labels": labels.server_labels(
                    labels.ServerRecord(name, "", "gpu-shared", (unit.uuid,), shared=True, groups=frozenset())
                ),
            }
        )
        users.append(
            {
                "name": name,
                "groups": [f"course-{n % 10}"],
                "servers": {"": {"last_activity": (NOW - timedelta(seconds=n)).isoformat()}},
            }
        )
    usage = {u.uuid: UnitUsage(60, 40 * G, 80 * G, 65, ()) for u in units}
    return Inventory(units=units, source="static"), containers, users, usage


def hour_of_history(inventory, usage, interval: int) -> tuple[UsageHistory, int]:
    """A history filled with the last hour (two samples a slot), and the bytes it holds (tracemalloc)."""
    import tracemalloc

    from gpuspawner.dashboard.model import build_view

    view = build_view(inventory, Policy(), [], now=NOW, usage=usage)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = UsageHistory(3600, interval)
    start = NOW.timestamp() - 3600
    for k in range(2 * 3600 // interval + 1):
        history.record(view.units, start + k * interval / 2)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return history, held


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def bench(args) -> dict[str, list[float]]:
    inventory, containers, users, usage = fixtures(args.users, args.units, args.share_limit)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for n in range(args.denials):
            f.write(denial_line(n) + "\n")
    appended = args.denials

    def append_one():  # with --append: the file changes before every request
        nonlocal appended
        if args.append:
            with open(f.name, "a") as out:
                out.write(denial_line(appended) + "\n")
            appended += 1

    history, args.history_bytes = hour_of_history(inventory, usage, args.history_interval)
    src = Sources(
        inventory,
        Policy(share_limit=args.share_limit),
        lambda: FakeDocker(containers),
        FakeHub(users),
        f.name,
        denials_shown=20,
        nvml=True,
        host="bench",
        history=history,
    )
    teacher = Reach(groups=frozenset({"course-3"}))
    # The GPU culler's clocks of every server (an idle clock, a spent budget every tenth), as My GPU reads them.
    clocks = parse_report(
        report_json(
            [
                ServerClocks(
                    c["Labels"][labels.USER],
                    "",
                    "gpu-shared",
                    (c["Labels"][labels.GPUS].strip('[]"'),),
                    (
                        Clock("gpu_idle_timeout", 1800, NOW, NOW + timedelta(minutes=30)),
                        *([Clock("budget", 600, NOW, NOW + timedelta(minutes=10))] if n % 10 == 0 else []),
                    ),
                )
                for n, c in enumerate(containers)
            ],
            NOW,
            60,
        )
    )
    requests = {
        "page (admin)": lambda v: render_page(v, user="admin", can_stop=True, xsrf_form_html="<input>", refresh=15),
        "page (admin, ?view=map)": lambda v: render_page(
            v, user="admin", can_stop=True, xsrf_form_html="<input>", refresh=15, shown="map"
        ),
        "page (admin, ?view=table)": lambda v: render_page(
            v, user="admin", can_stop=True, xsrf_form_html="<input>", refresh=15, shown="table"
        ),
        "api/v1/gpus (admin)": lambda v: json.dumps(v.as_json()),
        "metrics": render_metrics,
        "page (teacher, 1 group)": lambda v: render_page(
            restrict(v, teacher), user="t", can_stop=False, xsrf_form_html="", refresh=15
        ),
        "api/v1/gpus (teacher)": lambda v: json.dumps(restrict(v, teacher).as_json()),
        "page (admin, budget warnings)": lambda v: render_page(
            annotate(v, clocks), user="admin", can_stop=True, xsrf_form_html="<input>", refresh=15
        ),
        "mine (a student's My GPU)": lambda v: render_mine(my_gpu(v, clocks, "student0007", NOW), refresh=15),
        "api/v1/mine (a student)": lambda v: json.dumps(my_gpu(v, clocks, "student0007", NOW).as_json()),
    }
    times: dict[str, list[float]] = {name: [] for name in requests}
    times["view only (sources + build_view)"] = []
    with mock.patch.object(sources_module, "read_usage", lambda: usage):
        view = await src.view()
        assert view.totals.units == args.units and sum(len(u.holders) for u in view.units) == args.users
        for name, render in requests.items():  # warm up (template compile, imports)
            render(view)
        gc.freeze()  # as the service does once started: the long-lived objects leave the collector's scans
        for _ in range(args.runs):
            append_one()
            start = time.perf_counter()
            await src.view()
            times["view only (sources + build_view)"].append(time.perf_counter() - start)
            for name, render in requests.items():
                append_one()
                start = time.perf_counter()
                render(await src.view())
                times[name].append(time.perf_counter() - start)
    args.file_mb = os.path.getsize(f.name) / 1e6
    os.unlink(f.name)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--share-limit", type=int, default=8)
    parser.add_argument("--denials", type=int, default=2000, help="lines in the denials file (default 2000)")
    parser.add_argument("--append", action="store_true", help="append a refusal before every request")
    parser.add_argument("--history-interval", type=int, default=30, help="seconds per history slot (default 30)")
    args = parser.parse_args(argv)
    args.share_limit = max(args.share_limit, -(-args.users // args.units))
    times = asyncio.run(bench(args))
    print(
        f"{args.users} users on {args.units} units (shared, up to {args.share_limit} a unit), "
        f"{args.runs} runs, Python {sys.version.split()[0]}; denials file of {args.denials:,} lines"
        f" ({args.file_mb:.1f} MB at the end{', one appended per request' if args.append else ''});"
        " server time per request, target 100 ms"
    )
    print(
        f"history of {args.units} units over an hour, a slot every {args.history_interval} s:"
        f" {args.history_bytes / 1e6:.3f} MB (target 10 MB)"
    )
    print(f"{'request':<36} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{name:<36} {statistics.median(ms):>10.1f} {percentile(ms, 95):>10.1f} {max(ms):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
