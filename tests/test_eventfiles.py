"""The lab's event files: rotation by size, bounded tails, unusable lines skipped, refusals merged."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from gpuspawner.eventfiles import (
    DenialLog,
    RefusalMerger,
    Skipped,
    append_event,
    count_of,
    event_from_line,
    events_from_lines,
    read_tail,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def refusal(user="ana", profile="gpu", reason="no_gpu", message="GPU: all 2 GPUs are taken.") -> dict:
    return {"user": user, "server": "", "profile": profile, "reason": reason, "message": message}


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- rotation


def test_a_file_rotates_by_size_and_keeps_its_generations(tmp_path):
    path = tmp_path / "denials.jsonl"
    for n in range(3000):
        append_event(str(path), {"time": T0.isoformat(), "n": n, "pad": "x" * 60}, max_bytes=16 * 1024, backups=2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["denials.jsonl", "denials.jsonl.1", "denials.jsonl.2"]  # .3 never: 2 kept
    assert all(p.stat().st_size <= 16 * 1024 for p in tmp_path.iterdir())
    newest = lines_of(path)
    assert newest[-1]["n"] == 2999  # every line whole, in order across the generations
    assert lines_of(tmp_path / "denials.jsonl.1")[-1]["n"] == newest[0]["n"] - 1


def test_max_size_0_never_rotates(tmp_path):
    path = tmp_path / "stops.jsonl"
    for n in range(200):
        append_event(str(path), {"n": n}, max_bytes=0)
    assert [p.name for p in tmp_path.iterdir()] == ["stops.jsonl"] and len(lines_of(path)) == 200


def test_a_write_error_reaches_the_caller(tmp_path):
    with pytest.raises(OSError):
        append_event(str(tmp_path / "missing" / "denials.jsonl"), {"n": 1})


# --- reading a bounded tail


def test_the_tail_is_bounded_and_starts_at_a_whole_line(tmp_path):
    path = tmp_path / "denials.jsonl"
    path.write_text("".join(json.dumps({"n": n, "pad": "y" * 50}) + "\n" for n in range(10_000)))
    lines, torn = read_tail(str(path), 4096)
    assert torn == "" and 0 < len(lines) <= 4096 // 60
    assert [json.loads(line)["n"] for line in lines] == list(range(10_000 - len(lines), 10_000))


def test_the_tail_continues_into_the_rotated_generation(tmp_path):
    path = tmp_path / "denials.jsonl"
    (tmp_path / "denials.jsonl.1").write_text("".join(f'{{"n": {n}}}\n' for n in range(100)) + '{"torn')
    path.write_text('{"n": 100}\n{"n": 101}\n{"n": 10')  # the writer is halfway through a line
    lines, torn = read_tail(str(path), 60)
    assert [json.loads(line)["n"] for line in lines][-2:] == [100, 101]
    assert all(json.loads(line)["n"] < 102 for line in lines) and len(lines) > 2
    assert torn == '{"n": 10'


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_tail(str(tmp_path / "none.jsonl"))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"time": "2026-03-02T09:00:00+00:00", "user": "ana"}', ""),
        ('{"time": "2026-03-02T09:00:00Z"}', ""),
        ('{"time": "2026-03-02T10:00:00+01:00"}', ""),
        ('{"time": "2026-03-02T09:00:00", "user": "ana"}', "a time without a timezone"),
        ('{"time": "yesterday"}', "an unreadable time"),
        ('{"user": "ana"}', "no time"),
        ('["a", "list"]', "not a JSON object"),
        ('{"time": "2026-03-02T09:00:00+00:00", "us', "not JSON"),
    ],
    ids=["offset-0", "zulu", "offset-1", "naive", "unreadable", "no-time", "list", "torn"],
)
def test_each_line_is_used_or_said_why_not(line, why):
    event, problem = event_from_line(line)
    assert problem == why and (event is None) == bool(why)


def test_unusable_lines_are_counted_and_warned_about_once(tmp_path, caplog):
    skipped = Skipped()
    lines = ['{"time": "2026-03-02T09:00:00+00:00", "n": 1}', "garbage", '{"time": "2026-03-02T09:00:00"}']
    events = events_from_lines(lines, torn='{"time": "2026', skipped=skipped)
    assert [e["n"] for e in events] == [1] and skipped.count == 3
    with caplog.at_level(logging.WARNING, logger="gpuspawner"):
        skipped.warn("/srv/denials.jsonl")
    (record,) = caplog.records
    assert "Skipped 3 unusable line(s) of /srv/denials.jsonl (the first: not JSON: 'garbage')" in record.message


@pytest.mark.parametrize(("count", "expected"), [(None, 1), (7, 7), ("7", 7), (0, 1), ("many", 1)])
def test_a_records_count(count, expected):
    assert count_of({} if count is None else {"count": count}) == expected


# --- merging refusals


def test_repeats_within_the_window_are_one_record_written_when_it_closes():
    merger = RefusalMerger(60)
    assert merger.add(refusal(), at(0)) == [{"time": iso(at(0)), **refusal(), "count": 1}]
    for n in range(1, 100):
        assert merger.add(refusal(message=f"try {n}"), at(n * 0.5)) == []
    assert merger.next_due() == at(60)
    assert merger.due(at(59)) == []
    (merged,) = merger.due(at(60))
    assert merged == {
        "time": iso(at(49.5)),
        **refusal(message="try 99"),
        "first": iso(at(0.5)),
        "count": 99,
    }
    assert merger.next_due() is None and merger.due(at(120)) == []
    merger.add(refusal(), at(200))
    assert merger.next_due() == at(260) and merger.due(at(260)) == []  # opened, never repeated: nothing more


def test_other_users_profiles_and_reasons_are_records_of_their_own():
    merger = RefusalMerger(60)
    written = [
        *merger.add(refusal(), at(0)),
        *merger.add(refusal(user="ben"), at(1)),
        *merger.add(refusal(profile="mig"), at(2)),
        *merger.add(refusal(reason="user_quota"), at(3)),
        *merger.add(refusal(), at(4)),  # a repeat: held
    ]
    assert len(written) == 4 and {r["count"] for r in written} == {1}
    assert merger.flush() == [{"time": iso(at(4)), **refusal(), "first": iso(at(4)), "count": 1}]


def test_a_refusal_after_the_window_opens_a_new_one_and_writes_the_old_ones_repeats():
    merger = RefusalMerger(60)
    merger.add(refusal(), at(0))
    merger.add(refusal(), at(10))
    written = merger.add(refusal(), at(61))
    assert [(r["count"], r["time"]) for r in written] == [(1, iso(at(10))), (1, iso(at(61)))]


def test_window_0_writes_every_refusal():
    merger = RefusalMerger(0)
    assert [len(merger.add(refusal(), at(n))) for n in range(3)] == [1, 1, 1]


def steady_refusals(log: DenialLog, n: int, every: float, users: int, clock: list) -> None:
    for i in range(n):
        clock[0] = at(i * every)
        log.record(refusal(user=f"student{i % users}", profile=("gpu", "mig")[i % 2]))
    log.flush()


def test_10000_refusals_in_an_hour_stay_under_256_kb(tmp_path):
    """A REST loop of 10,000 refusals over an hour (one every 0.36 s), by 5 students on 2
    profiles: at most 2 records a window per student, profile and reason: 1,200 lines, 215 KB,
    where one line a refusal made 10,000 lines, 1.8 MB."""
    path = tmp_path / "denials.jsonl"
    clock = [T0]
    log = DenialLog(str(path), window=60, max_bytes=10 * 1024 * 1024, backups=3, clock=lambda: clock[0])
    steady_refusals(log, 10_000, 0.36, users=5, clock=clock)
    records = lines_of(path)
    assert sum(r["count"] for r in records) == 10_000  # nothing lost, only merged
    assert len(records) <= 10 * 61 * 2  # 10 (student, profile) pairs, 61 windows, 2 records each
    assert path.stat().st_size < 256 * 1024, path.stat().st_size


def test_10000_refusals_of_10000_students_stay_within_the_rotation_bound(tmp_path):
    """Nothing to merge (every refusal a new student): rotation alone bounds the files."""
    path = tmp_path / "denials.jsonl"
    clock = [T0]
    log = DenialLog(str(path), window=60, max_bytes=256 * 1024, backups=2, clock=lambda: clock[0])
    steady_refusals(log, 10_000, 0.01, users=10_000, clock=clock)
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(sizes) == {"denials.jsonl", "denials.jsonl.1", "denials.jsonl.2"}
    assert sum(sizes.values()) <= 3 * 256 * 1024


async def test_a_windows_repeats_are_written_by_a_timer_when_it_closes(tmp_path):
    path = tmp_path / "denials.jsonl"
    log = DenialLog(str(path), window=0.2, max_bytes=0, backups=1, clock=lambda: datetime.now(timezone.utc))
    for _ in range(5):
        log.record(refusal())
    assert [r["count"] for r in lines_of(path)] == [1]
    await asyncio.sleep(0.5)  # past the window: the timer wrote its repeats, with no new refusal
    assert [r["count"] for r in lines_of(path)] == [1, 4]


def test_a_denials_file_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    log = DenialLog(str(tmp_path / "gone" / "d.jsonl"), window=60, max_bytes=0, backups=1, clock=lambda: T0)
    with caplog.at_level(logging.WARNING, logger="gpuspawner"):
        log.record(refusal())
    assert "Could not record a denial in" in caplog.text
