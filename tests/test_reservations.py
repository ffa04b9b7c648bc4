"""Lab hours: parsing and validation, windows across daylight saving changes, placing on units, the questions."""

import logging
import os
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from gpuspawner.gpus import GPU, Assignment, Requester
from gpuspawner.reservations import (
    ReservationBook,
    ReservationError,
    ReservationsFile,
    parse_reservations,
    when,
)

GiB = 1024**3
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def berlin(*args) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()


def whole(i, name="NVIDIA A100-SXM4-80GB"):
    return GPU(i, f"GPU-{i}", name, 80 * GiB)


LAB = {
    "name": "ML101 lab",
    "groups": ["ml101"],
    "profiles": ["ml101-gpu"],
    "gpus": 2,
    "gpu_model": "A100",
    "time_zone": "Europe/Berlin",
    "weekly": [{"days": ["tuesday"], "start": "14:00", "end": "16:00"}],
    "from": "2026-03-17",
    "until": "2026-07-14",
}


def lab(**changes):
    entry = {**LAB, **changes}
    return {k: v for k, v in entry.items() if v is not None}


def on_dates(*dates, **changes):
    """The lab on single dates only."""
    return lab(weekly=None, **{"from": None, "until": None}, dates=list(dates), **changes)


def spans(reservation):
    return [
        (datetime.fromtimestamp(w.start, timezone.utc), datetime.fromtimestamp(w.end, timezone.utc))
        for w in reservation.windows
    ]


# --- windows and daylight saving


def test_a_weekly_lab_is_at_the_same_wall_clock_time_across_the_spring_change():
    (r,) = parse_reservations([LAB], known_groups={"ml101"}, known_profiles={"ml101-gpu"})
    assert len(r.windows) == 18  # Tuesdays from 17 March to 14 July
    first, second, third = r.windows[:3]
    # Berlin is UTC+1 until Sunday 29 March, UTC+2 after
    assert (first.start, first.end) == (utc(2026, 3, 17, 13), utc(2026, 3, 17, 15))
    assert (second.start, second.end) == (utc(2026, 3, 24, 13), utc(2026, 3, 24, 15))
    assert (third.start, third.end) == (utc(2026, 3, 31, 12), utc(2026, 3, 31, 14))
    assert all(w.local_start.hour == 14 and w.local_end.hour == 16 for w in r.windows)
    assert third.describe() == "Tuesday 31 March 2026, 14:00-16:00 (Europe/Berlin)"


def test_a_weekly_lab_across_the_autumn_change():
    (r,) = parse_reservations([lab(**{"from": "2026-10-20", "until": "2026-10-27"})])
    assert [(w.start, w.end) for w in r.windows] == [
        (utc(2026, 10, 20, 12), utc(2026, 10, 20, 14)),  # UTC+2
        (utc(2026, 10, 27, 13), utc(2026, 10, 27, 15)),  # UTC+1 since Sunday 25 October
    ]


def test_the_hour_the_clocks_skip():
    # Sunday 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC)
    (r,) = parse_reservations(
        [
            lab(
                weekly=[{"days": "sunday", "start": "01:30", "end": "03:30"}],
                **{"from": "2026-03-22", "until": "2026-04-05"},
            )
        ]
    )
    assert [(w.start, w.end) for w in r.windows] == [
        (utc(2026, 3, 22, 0, 30), utc(2026, 3, 22, 2, 30)),
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30)),  # one real hour that night
        (utc(2026, 4, 4, 23, 30), utc(2026, 4, 5, 1, 30)),
    ]
    # a start in the gap is the moment the clocks jump
    (r,) = parse_reservations([on_dates({"day": "2026-03-29", "start": "02:30", "end": "04:00"})])
    assert [(w.start, w.end) for w in r.windows] == [(utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))]
    # a weekly window wholly in the gap does not happen that week; the others do
    (r,) = parse_reservations(
        [
            lab(
                weekly=[{"days": "sun", "start": "02:00", "end": "03:00"}],
                **{"from": "2026-03-22", "until": "2026-04-05"},
            )
        ]
    )
    assert [w.local_start.day for w in r.windows] == [22, 5]
    # a single date wholly in the gap is refused
    with pytest.raises(ReservationError, match="2026-03-29 02:15-02:45 lies wholly in the hour the clocks skip"):
        parse_reservations([on_dates({"day": "2026-03-29", "start": "02:15", "end": "02:45"})])


