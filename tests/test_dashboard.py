"""The dashboard's pure part (view, page, metrics, JSON) with plain fakes; its handlers' access rules."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuspawner import dashboard
from gpuspawner.dashboard.metrics import render_metrics
from gpuspawner.dashboard.model import (
    FREE,
    SHARED,
    UNKNOWN,
    USED,
    Reach,
    activity_from_users,
    build_view,
    groups_from_users,
    parse_events,
    reach_from_scopes,
    restrict,
    waiters_from_snapshot,
)
from gpuspawner.dashboard.page import render_page
from gpuspawner.gpus import GPU, Inventory, Policy
from gpuspawner.gpus.nvml import UnitUsage

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
G = 1024**3
UNITS = (
    GPU(0, "GPU-0", "NVIDIA A100-SXM4-80GB", 80 * G),
    GPU(1, "GPU-1", "NVIDIA A100-SXM4-80GB", 80 * G),
    GPU(2, "MIG-2a", "NVIDIA A100-SXM4-40GB", 10 * G, mig_profile="1g.10gb", parent_uuid="GPU-2", mig_index=0),
    GPU(2, "MIG-2b", "NVIDIA A100-SXM4-40GB", 10 * G, mig_profile="1g.10gb", parent_uuid="GPU-2", mig_index=1),
)
INVENTORY = Inventory(units=UNITS, source="static")
POLICY = Policy(share_limit=4)


def container(user, server="", gpus="", profile="gpu", shared=False, created=NOW - timedelta(hours=2), image="lab:1"):
    return {
        "Id": f"{user}{server}".ljust(12, "0"),
        "Names": [f"/jupyter-{user}{'-' + server if server else ''}"],
        "Image": image,
        "Created": int(created.timestamp()),
        "Labels": {
            "gpuspawner.user": user,
            "gpuspawner.server": server,
            "gpuspawner.profile": profile,
            "gpuspawner.gpus": gpus,
            "gpuspawner.shared": "1" if shared else "",
        },
    }


CONTAINERS = [
    container("mia", gpus="GPU-0"),
    container("max", "big", gpus="GPU-1"),
    container("noor", gpus="MIG-2a", profile="shared", shared=True),
    container("li", gpus="MIG-2a", profile="shared", shared=True),
    container("cpu-only", profile="cpu"),
    {"Id": "other", "Labels": {"unrelated": "1"}},
]


def view(**kwargs):
    args = {
        "now": NOW,
        "host": "gpu1",
        "activity": {"mia/": NOW - timedelta(minutes=3)},
        "denials": parse_events(DENIAL_LINES, 20),
    }
    return build_view(INVENTORY, POLICY, kwargs.pop("containers", CONTAINERS), **{**args, **kwargs})


DENIAL_LINES = [
    json.dumps(
        {
            "time": "2026-03-02T09:00:00+00:00",
            "user": "ana",
            "server": "",
            "profile": "gpu",
            "reason": "no_gpu",
            "message": "Needs 1 whole GPU: all 2 taken.",
        }
    ),
    '{"torn line',
    json.dumps(
        {
            "time": "2026-03-02T09:30:00+00:00",
            "user": "bo",
            "server": "x",
            "profile": "gpu",
            "reason": "user_quota",
            "message": "You already hold 1 GPU(s)",
        }
    ),
    json.dumps(
        {
            "time": "2026-03-02T09:40:00+00:00",
            "user": "ana",
            "server": "",
            "profile": "gpu",
            "reason": "no_gpu",
            "message": "again",
        }
    ),
]


def test_the_view_says_who_holds_each_unit_from_the_labels():
    v = view()
    by_id = {u.id: u for u in v.units}
    assert [u.state for u in v.units] == [USED, USED, SHARED, FREE]
    (mia,) = by_id["GPU-0"].holders
    assert (mia.user, mia.server, mia.profile, mia.image, mia.container) == ("mia", "", "gpu", "lab:1", "jupyter-mia")
    assert mia.since == NOW - timedelta(hours=2) and mia.last_activity == NOW - timedelta(minutes=3)
    assert by_id["GPU-1"].holders[0].server == "big" and by_id["GPU-1"].holders[0].last_activity is None
    assert {h.user for h in by_id["MIG-2a"].holders} == {"noor", "li"}
    assert (v.totals.units, v.totals.free, v.totals.used, v.totals.shared) == (4, 1, 2, 1)
    assert v.servers_without_gpu == 1
    assert by_id["MIG-2b"].label == "GPU 2 MIG 1"


def test_docker_unreadable_shows_unknown_never_free():
    v = view(containers=None, docker_error="ConnectionError: no engine")
    assert {u.state for u in v.units} == {UNKNOWN}
    assert (v.totals.free, v.totals.used, v.totals.shared) == (None, None, None)
    body = v.as_json()
    assert body["sources"]["docker"] == {"ok": False, "error": "ConnectionError: no engine"}
    page = render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    assert "Cannot read Docker: ConnectionError: no engine" in page
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    assert "gpuspawner_units_free" not in families and "gpuspawner_unit_assigned" not in families
    up = {s.labels["source"]: s.value for s in families["gpuspawner_dashboard_source_up"].samples}
    assert up["docker"] == 0


def test_units_unknown_to_the_inventory_are_warned_about():
    v = view(containers=[container("eve", gpus="GPU-gone")])
    assert v.warnings == ("server eve/ holds units not in this inventory: GPU-gone",)
    assert v.totals.free == 4


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(20, ["again", "You already hold 1 GPU(s)", "Needs 1 whole GPU: all 2 taken."]), (1, ["again"]), (0, [])],
    ids=["all", "last-one", "none"],
)
def test_denials_newest_first_counted_by_reason(keep, expected):
    recent, counts = parse_events(DENIAL_LINES, keep)
    assert [d.message for d in recent] == expected
    assert counts == {"no_gpu": 2, "user_quota": 1}


def test_activity_comes_from_each_servers_last_activity():
    users = [
        {"name": "mia", "servers": {"": {"last_activity": "2026-03-02T09:57:00.123Z"}, "b": {"last_activity": None}}},
        {"name": "max", "servers": {}},
    ]
    assert activity_from_users(users) == {
        "mia/": NOW - timedelta(minutes=3) + timedelta(microseconds=123000),
        "mia/b": None,
    }


def test_nvml_usage_is_shown_when_read():
    usage = {"GPU-0": UnitUsage(87, 30 * G, 80 * G, 61, (1234,))}
    v = view(usage=usage)
    page = render_page(v, user="admin", can_stop=False, xsrf_form_html="", refresh=15)
    assert "30 GiB / 80 GiB" in page and "87%" in page and "61&deg;C" in page
    body = v.as_json()
    assert body["units"][0]["usage"] == {
        "utilization_gpu": 87,
        "memory_used": 30 * G,
        "memory_total": 80 * G,
        "temperature": 61,
    }
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    (util,) = families["gpuspawner_unit_utilization_percent"].samples
    assert util.labels["unit"] == "GPU-0" and util.value == 87


def test_every_user_controlled_string_is_escaped():
    evil = "<script>alert(1)</script>"
    c = container("mia", gpus="GPU-0", profile=evil, image=f"lab:{evil}")
    denial = json.dumps({"user": "x", "reason": "no_gpu", "message": f"<b>{evil}</b>", "profile": evil})
    v = view(containers=[c], denials=parse_events([denial], 5))
    page = render_page(
        v, user=evil, can_stop=True, xsrf_form_html='<input type="hidden" name="_xsrf" value="t">', refresh=15
    )
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<input type="hidden" name="_xsrf" value="t">' in page  # the one trusted snippet


def test_page_metrics_and_json_agree():
    v = view()
    body = v.as_json()
    assert body["totals"] == {"units": 4, "free": 1, "used": 2, "shared": 1, "quarantined": 0}
    assert json.loads(json.dumps(body)) == body
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    value = lambda name: families[name].samples[0].value  # noqa: E731
    assert (
        value("gpuspawner_units"),
        value("gpuspawner_units_free"),
        value("gpuspawner_units_assigned"),
        value("gpuspawner_units_shared"),
    ) == (4, 1, 3, 1)
    held = {
        (s.labels["unit"], s.labels["user"], s.labels["profile"])
        for s in families["gpuspawner_unit_assigned"].samples
        if s.value == 1
    }
    from_json = {(u["id"], h["user"], h["profile"]) for u in body["units"] for h in u["holders"]}
    assert held == from_json
    denials = {s.labels["reason"]: s.value for s in families["gpuspawner_denials"].samples if s.name.endswith("_total")}
    assert denials == {"no_gpu": 2, "user_quota": 1}
    page = render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    assert page.count('class="stop ') == 4
    assert 'http-equiv="refresh"' not in page  # a timed refresh the reader cannot pause (WCAG 2.2.1)
    assert "location.reload()" in page and 'data-every="15" hidden>Pause updates' in page
    assert "location.reload" not in render_page(v, user="admin", can_stop=False, xsrf_form_html="", refresh=0)
    assert render_page(v, user="teacher", can_stop=False, xsrf_form_html="", refresh=15).count('class="stop ') == 0


def test_the_view_of_500_servers_on_64_units():
    """Builds and renders at a class's size (how long it takes: benchmarks/dashboard.py)."""
    units = tuple(GPU(i, f"GPU-{i}", "NVIDIA H100", 80 * G) for i in range(64))
    containers = [container(f"user{n}", gpus=f"GPU-{n % 64}", shared=True) for n in range(256)]
    containers += [container(f"cpu{n}", profile="cpu") for n in range(244)]
    v = build_view(Inventory(units=units), Policy(share_limit=4), containers, now=NOW)
    render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    render_metrics(v)
    json.dumps(v.as_json())
    assert v.totals.shared == 64 and v.servers_without_gpu == 244


