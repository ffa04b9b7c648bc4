"""Usage reports (pure, clock injected) and ``gpuspawner usage`` on a temporary SQLite database."""

from __future__ import annotations

import csv
import io
import json
import secrets
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from gpuspawner.cli import main
from gpuspawner.usage import UsageBook, UsageStore
from gpuspawner.usage.records import Record
from gpuspawner.usage.report import aggregate, as_csv, as_json, as_table, describe

from .databases import new_database

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 4, 14, tzinfo=UTC)
NOW = DAY + timedelta(days=2)


def record(n, user, start_h, stop_h, groups=("ml101",), profile="a100", units=1, k=1):
    stop = DAY + timedelta(hours=stop_h) if stop_h is not None else None
    ids = tuple(f"GPU-{i}" for i in range(units))
    return Record(n, f"{user}/", user, "", groups, profile, "", ids, k, "", DAY + timedelta(hours=start_h), stop)


RECORDS = [
    record(1, "mia", 8, 10),  # 2 GPU-hours
    record(2, "max", 9, 12, units=2),  # 6
    record(3, "mia", 23, 26, groups=("ml101", "cv202"), profile="t4"),  # 3, across midnight (UTC)
    record(4, "noor", 10, 14, groups=(), k=4),  # 1 (a quarter of a GPU for 4 hours)
    record(5, "max", 40, None, groups=("cv202",)),  # open: 8 up to NOW
]


def hours(report):
    return {row.key: row.gpu_seconds / 3600 for row in report.rows}


def test_by_user_sorted_by_use():
    report = aggregate(RECORDS, by="user", now=NOW)
    assert [(r.key, r.gpu_seconds / 3600, r.servers) for r in report.rows] == [
        ("max", 14, 2),
        ("mia", 5, 2),
        ("noor", 1, 1),
    ]
    assert (report.total.gpu_seconds, report.total.servers, report.total.users) == (20 * 3600, 5, 3)


def test_by_group_counts_a_record_for_each_of_its_groups_and_says_so():
    report = aggregate(RECORDS, by="group", now=NOW)
    assert hours(report) == {"ml101": 11, "cv202": 11, "(no group)": 1}
    assert report.total.gpu_seconds == 20 * 3600  # each record once
    assert "counts for each" in report.note
    only = aggregate(RECORDS, by="group", now=NOW, group="cv202")
    assert hours(only) == {"cv202": 11} and only.note == ""


def test_records_are_clipped_to_the_window():
    since, until = DAY + timedelta(hours=9), DAY + timedelta(hours=24)
    report = aggregate(RECORDS, by="user", now=NOW, since=since, until=until)
    assert hours(report) == {"max": 6, "mia": 2, "noor": Fraction(1, 4) * 4}
    assert aggregate(RECORDS, by="user", now=NOW, since=NOW).rows == []
    # an open record counts up to now, and nothing after
    assert hours(
        aggregate(RECORDS, by="user", now=DAY + timedelta(hours=42), user="max", since=DAY + timedelta(1))
    ) == {"max": 2}


def test_by_day_splits_at_midnight_in_the_reports_time_zone():
    assert hours(aggregate(RECORDS, by="day", now=NOW)) == {"2026-04-14": 10, "2026-04-15": 2 + 8}
    # in Berlin (UTC+2) midnight is 22:00 UTC: record 3 falls on the 15th, the open one partly on the 16th
    assert hours(aggregate(RECORDS, by="day", now=NOW, zone=BERLIN)) == {
        "2026-04-14": 9,
        "2026-04-15": 3 + 6,
        "2026-04-16": 2,
    }


def test_by_profile_and_filters():
    assert hours(aggregate(RECORDS, by="profile", now=NOW)) == {"a100": 17, "t4": 3}
    assert hours(aggregate(RECORDS, by="profile", now=NOW, user="mia", group="cv202")) == {"t4": 3}


def test_exact_sums_of_shared_slots():
    thirds = [record(n, "mia", 0, 1, k=3) for n in range(3)]
    assert aggregate(thirds, by="user", now=NOW).rows[0].gpu_seconds == 3600


def test_outputs():
    report = aggregate(RECORDS, by="group", now=NOW, since=DAY)
    data = as_json(report)
    assert data["rows"][0] == {
        "group": "cv202",
        "gpu_hours": 11.0,
        "gpu_seconds": 39600.0,
        "servers": 2,
        "users": 2,
        "utilisation": None,  # not measured (no NVML): null, never 0
        "peak_memory": None,
    }
    assert (data["total"]["gpu_hours"], data["since"], data["time_zone"]) == (20.0, "2026-04-14T00:00:00+00:00", "UTC")
    rows = list(csv.reader(io.StringIO(as_csv(report))))
    assert rows[0] == ["group", "gpu_hours", "gpu_seconds", "servers", "users", "utilisation", "peak_memory"]
    assert rows[3] == ["(no group)", "1.0000", "3600.000", "1", "1", "", ""]
    out = Console(file=io.StringIO(), width=100)
    out.print(as_table(report))
    text = out.file.getvalue()
    assert "cv202" in text and "11.00" in text and "20.00" in text and "total" in text
    assert describe(report) == "GPU-hours by group, 2026-04-14 00:00 to 2026-04-16 00:00 (UTC)"