def test_the_hour_that_happens_twice_is_covered_whole():
    # Sunday 25 October 2026: 03:00 CEST goes back to 02:00 CET (01:00 UTC)
    (r,) = parse_reservations([on_dates({"day": "2026-10-25", "start": "02:00", "end": "03:00"})])
    assert [(w.start, w.end) for w in r.windows] == [(utc(2026, 10, 25, 0), utc(2026, 10, 25, 2))]
    (r,) = parse_reservations([on_dates({"day": "2026-10-25", "start": "02:30", "end": "04:00"})])
    assert [(w.start, w.end) for w in r.windows] == [(utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3))]


def test_single_dates_by_day_or_by_date_and_time_and_midnight():
    (r,) = parse_reservations(
        [
            on_dates(
                {"day": "2026-05-02", "start": "09:00", "end": "24:00"},
                {"start": "2026-05-08 18:00", "end": "2026-05-09T06:00"},
                {"start": datetime(2026, 6, 1, 8), "end": datetime(2026, 6, 1, 9)},  # as YAML reads them
            )
        ]
    )
    assert [(w.start, w.end) for w in r.windows] == [
        (berlin(2026, 5, 2, 9), berlin(2026, 5, 3, 0)),
        (berlin(2026, 5, 8, 18), berlin(2026, 5, 9, 6)),
        (berlin(2026, 6, 1, 8), berlin(2026, 6, 1, 9)),
    ]
    assert r.windows[1].describe() == "Friday 8 May 2026, 18:00-06:00 (Europe/Berlin)"


def test_weekly_and_dates_together_overlapping_windows_merged():
    (r,) = parse_reservations(
        [
            lab(
                weekly=[{"days": ["tue", "thu"], "start": "14:00", "end": "16:00"}],
                **{"from": "2026-04-14", "until": "2026-04-16"},
                dates=[{"day": "2026-04-14", "start": "15:00", "end": "18:00"}],
            )
        ]
    )
    assert [(w.start, w.end) for w in r.windows] == [
        (berlin(2026, 4, 14, 14), berlin(2026, 4, 14, 18)),
        (berlin(2026, 4, 16, 14), berlin(2026, 4, 16, 16)),
    ]


# --- validation


@pytest.mark.parametrize(
    "entry, message",
    [
        (lab(name=None), "reservation #1: field 'name': is required"),
        (lab(room="B12"), "reservation 'ML101 lab': field 'room': is not a reservation field"),
        (lab(groups=None), "field 'groups': a reservation serves someone: name its 'groups' or 'users'"),
        (lab(groups=["ml102"]), "field 'groups': no group is called 'ml102'; the groups are: ml101"),
        (lab(profiles=["ml101-cpu"]), "field 'profiles': no profile has the slug 'ml101-cpu'; the profiles are"),
        (lab(units=["GPU-0"]), "field 'units': name the units or say how many ('gpus'), not both"),
        (lab(gpus=None), "field 'gpus': is required"),
        (lab(gpus=0), "field 'gpus': must be a whole number of units >= 1, got 0"),
        (lab(gpu_kind="tpu"), "field 'gpu_kind': must be 'gpu'"),
        (lab(time_zone="Europe/Atlantis"), "field 'time_zone': 'Europe/Atlantis' is not a time zone"),
        (lab(time_zone="../etc/passwd"), "field 'time_zone': '../etc/passwd' is not a time zone"),
        (lab(time_zone=None), "field 'time_zone': is required"),
        (lab(weekly=None), "field 'from': bounds the 'weekly' schedule, and there is none"),
        (lab(**{"from": None}), "field 'from': is required: the first day of the weekly schedule"),
        (lab(until="2026-03-01"), "field 'until': 2026-03-01 is before 'from' (2026-03-17)"),
        (lab(until="14 July"), "field 'until': '14 July' is not a date; write it as 2026-04-14"),
        (
            lab(weekly=[{"days": ["dienstag"], "start": "14:00", "end": "16:00"}]),
            "field 'weekly': 'dienstag' is not a weekday",
        ),
        (
            lab(weekly=[{"days": ["tue"], "start": "16:00", "end": "14:00"}]),
            "field 'weekly': ends at 14:00, not after its start at 16:00",
        ),
        (
            lab(weekly=[{"days": ["tue"], "start": 840, "end": "16:00"}]),  # YAML reads 14:00 unquoted as 840
            "field 'weekly': 840 is not a time of day; write it as '14:00' (in quotes in YAML",
        ),
        (lab(weekly=[{"days": ["tue"], "start": "25:00", "end": "26:00"}]), "'25:00' is not a time of day"),
        (lab(weekly=[{"days": ["tue"], "start": "24:00", "end": "24:00"}]), "'24:00' is not a time of day"),
        (lab(weekly=[{"days": ["tue"], "start": "14:00"}]), "each entry needs 'days', 'start' and 'end'"),
        (
            lab(**{"from": "2026-04-15", "until": "2026-04-20"}),
            "field 'weekly': no Tuesday falls between 'from' 2026-04-15 and 'until' 2026-04-20",
        ),
        (
            lab(weekly=None, **{"from": None, "until": None}),
            "field 'weekly': a reservation needs a time: 'weekly' (with 'from' and 'until'), 'dates', or both",
        ),
        (
            on_dates({"start": "2026-05-09 06:00", "end": "2026-05-08 18:00"}),
            "field 'dates': 2026-05-09 06:00 to 2026-05-08 18:00: the end is not after the start",
        ),
        (
            on_dates({"start": "tomorrow", "end": "2026-05-08 18:00"}),
            "field 'dates': 'tomorrow' is not a date and time",
        ),
    ],
    ids=lambda value: "" if isinstance(value, dict) else value[:40],
)
def test_a_bad_reservation_is_refused_naming_it_and_the_field(entry, message):
    with pytest.raises(ReservationError) as e:
        parse_reservations([entry], known_groups={"ml101"}, known_profiles={"ml101-gpu", "cpu"})
    assert message in str(e.value)