def test_public_surface():
    assert set(dashboard.__all__) == {
        "READ_SCOPE",
        "STOP_SCOPE",
        "READ_GROUPS_SCOPE",
        "DashboardView",
        "GPUDashboard",
        "Reach",
        "build_view",
        "main",
        "reach_from_scopes",
        "restrict",
    }
    assert dashboard.READ_GROUPS_SCOPE == "custom:gpu-dashboard:read-groups"
    assert dashboard.READ_SCOPE == "custom:gpu-dashboard:read"


def test_help_runs(capsys):
    from gpuspawner.dashboard.app import GPUDashboard

    app = GPUDashboard()
    app.print_help()
    out = capsys.readouterr().out
    assert "--config" in out and "--refresh" in out and "--no-nvml" in out


# --- a teacher's view: only their groups' users ------------------------------------------------

READ, GROUPS = "custom:gpu-dashboard:read", "custom:gpu-dashboard:read-groups"
COURSES = {"mia": ("physics",), "noor": ("physics", "stats"), "li": ("stats",), "max": ()}


@pytest.mark.parametrize(
    ("scopes", "viewer_groups", "expected"),
    [
        ([READ], (), Reach(everyone=True)),
        ([READ, f"{READ}!group=physics"], (), Reach(everyone=True)),
        (
            [f"{READ}!group=physics", f"{READ}!user=max"],
            (),
            Reach(users=frozenset({"max"}), groups=frozenset({"physics"})),
        ),
        ([f"{READ}!user"], (), Reach(users=frozenset({"teach"}))),
        ([GROUPS], ("physics", "teachers"), Reach(groups=frozenset({"physics", "teachers"}))),
        (
            [
                f"{READ}!server=max/big",
                f"{READ}!service=x",
                "read:users:groups!user=teach",
                "custom:gpu-dashboard:stop",
            ],
            ("physics",),
            Reach(),
        ),
        ([f"{READ}:more", "custom:gpu-dashboard:reader"], (), Reach()),
    ],
    ids=["unfiltered", "unfiltered-wins", "group-and-user-filters", "self", "own-groups", "nothing", "other-scopes"],
)
def test_reach_from_the_hubs_scopes(scopes, viewer_groups, expected):
    got = reach_from_scopes(scopes, READ, groups_scope=GROUPS, viewer="teach", viewer_groups=viewer_groups)
    assert got == expected
    assert bool(got) == bool(expected.everyone or expected.users or expected.groups)


