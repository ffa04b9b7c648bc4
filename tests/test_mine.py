"""My GPU (gpuspawner.dashboard.mine): a student's own servers, their GPUs, use and clocks in
sentences, the page and its reach (the viewer is the hub's identity, never the URL), the clocks
file, the admins' budget warnings, and the Services menu from the hub."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
import pytest_asyncio

from gpuspawner import labels as label
from gpuspawner.culler.clocks import (
    BUDGET,
    IDLE,
    IDLE_WHEN_WAITING,
    RESERVATION,
    RUNTIME,
    Clock,
    ServerClocks,
    parse_report,
    report_json,
)
from gpuspawner.culler.policy import CullRules
from gpuspawner.dashboard.mine import ClocksFile, annotate, duration, my_gpu, part_of, render_mine, rule_lines, say
from gpuspawner.dashboard.model import build_view, parse_events
from gpuspawner.dashboard.page import render_page
from gpuspawner.gpus.nvml import UnitUsage

from .test_dashboard import INVENTORY, NOW, POLICY, G, container

RULES = CullRules(gpu_idle_timeout=1800, max_runtime=8 * 3600)


def labelled(user, server="", gpus=(), profile="gpu", shared=False, rules=RULES, created=NOW - timedelta(hours=2)):
    """A container as the spawner labels it, with its rules."""
    c = container(user, server, profile=profile, shared=shared, created=created)
    record = label.ServerRecord(user, server, profile, tuple(gpus), shared=shared, rules=rules)
    c["Labels"] = label.server_labels(record)
    return c


CONTAINERS = [
    labelled("mia", gpus=("GPU-0",)),
    labelled("mia", "big", gpus=("GPU-1",), rules=CullRules(max_runtime=3600)),
    labelled("noor", gpus=("MIG-2a",), profile="shared", shared=True, rules=CullRules()),
    labelled("li", gpus=("MIG-2a",), profile="shared", shared=True),
    labelled("max", gpus=("MIG-2b",)),
]
STOPS = [
    json.dumps(
        {
            "time": (NOW - timedelta(hours=1)).isoformat(),
            "user": u,
            "server": "",
            "profile": "gpu",
            "container": "c",
            "reason": "gpu_idle",
            "message": "stopped after 30 minutes without GPU use",
        }
    )
    for u in ("mia", "max")
]


def view(**kwargs):
    usage = {"GPU-0": UnitUsage(37, 12 * G, 80 * G, 40, ())}
    args = {"now": NOW, "host": "gpu1", "usage": usage, "stops": parse_events(STOPS, 20)}
    return build_view(INVENTORY, POLICY, kwargs.pop("containers", CONTAINERS), **{**args, **kwargs})


def clocks(user, server="", units=("GPU-0",), *found: Clock) -> ServerClocks:
    return ServerClocks(user, server, "gpu", units, found)


def report(*servers: ServerClocks, time=NOW, cull_every=60):
    return parse_report(report_json(servers, time, cull_every))


def minutes(m: float) -> datetime:
    return NOW + timedelta(minutes=m)


# --- the sentences


@pytest.mark.parametrize(
    "clock, text, left",
    [
        pytest.param(
            Clock(IDLE, 1800, minutes(-22), minutes(8)),
            "Idle for 22 of 30 minutes: this server stops in 8 minutes unless the GPU is used.",
            480,
            id="idle",
        ),
        pytest.param(
            Clock(IDLE, 1800), "It stops after 30 minutes without GPU use. Its GPU is in use now.", None, id="in-use"
        ),
        pytest.param(
            Clock(IDLE, 15, minutes(-0.1), minutes(0.15)),
            "Idle for 6 of 15 seconds: this server stops in 9 seconds unless the GPU is used.",
            9,
            id="seconds",
        ),
        pytest.param(
            Clock(IDLE, 1800, minutes(-31), minutes(-1)),
            "Idle for 31 of 30 minutes: this server stops at the lab's next check unless the GPU is used.",
            0,
            id="due",
        ),
        pytest.param(
            Clock(IDLE, 1800, minutes(-29), minutes(4), grace=300),
            "Idle for 29 of 30 minutes: this server stops in 4 minutes unless the GPU is used."
            " Working in Jupyter puts it off until 5 minutes after your last activity.",
            240,
            id="jupyter-grace",
        ),
        pytest.param(
            Clock(IDLE_WHEN_WAITING, 600, applies=False),
            "While others wait in line for its GPU, it stops after 10 minutes without GPU use. Nobody waits now.",
            None,
            id="nobody-waits",
        ),
        pytest.param(
            Clock(IDLE_WHEN_WAITING, 600, minutes(-4), minutes(6)),
            "Others wait in line for its GPU. Idle for 4 of 10 minutes: this server stops in 6 minutes unless the"
            " GPU is used.",
            360,
            id="someone-waits",
        ),
        pytest.param(
            Clock(RUNTIME, 8 * 3600, minutes(-288), minutes(192)),
            "Runs at most 8 hours: stops at 13:12 (in 3 hours 12 minutes).",
            11520,
            id="max-runtime",
        ),
        pytest.param(
            Clock(RUNTIME, 8 * 3600, minutes(-600), minutes(-120)),
            "Runs at most 8 hours: its time is up, and it stops at the lab's next check.",
            0,
            id="time-up",
        ),
        pytest.param(
            Clock(BUDGET, 600, minutes(-3), minutes(7), note="your budget of 10 GPU-hours this week is spent"),
            "Your GPU budget is spent: this server stops in 7 minutes. Your budget of 10 GPU-hours this week is spent.",
            420,
            id="budget-spent",
        ),
        pytest.param(
            Clock(
                BUDGET, 600, None, minutes(70), name="ML101", note="ML101's budget: 1 of 10 GPU-hours left this week"
            ),
            "ML101's budget: 1 of 10 GPU-hours left this week. At this rate it runs out at 11:00, and this server"
            " stops 10 minutes later.",
            4200,
            id="budget-running-out",
        ),
        pytest.param(
            Clock(RESERVATION, 0, None, minutes(125), name="ML101 lab", note="Monday 2 March 2026, 12:05-14:00 (UTC)"),
            "Its GPU is reserved for ML101 lab from 12:05: this server stops in 2 hours 5 minutes."
            " Lab hours: Monday 2 March 2026, 12:05-14:00 (UTC).",
            7500,
            id="lab-hours",
        ),
    ],
)
def test_each_clock_is_a_sentence_with_its_countdown(clock, text, left):
    line = say(clock, NOW, timezone.utc)
    assert line.text == text
    assert line.seconds_left == left


@pytest.mark.parametrize(
    "clock, said",
    [
        (Clock(IDLE, 1800, minutes(-22), minutes(8)), "This server stops in 8 minutes unless its GPU is used."),
        (Clock(IDLE, 1800), ""),
        (
            Clock(IDLE_WHEN_WAITING, 600, minutes(-4), minutes(6)),
            "This server stops in 6 minutes unless its GPU is used: others wait in line for it.",
        ),
        (
            Clock(RUNTIME, 3600, minutes(-60), minutes(0)),
            "This server stops at the lab's next check, when it reaches its time limit.",
        ),
        (
            Clock(RUNTIME, 8 * 3600, minutes(-288), minutes(192)),
            "This server stops at 13:12 (in 3 hours 12 minutes), when it reaches its time limit.",
        ),
        (Clock(BUDGET, 600, minutes(-3), minutes(7)), "This server stops in 7 minutes: your GPU budget is spent."),
        (
            Clock(BUDGET, 600, None, minutes(70), name="ML101"),
            "This server stops at 11:10 (in 1 hour 10 minutes), when ML101's GPU budget runs out.",
        ),
        (
            Clock(RESERVATION, 0, None, minutes(125), name="ML101 lab"),
            "This server stops at 12:05 (in 2 hours 5 minutes), when ML101 lab starts on its GPU.",
        ),
    ],
    ids=[
        "idle",
        "in-use",
        "someone-waits",
        "time-up",
        "max-runtime",
        "budget-spent",
        "budget-running-out",
        "lab-hours",
    ],
)
def test_the_soonest_stop_heads_the_card_in_one_line(clock, said):
    assert say(clock, NOW, timezone.utc).headline == said


def test_durations_and_parts_as_people_say_them():
    assert [duration(s) for s in (0, 59, 119, 121, 479, 3 * 3600 + 12 * 60)] == [
        "0 seconds",
        "59 seconds",
        "1 minute 59 seconds",
        "2 minutes",
        "8 minutes",
        "3 hours 12 minutes",
    ]
    assert part_of(22 * 60 + 50, 1800) == "22 of 30 minutes"
    assert part_of(70 * 60, 4 * 3600) == "1 hour 10 minutes of 4 hours"


def test_the_soonest_stop_comes_first_and_a_server_the_culler_has_not_judged_lists_its_rules():
    found = clocks(
        "mia",
        "",
        ("GPU-0",),
        Clock(RUNTIME, 8 * 3600, minutes(-288), minutes(192)),
        Clock(IDLE, 1800, minutes(-22), minutes(8)),
        Clock(IDLE_WHEN_WAITING, 600, applies=False),
    )
    assert [r.rule for r in rule_lines(found, RULES, NOW)] == [IDLE, RUNTIME, IDLE_WHEN_WAITING]
    unjudged = rule_lines(
        None, CullRules(gpu_idle_timeout=1800, gpu_idle_timeout_when_waiting=600, max_runtime=3600), NOW
    )
    assert [r.text for r in unjudged] == [
        "Stops after 30 minutes without GPU use.",
        "While others wait in line for its GPU, it stops after 10 minutes without GPU use.",
        "Runs at most 1 hour.",
    ]
    assert rule_lines(None, None, NOW) == ()


# --- the view: one's own servers only


def test_a_student_sees_their_own_servers_what_they_hold_and_their_clocks():
    idle = Clock(IDLE, 1800, minutes(-22), minutes(8))
    mine = my_gpu(
        view(),
        report(clocks("mia", "", ("GPU-0",), idle), clocks("li", "", ("MIG-2a",), idle)),
        "mia",
        NOW,
        profile_names={"gpu": "ML101 - PyTorch, 1 GPU"},
        zone=timezone.utc,
    )
    assert [s.name for s in mine.servers] == ["", "big"]
    default, big = mine.servers
    assert default.profile_name == "ML101 - PyTorch, 1 GPU" and default.checked
    ((unit, *_),) = [(u.unit, u.shared, u.others) for u in default.units]
    assert (unit.id, unit.usage.utilization_gpu) == ("GPU-0", 37)
    assert default.next_stop.text == "Idle for 22 of 30 minutes: this server stops in 8 minutes unless the GPU is used."
    assert default.next_stop.soon
    # Not yet judged by the culler: its rule from its labels, no clock.
    assert not big.checked and [r.text for r in big.rules] == ["Runs at most 1 hour."] and big.next_stop is None
    # Only their own: no other user, no other's stop, in the view or its JSON.
    body = json.dumps(mine.as_json())
    for other in ("noor", "li", "max"):
        assert f'"{other}"' not in body and f"{other}/" not in body
    assert [e.user for e in mine.stops] == ["mia"]


def test_a_shared_gpu_says_it_is_shared_and_with_how_many_never_with_whom():
    mine = my_gpu(view(), report(), "noor", NOW)
    ((unit,),) = [s.units for s in mine.servers]
    assert (unit.shared, unit.others, unit.slots) == (True, 1, 4)
    page = render_mine(mine, refresh=15)
    assert "shared:\n   1 other server on it (2 of 4 slots taken)" in page
    assert "li" not in words(page) and "li/" not in page
    assert "No rule of the lab stops this server; stop it yourself when you are done." in page


def test_an_earlier_servers_clocks_are_not_taken_for_a_new_one_of_the_same_name():
    old = clocks("mia", "", ("GPU-3",), Clock(IDLE, 1800, minutes(-29), minutes(1)))
    (default, _) = my_gpu(view(), report(old), "mia", NOW).servers
    assert not default.checked and default.next_stop is None


def test_someone_with_no_server_is_told_so_and_waiting_in_line_is_shown():
    from gpuspawner.dashboard.model import Waiter

    mine = my_gpu(view(waiting=(Waiter("ana", "", "ML101", "1 NVIDIA A100 GPU", NOW, 2, 3),)), report(), "ana", NOW)
    assert mine.servers == () and [w.position for w in mine.waiting] == [2]
    page = render_mine(mine, refresh=15)
    assert "You have no GPU server running." in page and "2 of 3 in line for 1 NVIDIA A100 GPU" in page
    empty = render_mine(my_gpu(view(), None, "nobody", NOW), refresh=15)
    assert "hub's home page" in empty


# --- the page


def words(page: str) -> list[str]:
    """The words a reader sees: no style, no markup."""
    return re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.DOTALL)).split()


class Outline(HTMLParser):
    """The page's landmarks, headings and meter labels, as a screen reader would list them."""

    def __init__(self):
        super().__init__()
        self.landmarks, self.headings, self.labels = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("main", "nav"):
            self.landmarks.append(tag)
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if attrs.get("role") in ("progressbar", "img"):
            self.labels.append(attrs.get("aria-label"))


