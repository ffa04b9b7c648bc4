"""GPU-hour budgets: periods in a time zone, use clipped to them, the sentences, validation; clock injected."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from gpuspawner.usage.budgets import (
    BudgetError,
    Term,
    Weekly,
    budget_use,
    parse_budgets,
    refusal,
    standing,
    standings,
)
from gpuspawner.usage.records import Record

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
NOW = datetime(2026, 4, 15, 10, 0, tzinfo=BERLIN)  # Wednesday of the week from Monday 13 April

ML101_WEEK = {"group": "ml101", "name": "ML101", "gpu_hours": 10, "per": "week", "time_zone": "Europe/Berlin"}
TERM = {
    "every_user": True,
    "gpu_hours": 2.5,
    "per": "term",
    "from": "2026-04-13",
    "until": date(2026, 7, 17),
    "time_zone": "Europe/Berlin",
}


def budget(**entry):
    (parsed,) = parse_budgets([entry])
    return parsed


def record(user="mia", start=NOW - timedelta(hours=1), stop=NOW, groups=("ml101",), profile="a100", units=1, k=1):
    ids = tuple(f"GPU-{i}" for i in range(units))
    return Record(0, f"{user}/", user, "", groups, profile, "", ids, k, "", start, stop)


def berlin(*args):
    return datetime(*args, tzinfo=BERLIN)


# --- periods


def test_a_week_from_monday_midnight_in_its_zone():
    window = budget(**ML101_WEEK).window(NOW)
    assert (window.start, window.end) == (berlin(2026, 4, 13), berlin(2026, 4, 20))
    assert window.start.tzinfo is UTC and window.start.hour == 22  # 22:00 UTC on Sunday


def test_a_week_may_start_on_another_day_and_midnight_belongs_to_the_new_week():
    sunday = budget(**ML101_WEEK, week_starts="Sunday")
    assert sunday.window(NOW).start == berlin(2026, 4, 12)
    assert sunday.window(berlin(2026, 4, 19)).start == berlin(2026, 4, 19)
    assert sunday.window(berlin(2026, 4, 19) - timedelta(microseconds=1)).start == berlin(2026, 4, 12)


def test_a_week_across_the_change_to_summer_time_is_an_hour_short():
    window = budget(**ML101_WEEK).window(berlin(2026, 3, 29, 12))  # clocks went forward at 02:00
    assert window.end - window.start == timedelta(days=7, hours=-1)


def test_a_term_from_its_first_day_to_its_last_included():
    term = budget(**TERM)
    assert term.period == Term(date(2026, 4, 13), date(2026, 7, 17), BERLIN)
    window = term.window(NOW)
    assert (window.start, window.end) == (berlin(2026, 4, 13), berlin(2026, 7, 18))
    assert term.window(berlin(2026, 4, 12, 23, 59)) is None
    assert term.window(berlin(2026, 7, 17, 23, 59)) is not None
    assert term.window(berlin(2026, 7, 18)) is None


# --- what is used, left, and when it runs out


def test_use_is_clipped_to_the_period_and_open_records_count_up_to_now():
    week = budget(**ML101_WEEK)
    records = [
        record(start=berlin(2026, 4, 12, 23), stop=berlin(2026, 4, 13, 2)),  # 2 of its 3 hours this week
        record(user="max", start=NOW - timedelta(hours=3), stop=None, units=2),  # open: 6 GPU-hours so far
        record(start=NOW - timedelta(hours=2), stop=NOW - timedelta(hours=1), k=4),  # a quarter of a GPU: 0.25
        record(start=NOW - timedelta(hours=9), stop=NOW, groups=("cv202",)),  # another course
    ]
    s = standing(week, records, NOW, "mia")
    assert s.used == Fraction(2 * 3600 + 6 * 3600 + 900)
    assert s.left == Fraction(10 * 3600) - s.used and not s.spent
    assert s.rate == 2
    assert s.card_line() == "1.7 of 10 GPU-hours left this week"  # 1.75, rounded down
    assert s.runs_out_at == NOW + timedelta(minutes=52, seconds=30)  # 1.75 h at 2 GPUs
    assert s.renews_at == berlin(2026, 4, 20)


def test_a_spent_budget_refuses_naming_itself_what_was_used_and_when_it_renews():
    week = budget(**ML101_WEEK)
    records = [record(start=NOW - timedelta(hours=10, minutes=12), stop=NOW)]
    s = standing(week, records, NOW, "mia")
    assert s.spent and s.left == 0 and s.runs_out_at == s.now
    assert s.refusal() == (
        "ML101's budget of 10 GPU-hours this week is spent: 10.2 used; it renews Monday 00:00 Europe/Berlin"
    )
    assert s.card_line() == "0 of 10 GPU-hours left this week"
    start = {"user": "mia", "groups": ["ml101"], "profile": "a100"}
    assert refusal([week], records, NOW, **start) == s.refusal()
    assert refusal([week], records, NOW, **{**start, "admin": True}) is None
    assert refusal([week], records, NOW, **{**start, "groups": ["cv202"]}) is None


def test_the_card_line_of_a_budget_with_room():
    s = standing(budget(**ML101_WEEK), [record(start=NOW - timedelta(hours=3.5))], NOW, "mia")
    assert s.card_line() == "6.5 of 10 GPU-hours left this week"


def test_a_term_budget_per_user_counts_only_their_own_use_and_ends_with_the_term():
    term = budget(**TERM, profile="a100")
    records = [
        record(start=NOW - timedelta(hours=3), stop=None),
        record(user="max", start=NOW - timedelta(hours=3), stop=None),
        record(start=NOW - timedelta(hours=3), stop=None, profile="t4"),
    ]
    s = standing(term, records, NOW, "mia")
    assert s.used == 3 * 3600 and s.spent and s.renews_at is None
    assert s.refusal() == (
        "Your budget of 2.5 GPU-hours on a100 this term is spent: 3 used; the term ends Friday 17 July 2026"
    )
    assert standing(term, records, NOW, "eve").card_line() == "2.5 of 2.5 GPU-hours on a100 left this term"


def test_runs_out_is_none_when_the_period_renews_first_or_nothing_runs():
    week = budget(**{**ML101_WEEK, "gpu_hours": 1000})
    assert standing(week, [record(stop=None)], NOW, "mia").runs_out_at is None
    assert standing(week, [record()], NOW, "mia").runs_out_at is None


def test_the_culler_warning_says_when():
    week = budget(**ML101_WEEK)
    s = standing(week, [record(start=NOW - timedelta(hours=9, minutes=50), stop=None)], NOW, "mia")
    assert s.runs_out_at == NOW + timedelta(minutes=10)
    assert s.warning() == (
        "ML101's budget of 10 GPU-hours this week runs out at 10:10 Europe/Berlin: running servers stop then;"
        " it renews Monday 00:00 Europe/Berlin"
    )


def test_which_budgets_a_start_answers_to():
    budgets = parse_budgets(
        [
            ML101_WEEK,
            {"user": "mia", "gpu_hours": 1, "per": "week", "time_zone": "UTC", "admins_exempt": False},
            {**TERM, "profile": "t4"},
        ]
    )
    records = [record(start=NOW - timedelta(hours=2))]
    found = standings(budgets, records, NOW, "mia", ["ml101"], "a100", admin=True)
    assert [s.budget.user for s in found] == ["mia"]  # the others exempt admins; the term is for t4
    found = standings(budgets, records, NOW, "mia", ["ml101"], "a100")
    assert [(s.budget.user, s.spent) for s in found] == [("mia", True), (None, False)]  # spent first
    assert found[0].refusal().startswith("Your budget of 1 GPU-hours this week is spent: 2 used; it renews Monday")


# --- validation at load


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"per": "month"}, "budget 'ML101': per: 'month' is not a period: write 'week' or 'term'"),
        ({"gpu_hours": -3}, "budget 'ML101': gpu_hours: must be a number of GPU-hours, 0 or more; got -3"),
        ({"gpu_hours": "10"}, "gpu_hours: must be a number"),
        ({"gpu_hours": float("nan")}, "gpu_hours: must be a number"),
        ({"gpu_hour": 3}, "budget 'ML101': gpu_hour: is not a budget field; the fields are name, user,"),
        ({"user": "mia"}, "user: give one of user: NAME, group: NAME or every_user: true"),
        ({"group": None}, "user: give one of user"),
        ({"time_zone": "Mars/Olympus"}, "time_zone: must be a time zone such as 'Europe/Berlin'; got 'Mars/Olympus'"),
        ({"time_zone": None}, "time_zone: must be a time zone"),
        ({"week_starts": "someday"}, "week_starts: must be a day of the week such as 'monday'; got 'someday'"),
        ({"from": "2026-04-13"}, "from: is for per: term"),
        ({"admins_exempt": "yes"}, "admins_exempt: must be true or false"),
        ({"group": "ml999"}, "group: 'ml999' is not a group of this hub"),
        ({"profile": "h100"}, "profile: 'h100' is not a profile; the profiles are a100, t4"),
        ({"per": "term", "from": "2026-07-17", "until": "2026-04-13"}, "until: 2026-04-13 is before the term's"),
        ({"per": "term", "from": "2026-04-13"}, "until: must be a date such as 2026-04-13; got None"),
        ({"per": "term", "from": "13/04/2026", "until": "2026-07-17"}, "from: must be a date"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_a_budget_that_cannot_be_used_is_refused_naming_the_field(changes, message):
    entry = {k: v for k, v in {**ML101_WEEK, **changes}.items()}
    with pytest.raises(BudgetError, match=re.escape(message)):
        parse_budgets([entry], groups=["ml101", "cv202"], profiles=["a100", "t4"])


def test_a_budget_is_numbered_when_it_has_no_name_and_a_non_mapping_is_refused():
    with pytest.raises(BudgetError, match=r"^budget 2: gpu_hours"):
        parse_budgets([TERM, {**TERM, "gpu_hours": None}])
    with pytest.raises(BudgetError, match=r"^budget 1: must be a mapping"):
        parse_budgets(["ml101: 10"])


def test_what_parses():
    week, term = parse_budgets([{**ML101_WEEK, "week_starts": "Sunday", "gpu_hours": 0.1}, TERM])
    assert (week.name, week.group, week.gpu_hours, week.period) == (
        "ML101",
        "ml101",
        Fraction(1, 10),
        Weekly(6, BERLIN),
    )
    assert (term.name, term.user, term.group, term.admins_exempt, term.gpu_hours) == (
        "",
        None,
        None,
        True,
        Fraction(5, 2),
    )
    assert budget(group="cv202", gpu_hours=4, per="week", time_zone="UTC").name == "cv202"


def test_budget_use_for_the_metrics_per_group_user_and_each_user_of_an_every_user_budget():
    week, term = budget(**ML101_WEEK), budget(**TERM)
    ada = budget(user="ada", gpu_hours=1, per="week", time_zone="Europe/Berlin")
    records = [
        record("mia", start=NOW - timedelta(hours=2)),  # 2 h, ML101
        record("max", start=NOW - timedelta(hours=1), groups=("ml101", "cv202"), k=2),  # 1 h on a shared slot
        record("noor", start=NOW - timedelta(days=30), stop=NOW - timedelta(days=29), groups=()),  # before the term
    ]
    found = {
        (s.budget.name or s.budget.user or "every", subject): s.used / 3600
        for subject, s in budget_use([week, term, ada], records, NOW)
    }
    assert found == {
        ("ML101", "ml101"): Fraction(5, 2),  # the group's: 2 h + half of 1 h
        ("every", "max"): Fraction(1, 2),  # each user with use this term, on their own
        ("every", "mia"): 2,
        ("ada", "ada"): 0,  # a user's own budget: there even unused
    }
    after = datetime(2026, 8, 1, tzinfo=BERLIN)  # the term is over: its budget is left out
    assert {s.budget.name or s.budget.user or "every" for _, s in budget_use([week, term], records, after)} == {"ML101"}