def test_groups_come_from_the_hubs_user_models_or_are_unknown():
    assert groups_from_users([{"name": "mia", "groups": ["b", "a"]}, {"name": "max", "groups": []}]) == {
        "mia": ("a", "b"),
        "max": (),
    }
    assert groups_from_users([{"name": "mia"}]) is None  # the service lacks read:users:groups
    assert view(groups=None).groups_error and not view(groups=COURSES).groups_error


def test_a_teacher_sees_only_their_groups_users_and_the_free_units():
    denials = [
        json.dumps({"time": "2026-03-02T09:00:00Z", "user": u, "reason": "no_gpu", "message": f"refused {u}"})
        for u in ("mia", "li", "zed")
    ]
    full = view(
        groups=COURSES, denials=parse_events(denials, 10), containers=CONTAINERS + [container("eve", gpus="GPU-gone")]
    )
    assert full.warnings
    v = restrict(full, Reach(groups=frozenset({"physics"})))
    by_id = {u.id: u for u in v.units}
    assert set(by_id) == {"GPU-0", "MIG-2a", "MIG-2b"}  # max's GPU-1 is not shown at all
    assert [h.user for h in by_id["GPU-0"].holders] == ["mia"]
    assert [h.user for h in by_id["MIG-2a"].holders] == ["noor"]  # li (stats) shares it, unseen
    assert by_id["MIG-2a"].state == SHARED and by_id["MIG-2b"].holders == ()
    assert v.totals == full.totals and v.denials_by_reason == full.denials_by_reason  # counts, no names
    assert [d.user for d in v.denials] == ["mia"] and v.warnings == ()
    assert v.restricted_to == "group physics"
    body = json.dumps(v.as_json())
    page = render_page(v, user="teach", can_stop=False, xsrf_form_html="", refresh=15)
    metrics_text = render_metrics(v).decode()
    for other in ("max", "li", "zed", "eve", "jupyter-max"):
        assert f'"{other}"' not in body and f">{other}<" not in page and f'user="{other}"' not in metrics_text
    assert "Showing only the GPUs of group physics" in page and 'class="stop ' not in page
    assert json.loads(body)["restricted_to"] == "group physics"
    # A user filter reaches that user only; the unfiltered scope, everything.
    by_user = restrict(full, Reach(users=frozenset({"li"})))
    assert [(u.id, [h.user for h in u.holders]) for u in by_user.units if u.holders] == [("MIG-2a", ["li"])]
    assert restrict(full, Reach(everyone=True)) is full


def test_a_teacher_without_known_groups_sees_no_holder():
    v = restrict(view(groups=None), Reach(groups=frozenset({"physics"})))
    assert all(not u.holders for u in v.units) and {u.id for u in v.units} == {"MIG-2b"}
    page = render_page(v, user="teach", can_stop=False, xsrf_form_html="", refresh=15)
    assert "Cannot read the users&#39; groups" in page or "Cannot read the users' groups" in page


# --- the Grafana dashboard of deploy/grafana -----------------------------------------------------

GRAFANA = __import__("pathlib").Path(__file__).parent.parent / "deploy" / "grafana" / "gpu-dashboard.json"


def _exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and "(" in value:
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def budget_standings():
    """Where a course's weekly budget and a term budget of every user stand, as the service reads them."""
    from gpuspawner.usage.budgets import budget_use, parse_budgets
    from gpuspawner.usage.records import Record

    budgets = parse_budgets(
        [
            {"group": "ml101", "name": "ML101", "gpu_hours": 10, "per": "week", "time_zone": "UTC"},
            {"every_user": True, "gpu_hours": 2, "per": "week", "profile": "gpu", "time_zone": "UTC"},
        ]
    )
    record = Record(0, "mia/", "mia", "", ("ml101",), "gpu", "", ("GPU-0",), 1, "", NOW - timedelta(hours=3), NOW)
    return budget_use(budgets, [record], NOW)


def test_the_budgets_standing_is_in_the_metrics_and_left_out_when_not_read():
    families = {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(render_metrics(view(), budget_standings()).decode())
    }
    course = (("kind", "group"), ("period", "week"), ("profile", ""), ("subject", "ml101"))
    mine = (("kind", "each_user"), ("period", "week"), ("profile", "gpu"), ("subject", "mia"))
    assert families["gpuspawner_budget_gpu_hours"] == {course: 10, mine: 2}
    assert families["gpuspawner_budget_used_gpu_hours"] == {course: 3, mine: 3}
    assert "gpuspawner_budget_gpu_hours" not in render_metrics(view()).decode()


def test_the_grafana_dashboard_queries_only_metrics_the_service_exports():
    import re

    board = json.loads(GRAFANA.read_text())
    assert board["title"] and board["panels"]
    exprs = list(_exprs(board))
    queried = {name for e in exprs for name in re.findall(r"\bgpuspawner_[a-z_]+\b", e)}
    # Everything the service can export: every source read, usage and denials present.
    usage = {u.uuid: UnitUsage(50, 10 * G, 80 * G, 55, ()) for u in UNITS}
    text = render_metrics(view(usage=usage, groups=COURSES), budget_standings()).decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert queried, exprs
    assert queried <= exported, queried - exported
    # The ones the issue asks a dashboard for are all there.
    assert {
        "gpuspawner_units_free",
        "gpuspawner_units_assigned",
        "gpuspawner_unit_assigned",
        "gpuspawner_unit_utilization_percent",
        "gpuspawner_unit_memory_used_bytes",
        "gpuspawner_denials_total",
    } <= queried
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


# --- DCGM job-mapping files ------------------------------------------------------------------------


