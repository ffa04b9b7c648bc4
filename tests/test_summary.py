"""What a running server holds and its rules, in sentences (gpuspawner.summary), on the hub's home page
(gpuspawner's home.html on JupyterHub 6's own) and in the spawn's progress."""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import jinja2
import pytest
from jupyterhub._data import DATA_FILES_PATH

from gpuspawner import services
from gpuspawner.culler.policy import CullRules
from gpuspawner.gpus import GPU
from gpuspawner.summary import ServerSummary, holds, summarize

from .test_spawner import engine, spawner  # noqa: F401 - a fixture

G = 1024**3
L40S = [GPU(i, f"GPU-{i}", "NVIDIA L40S", 48 * G) for i in range(2)]
RULES = CullRules(gpu_idle_timeout=1800, max_runtime=4 * 3600)


@pytest.mark.parametrize(
    "units, shared, others, slots, said",
    [
        (L40S[:1], False, 0, 0, "GPU 0 (NVIDIA L40S, 48 GiB)"),
        (L40S, False, 0, 0, "GPU 0 (NVIDIA L40S, 48 GiB) and GPU 1 (NVIDIA L40S, 48 GiB)"),
        (
            L40S[1:],
            True,
            2,
            4,
            "a slot on the shared GPU 1 (NVIDIA L40S, 48 GiB), with 2 other servers (3 of 4 slots taken)",
        ),
        (
            L40S[1:],
            True,
            1,
            4,
            "a slot on the shared GPU 1 (NVIDIA L40S, 48 GiB), with 1 other server (2 of 4 slots taken)",
        ),
        (L40S[1:], True, 0, 4, "a slot on the shared GPU 1 (NVIDIA L40S, 48 GiB), alone on it for now"),
        ((), False, 0, 0, "no GPU"),
    ],
    ids=["one", "two", "shared", "shared-with-one", "shared-alone", "cpu"],
)
def test_what_a_server_holds_as_people_say_it(units, shared, others, slots, said):
    assert holds(units, shared, others, slots) == said


def test_a_summary_has_the_rules_only_for_a_gpu_server():
    assert (
        summarize("ML101", L40S[:1], False, RULES).rules
        == "Stops after 30 minutes without GPU use; runs 4 hours at most."
    )
    assert summarize("Python (CPU only)", (), False, RULES) == ServerSummary("Python (CPU only)", "no GPU", "")


# --- the hub's home page


def home_page(spawners, my_services=()) -> str:
    """gpuspawner's home.html through the hub's own loaders (``JupyterHub.init_tornado_settings``)."""
    base = os.path.join(DATA_FILES_PATH, "templates")
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader([base])}, "/"),
                jinja2.FileSystemLoader([services.HUB_TEMPLATES, base]),
            ]
        ),
        autoescape=True,
    )
    user = SimpleNamespace(
        name="ada",
        json_escaped_name="ada",
        all_spawners=lambda include_default=True: iter(spawners),
        spawner=spawners[0],
    )
    return env.get_template("home.html").render(
        user=user,
        default_server=spawners[0],
        url="/user/ada/",
        allow_named_servers=False,
        named_server_limit_per_user=0,
        base_url="/hub/",
        prefix="/",
        static_url=lambda path, **kw: f"/hub/static/{path}",
        services=list(my_services),
        parsed_scopes=set(),
        xsrf_token="x",
    )


def section(page: str) -> str:
    found = re.search(r'<div class="container gpuspawner-home.*?</ul>.*?</div>', page, re.DOTALL)
    return found.group(0) if found else ""


def test_the_home_page_says_what_each_server_holds_its_rules_and_links_my_gpu():
    ours = SimpleNamespace(
        name="",
        active=True,
        lab_summary=summarize(
            "ML101 <1 GPU>", L40S[1:], True, RULES, others=2, slots=4, my_gpu="services/gpu-dashboard/mine"
        ),
    )
    page = home_page([ours])
    assert 'id="start"' in page and "JupyterHub home page" in page  # the hub's own page, kept
    said = section(page)
    assert "Your server" in said and "ML101 &lt;1 GPU&gt;" in said
    assert "Holds a slot on the shared GPU 1 (NVIDIA L40S, 48 GiB), with 2 other servers (3 of 4 slots taken)." in said
    assert "Stops after 30 minutes without GPU use; runs 4 hours at most." in said
    assert '<a class="gpuspawner-my-gpu" href="/services/gpu-dashboard/mine">My GPU</a>' in said


@pytest.mark.parametrize(
    "spawners",
    [
        [SimpleNamespace(name="", active=False, lab_summary=None)],  # no server runs
        [SimpleNamespace(name="", active=True)],  # another spawner class: nothing to say
        [SimpleNamespace(name="", active=True, lab_summary=None)],  # gpuspawner's, not started yet
        [SimpleNamespace(name="", pending=None)],  # an ORM spawner (a server not running) has no `active`
    ],
    ids=["stopped", "other-spawner", "no-profile", "orm-spawner"],
)
def test_the_home_page_stays_the_hubs_own_when_there_is_nothing_to_say(spawners):
    page = home_page(spawners)
    assert 'id="start"' in page and not section(page) and "What your servers hold" not in page


# --- the spawner's side


async def test_a_running_server_says_what_it_holds_and_its_rules_and_the_progress_links_my_gpu(engine):  # noqa: F811
    s = spawner(engine, profile="gpu", gpu_idle_timeout="30m", my_gpu_page="services/gpu-dashboard/mine")
    assert s.lab_summary is None or s.lab_summary.holds == "no GPU"  # before its start: nothing held
    await s.start()
    summary = s.lab_summary
    assert summary == ServerSummary(
        "GPU", "GPU 0 (A100, 80 GiB)", "Stops after 30 minutes without GPU use.", "services/gpu-dashboard/mine"
    )
    (rules,) = [e for e in s._progress if e["progress"] == 76]
    assert rules["message"] == (
        "The lab's rules: stops after 30 minutes without GPU use."
        " My GPU (/services/gpu-dashboard/mine) shows how long until each would stop it."
    )
    assert '<a href="/services/gpu-dashboard/mine">My GPU</a>' in rules["html_message"]


async def test_a_shared_slot_says_how_many_others_share_it_and_a_cpu_server_has_no_rules_line(engine):  # noqa: F811
    profiles = [
        {"slug": "shared", "display_name": "Shared", "image": "lab:1", "shared_gpu": True},
        {"slug": "cpu", "display_name": "CPU", "image": "lab:1"},
    ]
    first = spawner(engine, user="ann", profile="shared", profiles=profiles, shared_gpu_users=3)
    second = spawner(engine, user="bo", profile="shared", profiles=profiles, shared_gpu_users=3)
    await first.start()
    await second.start()
    assert (
        first.lab_summary.holds == "a slot on the shared GPU 0 (A100, 80 GiB), with 1 other server (2 of 3 slots taken)"
    )
    cpu = spawner(engine, user="cy", profile="cpu", profiles=profiles)
    await cpu.start()
    assert cpu.lab_summary == ServerSummary("CPU", "no GPU", "")
    assert not [e for e in cpu._progress if e["progress"] == 76]  # no GPU rules to tell