def page_for(user="mia", **kwargs):
    idle = Clock(IDLE, 1800, minutes(-22), minutes(8))
    mine = my_gpu(view(**kwargs), report(clocks("mia", "", ("GPU-0",), idle)), user, NOW, zone=timezone.utc)
    return render_mine(mine, refresh=15, xsrf_token="x")


def test_the_page_is_the_hubs_with_landmarks_headings_in_order_and_labelled_meters():
    page = page_for()
    outline = Outline()
    outline.feed(page)
    assert outline.landmarks.count("main") == 1 and "nav" in outline.landmarks
    levels = outline.headings
    assert levels[0] == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels
    assert all(outline.labels) and "GPU utilisation of GPU 0" in outline.labels
    assert 'http-equiv="refresh"' not in page and 'data-every="15" hidden>Pause updates' in page  # WCAG 2.2.1
    assert 'id="dark-theme-toggle"' in page  # the hub's own navigation bar and theme toggle
    assert 'data-next-stop="gpu_idle_timeout" data-seconds-left="480"' in page
    # The warning is said in words (and a sign), not by colour alone.
    assert "&#9888;</span> This server stops in 8 minutes unless its GPU is used.</p>" in page
    assert "Idle for 22 of 30 minutes: this server stops in 8 minutes unless the GPU is used." in page