def test_two_reservations_of_one_name_and_not_a_list():
    with pytest.raises(
        ReservationError, match="reservation 'ML101 lab': field 'name': two reservations share this name"
    ):
        parse_reservations([LAB, LAB])
    with pytest.raises(ReservationError, match="reservations must be a list of dicts, got dict"):
        parse_reservations(LAB)
    assert parse_reservations(None) == ()


# --- placing on units


def test_counted_units_are_the_last_that_fit_and_labs_that_never_meet_share_them():
    units = [whole(0), whole(1), whole(2), whole(3, "NVIDIA L4")]
    thursday = lab(name="CV lab", groups=["cv"], weekly=[{"days": "thu", "start": "09:00", "end": "12:00"}])
    book = ReservationBook.place(parse_reservations([LAB, thursday]), units)
    assert book.units == {"ML101 lab": ("GPU-1", "GPU-2"), "CV lab": ("GPU-1", "GPU-2")}
    assert book.reserved_units == {"GPU-1", "GPU-2"}


def test_overlapping_labs_get_units_of_their_own_and_too_many_is_refused_naming_both():
    units = [whole(i) for i in range(4)]
    overlapping = lab(name="CV lab", groups=["cv"], weekly=[{"days": "tue", "start": "15:00", "end": "17:00"}])
    book = ReservationBook.place(parse_reservations([LAB, overlapping]), units)
    assert book.units == {"ML101 lab": ("GPU-2", "GPU-3"), "CV lab": ("GPU-0", "GPU-1")}
    greedy = {**overlapping, "gpus": 3}
    with pytest.raises(ReservationError) as e:
        ReservationBook.place(parse_reservations([LAB, greedy]), units)
    assert str(e.value) == (
        "reservations 'ML101 lab' and 'CV lab' overlap (Tuesday 17 March 2026, 15:00-16:00 (Europe/Berlin)) and"
        " together ask for more units than fit: 'CV lab' needs 3 whole GPUs (A100) and finds 2 of the 4 that fit"
        " (4 NVIDIA A100-SXM4-80GB GPUs) not reserved by the others"
    )
    with pytest.raises(
        ReservationError,
        match=r"reservation 'ML101 lab': field 'gpus': asks for 2 whole GPUs \(A100\), and this hub has 1 that fit",
    ):
        ReservationBook.place(parse_reservations([LAB]), [whole(0)])