def test_dcgm_job_mapping_names_each_held_unit_by_index(tmp_path):
    from gpuspawner.dashboard.dcgm import job_mapping, sync_job_mapping

    v = view()
    assert job_mapping(v) == {"0": "mia", "1": "max", "2.0": "li,noor"}
    assert job_mapping(view(containers=None, docker_error="down")) is None
    (tmp_path / "3").write_text("old\n")  # a unit freed since
    (tmp_path / "README").write_text("not ours\n")
    written, removed = sync_job_mapping(str(tmp_path), job_mapping(v))
    assert (written, removed) == (["0", "1", "2.0"], ["3"])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "0": "mia\n",
        "1": "max\n",
        "2.0": "li,noor\n",
        "README": "not ours\n",
    }
    assert sync_job_mapping(str(tmp_path), job_mapping(v)) == ([], [])  # unchanged: nothing rewritten
    # mia stops: GPU 0's file goes; Docker unreadable: the files stay as they are.
    assert sync_job_mapping(str(tmp_path), job_mapping(view(containers=CONTAINERS[1:]))) == ([], ["0"])
    assert sync_job_mapping(str(tmp_path), None) == ([], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2.0", "README"]


def test_the_dcgm_option_is_on_the_command_line(capsys):
    from gpuspawner.dashboard.app import GPUDashboard

    GPUDashboard().print_help()
    assert "--dcgm-job-mapping-dir" in capsys.readouterr().out


def test_the_denials_file_is_parsed_again_whenever_it_changes(tmp_path):
    import asyncio

    from gpuspawner.dashboard.sources import Sources

    path = tmp_path / "denials.jsonl"
    path.write_text(DENIAL_LINES[0] + "\n")
    src = Sources(INVENTORY, POLICY, lambda: None, None, str(path), nvml=False, host="h")
    assert src._events(src.denials_file, src._denials_cache)[0][1] == {"no_gpu": 1}
    assert src._events(src.denials_file, src._denials_cache)[0][1] == {"no_gpu": 1}
    with open(path, "a") as f:
        f.write(DENIAL_LINES[2] + "\n")
    assert src._events(src.denials_file, src._denials_cache)[0][1] == {"no_gpu": 1, "user_quota": 1}
    path.unlink()
    assert src._events(src.denials_file, src._denials_cache) == (((), {}), "")
    v = asyncio.run(src.view())
    assert v.docker_error and v.hub_error and {u.state for u in v.units} == {UNKNOWN}


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ([READ], True),
        ([f"{READ}!group=physics"], True),  # HubAuth's own check_scopes would refuse this one
        ([GROUPS], True),
        (["custom:gpu-dashboard:stop", "read:users:name!user=x", f"{READ}:more"], False),
        ([], False),
    ],
    ids=["read", "filtered-read", "read-groups", "other-scopes", "none"],
)
def test_the_service_lets_in_any_read_scope_filtered_or_not(scopes, allowed):
    import logging
    from types import SimpleNamespace

    from jupyterhub.services.auth import UserNotAllowed

    from gpuspawner.dashboard.app import _Handler

    handler = SimpleNamespace(hub_scopes={READ, GROUPS}, dashboard=SimpleNamespace(log=logging.getLogger("t")))
    model = {"kind": "user", "name": "teach", "scopes": scopes}
    if allowed:
        assert _Handler.check_hub_user(handler, model) is model
    else:
        with pytest.raises(UserNotAllowed):
            _Handler.check_hub_user(handler, model)


STOP_LINES = [
    json.dumps(
        {
            "time": "2026-03-02T09:45:00+00:00",
            "user": "mia",
            "server": "",
            "profile": "gpu",
            "container": "c1",
            "reason": "gpu_idle",
            "message": "stopped after 30 minutes without GPU use",
        }
    ),
    json.dumps(
        {
            "time": "2026-03-02T09:50:00+00:00",
            "user": "max",
            "server": "big",
            "profile": "gpu",
            "container": "c2",
            "reason": "max_runtime",
            "message": "stopped after 4 hours, the time limit",
        }
    ),
]


def test_the_culler_stops_are_listed_counted_and_limited_to_the_viewers_reach():
    v = view(stops=parse_events(STOP_LINES, 20), groups={"mia": ("course-a",), "max": ("course-b",)})
    assert [s.user for s in v.stops] == ["max", "mia"]
    page = render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    assert "Recently stopped by the GPU culler" in page and "stopped after 30 minutes without GPU use" in page
    assert v.as_json()["stops_by_reason"] == {"gpu_idle": 1, "max_runtime": 1}
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    culled = {s.labels["reason"]: s.value for s in families["gpuspawner_culled"].samples if s.name.endswith("_total")}
    assert culled == {"gpu_idle": 1, "max_runtime": 1}
    teacher = restrict(v, Reach(False, frozenset(), frozenset({"course-a"})))
    assert [s.user for s in teacher.stops] == ["mia"]
    unreadable = view(stops_error="stops.jsonl: Permission denied")
    assert "Cannot read the stops file: stops.jsonl: Permission denied" in render_page(
        unreadable, user="admin", can_stop=False, xsrf_form_html="", refresh=15
    )


def test_nvml_missing_is_an_alarm_only_when_the_inventory_comes_from_nvml():
    static = render_page(
        view(nvml_error="NVML Shared Library Not Found"), user="a", can_stop=False, xsrf_form_html="", refresh=15
    )
    assert "Cannot read NVML" not in static and "No GPU usage figures" in static
    nvml = build_view(Inventory(units=UNITS, source="nvml"), POLICY, CONTAINERS, now=NOW, nvml_error="GPU is lost")
    assert "Cannot read NVML: GPU is lost" in render_page(nvml, user="a", can_stop=False, xsrf_form_html="", refresh=15)


def test_the_dashboard_makes_a_new_docker_client_after_a_failure():
    import asyncio

    from gpuspawner.dashboard.sources import Sources

    class Down:
        def containers(self, filters):
            raise ConnectionError("the engine is restarting")

    class Up:
        def containers(self, filters):
            return CONTAINERS

    clients = iter([Down(), Up()])
    made = []
    src = Sources(INVENTORY, POLICY, lambda: made.append(next(clients)) or made[-1], None, "", nvml=False, host="h")
    assert "the engine is restarting" in asyncio.run(src.view()).docker_error
    assert asyncio.run(src.view()).docker_error == "" and len(made) == 2
    assert asyncio.run(src.view()).docker_error == "" and len(made) == 2  # kept while it works