def test_every_string_a_user_controls_is_escaped():
    evil = 'eve"><img src=x onerror=alert(1)>'
    c = [labelled(evil, gpus=("GPU-0",), profile="<b>p</b>")]
    mine = my_gpu(view(containers=c), report(), evil, NOW, profile_names={"<b>p</b>": "<script>x</script>"})
    page = render_mine(mine, refresh=15)
    assert "<img src=x" not in page and "<script>x</script>" not in page and "<b>p</b>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page


def test_the_sparkline_and_bars_show_the_units_use():
    from gpuspawner.dashboard.history import UsageHistory

    history = UsageHistory(3600, 600)
    v = history.sample(view())
    mine = my_gpu(v, report(), "mia", NOW)
    assert mine.history_interval == 600
    page = render_mine(mine, refresh=15)
    svg = re.search(r'<svg class="spark".*?</svg>', page, re.DOTALL).group(0)
    assert ET.fromstring(svg).get("aria-label").startswith("GPU utilisation over the last 60 min: now 37%")
    assert 'aria-valuenow="37"' in page and "12 GiB / 80 GiB" in page


def test_a_stale_or_unreadable_clocks_file_is_said_and_the_rules_still_listed():
    old = report(clocks("mia", "", ("GPU-0",), Clock(IDLE, 1800, minutes(-22), minutes(8))), time=minutes(-10))
    page = render_mine(my_gpu(view(), old, "mia", NOW, zone=timezone.utc), refresh=15)
    assert "The GPU culler last reported at 09:50: the times below may be out of date." in page
    broken = render_mine(my_gpu(view(), None, "mia", NOW, clocks_error="clocks.json: not JSON"), refresh=15)
    assert "The GPU culler's clocks cannot be read (clocks.json: not JSON)" in broken
    assert "Stops after 30 minutes without GPU use." in broken