def test_named_units_must_exist_and_serve_one_lab_at_a_time():
    units = [whole(0), whole(1)]
    a = lab(name="A", gpus=None, gpu_model=None, units=["GPU-0"])
    b = lab(
        name="B",
        gpus=None,
        gpu_model=None,
        units=["GPU-1", "GPU-0"],
        weekly=[{"days": "tue", "start": "15:30", "end": "17:00"}],
    )
    with pytest.raises(ReservationError) as e:
        ReservationBook.place(parse_reservations([a, b]), units)
    assert str(e.value) == (
        "reservations 'A' and 'B' both reserve unit 'GPU-0' on Tuesday 17 March 2026, 15:30-16:00 (Europe/Berlin):"
        " a unit serves one reservation at a time"
    )
    wednesday = {**b, "weekly": [{"days": "wed", "start": "14:00", "end": "16:00"}]}
    assert ReservationBook.place(parse_reservations([a, wednesday]), units).units == {
        "A": ("GPU-0",),
        "B": ("GPU-1", "GPU-0"),
    }
    with pytest.raises(
        ReservationError, match="reservation 'A': field 'units': 'GPU-7' is not one of this hub's units"
    ):
        ReservationBook.place(parse_reservations([{**a, "units": ["GPU-7"]}]), units)
    # a counted lab avoids the named lab's unit when they overlap
    counted = lab(name="C", gpus=1, gpu_model=None)
    assert ReservationBook.place(parse_reservations([a, counted]), units).units["C"] == ("GPU-1",)


# --- questions


@pytest.fixture
def book():
    units = [whole(0), whole(1), whole(2)]
    return ReservationBook.place(parse_reservations([LAB]), units)


ALICE = Requester("alice", frozenset({"ml101"}))  # a member
BOB = Requester("bob", frozenset({"cs"}))  # not a member
LAB_DAY = berlin(2026, 4, 14, 14)  # a Tuesday's window starts


def test_what_is_reserved_now_and_for_whom(book):
    assert book.reserved_at(LAB_DAY - 1) == {}
    reserved = book.reserved_at(LAB_DAY)
    assert sorted(reserved) == ["GPU-1", "GPU-2"] and reserved["GPU-1"].reservation.name == "ML101 lab"
    assert book.reserved_at(LAB_DAY + 7200) == {}  # the end is not in the window
    assert book.kept_from(BOB, "ml101-gpu", LAB_DAY) == {"GPU-1", "GPU-2"}
    assert book.kept_from(ALICE, "ml101-gpu", LAB_DAY) == set()
    assert book.kept_from(ALICE, "cpu", LAB_DAY) == {"GPU-1", "GPU-2"}  # a member, but with another profile
    assert book.kept_from(BOB, "ml101-gpu", LAB_DAY - 1) == set()
    assert book.may_take("GPU-0", BOB, "x", LAB_DAY) and not book.may_take("GPU-1", BOB, "x", LAB_DAY)
    assert book.may_take("GPU-1", ALICE, "ml101-gpu", LAB_DAY) and book.may_take("GPU-1", BOB, "x", LAB_DAY - 1)
    # users are served like groups
    by_user = ReservationBook.place(parse_reservations([lab(groups=None, users=["bob"])]), [whole(0), whole(1)])
    assert by_user.kept_from(BOB, "ml101-gpu", LAB_DAY) == set()


def test_free_until_the_next_window_that_does_not_serve_them(book):
    morning = berlin(2026, 4, 14, 9)
    booking = book.free_until(["GPU-2"], BOB, "x", morning)
    assert booking.window.start == LAB_DAY
    assert booking.free_until(morning) == "this GPU is free until 14:00, when ML101 lab starts"
    assert booking.free_until(berlin(2026, 4, 10, 9)) == "this GPU is free until Tuesday 14:00, when ML101 lab starts"
    assert book.free_until(["GPU-0"], BOB, "x", morning) is None  # not reserved
    assert book.free_until(["GPU-2"], ALICE, "ml101-gpu", morning) is None  # served
    assert book.free_until(["GPU-2"], BOB, "x", morning, horizon=3600) is None  # not within the hour
    assert book.free_until(["GPU-2"], BOB, "x", berlin(2026, 7, 14, 17)) is None  # the term is over
    assert book.soon_kept_from(BOB, "x", morning, 6 * 3600) == {"GPU-1", "GPU-2"}
    assert book.soon_kept_from(BOB, "x", morning, 3600) == set()