def test_merged_refusals_count_as_many_and_the_page_says_so():
    merged = json.dumps(
        {
            "time": "2026-03-02T09:01:00+00:00",
            "first": "2026-03-02T09:00:01+00:00",
            "user": "ana",
            "profile": "gpu",
            "reason": "no_gpu",
            "message": "all taken",
            "count": 99,
        }
    )
    v = view(denials=parse_events([DENIAL_LINES[0], merged], 5))
    assert v.denials_by_reason == {"no_gpu": 100}
    assert (v.denials[0].count, v.denials[0].first) == (99, "2026-03-02T09:00:01+00:00")
    assert v.as_json()["denials"][0]["count"] == 99
    page = render_page(v, user="admin", can_stop=False, xsrf_form_html="", refresh=15)
    assert "(99 times since 2026-03-02T09:00:01+00:00)" in page


def test_the_dashboard_reads_a_bounded_tail_and_skips_unusable_lines(tmp_path, caplog):
    from gpuspawner.dashboard.sources import Sources

    path = tmp_path / "denials.jsonl"
    line = json.loads(DENIAL_LINES[0])
    with open(path, "w") as f:
        for n in range(20_000):  # 3 MB: far more than the tail
            f.write(json.dumps({**line, "user": f"u{n}"}) + "\n")
        f.write('{"time": "2026-03-02T09:00:00", "user": "naive", "reason": "no_gpu"}\n')
        f.write("not json\n")
        f.write(json.dumps({**line, "user": "last"}) + "\n")
        f.write('{"time": "2026-03-02T09:0')  # the hub is halfway through a line
    src = Sources(INVENTORY, POLICY, lambda: None, None, str(path), nvml=False, host="h", tail_bytes=64 * 1024)
    with caplog.at_level(logging.WARNING):
        (recent, counts), error = src._events(src.denials_file, src._denials_cache)
    assert error == "" and recent[0].user == "last" and recent[1].user == "u19999"
    assert 0 < counts["no_gpu"] < 64 * 1024 // 150 + 1  # the tail's, not the whole file's
    assert "Skipped 3 unusable line(s)" in caplog.text and "a time without a timezone" in caplog.text


def test_a_quarantined_unit_shows_why_and_only_an_admin_gets_put_back():
    from gpuspawner.gpus.health import Quarantined

    aside = Quarantined("GPU-1", NOW - timedelta(minutes=5), "nvidia-container-cli: device error: GPU-1", 2, "max/")
    free_aside = build_view(INVENTORY, POLICY, [], now=NOW, quarantined={"GPU-1": aside})
    states = {u.id: u.state for u in free_aside.units}
    assert states["GPU-1"] == "quarantined" and states["GPU-0"] == "free"
    assert free_aside.totals.free == 3 and free_aside.totals.quarantined == 1
    body = free_aside.as_json()
    assert body["units"][1]["quarantine"]["reason"] == "nvidia-container-cli: device error: GPU-1"
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(free_aside).decode())}
    assert families["gpuspawner_units_quarantined"].samples[0].value == 1
    # Still held by a server that started before: held, and said to be set aside.
    held = view(quarantined={"GPU-1": aside})
    assert {u.id: u.state for u in held.units}["GPU-1"] == "used"
    admin = render_page(free_aside, user="a", can_stop=True, can_put_back=True, xsrf_form_html="", refresh=15)
    assert 'data-quarantine="GPU-1"' in admin and "set aside 5 min ago" in admin
    assert (
        'class="put-back btn btn-outline-danger btn-sm" data-unit="GPU-1"' in admin
        and 'id="total-quarantined">1<' in admin
    )
    teacher = render_page(free_aside, user="t", can_stop=True, xsrf_form_html="", refresh=15)
    assert 'data-quarantine="GPU-1"' in teacher and "put-back" not in teacher


def test_nvml_that_does_not_answer_is_said_with_the_retry():
    waiting = build_view(
        Inventory(source="none", note="NVML did not initialise: Driver Not Loaded"),
        POLICY,
        [],
        now=NOW,
        inventory_retry=60,
    )
    assert waiting.as_json()["inventory"]["retry_seconds"] == 60
    page = render_page(waiting, user="a", can_stop=False, xsrf_form_html="", refresh=15)
    assert 'id="nvml-retry"' in page and "asks again every 60 s" in page and "Driver Not Loaded" in page
    assert build_view(INVENTORY, POLICY, [], now=NOW, inventory_retry=60).inventory_retry == 0  # answered


def test_a_limited_viewer_sees_a_quarantined_unit_but_not_whose_start_failed():
    from gpuspawner.gpus.health import Quarantined

    aside = Quarantined("GPU-1", NOW, "device error", 2, "max/")
    limited = restrict(
        build_view(INVENTORY, POLICY, [], now=NOW, quarantined={"GPU-1": aside}), Reach(users=frozenset({"mia"}))
    )
    (unit,) = [u for u in limited.units if u.id == "GPU-1"]
    assert unit.state == "quarantined" and unit.quarantine.reason == "device error" and unit.quarantine.holder == ""


def test_who_waits_in_line_is_listed_in_order_and_a_teacher_sees_only_their_own():
    since = NOW.timestamp() - 300
    snapshot = {
        "waiting": [
            {
                "user": "mia",
                "server": "",
                "label": "ML101",
                "kind": "2 A100 GPUs",
                "since": since,
                "position": 1,
                "in_line": 2,
                "estimate": NOW.timestamp() + 600,
            },
            {
                "user": "<i>max</i>",
                "server": "b",
                "label": "ML101",
                "kind": "2 A100 GPUs",
                "since": since + 60,
                "position": 2,
                "in_line": 2,
                "estimate": None,
            },
        ],
        "waiting_for": ["GPU-0", "GPU-1"],
    }
    waiting = waiters_from_snapshot(snapshot)
    v = view(groups={**COURSES, "<i>max</i>": ()}, waiting=waiting)
    page = render_page(v, user="admin", can_stop=False, xsrf_form_html="", refresh=15)
    table = page[page.index('<table id="waiting"') : page.index("</table>", page.index('<table id="waiting"'))]
    assert table.index(">mia<") < table.index("&lt;i&gt;max&lt;/i&gt;")  # in line order, escaped
    assert "1 of 2" in table and "5 min ago" in table and "2026-03-02T10:10:00+00:00" in table
    assert "no estimate" in table
    body = v.as_json()
    assert [(w["user"], w["position"], w["since"]) for w in body["waiting"]] == [
        ("mia", 1, "2026-03-02T09:55:00+00:00"),
        ("<i>max</i>", 2, "2026-03-02T09:56:00+00:00"),
    ]
    teacher = restrict(v, Reach(groups=frozenset({"physics"})))
    assert [w.user for w in teacher.waiting] == ["mia"]
    empty = render_page(view(), user="admin", can_stop=False, xsrf_form_html="", refresh=15)
    assert "Nobody is waiting." in empty