def test_the_clocks_file_is_read_again_only_when_it_changes(tmp_path):
    path = tmp_path / "clocks.json"
    source = ClocksFile(str(path))
    assert source.read() == (None, "")  # not written yet
    path.write_text(json.dumps(report_json([clocks("mia")], NOW, 60)))
    first, error = source.read()
    assert error == "" and list(first.servers) == ["mia/"]
    assert source.read()[0] is first  # unchanged: the same parse
    path.write_text("{not json")
    assert source.read()[0] is None and source.read()[1].startswith(f"{path}: ")
    assert ClocksFile("").read() == (None, "")


# --- the admins' dashboard: a spent budget's coming stop


def test_a_spent_budget_warns_on_the_admins_map_table_and_api():
    spent = Clock(BUDGET, 600, minutes(-3), minutes(7), name="ML101", note="ML101's budget ... is spent")
    running_out = Clock(BUDGET, 600, None, minutes(90), note="Your budget: 1 of 10 GPU-hours left this week")
    v = annotate(view(), report(clocks("mia", "", ("GPU-0",), spent), clocks("max", "", ("MIG-2b",), running_out)))
    warnings = {h.holder: h.warning for u in v.units for h in u.holders if h.warning}
    assert warnings == {"mia/": "ML101's GPU budget is spent: stops in 7 minutes"}
    page = render_page(v, user="ada", can_stop=True, xsrf_form_html="", refresh=15)
    assert page.count('data-warning="mia/"') == 2  # on the map's tile and in the table
    assert "ML101&#39;s GPU budget is spent: stops in 7 minutes" in page
    assert v.as_json()["units"][0]["holders"][0]["warning"] == "ML101's GPU budget is spent: stops in 7 minutes"
    assert annotate(view(), None) == view()