def test_who_must_stop_at_a_windows_start(book):
    units = {u.id: u for u in [whole(0), whole(1), whole(2)]}
    holdings = [
        Assignment("bob/", "bob", (units["GPU-1"],), groups=frozenset({"cs"})),
        Assignment("alice/", "alice", (units["GPU-2"],), groups=frozenset({"ml101"})),
        Assignment("alice/other", "alice", (units["GPU-0"],), groups=frozenset({"ml101"})),
        Assignment("carl/", "carl", (units["GPU-2"],), groups=frozenset({"ml101"})),  # a member with another profile
    ]
    profiles = {"bob/": "ml101-gpu", "alice/": "ml101-gpu", "alice/other": "cpu", "carl/": "cpu"}
    assert book.must_stop(holdings, LAB_DAY - 1, profiles.get) == ()
    stops = book.must_stop(holdings, LAB_DAY, profiles.get)
    assert [(s.holder, s.units) for s in stops] == [("bob/", ("GPU-1",)), ("carl/", ("GPU-2",))]
    assert stops[0].reason == (
        "Your server was stopped at 14:00: its GPU is reserved for ML101 lab until 16:00 (Europe/Berlin)."
        " Your files are kept; start again to get another GPU, if one is free."
    )


def test_the_next_window_per_unit_and_the_next_boundary(book):
    morning = berlin(2026, 4, 14, 9)
    assert book.next_window("GPU-2", morning).window.start == LAB_DAY
    assert book.next_window("GPU-2", LAB_DAY + 60).window.start == LAB_DAY  # in it now
    assert book.next_window("GPU-2", LAB_DAY + 7200).window.start == berlin(2026, 4, 21, 14)
    assert book.next_window("GPU-0", morning) is None
    assert book.next_boundary(morning) == LAB_DAY
    assert book.next_boundary(LAB_DAY) == LAB_DAY + 7200
    assert book.next_boundary(berlin(2026, 7, 14, 16)) is None
    assert [b.reservation.name for b in book.active(LAB_DAY)] == ["ML101 lab"]
    assert not ReservationBook() and ReservationBook().reserved_at(LAB_DAY) == {}


def test_when_says_a_time_as_a_student_reads_it():
    now = berlin(2026, 4, 14, 9)
    assert when(berlin(2026, 4, 14, 14), now, BERLIN) == "14:00"
    assert when(berlin(2026, 4, 16, 14), now, BERLIN) == "Thursday 14:00"
    assert when(berlin(2026, 4, 28, 14), now, BERLIN) == "Tuesday 28 April 14:00"


# --- the file


def write(path, text, tick):
    path.write_text(text)
    os.utime(path, ns=(tick, tick))


def test_the_file_is_read_again_when_it_changes_and_a_broken_edit_keeps_the_last_good(tmp_path, caplog):
    path = tmp_path / "reservations.yaml"
    good = """\
reservations:
  - name: ML101 lab
    groups: [ml101]
    gpus: 2
    time_zone: Europe/Berlin
    weekly:
      - days: [tuesday]
        start: "14:00"
        end: "16:00"
    from: 2026-04-14
    until: 2026-07-14
"""
    write(path, good, 1_000_000_000)
    reservations = ReservationsFile(str(path))
    (first,) = reservations.load(known_groups={"ml101"})
    assert first.name == "ML101 lab" and reservations.load(known_groups={"ml101"}) is not None
    write(path, good.replace('"14:00"', "14:00"), 2_000_000_000)  # unquoted: a number in YAML
    with caplog.at_level(logging.ERROR, logger="gpuspawner"):
        assert reservations.load(known_groups={"ml101"}) == (first,)
    assert "Keeping the last good reservations" in caplog.text and "in quotes in YAML" in caplog.text
    write(path, good.replace("ML101 lab", "ML101 lab hours"), 3_000_000_000)
    assert [r.name for r in reservations.load(known_groups={"ml101"})] == ["ML101 lab hours"]
    # the groups change: checked again without the file changing
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gpuspawner"):
        assert [r.name for r in reservations.load(known_groups={"cs"})] == ["ML101 lab hours"]
    assert "no group is called 'ml101'" in caplog.text


def test_the_first_read_must_succeed(tmp_path):
    with pytest.raises(ReservationError, match="cannot read"):
        ReservationsFile(str(tmp_path / "missing.yaml")).load()
    path = tmp_path / "reservations.yaml"
    path.write_text("- name: x\n  users: [a]\n  gpus: 1\n  time_zone: UTC\n")
    with pytest.raises(ReservationError, match="reservation 'x': field 'weekly': a reservation needs a time"):
        ReservationsFile(str(path)).load()