# --- the hub's look, the map of the lab, the last hour --------------------------------------------


def test_the_page_is_built_on_the_hubs_own_page_template_and_static_files():
    from gpuspawner.dashboard.app import page_csp
    from gpuspawner.dashboard.page import UPDATES_HASH, HubLinks, hub_templates, inline_script_hashes

    assert hub_templates()  # JupyterHub's share/jupyterhub/templates, where page.html is
    hub = HubLinks(prefix="/jh/hub/", base_url="/jh/", services=(("gpu-dashboard", "/jh/services/gpu-dashboard/"),))
    page = render_page(
        view(), user='ann"</script><b>', can_stop=False, xsrf_form_html="", refresh=15, hub=hub, xsrf_token="tok"
    )
    # The hub's navigation bar, Bootstrap and theme toggle, from the hub's static files.
    assert 'id="dark-theme-toggle"' in page and 'class="navbar navbar-expand-sm' in page
    assert 'href="/jh/hub/static/css/style.min.css"' in page and 'src="/jh/hub/static/js/darkmode.js"' in page
    assert 'href="/jh/hub/home"' in page and 'href="/jh/hub/logout"' in page
    assert 'href="/jh/services/gpu-dashboard/">gpu-dashboard</a>' in page  # the Services menu
    assert 'xsrf_token: "tok"' in page and '<script id="updates">' in page
    # The name is text in the page and a closed JavaScript string in the hub's inline script.
    assert 'user: "ann\\"\\u003c/script\\u003e\\u003cb\\u003e"' in page
    assert "</script><b>" not in page and "ann&#34;&lt;/script&gt;&lt;b&gt;" in page
    # That inline script runs, by its hash, and the page's updates by theirs; no other.
    (script,) = re.findall(r"<script type=\"text/javascript\">(.*?)</script>", page, flags=re.DOTALL)
    digest = hashlib.sha256(script.encode()).digest()
    hashes = inline_script_hashes(page)
    assert hashes == ["'sha256-" + base64.b64encode(digest).decode() + "'"]
    (updates,) = re.findall(r"<script id=\"updates\">(.*?)</script>", page, flags=re.DOTALL)
    assert UPDATES_HASH == "'sha256-" + base64.b64encode(hashlib.sha256(updates.encode()).digest()).decode() + "'"
    csp = page_csp("", hashes)
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and f"script-src 'self' {hashes[0]}" in csp
    assert "'unsafe-inline'" not in csp.partition("script-src")[2]
    # With per-user subdomains the hub is on another origin: linked and allowed by its origin.
    far = HubLinks(host="https://hub.lab.example")
    assert 'href="https://hub.lab.example/hub/static/css/style.min.css"' in render_page(
        view(), user="a", can_stop=False, xsrf_form_html="", refresh=0, hub=far
    )
    assert "script-src 'self' https://hub.lab.example 'sha256-" in page_csp(far.host, hashes)
    # The Admin link as the hub shows it: for the admin-ui scope.
    assert 'href="/hub/admin"' in render_page(
        view(), user="a", can_stop=False, xsrf_form_html="", refresh=0, scopes=["admin-ui", "read:users"]
    )
    assert 'href="/hub/admin"' not in render_page(view(), user="a", can_stop=False, xsrf_form_html="", refresh=0)


def test_without_the_hubs_templates_a_plain_page_stands_in():
    from gpuspawner.dashboard import page as page_module

    env = page_module._environment(None)
    html = env.get_template("dashboard.html").render(
        **{
            **dict.fromkeys(("base_url", "prefix", "login_url", "logout_url", "xsrf_token", "logo_url"), ""),
            "view": view(),
            "user": page_module._Viewer("a"),
            "can_stop": False,
            "can_put_back": False,
            "xsrf_form_html": "",
            "refresh": 0,
            "shown": "overview",
            "view_href": str,
            "style": "",
            "ago": str,
            "iso": str,
            "bytes": str,
            "na": lambda v, s="": str(v),
            "bar": lambda p, label: "",
            "sparkline": lambda *a: "",
        }
    )
    assert "<script" not in html and 'id="units"' in html and "The lab" in html


MAP_USAGE = {"GPU-0": UnitUsage(87, 30 * G, 80 * G, 61, ()), "MIG-2a": UnitUsage(None, 5 * G, 10 * G, None, ())}


def _tile(page: str, unit: str) -> str:
    start = page.rindex('<li class="tile', 0, page.index(f'data-tile="{unit}"'))
    return page[start : page.index("\n </li>", start)]