# --- the service: who sees whose servers


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop serves it
async def dashboard(tmp_path, monkeypatch):
    """The service's app on a port of its own, its hub identity from tokens this test hands out."""
    from jupyterhub.services.auth import HubOAuth

    from gpuspawner.dashboard.app import GPUDashboard
    from gpuspawner.services import MINE_SCOPE, READ_SCOPE

    from .realhub import free_port

    hub_config = tmp_path / "jupyterhub_config.py"
    hub_config.write_text(
        'c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n'
        f"c.GPUSpawner.clocks_file = {str(tmp_path / 'clocks.json')!r}\n"
        'c.GPUSpawner.profiles = [{"slug": "gpu", "display_name": "ML101 GPU", "image": "lab:1", "gpus": 1}]\n'
    )
    (tmp_path / "clocks.json").write_text(
        json.dumps(report_json([clocks("mia", "", ("GPU-0",), Clock(IDLE, 1800, minutes(-22), minutes(8)))], NOW, 60))
    )
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-dashboard/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    app = GPUDashboard()
    app.initialize(["-f", str(hub_config), "--no-nvml"])
    the_view = view()

    async def fixed_view():
        return the_view

    app.sources.view = fixed_view
    models = {
        "mia-token": {"kind": "user", "name": "mia", "scopes": [MINE_SCOPE], "groups": []},
        "max-token": {"kind": "user", "name": "max", "scopes": [MINE_SCOPE], "groups": []},
        "admin-token": {"kind": "user", "name": "ada", "scopes": [READ_SCOPE, MINE_SCOPE], "groups": []},
        "nothing-token": {"kind": "user", "name": "zed", "scopes": [], "groups": []},
    }

    async def user_for_token(token, **kwargs):
        return models.get(token)

    app.hub_auth.user_for_token = user_for_token

    class Hub:
        asked = 0

        async def services(self):
            Hub.asked += 1
            return [
                {"name": "gpu-dashboard", "prefix": "/services/gpu-dashboard/"},
                {"name": "gpu-ssh", "prefix": "/services/gpu-ssh/"},
            ]

    app.hub = Hub()
    port = free_port()
    server = app.make_app().listen(port, "127.0.0.1")
    yield app, f"http://127.0.0.1:{port}/services/gpu-dashboard/"
    server.stop()
    HubOAuth.clear_instance()


