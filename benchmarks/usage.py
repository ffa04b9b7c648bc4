"""Usage reports: GPU-hours of 1,000 students over one term (100,000 records) from SQLite, by user,
group, day and profile, and what the usage book adds to a spawn.

The lab: ``--students`` students in 10 course groups (one in ten also in a second course), each
with ``--records-per-student`` servers spread over a 15-week term (Monday 13 April to Friday 24
July 2026, Europe/Berlin): each from 30 minutes to 4 hours, on a whole GPU, a MIG instance or a
quarter of a shared GPU. The records are written into a fresh SQLite file with the schema of the
usage store (``UsageStore``: its Alembic migrations), as the hub's book would leave them: in the
order the servers started.

Timed, ``--runs`` times each, as ``gpuspawner usage`` does it: reading the term's records
(``UsageStore.records``) and aggregating them (``report.aggregate``), by user, by group, by day (in
Europe/Berlin) and by profile. The issue's target: a report over 100,000 records answers in
under 1 s with SQLite.

Also timed: one student's budget standing at a spawn (their records of the week, then
``budgets.standing``), and ``UsageBook.assigned`` + ``released`` on the full database (a spawn's
and a stop's share of accounting; the issue's target for the real hub: no more than 5 ms added).

    .venv/bin/python benchmarks/usage.py
    .venv/bin/python benchmarks/usage.py --students 1000 --records-per-student 100 --runs 5 --json -
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import _lab  # noqa: F401  (puts the repository on sys.path)
import _report
from sqlalchemy import insert

from gpuspawner.usage import UsageBook, UsageStore
from gpuspawner.usage.budgets import parse_budgets, standing
from gpuspawner.usage.records import to_us
from gpuspawner.usage.report import aggregate
from gpuspawner.usage.store import UsageRow

BERLIN = ZoneInfo("Europe/Berlin")
TERM_START = datetime(2026, 4, 13, tzinfo=BERLIN)
TERM_END = datetime(2026, 7, 25, tzinfo=BERLIN)
GROUPS = [f"course{g:02d}" for g in range(10)]
PROFILES = (("a100", 1, 1), ("a100-2", 2, 1), ("mig-1g", 1, 1), ("shared", 1, 4))  # name, units, K


def rows(students: int, per_student: int, seed: int = 1) -> list[dict]:
    """The term's records, as the store keeps them (its columns)."""
    rng = random.Random(seed)
    term = (TERM_END - TERM_START).total_seconds()
    made = []
    for s in range(students):
        user = f"student{s:04d}"
        groups = sorted({GROUPS[s % 10]} | ({GROUPS[(s + 3) % 10]} if s % 10 == 0 else set()))
        for _ in range(per_student):
            start = TERM_START + timedelta(seconds=rng.uniform(-86400, term))  # some begin before the term
            stop = start + timedelta(seconds=rng.uniform(1800, 4 * 3600))
            profile, units, k = rng.choice(PROFILES)
            ids = [f"GPU-{rng.randrange(16):04d}" for _ in range(units)]
            made.append(
                {
                    "holder": f"{user}/",
                    "username": user,
                    "server": "",
                    "user_groups": json.dumps(groups),
                    "profile": profile,
                    "image_digest": "sha256:" + "ab" * 32,
                    "units": json.dumps(ids),
                    "unit_count": units,
                    "share_of": k,
                    "host": "gpu1",
                    "start_us": to_us(start),
                    "stop_us": to_us(stop),
                    "stop_reason": "user",
                    "gpu_seconds": units * (stop - start).total_seconds() / k,
                }
            )
    made.sort(key=lambda row: row["start_us"])  # the hub opens records as servers start: in time order
    return made


def timed(runs: int, work) -> dict:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "max_s": max(times), "runs": runs, "result": result}


def run(students: int = 1000, per_student: int = 100, runs: int = 5, db: str = "") -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(db or f"{folder}/usage.sqlite")
        path.unlink(missing_ok=True)
        url = f"sqlite:///{path}"
        store = UsageStore(url)
        made = rows(students, per_student)
        t0 = time.perf_counter()
        with store.engine.begin() as connection:
            connection.execute(insert(UsageRow.__table__), made)
        written_s = time.perf_counter() - t0
        now = TERM_END + timedelta(days=1)
        result = {
            "students": students,
            "records": len(made),
            "write_s": written_s,
            "file_mb": path.stat().st_size / 1e6,
        }

        def report(by: str):
            def work():
                records = store.uses(since=TERM_START, until=TERM_END)
                done = aggregate(records, by=by, now=now, since=TERM_START, until=TERM_END, zone=BERLIN)
                return {"rows": len(done.rows), "gpu_hours": round(done.total.gpu_hours, 1)}

            return work

        for by in ("user", "group", "day", "profile"):
            result[f"by_{by}"] = timed(runs, report(by))

        (week,) = parse_budgets([{"group": GROUPS[1], "gpu_hours": 500, "per": "week", "time_zone": "Europe/Berlin"}])
        mid_term = TERM_START + timedelta(days=50, hours=10)

        def budget_at_spawn():
            window = week.window(mid_term)
            records = store.uses(since=window.start, until=mid_term, group=week.group)
            return float(standing(week, records, mid_term, "student0001").used / 3600)

        result["group_budget_standing"] = timed(runs * 4, budget_at_spawn)

        book = UsageBook(store)
        spawns = []
        for n in range(runs * 20):
            at = now + timedelta(minutes=n)
            t0 = time.perf_counter()
            book.assigned(f"bench{n}/", user=f"bench{n}", units=["GPU-0001"], groups=[GROUPS[0]], at=at)
            opened = time.perf_counter()
            book.released(f"bench{n}/", "user", at=at + timedelta(seconds=30))
            spawns.append((opened - t0, time.perf_counter() - opened))
        result["book_assigned_ms"] = statistics.median(a for a, _ in spawns) * 1e3
        result["book_released_ms"] = statistics.median(b for _, b in spawns) * 1e3
        result["book_max_ms"] = max(a + b for a, b in spawns) * 1e3
        store.close()
    return result


def line(r: dict) -> str:
    reports = ", ".join(
        f"by {by} {r[f'by_{by}']['median_s'] * 1e3:,.0f} ms median ({r[f'by_{by}']['max_s'] * 1e3:,.0f} max,"
        f" {r[f'by_{by}']['result']['rows']:,} rows)"
        for by in ("user", "group", "day", "profile")
    )
    budget = r["group_budget_standing"]
    return (
        f"usage report over {r['records']:,} records ({r['students']:,} students, one term; SQLite"
        f" {r['file_mb']:.0f} MB, written in {r['write_s']:.1f} s): {reports} (target: under 1 s);"
        f" a group's weekly budget at a spawn {budget['median_s'] * 1e3:,.0f} ms median;"
        f" the book's assigned {r['book_assigned_ms']:.1f} ms and released {r['book_released_ms']:.1f} ms median"
        f" ({r['book_max_ms']:.1f} ms max for both); load {r['load']}"
    )


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--students", type=int, default=1000, help="students (default 1,000)")
    parser.add_argument("--records-per-student", type=int, default=100, help="records each (default 100)")
    parser.add_argument("--runs", type=int, default=5, help="times each report runs (default 5)")
    parser.add_argument("--db", default="", help="write the SQLite file here (kept; default: a temporary one)")
    args = parser.parse_args(argv)
    result = run(args.students, args.records_per_student, args.runs, args.db)
    return _report.report(result, args.json, line)


if __name__ == "__main__":
    main()
