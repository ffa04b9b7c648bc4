"""The dashboard's usage page: GPU-hours per day (pure), who sees whose records, the SVG chart, the page
and its JSON, and the two routes on the dashboard's own tornado app (the hub's login replaced)."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from gpuspawner.dashboard.model import Reach
from gpuspawner.dashboard.usage_page import day_chart, hours_text, nice_ceiling, render_usage_page, row_chart
from gpuspawner.dashboard.usage_view import (
    MAX_DAYS,
    ROWS_SHOWN,
    QueryError,
    UsageAccess,
    UsageQuery,
    build_usage_view,
    parse_query,
    usage_json,
    usage_reach,
)
from gpuspawner.services import MINE_SCOPE, READ_GROUPS_SCOPE, READ_SCOPE, STOP_SCOPE
from gpuspawner.usage import UsageBook, UsageStore
from gpuspawner.usage.daily import per_day
from gpuspawner.usage.records import Use, to_us

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 28, 12, tzinfo=UTC)
TODAY = date(2026, 3, 28)
G = 1024**3


def use(n, user, groups, start, hours, units=1, k=1, utilisation=None, peak=None, open_=False):
    stop = None if open_ else to_us(start + timedelta(hours=hours))
    return Use(n, user, tuple(groups), "gpu", units, k, to_us(start), stop, utilisation, peak)


def at(day: int, hour: float, zone=UTC) -> datetime:
    return datetime(2026, 3, day, tzinfo=zone) + timedelta(hours=hour)


# The lab: ML101 (ann, bob), CV202 (bob, cat), and dan in no course.
USES = [
    use(1, "ann", ["ml101"], at(2, 9), 2),  # 2 GPU-hours on the 2nd
    use(2, "bob", ["cv202", "ml101"], at(3, 22), 4),  # 2 on the 3rd, 2 on the 4th (UTC)
    use(3, "cat", ["cv202"], at(5, 10), 3, units=2),  # 6 on the 5th
    use(4, "dan", [], at(6, 8), 8, k=4),  # a quarter of a GPU for 8 hours: 2
]


def hours_of(daily, key):
    return {
        daily.days[i].isoformat(): h for i, h in enumerate(next(s for s in daily.series if s.key == key).hours) if h
    }


# --- GPU-hours per day (pure)


def test_per_day_splits_at_midnight_counts_a_shared_slot_1_over_k_and_each_group():
    daily = per_day(USES, by="group", first_day=date(2026, 3, 1), last_day=date(2026, 3, 7), zone=UTC, now=NOW)
    assert len(daily.days) == 7 and daily.days[0] == date(2026, 3, 1)
    assert daily.total.hours == (0, 2, 2, 2, 6, 2, 0)
    assert daily.total.gpu_hours == 14 and (daily.total.servers, daily.total.users) == (4, 4)
    assert [(s.key, s.gpu_hours, s.users) for s in daily.series] == [
        ("cv202", 10, 2),  # bob's 4 and cat's 6: a record counts for each group its user had
        ("ml101", 6, 2),
        ("(no group)", 2, 1),
    ]
    assert hours_of(daily, "ml101") == {"2026-03-02": 2, "2026-03-03": 2, "2026-03-04": 2}
    assert daily.groups == ("cv202", "ml101")
    by_user = per_day(USES, by="user", first_day=date(2026, 3, 1), last_day=date(2026, 3, 7), zone=UTC, now=NOW)
    assert {s.key: s.gpu_hours for s in by_user.series} == {"cat": 6, "bob": 4, "ann": 2, "dan": 2}


def test_per_day_in_a_time_zone_on_the_day_clocks_go_forward():
    # Berlin moves its clocks at 02:00 on Sunday 29 March 2026: that day has 23 hours.
    across = [use(1, "ann", ["ml101"], datetime(2026, 3, 28, 21, tzinfo=UTC), 26)]  # Saturday 22:00 to Monday 01:00
    daily = per_day(
        across, by="user", first_day=date(2026, 3, 28), last_day=date(2026, 3, 30), zone=BERLIN, now=at(31, 0)
    )
    assert daily.total.hours == (2, 23, 1)
    assert daily.time_zone == "Europe/Berlin" and daily.since == datetime(2026, 3, 27, 23, tzinfo=UTC)


def test_per_day_clips_to_the_window_and_counts_an_open_record_up_to_now_exactly():
    third = [use(1, "ann", ["ml101"], at(27, 0), 0, k=3, open_=True)]  # a slot of a GPU shared by 3, still held
    daily = per_day(third, by="user", first_day=date(2026, 3, 27), last_day=date(2026, 3, 29), zone=UTC, now=NOW)
    assert daily.total.hours[0] == pytest.approx(8) and daily.total.hours[1] == pytest.approx(4)
    assert daily.total.hours[2] == 0 and daily.until == NOW  # nothing after now
    # Exact: 1/3 of a unit for 36 hours is 12 GPU-hours, not 11.999...
    assert Fraction(daily.total.gpu_hours).limit_denominator(1000) == 12
    before = per_day(USES, by="user", first_day=date(2026, 3, 4), last_day=date(2026, 3, 4), zone=UTC, now=NOW)
    assert [(s.key, s.gpu_hours) for s in before.series] == [("bob", 2)]  # only the 4th's part of bob's night


def test_per_day_with_one_group_and_with_the_groups_a_viewer_may_see():
    only = per_day(
        USES, by="group", first_day=date(2026, 3, 1), last_day=date(2026, 3, 7), zone=UTC, now=NOW, group="cv202"
    )
    assert [(s.key, s.gpu_hours) for s in only.series] == [("cv202", 10)]
    narrowed = per_day(
        USES[:2], by="group", first_day=date(2026, 3, 1), last_day=date(2026, 3, 7), zone=UTC, now=NOW,
        groups_of=lambda u: [g for g in u.groups if g == "ml101"],
    )  # fmt: skip
    assert [s.key for s in narrowed.series] == ["ml101"] and narrowed.groups == ("ml101",)


def test_per_day_weighs_utilisation_by_gpu_time_and_keeps_the_highest_peak_never_0_unmeasured():
    uses = [
        use(1, "ann", ["ml101"], at(2, 9), 1, utilisation=90.0, peak=4 * G),
        use(2, "ann", ["ml101"], at(3, 9), 3, utilisation=10.0, peak=12 * G),
        use(3, "bob", ["ml101"], at(3, 9), 3),  # a MIG instance, or no NVML: not measured
    ]
    daily = per_day(uses, by="user", first_day=date(2026, 3, 1), last_day=date(2026, 3, 7), zone=UTC, now=NOW)
    rows = {s.key: s for s in daily.series}
    assert rows["ann"].utilisation == pytest.approx(30.0) and rows["ann"].peak_memory == 12 * G
    assert (rows["bob"].utilisation, rows["bob"].peak_memory) == (None, None)
    assert daily.total.utilisation == pytest.approx(30.0)  # only the measured records count


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"by": "profile"}, "by must be one of group, user"), ({"last_day": date(2026, 2, 1)}, "is before the first")],
)
def test_per_day_refuses_what_it_cannot_draw(bad, message):
    args = {"by": "user", "first_day": date(2026, 3, 1), "last_day": date(2026, 3, 7), **bad}
    with pytest.raises(ValueError, match=message):
        per_day(USES, zone=UTC, now=NOW, **args)


# --- the form


def test_the_form_defaults_to_the_last_four_weeks_today_included():
    query = parse_query({}, today=TODAY)
    assert (query.first_day, query.last_day, query.by, query.group) == (date(2026, 3, 1), TODAY, "group", None)
    assert query.days == 28
    asked = parse_query({"since": "2026-01-05", "until": "2026-01-09", "group": " ml101 ", "by": "user"}, today=TODAY)
    assert asked == UsageQuery(date(2026, 1, 5), date(2026, 1, 9), "user", "ml101")
    assert asked.as_args() == {"since": "2026-01-05", "until": "2026-01-09", "by": "user", "group": "ml101"}
    assert parse_query({"since": "", "by": ""}, today=TODAY, default_by="user").by == "user"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"since": "1 March"}, r"since: '1 March' is not a date: write it as 2026-03-02"),
        ({"until": "2026-02-30"}, r"until: '2026-02-30' is not a date"),
        ({"since": "2026-03-10", "until": "2026-03-09"}, r"until: 2026-03-09 is before since: 2026-03-10"),
        ({"since": "2024-01-01"}, rf"a page shows {MAX_DAYS} at most \(gpuspawner usage reports any period\)"),
        ({"by": "profile"}, r"by: 'profile' is not a grouping: write group \(per course\) or user \(per student\)"),
    ],
    ids=["not-a-date", "no-such-day", "backwards", "too-long", "by"],
)
def test_a_bad_value_of_the_form_is_a_sentence_naming_the_field(args, message):
    with pytest.raises(QueryError, match=message):
        parse_query(args, today=TODAY)


# --- who sees whose records


def reach(scopes, viewer="viewer", groups=()):
    return usage_reach(
        scopes,
        viewer=viewer,
        viewer_groups=groups,
        read_scope=READ_SCOPE,
        groups_scope=READ_GROUPS_SCOPE,
        mine_scope=MINE_SCOPE,
    )


@pytest.mark.parametrize(
    ("scopes", "groups", "expected"),
    [
        ([READ_SCOPE, STOP_SCOPE], (), Reach(everyone=True)),
        ([READ_GROUPS_SCOPE, MINE_SCOPE], ("ml101", "ml101-teachers"), Reach(False, frozenset({"teach"}), frozenset({"ml101", "ml101-teachers"}))),
        ([f"{READ_SCOPE}!group=cv202"], ("ml101",), Reach(False, frozenset(), frozenset({"cv202"}))),
        ([f"{READ_SCOPE}!user=ann", f"{READ_SCOPE}!user"], (), Reach(False, frozenset({"ann", "teach"}), frozenset())),
        ([MINE_SCOPE], ("ml101",), Reach(False, frozenset({"teach"}), frozenset())),
        ([READ_GROUPS_SCOPE], (), Reach(False, frozenset(), frozenset())),  # a teacher in no group: nobody
        ([STOP_SCOPE, "read:users", f"{MINE_SCOPE}x"], ("ml101",), Reach(False, frozenset(), frozenset())),
    ],
    ids=["admin", "teacher", "filtered-group", "filtered-users", "student", "no-groups", "other-scopes"],
)  # fmt: skip
def test_the_reach_of_the_dashboards_scopes_and_a_students_own(scopes, groups, expected):
    assert reach(scopes, "teach", groups) == expected


def view_for(scopes, viewer, groups=(), **asked):
    access = UsageAccess(reach(scopes, viewer, groups))
    query = parse_query(
        {"since": "2026-03-01", "until": "2026-03-07", **asked}, today=TODAY, default_by=access.default_by()
    )
    return build_usage_view(USES, query, access, zone=UTC, now=NOW, viewer=viewer)


def test_an_admin_sees_every_course_and_student():
    view = view_for([READ_SCOPE], "root")
    assert [s.key for s in view.daily.series] == ["cv202", "ml101", "(no group)"]
    assert view.seen_as == "every course and student" and not view.own_only
    assert view.group_choices == ("cv202", "ml101")
    assert view_for([READ_SCOPE], "root", group="cv202").daily.total.gpu_hours == 10


def test_a_teacher_sees_their_course_and_its_students_never_another_course():
    view = view_for([READ_GROUPS_SCOPE], "teach", ("ml101",))
    assert view.query.by == "user"  # a teacher's default: their students
    assert {s.key: s.gpu_hours for s in view.daily.series} == {"bob": 4, "ann": 2}  # not cat, not dan
    by_course = view_for([READ_GROUPS_SCOPE], "teach", ("ml101",), by="group")
    assert [(s.key, s.gpu_hours) for s in by_course.daily.series] == [("ml101", 6)]  # bob's cv202 is not named
    assert by_course.daily.groups == ("ml101",) and by_course.group_choices == ("ml101",)
    assert by_course.seen_as == "the course ml101 and its students"
    both = UsageAccess(reach([READ_GROUPS_SCOPE, MINE_SCOPE, f"{READ_SCOPE}!user=dan"], "teach", ("ml101", "ml101-t")))
    assert both.describe("teach") == (
        "the courses ml101 and ml101-t and their students, and the use of dan, and your own use"
    )
    assert "cv202" not in json.dumps(usage_json(by_course)) and "cat" not in json.dumps(usage_json(view))
    with pytest.raises(PermissionError, match=r"group: 'cv202' is not one of your courses \(ml101\)"):
        view_for([READ_GROUPS_SCOPE], "teach", ("ml101",), group="cv202")
    # The same with the read scope filtered to the course.
    filtered = view_for([f"{READ_SCOPE}!group=ml101"], "teach", ())
    assert {s.key for s in filtered.daily.series} == {"ann", "bob"}


def test_a_student_sees_only_their_own_records():
    view = view_for([MINE_SCOPE], "bob", ("cv202", "ml101"))
    assert view.own_only and view.query.by == "user"
    assert [(s.key, s.gpu_hours) for s in view.daily.series] == [("bob", 4)]
    assert view.daily.total.users == 1 and view.daily.total.gpu_hours == 4
    by_course = view_for([MINE_SCOPE], "bob", ("cv202", "ml101"), by="group")
    assert {s.key: s.gpu_hours for s in by_course.daily.series} == {"cv202": 4, "ml101": 4}  # their own courses
    assert view_for([MINE_SCOPE], "bob", (), group="ml101").daily.total.gpu_hours == 4


def test_the_store_narrows_to_the_reach_and_the_view_narrows_again(tmp_path):
    store = UsageStore(f"sqlite:///{tmp_path}/usage.sqlite")
    book = UsageBook(store)
    for u in USES:
        holder = f"{u.user}/"
        start = datetime.fromtimestamp(u.start_us / 1e6, UTC)
        book.assigned(
            holder,
            user=u.user,
            units=["GPU-0"] * u.unit_count,
            groups=u.groups,
            share=Fraction(1, u.share_of),
            at=start,
        )
        book.released(holder, "user", at=datetime.fromtimestamp(u.stop_us / 1e6, UTC))
    access = UsageAccess(reach([READ_GROUPS_SCOPE], "teach", ("ml101",)))
    assert sorted(u.user for u in store.uses(**access.store_filter())) == ["ann", "bob"]
    assert UsageAccess(reach([READ_SCOPE])).store_filter() == {}
    # Whatever a store gives, the view shows only the reach.
    query = parse_query({"since": "2026-03-01", "until": "2026-03-07"}, today=TODAY, default_by="user")
    view = build_usage_view(store.uses(), query, access, zone=UTC, now=NOW)
    assert {s.key for s in view.daily.series} == {"ann", "bob"}
    store.close()


# --- the chart


@pytest.mark.parametrize(("value", "top"), [(0, 1), (0.3, 0.5), (7, 10), (2.1, 2.5), (120, 200), (10, 10)])
def test_the_axis_top_is_a_round_number(value, top):
    assert nice_ceiling(value) == pytest.approx(top)


@pytest.mark.parametrize(
    ("hours", "text"),
    [(0, "0"), (0.004, "< 0.01"), (0.25, "0.25"), (12.5, "12.50"), (999.994, "999.99"), (1250.4, "1,250")],
)
def test_gpu_hours_are_written_to_a_hundredth(hours, text):
    assert hours_text(hours) == text


def test_the_chart_is_an_svg_of_numbers_with_its_title_and_words():
    view = view_for([READ_SCOPE], "root")
    svg = str(day_chart(view))
    assert svg.startswith('<svg class="usage-chart"') and 'role="img"' in svg
    assert 'aria-labelledby="usage-chart-title usage-chart-desc"' in svg
    title = re.search(r'<title id="usage-chart-title">(.*?)</title>', svg).group(1)
    desc = re.search(r'<desc id="usage-chart-desc">(.*?)</desc>', svg).group(1)
    assert title == "GPU-hours per day, Sun 1 Mar 2026 to Sat 7 Mar 2026"
    assert desc == (
        "14.00 GPU-hours in all, on 5 of 7 days; the busiest day was Thu 5 Mar 2026 with 6.00 GPU-hours."
        " The axis runs from 0 to 10 GPU-hours."
    )
    assert svg.count('<rect class="bar"') == 5  # a bar for each day with use, each with its number
    assert "<title>Thu 5 Mar 2026: 6.00 GPU-hours</title>" in svg
    assert not any(name in svg for name in ("ann", "bob", "cat", "ml101"))  # numbers and days only


def test_a_rows_small_chart_says_itself_in_words_and_escapes_the_name():
    evil = use(1, '<img src=x onerror=alert(1)>"', [], at(2, 9), 2)
    view = build_usage_view(
        [evil], parse_query({"since": "2026-03-01", "until": "2026-03-07", "by": "user"}, today=TODAY),
        UsageAccess(Reach(everyone=True)), zone=UTC, now=NOW,
    )  # fmt: skip
    (row,) = view.daily.series
    svg = str(row_chart(row, view.daily.days, 4, "user"))
    assert "<img" not in svg and "&lt;img src=x onerror=alert(1)&gt;&#34;: 2.00 GPU-hours" in svg
    assert "the most on Mon 2 Mar 2026 (2.00)" in svg and svg.count("h0.8V20h-0.8z") == 1


# --- the page and its JSON


class _Outline(HTMLParser):
    """The headings, the form's labels and inputs, and the ids, of a page."""

    def __init__(self):
        super().__init__()
        self.headings, self.labels, self.inputs, self.ids, self.tag = [], set(), set(), [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "label":
            self.labels.add(a.get("for"))
        if tag in ("input", "select"):
            self.inputs.add(a.get("id"))


def outline(html: str) -> _Outline:
    parser = _Outline()
    parser.feed(html[html.index("<main") : html.index("</main>")])
    return parser


def test_the_page_has_a_main_landmark_labelled_fields_headings_in_order_and_the_numbers():
    view = view_for([READ_SCOPE], "root")
    html = render_usage_page(view, user="root", form=view.query, time_zone="UTC")
    page = outline(html)
    assert page.headings == [1, 2, 2]  # GPU-hours, per day, per course
    assert page.inputs == page.labels == {"since", "until", "group", "by"}
    assert len(page.ids) == len(set(page.ids))
    assert '<main class="container-fluid gpu-usage" id="usage">' in html and "GPU dashboard</a>" in html
    assert 'value="2026-03-01"' in html and 'value="2026-03-07"' in html
    assert '<option value="cv202">cv202</option>' in html
    assert 'href="api/usage?since=2026-03-01&amp;until=2026-03-07&amp;by=group"' in html
    days = html[html.index('id="usage-days"') :]
    assert "<caption" in days and "Thu 5 Mar 2026" in days and '<td class="num">6.00</td>' in days
    rows = html[html.index('id="usage-rows"') :]
    assert '<tr data-key="cv202">' in rows and rows.count("n/a") >= 2 * 3  # nothing measured here: n/a, never 0
    assert "counts fully in each" in html


def test_the_page_says_a_bad_value_and_nothing_to_show():
    html = render_usage_page(
        None,
        user="ann",
        form={"since": "1 March", "until": "", "group": "", "by": ""},
        error="since: '1 March' is not a date",
    )
    assert 'role="alert"' in html and "since: &#39;1 March&#39; is not a date" in html
    assert 'value="1 March"' in html and "<svg" not in html
    empty = view_for([MINE_SCOPE], "eve")
    html = render_usage_page(empty, user="eve", form=empty.query)
    assert "No GPU use recorded in this period." in html and "Showing your own GPU use" in html
    assert "GPU dashboard</a>" not in html  # a student has no view of the dashboard's GPUs here


def test_the_json_has_every_row_and_every_day():
    view = view_for([READ_SCOPE], "root", by="user")
    data = usage_json(view)
    assert data["days"][0] == "2026-03-01" and len(data["days"]) == 7
    assert data["total"]["gpu_hours"] == 14 and data["total"]["gpu_hours_per_day"] == [0, 2, 2, 2, 6, 2, 0]
    assert data["rows"][0] == {
        "user": "cat",
        "gpu_hours": 6.0,
        "servers": 1,
        "users": 1,
        "utilisation": None,
        "peak_memory": None,
        "gpu_hours_per_day": [0, 0, 0, 0, 6, 0, 0],
    }
    assert (data["by"], data["time_zone"], data["group"], data["shows"]) == (
        "user",
        "UTC",
        None,
        "every course and student",
    )


def test_the_page_shows_the_first_rows_and_says_how_many_more_the_json_has():
    many = [use(n, f"s{n:04d}", ["big"], at(2, 9), 1 + n / 1000) for n in range(ROWS_SHOWN + 5)]
    query = parse_query({"since": "2026-03-01", "until": "2026-03-07", "by": "user"}, today=TODAY)
    view = build_usage_view(many, query, UsageAccess(Reach(everyone=True)), zone=UTC, now=NOW)
    html = render_usage_page(view, user="root", form=query)
    assert html.count("<tr data-key=") == ROWS_SHOWN and "And 5 more students" in html
    assert len(usage_json(view)["rows"]) == ROWS_SHOWN + 5


# --- the routes, on the dashboard's own app


@pytest.fixture
def dashboard(tmp_path, monkeypatch):
    from jupyterhub.services.auth import HubOAuth

    from gpuspawner.dashboard.app import GPUDashboard

    db = tmp_path / "usage.sqlite"
    book = UsageBook(UsageStore(f"sqlite:///{db}"))
    now = datetime.now(UTC)
    for user, groups in (("ann", ["ml101"]), ("cat", ["cv202"])):
        book.assigned(f"{user}/", user=user, units=["GPU-0"], groups=groups, at=now - timedelta(hours=2))
        book.released(f"{user}/", "user", at=now - timedelta(hours=1))
    (tmp_path / "jupyterhub_config.py").write_text(
        'c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n'
        'c.GPUSpawner.gpus = [{"index": 0, "uuid": "GPU-0", "name": "T4", "memory": "16G"}]\n'
        f"c.GPUSpawner.usage_db_url = {f'sqlite:///{db}'!r}\n"
    )
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-used-here")
    GPUDashboard.clear_instance()
    app = GPUDashboard()
    app.initialize(["-f", str(tmp_path / "jupyterhub_config.py"), "--no-nvml", "--history-interval=0"])
    yield app
    HubOAuth.clear_instance()


USERS = {
    "root": {"name": "root", "groups": [], "scopes": [READ_SCOPE]},
    "teach": {"name": "teach", "groups": ["ml101"], "scopes": [READ_GROUPS_SCOPE, MINE_SCOPE]},
    "ann": {"name": "ann", "groups": ["ml101"], "scopes": [MINE_SCOPE]},
    "stopper": {"name": "stopper", "groups": ["ml101"], "scopes": [f"{READ_SCOPE}!server=x/y"]},
}


async def test_the_routes_answer_each_viewer_with_their_reach(dashboard, monkeypatch):
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from gpuspawner.dashboard import usage_page

    # The hub's login stands aside: the user is named by a header (the handlers' own checks stay).
    monkeypatch.setattr(
        usage_page._UsageHandler, "get_current_user", lambda self: USERS.get(self.request.headers.get("X-User"))
    )
    sock, port = bind_unused_port()
    server = HTTPServer(dashboard.make_app())
    server.add_sockets([sock])
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}{dashboard.service_prefix}"

    async def get(path, user):
        return await client.fetch(base + path, headers={"X-User": user}, raise_error=False, follow_redirects=False)

    try:
        assert dashboard.usage_db_url.endswith("usage.sqlite") and dashboard.usage_time_zone == "UTC"
        users = {
            name: {r["user"] for r in json.loads((await get("api/usage?by=user", name)).body)["rows"]}
            for name in ("root", "teach", "ann")
        }
        assert users == {"root": {"ann", "cat"}, "teach": {"ann"}, "ann": {"ann"}}
        page = await get("usage", "teach")
        assert page.code == 200 and "Content-Security-Policy" in page.headers
        assert b'<tr data-key="ann">' in page.body and b"cat" not in page.body
        assert (await get("usage?group=cv202", "teach")).code == 403
        refused = await get("api/usage?group=cv202", "teach")
        assert refused.code == 403 and json.loads(refused.body) == {
            "error": "group: 'cv202' is not one of your courses (ml101)"
        }
        bad = await get("api/usage?since=yesterday", "root")
        assert bad.code == 400 and "is not a date" in json.loads(bad.body)["error"]
        assert (await get("usage?since=yesterday", "root")).code == 400
        assert (await get("api/usage", "stopper")).code == 403  # a scope that reaches nobody's usage
        assert (await get("api/usage", "nobody")).code == 403
    finally:
        server.stop()


def test_the_usage_time_zone_must_be_one(dashboard):
    from traitlets import TraitError

    with pytest.raises(TraitError, match="usage_time_zone 'Mars/Olympus' is not a time zone such as Europe/Berlin"):
        dashboard.usage_time_zone = "Mars/Olympus"
    dashboard.usage_time_zone = "Europe/Berlin"
    assert dashboard.usage_zone == BERLIN