def test_the_map_shows_each_units_state_in_colour_and_in_words():
    from gpuspawner.gpus.health import Quarantined

    units = (*UNITS, GPU(3, "GPU-3", "NVIDIA A100-SXM4-80GB", 80 * G), GPU(4, "GPU-4", "NVIDIA A100-SXM4-80GB", 80 * G))
    aside = Quarantined("GPU-3", NOW - timedelta(minutes=5), "device error", 2, "zed/")
    v = build_view(
        Inventory(units=units, source="static"),
        POLICY,
        CONTAINERS,
        now=NOW,
        host="gpu1",
        usage=MAP_USAGE,
        quarantined={"GPU-3": aside},
    )
    reserved = "reserved for ML101 lab until 16:00 (Europe/Berlin)"
    v = dataclasses.replace(
        v, units=tuple(u if u.id != "GPU-4" else dataclasses.replace(u, lab_hours=reserved) for u in v.units)
    )
    looks = {u.id: u.look(v.share_limit) for u in v.units}
    assert looks == {
        "GPU-0": ("held", "held"),
        "GPU-1": ("held", "held"),
        "MIG-2a": ("shared", "shared 2 of 4"),
        "MIG-2b": ("free", "free"),
        "GPU-3": ("quarantined", "quarantined"),
        "GPU-4": ("reserved", "reserved"),
    }
    assert [u.look(4) for u in view(containers=None).units][0] == ("unknown", "unknown")
    page = render_page(v, user="admin", can_stop=True, can_put_back=True, xsrf_form_html="", refresh=15)
    for unit, (kind, words) in looks.items():
        tile = _tile(page, unit)
        assert f'class="tile is-{kind}"' in tile and f'data-map-state="{kind}"' in tile
        assert f'<span class="state">{words}</span>' in tile  # the words, not only the colour
    mig = _tile(page, "MIG-2a")
    assert ">noor<" in mig and ">li<" in mig and "shared" in mig and "MIG 1g.10gb" in mig
    gpu0 = _tile(page, "GPU-0")
    assert ">mia<" in gpu0 and ">gpu<" in gpu0 and 'aria-valuenow="87"' in gpu0 and "30 GiB / 80 GiB" in gpu0
    assert 'aria-valuenow="37"' in gpu0  # memory: 30 of 80 GiB
    assert 'aria-valuenow="50"' in mig and "GPU utilisation of GPU 2 not measured" in mig  # MIG: no utilisation
    assert reserved in _tile(page, "GPU-4") and "device error" in _tile(page, "GPU-3")
    assert page.count('class="map-stop ') == 4 and page.count('class="map-put-back ') == 1
    body = v.as_json()
    assert {u["id"]: (u["map_state"]["kind"], u["map_state"]["text"]) for u in body["units"]} == looks
    assert body["map"] == [{"node": "gpu1", "units": [u.id for u in v.units]}]


def test_the_map_and_the_table_are_two_views_of_one_page():
    v = view(usage=MAP_USAGE)
    pages = {
        shown: render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15, shown=shown)
        for shown in ("overview", "map", "table")
    }
    assert 'id="units"' in pages["overview"] and 'data-tile="GPU-0"' in pages["overview"]
    assert (
        'id="units"' not in pages["map"] and 'data-tile="GPU-0"' in pages["map"] and 'id="denials"' not in pages["map"]
    )
    assert 'id="units"' in pages["table"] and "data-tile=" not in pages["table"] and 'id="denials"' in pages["table"]
    assert 'aria-current="page" href="?view=map">Map<' in pages["map"]
    assert 'name="view" value="table"' in pages["table"]  # a stop comes back to the view it came from
    # Every stop button posts its server through the one form, which carries the one xsrf token.
    xsrf = '<input type="hidden" name="_xsrf" value="t">'
    admin = render_page(v, user="admin", can_stop=True, xsrf_form_html=xsrf, refresh=15)
    assert admin.count(xsrf) == 1 and admin.count('<form id="stop-form" method="post" action="stop">') == 1
    assert admin.count('form="stop-form" name="holder" value="max/big"') == 2  # on the map and in the table
    with pytest.raises(ValueError, match="no view 'wall'"):
        render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15, shown="wall")
    from types import SimpleNamespace

    from gpuspawner.dashboard.app import _back_to

    dashboard = SimpleNamespace(service_prefix="/services/gpu-dashboard/")
    assert _back_to(dashboard, "table") == "/services/gpu-dashboard/?view=table"
    assert _back_to(dashboard, "overview") == _back_to(dashboard, "//evil.example") == "/services/gpu-dashboard/"


def test_the_map_of_swarm_nodes_groups_units_by_node():
    units = (GPU(0, "GPU-a0", "T4", 16 * G, node="node-a"), GPU(0, "GPU-b0", "T4", 16 * G, node="node-b"))
    v = build_view(Inventory(units=units, source="swarm"), POLICY, [], now=NOW, host="manager")
    assert [(n, [u.id for u in us]) for n, us in v.nodes()] == [("node-a", ["GPU-a0"]), ("node-b", ["GPU-b0"])]
    page = render_page(v, user="a", can_stop=False, xsrf_form_html="", refresh=0, shown="map")
    assert page.index('data-node="node-a"') < page.index('data-tile="GPU-a0"') < page.index('data-node="node-b"')


def test_a_teachers_map_shows_only_what_their_reach_allows():
    from gpuspawner.dashboard.history import UsageHistory

    history = UsageHistory(600, 60)
    full = history.sample(view(groups=COURSES, usage=MAP_USAGE))
    v = restrict(full, Reach(groups=frozenset({"physics"})))
    page = render_page(v, user="teach", can_stop=False, xsrf_form_html="", refresh=15, shown="map")
    assert 'data-tile="GPU-1"' not in page  # max's, another course's: not on the map at all
    assert 'data-tile="GPU-0"' in page and 'data-tile="MIG-2a"' in page and 'data-tile="MIG-2b"' in page
    for other in ("max", "li", "jupyter-max"):
        assert f">{other}<" not in page and f'"{other}' not in page
    mig = _tile(page, "MIG-2a")
    assert mig.count('<li data-holder="') == 1  # noor; li shares it unseen, but the slots taken are counted
    assert '<span class="state">shared 2 of 4</span>' in mig
    assert "map-stop" not in page and "<form" not in page
    body = v.as_json()
    assert [u["id"] for u in body["units"]] == ["GPU-0", "MIG-2a", "MIG-2b"]
    assert body["units"][0]["history"]["utilization_gpu"][-1] == 87  # the unit's, kept through restrict


# --- the history ---------------------------------------------------------------------------------


def _usage_view(util, memory_used=40 * G, unit="GPU-0"):
    return build_view(INVENTORY, POLICY, [], now=NOW, usage={unit: UnitUsage(util, memory_used, 80 * G, 50, ())})


