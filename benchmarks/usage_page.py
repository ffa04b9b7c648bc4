"""Server time of the dashboard's usage page and its JSON over 100,000 records (1,000 students, one term).

The data is ``benchmarks/usage.py``'s: 1,000 students in 10 courses, 100 servers each over a 15-week
term, in a fresh SQLite file with the usage store's schema. The dashboard's own tornado app serves
``usage`` and ``api/usage`` on loopback, with the database read-only as the service opens it; only
the hub's login is stood aside (the viewer is named by a header). Each request is timed from send to
the last byte (``--runs`` times, after one warm-up), for:

- an admin (every course and student), per course, over the default four weeks and the whole term;
- an admin per student over the whole term (1,000 rows: the page shows 200, the JSON all);
- a teacher of one course (``read-groups``), per student, over the whole term;
- a student's own records over the whole term.

Also: where an admin's whole-term page spends its time (the store's read, the aggregation, the
rendering), measured in the process. The issue's target for reports: under 1 s with SQLite.

    .venv/bin/python benchmarks/usage_page.py [--runs 5] [--json -]
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import _lab  # noqa: F401  (puts the repository on sys.path)
import _report
from sqlalchemy import insert
from usage import BERLIN, GROUPS, TERM_END, TERM_START, rows

from gpuspawner.services import MINE_SCOPE, READ_GROUPS_SCOPE, READ_SCOPE
from gpuspawner.usage import UsageStore
from gpuspawner.usage.store import UsageRow

LAST_DAY = (TERM_END - timedelta(days=1)).date()
TERM = f"since={TERM_START.date()}&until={LAST_DAY}"
FOUR_WEEKS = f"since={LAST_DAY - timedelta(days=27)}&until={LAST_DAY}"
VIEWERS = {
    "admin": {"name": "admin", "groups": [], "scopes": [READ_SCOPE]},
    "teacher": {"name": "teacher", "groups": [GROUPS[1]], "scopes": [READ_GROUPS_SCOPE, MINE_SCOPE]},
    "student": {"name": "student0001", "groups": [GROUPS[1]], "scopes": [MINE_SCOPE]},
}
CASES = [
    ("admin, per course, 4 weeks (the default period)", "admin", f"usage?{FOUR_WEEKS}&by=group"),
    ("admin, per course, the term", "admin", f"usage?{TERM}&by=group"),
    ("admin, per course, the term, JSON", "admin", f"api/usage?{TERM}&by=group"),
    ("admin, per student, the term", "admin", f"usage?{TERM}&by=user"),
    ("admin, per student, the term, JSON", "admin", f"api/usage?{TERM}&by=user"),
    ("teacher of one course, per student, the term", "teacher", f"usage?{TERM}&by=user"),
    ("a student's own, the term", "student", f"usage?{TERM}"),
]


def dashboard(folder: Path, db: Path):
    from gpuspawner.dashboard import usage_page
    from gpuspawner.dashboard.app import GPUDashboard

    config = folder / "jupyterhub_config.py"
    config.write_text(
        'c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n'
        'c.GPUSpawner.gpus = [{"index": 0, "uuid": "GPU-0", "name": "T4", "memory": "16G"}]\n'
        f"c.GPUSpawner.usage_db_url = {f'sqlite:///{db}'!r}\n"
    )
    os.environ.setdefault("JUPYTERHUB_API_TOKEN", "not-used-here")
    app = GPUDashboard()
    app.initialize(["-f", str(config), "--no-nvml", "--history-interval=0", "--usage-time-zone=Europe/Berlin"])
    usage_page._UsageHandler.get_current_user = lambda self: VIEWERS.get(self.request.headers.get("X-User"))
    return app


async def serve_and_time(app, runs: int) -> dict:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    server = HTTPServer(app.make_app())
    server.add_sockets([sock])
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}{app.service_prefix}"
    results = {}
    try:
        for label, viewer, path in CASES:
            times = []
            for n in range(runs + 1):
                t0 = time.perf_counter()
                r = await client.fetch(base + path, headers={"X-User": viewer}, request_timeout=120)
                if n:  # the first is a warm-up (the store opened, the pages of the file read)
                    times.append(time.perf_counter() - t0)
            results[label] = {
                "median_s": statistics.median(times),
                "max_s": max(times),
                "bytes": len(r.body),
                "runs": runs,
            }
    finally:
        server.stop()
    return results


def breakdown(db: Path, runs: int) -> dict:
    """An admin's whole-term page per course, in the process: read, aggregate, render."""
    from gpuspawner.dashboard.model import Reach
    from gpuspawner.dashboard.usage_page import render_usage_page
    from gpuspawner.dashboard.usage_view import UsageAccess, build_usage_view, parse_query

    store = UsageStore.open_existing(f"sqlite:///{db}", read_only=True)
    query = parse_query({"since": str(TERM_START.date()), "until": str(LAST_DAY)}, today=LAST_DAY)
    access = UsageAccess(Reach(everyone=True))
    now = datetime.now(timezone.utc)
    read, build, render = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        uses = store.uses(
            since=datetime.combine(query.first_day, datetime.min.time(), BERLIN),
            until=datetime.combine(LAST_DAY + timedelta(days=1), datetime.min.time(), BERLIN),
        )
        t1 = time.perf_counter()
        view = build_usage_view(uses, query, access, zone=BERLIN, now=now)
        t2 = time.perf_counter()
        render_usage_page(view, user="admin", form=query, time_zone="Europe/Berlin")
        t3 = time.perf_counter()
        read.append(t1 - t0)
        build.append(t2 - t1)
        render.append(t3 - t2)
    store.close()
    return {
        "records": len(uses),
        "read_ms": statistics.median(read) * 1e3,
        "aggregate_ms": statistics.median(build) * 1e3,
        "render_ms": statistics.median(render) * 1e3,
    }


def run(students: int = 1000, per_student: int = 100, runs: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        db = folder / "usage.sqlite"
        store = UsageStore(f"sqlite:///{db}")
        made = rows(students, per_student)
        with store.engine.begin() as connection:
            connection.execute(insert(UsageRow.__table__), made)
        store.close()
        result = {"students": students, "records": len(made)}
        del made
        app = dashboard(folder, db)
        gc.collect()
        gc.freeze()  # as the service does once it listens (GPUDashboard.start)
        result["requests"] = asyncio.run(serve_and_time(app, runs))
        result["breakdown"] = breakdown(db, runs)
    return result


def line(r: dict) -> str:
    parts = [
        f"{label}: {t['median_s'] * 1e3:,.0f} ms median ({t['max_s'] * 1e3:,.0f} max, {t['bytes'] / 1e3:,.0f} kB)"
        for label, t in r["requests"].items()
    ]
    b = r["breakdown"]
    return (
        f"usage page over {r['records']:,} records ({r['students']:,} students, one term; SQLite), per request: "
        + "; ".join(parts)
        + f". An admin's term in the process: read {b['read_ms']:,.0f} ms ({b['records']:,} records),"
        f" aggregate {b['aggregate_ms']:,.0f} ms, render {b['render_ms']:,.0f} ms; load {r['load']}"
    )


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--students", type=int, default=1000, help="students (default 1,000)")
    parser.add_argument("--records-per-student", type=int, default=100, help="records each (default 100)")
    parser.add_argument("--runs", type=int, default=5, help="times each request is timed (default 5)")
    args = parser.parse_args(argv)
    result = run(args.students, args.records_per_student, args.runs)
    return _report.report(result, args.json, line)


if __name__ == "__main__":
    main()
