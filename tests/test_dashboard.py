"""The dashboard's pure part (view, page, metrics, JSON) with plain fakes; its handlers' access rules."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuspawner import dashboard
from gpuspawner.dashboard.metrics import render_metrics
from gpuspawner.dashboard.model import FREE, SHARED, UNKNOWN, USED, activity_from_users, build_view, parse_denials
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
        "denials": parse_denials(DENIAL_LINES, 20),
    }
    return build_view(INVENTORY, POLICY, kwargs.pop("containers", CONTAINERS), **{**args, **kwargs})


DENIAL_LINES = [
    json.dumps({"time": "2026-03-02T09:00:00+00:00", "user": "ana", "server": "", "profile": "gpu",
                "reason": "no_gpu", "message": "Needs 1 whole GPU: all 2 taken."}),
    '{"torn line',
    json.dumps({"time": "2026-03-02T09:30:00+00:00", "user": "bo", "server": "x", "profile": "gpu",
                "reason": "user_quota", "message": "You already hold 1 GPU(s)"}),
    json.dumps({"time": "2026-03-02T09:40:00+00:00", "user": "ana", "server": "", "profile": "gpu",
                "reason": "no_gpu", "message": "again"}),
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
    recent, counts = parse_denials(DENIAL_LINES, keep)
    assert [d.message for d in recent] == expected
    assert counts == {"no_gpu": 2, "user_quota": 1}


def test_activity_comes_from_each_servers_last_activity():
    users = [
        {"name": "mia", "servers": {"": {"last_activity": "2026-03-02T09:57:00.123Z"}, "b": {"last_activity": None}}},
        {"name": "max", "servers": {}},
    ]
    assert activity_from_users(users) == {"mia/": NOW - timedelta(minutes=3) + timedelta(microseconds=123000),
                                          "mia/b": None}


def test_nvml_usage_is_shown_when_read():
    usage = {"GPU-0": UnitUsage(87, 30 * G, 80 * G, 61, (1234,))}
    v = view(usage=usage)
    page = render_page(v, user="admin", can_stop=False, xsrf_form_html="", refresh=15)
    assert "30 GiB / 80 GiB" in page and "87%" in page and "61&deg;C" in page
    body = v.as_json()
    assert body["units"][0]["usage"] == {"utilization_gpu": 87, "memory_used": 30 * G,
                                          "memory_total": 80 * G, "temperature": 61}
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    (util,) = families["gpuspawner_unit_utilization_percent"].samples
    assert util.labels["unit"] == "GPU-0" and util.value == 87


def test_every_user_controlled_string_is_escaped():
    evil = "<script>alert(1)</script>"
    c = container("mia", gpus="GPU-0", profile=evil, image=f"lab:{evil}")
    denial = json.dumps({"user": "x", "reason": "no_gpu", "message": f"<b>{evil}</b>", "profile": evil})
    v = view(containers=[c], denials=parse_denials([denial], 5))
    page = render_page(v, user=evil, can_stop=True, xsrf_form_html='<input type="hidden" name="_xsrf" value="t">',
                       refresh=15)
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<input type="hidden" name="_xsrf" value="t">' in page  # the one trusted snippet


def test_page_metrics_and_json_agree():
    v = view()
    body = v.as_json()
    assert body["totals"] == {"units": 4, "free": 1, "used": 2, "shared": 1}
    assert json.loads(json.dumps(body)) == body
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(v).decode())}
    value = lambda name: families[name].samples[0].value  # noqa: E731
    assert (value("gpuspawner_units"), value("gpuspawner_units_free"), value("gpuspawner_units_assigned"),
            value("gpuspawner_units_shared")) == (4, 1, 3, 1)
    held = {(s.labels["unit"], s.labels["user"], s.labels["profile"])
            for s in families["gpuspawner_unit_assigned"].samples if s.value == 1}
    from_json = {(u["id"], h["user"], h["profile"]) for u in body["units"] for h in u["holders"]}
    assert held == from_json
    denials = {s.labels["reason"]: s.value for s in families["gpuspawner_denials"].samples if s.name.endswith("_total")}
    assert denials == {"no_gpu": 2, "user_quota": 1}
    page = render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    assert page.count('class="stop"') == 4
    assert '<meta http-equiv="refresh" content="15">' in page
    assert render_page(v, user="teacher", can_stop=False, xsrf_form_html="", refresh=15).count('class="stop"') == 0


def test_the_view_of_500_servers_on_64_units_is_cheap():
    """Not a benchmark: a guard that building and rendering stays far below a request's budget."""
    units = tuple(GPU(i, f"GPU-{i}", "NVIDIA H100", 80 * G) for i in range(64))
    containers = [container(f"user{n}", gpus=f"GPU-{n % 64}", shared=True) for n in range(256)]
    containers += [container(f"cpu{n}", profile="cpu") for n in range(244)]
    start = time.perf_counter()
    v = build_view(Inventory(units=units), Policy(share_limit=4), containers, now=NOW)
    render_page(v, user="admin", can_stop=True, xsrf_form_html="", refresh=15)
    render_metrics(v)
    json.dumps(v.as_json())
    assert v.totals.shared == 64 and v.servers_without_gpu == 244
    assert time.perf_counter() - start < 2


def test_public_surface():
    assert set(dashboard.__all__) == {"READ_SCOPE", "STOP_SCOPE", "DashboardView", "GPUDashboard", "build_view",
                                      "main"}
    assert dashboard.READ_SCOPE == "custom:gpu-dashboard:read"


def test_help_runs(capsys):
    from gpuspawner.dashboard.app import GPUDashboard

    app = GPUDashboard()
    app.print_help()
    out = capsys.readouterr().out
    assert "--config" in out and "--refresh" in out and "--no-nvml" in out