def test_the_history_keeps_the_mean_of_each_slot_and_forgets_what_is_older_than_its_window():
    from gpuspawner.dashboard.history import UsageHistory

    h = UsageHistory(window=300, interval=60)  # 5 slots
    t = 6000.0  # the start of slot 100
    h.record(_usage_view(10).units, t)
    h.record(_usage_view(30, 20 * G).units, t + 59)  # the same slot: the mean
    h.record(_usage_view(None, 8 * G, unit="MIG-2a").units, t + 60)  # a MIG instance: memory only
    h.record(_usage_view(90).units, t + 180)  # slot 103; 101 and 102 not sampled
    util, memory = h.series("GPU-0", t + 180)
    assert util == (None, 20, None, None, 90) and memory == (None, 38, None, None, 50)
    assert h.series("MIG-2a", t + 180) == ((None, None, None, None, None), (None, None, 10, None, None))
    assert h.series("GPU-1", t + 180) == ((None,) * 5, (None,) * 5)  # never measured
    h.record(_usage_view(30).units, t + 200)  # the newest slot again: its mean moves, the older ones stay
    assert h.series("GPU-0", t + 200)[0] == (None, 20, None, None, 60)
    # Five minutes on, the slot of an hour's ring is reused: old values are never shown as new.
    h.record(_usage_view(50).units, t + 300)
    assert h.series("GPU-0", t + 300)[0] == (None, None, 60, None, 50)
    assert len(h) == 2
    h.record(_usage_view(70).units, t + 600)  # MIG-2a unseen for a whole window: forgotten
    assert len(h) == 1 and h.series("GPU-0", t + 600)[0] == (None, None, None, None, 70)
    with pytest.raises(ValueError, match="interval"):
        UsageHistory(window=10, interval=60)


def test_a_burst_of_samples_in_one_slot_cannot_overflow_it():
    from gpuspawner.dashboard.history import UsageHistory

    h = UsageHistory(window=120, interval=60)
    for _ in range(1000):
        h.record(_usage_view(100, 80 * G).units, 60.0)
    assert h.series("GPU-0", 60.0) == ((None, 100), (None, 100))


def test_the_history_of_64_units_over_an_hour_stays_far_below_10_mb():
    import tracemalloc

    from gpuspawner.dashboard.history import UsageHistory

    units = tuple(GPU(i, f"GPU-{i}", "NVIDIA H100", 80 * G) for i in range(64))
    usage = {u.uuid: UnitUsage(50, 40 * G, 80 * G, 60, ()) for u in units}
    v = build_view(Inventory(units=units), Policy(share_limit=4), [], now=NOW, usage=usage)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    h = UsageHistory(3600, 30)
    for second in range(0, 2 * 3600, 10):  # two hours, three samples a slot
        h.record(v.units, 1e9 + second)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(h) == 64 and kept < 1_000_000, kept  # about 0.1 MB; the target is 10 MB
    assert h.series("GPU-7", 1e9 + 2 * 3600 - 10)[0] == (50,) * 120


def test_the_sparkline_is_an_svg_of_numbers_with_its_gaps_and_its_words():
    import xml.etree.ElementTree as ET

    from gpuspawner.dashboard.page import SPARK_HEIGHT, sparkline

    svg = str(sparkline((None, 0, 100, None, 50, None), (10, 10, 10, 10, 10, 10), 600))
    root = ET.fromstring(svg)
    lines = [e for e in root.iter() if e.tag == "polyline"]  # inline SVG in HTML: no namespace needed
    assert root.tag == "svg" and root.get("role") == "img"
    util = [e.get("points") for e in lines if e.get("class") == "utilization"]
    assert util == [f"1,{SPARK_HEIGHT - 1:.1f} 2,1.0", "3.6,12.0 4.4,12.0"]
    assert [e.get("class") for e in lines].count("memory") == 1
    words = "GPU utilisation over the last 60 min: now n/a, peak 100%, mean 50%; memory used peak 10%"
    assert root.get("aria-label") == words and root.find("title").text == words
    empty = ET.fromstring(str(sparkline((None,) * 4, (None,) * 4, 30)))
    assert empty.get("aria-label") == "No GPU utilisation measured in the last 2 min"
    assert not [e for e in empty.iter() if e.tag.endswith("polyline")]


def test_the_sources_sample_every_view_into_the_history_and_the_api_carries_it(monkeypatch):
    import asyncio

    from gpuspawner.dashboard import sources as sources_module
    from gpuspawner.dashboard.history import UsageHistory
    from gpuspawner.dashboard.sources import Sources

    class Engine:
        def containers(self, filters):
            return CONTAINERS

    readings = iter([{"GPU-0": UnitUsage(40, G, 80 * G, 50, ())}, {"GPU-0": UnitUsage(60, G, 80 * G, 50, ())}])
    monkeypatch.setattr(sources_module, "read_usage", lambda: next(readings))
    src = Sources(INVENTORY, POLICY, Engine, None, "", nvml=True, host="h", history=UsageHistory(3600, 3600))
    asyncio.run(src.view())
    v = asyncio.run(src.view())  # the same hour's slot: the mean of the two
    gpu0 = v.as_json()["units"][0]
    assert gpu0["history"] == {"interval_seconds": 3600, "utilization_gpu": [50], "memory_used_percent": [1]}
    assert v.as_json()["units"][1]["history"]["utilization_gpu"] == [None]
    assert view().as_json()["units"][0]["history"] is None  # no history kept: said so


def test_the_service_links_the_hubs_pages_and_keeps_a_history_as_configured(tmp_path, monkeypatch):
    from jupyterhub.services.auth import HubOAuth

    from gpuspawner.dashboard.app import GPUDashboard

    path = tmp_path / "jupyterhub_config.py"
    path.write_text(
        'c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n'
        'c.GPUSpawner.gpus = [{"index": 0, "uuid": "GPU-0", "name": "T4", "memory": "16G"}]\n'
    )
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/jh/")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "gpus")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/jh/services/gpus/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-used-here")
    try:
        app = GPUDashboard()
        app.initialize(["-f", str(path), "--history-interval=10", "--no-nvml"])
        assert (app.hub_links.prefix, app.hub_links.base_url) == ("/jh/hub/", "/jh/")
        assert app.hub_links.services == (("gpus", "/jh/services/gpus/"),)
        assert app.hub_links.static_url("css/style.min.css") == "/jh/hub/static/css/style.min.css"
        assert app.sources.history.interval == 10 and app.sources.history.size == 360
        off = GPUDashboard()
        off.initialize(["-f", str(path), "--history-interval=0"])
        assert off.sources.history is None
    finally:
        HubOAuth.clear_instance()