def test_utilisation_is_weighted_by_gpu_time_and_peak_memory_is_the_highest_and_never_0_unmeasured():
    measured = [
        RECORDS[0]._replace(utilisation=80.0, peak_memory=10 * 1024**3),  # mia: 2 GPU-hours at 80%
        RECORDS[1]._replace(utilisation=20.0, peak_memory=30 * 1024**3),  # max: 6 GPU-hours at 20%
        *RECORDS[2:],  # not measured (no NVML, a MIG instance): they count in no figure
    ]
    report = aggregate(measured, by="user", now=NOW)
    rows = {row.key: row for row in report.rows}
    assert rows["mia"].utilisation == pytest.approx(80.0) and rows["mia"].peak_memory == 10 * 1024**3
    assert (rows["noor"].utilisation, rows["noor"].peak_memory) == (None, None)
    assert report.total.utilisation == pytest.approx((2 * 80 + 6 * 20) / 8)
    assert report.total.peak_memory == 30 * 1024**3
    out = Console(file=io.StringIO(), width=120)
    out.print(as_table(report))
    noor = next(line for line in out.file.getvalue().splitlines() if "noor" in line)
    assert [cell for cell in noor.split() if cell != "│"][-2:] == ["n/a", "n/a"]
    assert "80%" in out.file.getvalue() and "10 GiB" in out.file.getvalue()


def test_an_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match="by must be one of user, group, profile, day"):
        aggregate(RECORDS, by="course", now=NOW)


# --- the command


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A usage database with two weeks of April 2026: what the hub's book would write (SQLite, PostgreSQL)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/usage.sqlite"
    else:
        url = new_database(request.getfixturevalue("postgres"), f"report_{secrets.token_hex(6)}")
    with UsageStore(url) as store:
        book = UsageBook(store)
        t = datetime(2026, 4, 13, 8, tzinfo=BERLIN)
        for week in range(2):
            for n, (user, groups) in enumerate([("mia", ["ml101"]), ("max", ["ml101", "cv202"]), ("noor", [])]):
                start = t + timedelta(days=7 * week, hours=n)
                book.assigned(f"{user}/", user=user, units=["GPU-0"], groups=groups, profile="a100", at=start)
                book.released(f"{user}/", "user", at=start + timedelta(hours=2))
    return url


def test_usage_json_by_user(db, capsys):
    assert main(["usage", "--db", db, "--since", "2026-04-13", "--until", "2026-04-20", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["user"], r["gpu_hours"]) for r in data["rows"]] == [("max", 2.0), ("mia", 2.0), ("noor", 2.0)]
    assert (data["since"], data["time_zone"]) == ("2026-04-13T00:00:00+00:00", "UTC")  # the default zone


def test_usage_csv_by_group_of_one_course_in_berlin(db, capsys):
    argv = ["usage", "--db", db, "--group", "ml101", "--by", "group", "--format", "csv", "--time-zone", "Europe/Berlin"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == "group,gpu_hours,gpu_seconds,servers,users,utilisation,peak_memory\nml101,8.0000,28800.000,4,2,,\n"


def test_usage_table_by_day(db, capsys):
    assert main(["usage", "--db", db, "--by", "day", "--user", "mia", "--since", "2026-04-01"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours by day, user mia, 2026-04-01 00:00 to" in out
    assert "2026-04-13" in out and "2026-04-20" in out and "4.00" in out


def test_usage_table_says_so_when_nothing_was_used(db, capsys):
    assert main(["usage", "--db", db, "--since", "2026-05-01", "--until", "2026-05-02"]) == 0
    assert "No GPU use recorded in this window." in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--since", "13/04/2026"], "--since '13/04/2026' is not a date or a time"),
        (["--since", "2026-04-20", "--until", "2026-04-13"], "--until 2026-04-13 is not after --since 2026-04-20"),
        (["--time-zone", "Mars/Olympus"], "--time-zone 'Mars/Olympus' is not a time zone"),
        (["stray"], "unexpected arguments stray"),
    ],
    ids=["date", "order", "zone", "stray"],
)
def test_usage_refuses_what_it_cannot_read(db, capsys, argv, message):
    assert main(["usage", "--db", db, *argv]) == 2
    assert message in capsys.readouterr().err


def test_usage_without_a_database_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["usage"]) == 2
    err = capsys.readouterr().err
    assert f"no usage database at {tmp_path}/gpuspawner-usage.sqlite: give its URL with --db" in err
    assert not (tmp_path / "gpuspawner-usage.sqlite").exists()


def test_usage_purge(db, capsys):
    assert main(["usage", "purge", "--db", db]) == 2
    assert "--older-than DAYS" in capsys.readouterr().err
    with UsageStore(db) as store:
        UsageBook(store).assigned("eve/", user="eve", units=["GPU-1"], at=datetime(2026, 1, 1, tzinfo=UTC))  # open
    assert main(["usage", "purge", "--db", db, "--older-than", "1"]) == 0
    assert capsys.readouterr().out.startswith("purged 6 usage record(s) that closed before ")
    with UsageStore(db) as store:
        assert [r.user for r in store.records()] == ["eve"]


@pytest.mark.parametrize("argv", [["usage", "--help"], ["usage", "purge", "--help"]])
def test_usage_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "--db" in capsys.readouterr().out


def test_the_database_and_the_retention_come_from_the_hubs_config(db, tmp_path, capsys):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(f"c.GPUSpawner.usage_db_url = {db!r}\nc.GPUSpawner.usage_retention = '30d'\n")
    assert main(["usage", "-f", str(config), "--since", "2026-04-13", "--until", "2026-04-20", "--format", "csv"]) == 0
    assert "mia" in capsys.readouterr().out
    assert main(["usage", "purge", "-f", str(config)]) == 0  # 30 days: April's records are older
    assert capsys.readouterr().out.startswith("purged 6 usage record(s) that closed before ")