async def fetch(url, token=None, **kwargs):
    from tornado.httpclient import AsyncHTTPClient

    headers = {"Authorization": f"token {token}"} if token else {}
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False, follow_redirects=False, **kwargs)


async def test_each_user_sees_their_own_servers_whatever_the_url_says(dashboard):
    app, base = dashboard
    page = (await fetch(base + "mine", "max-token")).body.decode()
    assert 'data-server=""' in page and "mia" not in page and "noor" not in page
    # A crafted URL: the user comes from the hub's identity of the token, never from the URL.
    crafted = (await fetch(base + "mine?user=mia", "max-token")).body.decode()
    assert "mia" not in crafted and "Idle for 22" not in crafted
    assert (await fetch(base + "mine/mia", "max-token")).code == 404
    assert (await fetch(base + "api/v1/mine/mia", "max-token")).code == 404
    api = json.loads((await fetch(base + "api/v1/mine?user=mia", "max-token")).body)
    assert api["user"] == "max" and [u["id"] for s in api["servers"] for u in s["units"]] == ["MIG-2b"]
    # Mia's own: her clock, the profile's name for people.
    own = json.loads((await fetch(base + "api/v1/mine", "mia-token")).body)
    assert own["user"] == "mia" and own["servers"][0]["profile_name"] == "ML101 GPU"
    assert own["servers"][0]["next_stop"]["rule"] == IDLE and own["clocks"]["cull_every"] == 60


async def test_an_admin_sees_their_own_on_my_gpu_and_a_student_is_sent_there_from_the_dashboard(dashboard):
    app, base = dashboard
    admin = json.loads((await fetch(base + "api/v1/mine", "admin-token")).body)
    assert admin["user"] == "ada" and admin["servers"] == []
    assert (await fetch(base, "admin-token")).code == 200  # the dashboard itself
    student = await fetch(base, "mia-token")
    assert student.code == 302 and student.headers["Location"] == "/services/gpu-dashboard/mine"
    assert (await fetch(base + "api/v1/gpus", "mia-token")).code == 403  # never the whole lab
    for path in ("mine", "api/v1/mine"):
        assert (await fetch(base + path, "nothing-token")).code == 403
    assert (await fetch(base + "api/v1/mine")).code == 403  # no credentials
    login = await fetch(base + "mine")
    assert login.code == 302 and "oauth2/authorize" in login.headers["Location"]


async def test_the_pages_menu_lists_the_hubs_services_asked_once_a_minute(dashboard):
    app, base = dashboard
    page = (await fetch(base + "mine", "mia-token")).body.decode()
    assert 'href="/services/gpu-ssh/">gpu-ssh</a>' in page
    assert 'href="/services/gpu-dashboard/">gpu-dashboard</a>' in page
    await fetch(base + "mine", "mia-token")
    assert type(app.hub).asked == 1
    assert (await fetch(base + "mine", "mia-token")).headers["Content-Security-Policy"].startswith("default-src 'none'")
