"""The ``gpuspawner`` command without Docker: verdicts from facts, the status table, config loading.

``test_cli_e2e.py`` runs the same commands against the test bed's engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import textwrap
from dataclasses import replace
from datetime import datetime, timezone

import docker
import pytest
from rich.console import Console
from traitlets.config import Config

from gpuspawner import GPUSpawner
from gpuspawner.cli import build_plan, doctor, image_check, main, prepull, probe, server_start
from gpuspawner.cli.findings import FAIL, OK, WARN, Finding, verdict
from gpuspawner.cli.image_check import HubContext
from gpuspawner.cli.output import finding_lines
from gpuspawner.cli.prepull import PrepullApp
from gpuspawner.cli.probe import Framework, ImageFacts
from gpuspawner.cli.status import status_rows, status_summary, status_table
from gpuspawner.config import ConfigError, HubConfig, load_hub_config
from gpuspawner.dashboard.model import DashboardView, build_view
from gpuspawner.gpus import GPU, Inventory, Ledger, Policy, parse_static_inventory
from gpuspawner.images import PullTask
from gpuspawner.profiles import ProfileError, parse_profiles
from gpuspawner.startup import Exited

HUB = "6.1.1"

# What the probe printed in the test bed's CUDA image (a real run), plus a CUDA runtime
# and two frameworks as a PyTorch image would have them.
PROBE_OUTPUT = """\
uid=1000
user=jovyan
home=/home/jovyan
home_writable=1
singleuser=/opt/venv/bin/jupyterhub-singleuser
libcudart=libcudart.so.12.4.127
libcudart=libcudart.so.12
nvcc=12.4
python={"python": "/opt/venv/bin/python3", "python_version": "3.11.2", "jupyterhub": "6.1.1", "jupyter_server": "2.21.1", "jupyterlab": "4.6.6", "notebook": ""}
framework={"name": "torch", "version": "2.5.1+cu124", "cuda": "12.4"}
framework={"name": "tensorflow", "error": "ImportError: libcudart.so.11.0: cannot open shared object file"}
welcome to the course!
"""
CONFIG = {"User": "jovyan", "Env": ["CUDA_VERSION=12.4.1"], "Cmd": ["jupyterhub-singleuser"]}


def good_image(**changes) -> ImageFacts:
    facts = ImageFacts(
        image="course/ml101:2026.1",
        size=8 * 1024**3,
        config=CONFIG,
        uid=1000,
        user="jovyan",
        home="/home/jovyan",
        home_writable=True,
        singleuser="/opt/conda/bin/jupyterhub-singleuser",
        python="/opt/conda/bin/python3",
        python_version="3.11.9",
        jupyterhub=HUB,
        jupyter_server="2.14.0",
        jupyterlab="4.2.0",
        libcudart=("12.4.127",),
        frameworks=(Framework("torch", "2.5.1+cu124", "12.4"),),
    )
    return replace(facts, **changes)


def ctx(**changes) -> HubContext:
    return replace(HubContext(jupyterhub_version=HUB, driver_cuda="12.4", driver_version="550.54.15"), **changes)


def levels(findings, subject=None) -> list[str]:
    return [f.level for f in findings if subject is None or f.subject == subject]


# --- the verdict


@pytest.mark.parametrize(
    "found, status, text",
    [
        ([], 0, "OK"),
        ([OK, OK], 0, "OK"),
        ([OK, WARN], 0, "OK (1 warning)"),
        ([WARN, WARN], 0, "OK (2 warnings)"),
        ([FAIL, OK], 1, "FAIL (1 failure, 0 warnings)"),
        ([FAIL, WARN, FAIL], 1, "FAIL (2 failures, 1 warning)"),
    ],
    ids=["nothing", "all-ok", "one-warning", "warnings-do-not-fail", "one-failure", "failures-and-warnings"],
)
def test_verdict(found, status, text):
    assert verdict(Finding(level, "x", "y") for level in found) == (status, text)


# --- image check: the probe's output, then findings from facts


def test_parse_probe_output():
    facts = probe.parse_probe_output("lab:1", PROBE_OUTPUT, size=42, config=CONFIG)
    assert (facts.uid, facts.user, facts.home, facts.home_writable) == (1000, "jovyan", "/home/jovyan", True)
    assert facts.singleuser == "/opt/venv/bin/jupyterhub-singleuser"
    assert (facts.python_version, facts.jupyterhub, facts.jupyterlab, facts.notebook) == (
        "3.11.2",
        "6.1.1",
        "4.6.6",
        "",
    )
    assert facts.libcudart == ("12.4.127", "12")
    assert facts.nvcc == "12.4"
    assert facts.frameworks == (
        Framework("torch", "2.5.1+cu124", "12.4"),
        Framework("tensorflow", error="ImportError: libcudart.so.11.0: cannot open shared object file"),
    )
    assert (facts.size, facts.probe_error) == (42, "")


def test_parse_probe_output_of_an_image_without_python():
    facts = probe.parse_probe_output("busybox:1", "uid=0\nuser=root\nhome=/root\nhome_writable=1\nsingleuser=\n")
    assert (facts.uid, facts.singleuser, facts.python_version, facts.frameworks) == (0, "", "", ())


def test_a_good_image_passes():
    findings = image_check.image_findings(good_image(), ctx())
    assert levels(findings) == [OK] * len(findings), findings
    subjects = [f.subject for f in findings]
    assert subjects == ["jupyterhub-singleuser", "user", "python", "jupyterlab", "cuda", "torch", "size"]
    assert "JupyterHub 6.1.1 (the hub runs 6.1.1)" in findings[0].message
    assert findings[-1].message == "8 GiB"
    assert verdict(findings) == (0, "OK")


@pytest.mark.parametrize(
    "facts, context, subject, level, says",
    [
        (good_image(singleuser="", jupyterhub=""), ctx(), "jupyterhub-singleuser", FAIL, "not found"),
        (
            good_image(jupyterhub="", jupyterhub_error="ModuleNotFoundError: jupyterhub"),
            ctx(),
            "jupyterhub-singleuser",
            FAIL,
            "import jupyterhub",
        ),
        (good_image(jupyterhub="5.2.1"), ctx(), "jupyterhub-singleuser", FAIL, "different major"),
        (good_image(jupyterhub="6.0.0"), ctx(), "jupyterhub-singleuser", WARN, "different minor"),
        (good_image(jupyterhub="6.1.0"), ctx(), "jupyterhub-singleuser", OK, "6.1.0"),
        (good_image(jupyter_server="", notebook=""), ctx(), "jupyterhub-singleuser", FAIL, "jupyter_server"),
        (good_image(uid=0, user="root", config={**CONFIG, "User": ""}), ctx(), "user", FAIL, "root"),
        (good_image(uid=0, user="root"), ctx(allow_root=True), "user", WARN, "allowed"),
        (good_image(home_writable=False), ctx(), "home", FAIL, "not writable"),
        (good_image(python_version=""), ctx(), "python", FAIL, "no Python"),
        (good_image(jupyterlab=""), ctx(), "jupyterlab", WARN, "not installed"),
        (good_image(config={**CONFIG, "Cmd": ["bash"]}), ctx(), "command", WARN, "the hub runs bash (the image's CMD)"),
        (good_image(config={**CONFIG, "Cmd": None}), ctx(), "command", FAIL, "the image has no CMD"),
        (
            good_image(frameworks=(Framework("tensorflow", error="ImportError: libcudart.so.11.0"),)),
            ctx(),
            "tensorflow",
            FAIL,
            "libcudart.so.11.0",
        ),
        (good_image(probe_error="exec: /bin/sh: no such file"), ctx(), "probe", FAIL, "/bin/sh"),
        (
            good_image(config={**CONFIG, "Env": ["DOCKER_RESOURCE_NVIDIA-GPU=GPU-x"]}),
            ctx(),
            "environment",
            FAIL,
            "DOCKER_RESOURCE_NVIDIA-GPU",
        ),
    ],
    ids=[
        "no-singleuser",
        "jupyterhub-does-not-import",
        "major-mismatch",
        "minor-mismatch",
        "patch-differs",
        "no-jupyter-server",
        "root",
        "root-allowed",
        "home-not-writable",
        "no-python",
        "no-jupyterlab",
        "command-not-jupyter",
        "no-command",
        "framework-does-not-import",
        "probe-failed",
        "sets-a-swarm-resource-variable",
    ],
)
def test_image_findings(facts, context, subject, level, says):
    findings = image_check.image_findings(facts, context)
    mine = [f for f in findings if f.subject == subject]
    assert mine and mine[0].level == level, findings
    assert says in mine[0].message
    if level == FAIL:
        assert mine[0].fix, "a failure says how to fix it"
        assert verdict(findings)[0] == 1
    else:
        assert verdict(findings)[0] == 0


@pytest.mark.parametrize("user", ["0", "00", "0:0", "root", "toor"], ids=repr)
def test_a_user_that_resolves_to_uid_0_fails_by_any_name_or_number(user):
    """The image's USER as written, or the uid the probe saw it run as ("toor": a second name for uid 0)."""
    facts = good_image(uid=0, user=user, config={**CONFIG, "User": user})
    (finding,) = [f for f in image_check.image_findings(facts, ctx()) if f.subject == "user"]
    assert finding.level == FAIL and f"{user} (uid 0) runs as root" in finding.message, finding
    assert "allow_root on its profiles in c.GPUSpawner.profiles" in finding.fix


def test_root_is_allowed_for_an_image_when_every_profile_that_uses_it_allows_it(tmp_path):
    profiles = [
        {"slug": "root", "display_name": "Root", "image": "root:1", "allow_root": True},
        {"slug": "plain", "display_name": "Plain", "image": "root:1"},
    ]
    body = f'c.JupyterHub.spawner_class = "gpu"\nc.GPUSpawner.profiles = {profiles!r}\n'
    hub = load_hub_config(str(write_config(tmp_path, body)))
    root, plain = hub.profiles
    assert image_check.hub_context(hub, [root]).allow_root
    assert not image_check.hub_context(hub, [root, plain]).allow_root
    assert not image_check.hub_context(hub).allow_root  # an image named on the command line: hub-wide only


@pytest.mark.parametrize(
    "image, inspect, says",
    [
        (
            "127.0.0.1:5000/ml101:2026.1",
            {"Id": "sha256:" + "1" * 64, "RepoDigests": ["127.0.0.1:5000/ml101@sha256:" + "a" * 64]},
            "pin it in the profile as image: 127.0.0.1:5000/ml101@sha256:" + "a" * 64,
        ),
        (  # tagged under two names: the digest of the name checked
            "lab.example.edu/ml101:2026.1",
            {"Id": "sha256:1", "RepoDigests": ["other/ml101@sha256:" + "b" * 64, "lab.example.edu/ml101@sha256:c"]},
            "image: lab.example.edu/ml101@sha256:c",
        ),
        (
            "ml101:2026.1",
            {"Id": "sha256:" + "1" * 64, "RepoDigests": []},
            "none: ml101:2026.1 was built on this engine, never pulled from a registry (Id sha256:111111111111)",
        ),
    ],
    ids=["from-a-registry", "two-names", "built-here"],
)
def test_the_digest_to_pin(image, inspect, says):
    finding = image_check.pin_finding(image, inspect)
    assert (finding.level, finding.subject) == (OK, "digest")
    assert says in finding.message


def test_a_configured_command_replaces_the_images():
    facts = good_image(config={**CONFIG, "Cmd": ["bash"]})
    assert "command" not in [f.subject for f in image_check.image_findings(facts, ctx(cmd=("jupyterhub-singleuser",)))]


@pytest.mark.parametrize(
    "declared, found, frameworks, driver, expect",
    [
        ("12.4.1", ("12.4.127",), (), "12.4", [OK]),
        ("12.8.0", (), (), "12.4", [FAIL, WARN]),  # the hub refuses it (and it contains no CUDA)
        ("12.8.0", ("12.8.61",), (), "12.4", [FAIL]),
        ("12.4.1", ("12.4.127",), (), "", [OK]),  # driver unknown: nothing to compare
        ("", (), (), "12.4", [OK]),  # a CPU image
        ("12.4.1", (), (), "12.4", [WARN]),  # declared, not found
        ("", ("12.4.127",), (), "12.4", [WARN]),  # found, not declared: the hub cannot check it
        ("12.4.1", ("12.8.61",), (), "12.8", [WARN]),  # declared and found differ
        ("12.4.1", (), (Framework("torch", "2.7.0", "12.8"),), "12.4", [WARN, WARN]),  # minor-version compat only
        ("", (), (Framework("torch", "2.5.1", "12.4"),), "11.8", [FAIL, WARN]),  # new major: no GPU at all
        ("", (), (Framework("torch", "2.5.1", ""),), "12.4", [OK]),  # a CPU build of torch
    ],
    ids=[
        "matching",
        "declared-newer-than-driver",
        "declared-and-found-newer",
        "driver-unknown",
        "no-cuda",
        "declared-not-found",
        "found-not-declared",
        "declared-differs",
        "torch-newer-minor",
        "torch-newer-major",
        "torch-cpu",
    ],
)
def test_cuda_against_the_driver(declared, found, frameworks, driver, expect):
    config = {**CONFIG, "Env": [f"CUDA_VERSION={declared}"] if declared else []}
    facts = good_image(config=config, libcudart=found, frameworks=frameworks)
    cuda = [f for f in image_check.image_findings(facts, ctx(driver_cuda=driver)) if f.subject == "cuda"]
    assert [f.level for f in cuda] == expect, cuda
    if FAIL in expect and declared.startswith("12.8"):
        assert "needs CUDA 12.8" in cuda[0].message and ">= 570" in cuda[0].message  # the hub's own refusal


def test_cuda_does_not_matter_for_cpu_profiles():
    facts = good_image(config={**CONFIG, "Env": ["CUDA_VERSION=12.8.0"]})
    cuda = [f for f in image_check.image_findings(facts, ctx(for_gpu=False)) if f.subject == "cuda"]
    assert [f.level for f in cuda] == [OK] and "only CPU profiles" in cuda[0].message


def test_the_declared_cuda_label_wins_over_the_env():
    facts = good_image(config={**CONFIG, "Labels": {"gpuspawner.cuda": "12.8"}})
    assert levels(image_check.image_findings(facts, ctx()), "cuda")[0] == FAIL


# --- doctor


@pytest.mark.parametrize(
    "on_path, runtimes, refusal, level, says",
    [
        ([], [], "", OK, "accepts GPU requests"),
        (["nvidia-ctk"], ["runc", "nvidia"], "", OK, "nvidia-ctk, runtime nvidia"),
        ([], [], 'could not select device driver "" with capabilities: [[gpu]]', WARN, "refuses GPU requests"),
        (["nvidia-container-runtime-hook"], [], "could not select device driver", FAIL, "restart"),
        (["nvidia-container-toolkit"], [], None, OK, "nvidia-container-toolkit"),
        ([], ["nvidia"], None, OK, "runtime nvidia"),
        ([], ["runc"], None, WARN, "no NVIDIA container toolkit"),
    ],
    ids=[
        "engine-accepts",
        "engine-accepts-with-evidence",
        "no-toolkit",
        "installed-after-dockerd",
        "on-path-untested",
        "runtime-untested",
        "nothing",
    ],
)
def test_toolkit_finding(on_path, runtimes, refusal, level, says):
    finding = doctor.toolkit_finding(on_path, runtimes, refusal)
    assert finding.level == level
    assert says in finding.message + finding.fix
    if level != OK:
        assert "nvidia-container-toolkit" in finding.fix or "restart dockerd" in finding.fix


def unit(index, uuid, name="NVIDIA A100-SXM4-40GB", memory="40G", **mig):
    return {"index": index, "uuid": uuid, "name": name, "memory": memory, **mig}


STATIC = [unit(0, "GPU-aaaa"), unit(1, "GPU-bbbb")]
MIG = [
    unit(2, "MIG-1111", memory="10G", mig_profile="1g.10gb", parent_uuid="GPU-cccc", mig_index=0),
    unit(2, "MIG-2222", memory="10G", mig_profile="1g.10gb", parent_uuid="GPU-cccc", mig_index=1),
]


def inventory(entries, **kwargs) -> Inventory:
    return Inventory(units=parse_static_inventory(entries), **kwargs)


def test_nvml_findings():
    (f,) = doctor.nvml_findings(None, "NVML did not initialise", "auto")
    assert f.level == WARN and "driver" in f.fix
    (f,) = doctor.nvml_findings(None, "NVML did not initialise", "nvml")
    assert f.level == FAIL and "'nvml' needs it" in f.message

    nvml = inventory(STATIC + MIG, source="nvml", driver_version="550.54.15", cuda_version="12.4")
    (f,) = doctor.nvml_findings(nvml, "", "nvml", nvml.units)
    assert f.level == OK
    assert f.message == "driver 550.54.15, CUDA up to 12.4, 2 whole GPU(s), 2 MIG instance(s), MIG on GPU 2"

    # A static list naming a GPU the driver does not have: the hub would hand out a ghost.
    static = parse_static_inventory([*STATIC, unit(5, "GPU-gone")])
    ok, missing = doctor.nvml_findings(nvml, "", STATIC + [unit(5, "GPU-gone")], static)
    assert ok.level == OK and missing.level == FAIL and "GPU-gone" in missing.message


PROFILES = [
    {"slug": "cpu", "display_name": "CPU", "image": "lab:1"},
    {"slug": "gpu", "display_name": "GPU", "image": "lab:1", "gpus": 1},
    {"slug": "big", "display_name": "Two", "image": "lab-cuda:1", "gpus": 3},
    {"slug": "slice", "display_name": "Slice", "image": "lab-cuda:1", "gpus": 1, "mig_profile": "3g.40gb"},
    {"slug": "shared", "display_name": "Shared", "image": "lab:1", "shared_gpu": True},
    {"slug": "root", "display_name": "Root", "image": "lab-root:1", "allow_root": True},
]


def test_profile_findings():
    inv = inventory(STATIC + MIG)
    findings = doctor.profile_findings(parse_profiles(PROFILES), inv, Ledger(inv.units))
    assert [(f.subject, f.level) for f in findings] == [
        ("profile gpu", OK),
        ("profile big", FAIL),  # 3 whole GPUs, the host has 2
        ("profile slice", FAIL),  # no 3g.40gb instance
        ("profile shared", OK),
    ]
    assert "only 2 fit" in findings[1].message
    assert "has none that fits" in findings[2].message


def test_inventory_finding():
    assert doctor.inventory_finding(inventory(STATIC + MIG), 1).message.startswith("4 unit(s) from the list")
    empty = Inventory(source="none", note="NVML did not initialise")
    assert doctor.inventory_finding(empty, gpu_profiles=2).level == WARN
    assert doctor.inventory_finding(empty, gpu_profiles=0).level == OK


def inspect(user="jovyan", env=(), size=2 * 1024**3):
    return {"Id": "sha256:" + "1" * 64, "Size": size, "Config": {"User": user, "Env": list(env)}}


@pytest.mark.parametrize(
    "found, policy, allow_root, profiles, driver, level, says",
    [
        (inspect(), "ifnotpresent", False, ("gpu",), "12.4", OK, "is present (2 GiB, CUDA not declared), for gpu"),
        (None, "ifnotpresent", False, ("gpu",), "12.4", WARN, "will pull it"),
        (None, "never", False, ("gpu",), "12.4", FAIL, "pull_policy is 'never'"),
        (inspect(user=""), "ifnotpresent", False, ("cpu",), "12.4", FAIL, "runs as root"),
        (inspect(user=""), "ifnotpresent", True, ("cpu",), "12.4", OK, "is present"),
        (inspect(user="00"), "ifnotpresent", False, ("root",), "12.4", OK, "is present"),  # its profile allows it
        (inspect(user="00"), "ifnotpresent", False, ("cpu", "root"), "12.4", FAIL, "runs as root"),
        (inspect(env=["CUDA_VERSION=12.8.0"]), "ifnotpresent", False, ("gpu",), "12.4", FAIL, "needs CUDA 12.8"),
        (inspect(env=["CUDA_VERSION=12.8.0"]), "ifnotpresent", False, ("cpu",), "12.4", OK, "CUDA 12.8.0"),
        (inspect(env=["CUDA_VERSION=12.8.0"]), "ifnotpresent", False, ("gpu",), "", OK, "CUDA 12.8.0"),
    ],
    ids=[
        "present",
        "missing-will-pull",
        "missing-never-pulled",
        "root",
        "root-allowed",
        "root-allowed-by-its-profile",
        "root-not-allowed-by-every-profile",
        "cuda-too-new",
        "cuda-for-cpu-only",
        "driver-unknown",
    ],
)
def test_profile_image_findings(found, policy, allow_root, profiles, driver, level, says):
    users = tuple(p for p in parse_profiles(PROFILES) if p.slug in profiles)
    (finding,) = doctor.profile_image_findings(
        "lab:1", found, users, pull_policy=policy, allow_root=allow_root, driver_cuda=driver
    )
    assert finding.level == level and says in finding.message, finding


def test_profile_image_findings_name_every_failure():
    users = tuple(p for p in parse_profiles(PROFILES) if p.slug == "gpu")
    found = inspect(user="root", env=["CUDA_VERSION=12.8.0"])
    root, cuda = doctor.profile_image_findings(
        "lab:1", found, users, pull_policy="never", allow_root=False, driver_cuda="12.4"
    )
    assert (root.level, cuda.level) == (FAIL, FAIL)
    assert "runs as root" in root.message and "needs CUDA 12.8" in cuda.message


def test_config_findings():
    profiles = parse_profiles(PROFILES[:2])
    assert [f.level for f in doctor.config_findings("hub.py", profiles, "")] == [OK, OK]
    broken = doctor.config_findings("hub.py", None, "profile 'gpu': field 'gpus': must be ...")
    assert [f.level for f in broken] == [OK, FAIL] and "field 'gpus'" in broken[1].message
    other = doctor.config_findings("hub.py", profiles, "", "c.JupyterHub.spawner_class is 'docker'")
    assert other[0].level == FAIL and other[0].fix == 'c.JupyterHub.spawner_class = "gpu"'
    assert doctor.config_findings("", profiles, "")[0].level == WARN


def test_finding_lines_are_aligned_and_never_markup():
    lines = finding_lines(
        [Finding(OK, "docker", "fine"), Finding(FAIL, "toolkit", "refused: [[gpu]] [bold]x[/bold]", "restart dockerd")]
    )
    assert lines[0].plain == "ok    docker   fine"
    assert lines[1].plain == "fail  toolkit  refused: [[gpu]] [bold]x[/bold]  -> fix: restart dockerd"


# --- status


def container(user, server, gpus, profile="gpu", shared=False, name=None):
    labels = {
        "gpuspawner.user": user,
        "gpuspawner.server": server,
        "gpuspawner.gpus": ",".join(gpus),
        "gpuspawner.profile": profile,
        "gpuspawner.shared": "1" if shared else "",
    }
    return {"Id": "c" * 64, "Names": [f"/{name or 'jupyter-' + user}"], "Labels": labels}


RUNNING = [
    container("alice", "", ["GPU-aaaa"]),
    container("bob", "exp", ["MIG-1111"], profile="slice"),
    container("carol", "", ["GPU-bbbb"], profile="shared", shared=True),
    container("dave", "", ["GPU-bbbb"], profile="shared", shared=True),
    container("erin", "", [], profile="cpu"),
    container("mallory", "", ["GPU-ffff"]),  # a unit this inventory does not have
]


def view_of(containers) -> DashboardView:
    """The dashboard's view of ``containers``, which ``status`` prints."""
    return build_view(inventory(STATIC + MIG), Policy(share_limit=4), containers, now=datetime.now(timezone.utc))


def test_status_rows():
    view = view_of(RUNNING)
    rows, warnings = status_rows(view), list(view.warnings)
    assert [(r["id"], r["free"], [h["user"] for h in r["holders"]]) for r in rows] == [
        ("GPU-aaaa", False, ["alice"]),
        ("GPU-bbbb", False, ["carol", "dave"]),
        ("MIG-1111", False, ["bob"]),
        ("MIG-2222", True, []),
    ]
    assert rows[2]["holders"] == [
        {"user": "bob", "server": "exp", "profile": "slice", "container": "jupyter-bob", "shared": False}
    ]
    assert rows[2]["unit"] == "GPU 2 MIG 0" and rows[2]["mig_profile"] == "1g.10gb"
    assert warnings == ["server mallory/ holds units not in this inventory: GPU-ffff"]
    json.dumps(rows)  # what --json prints


def test_status_table():
    rows = status_rows(view_of(RUNNING))
    out = io.StringIO()
    Console(file=out, width=200).print(status_table(rows, share_limit=4))
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].split() == [
        "Unit",
        "┃",
        "Id",
        "┃",
        "Model",
        "┃",
        "Memory",
        "┃",
        "Holder",
        "┃",
        "Profile",
        "┃",
        "Shared",
    ]
    alice = next(line for line in lines if "alice" in line)
    assert "GPU 0" in alice and "GPU-aaaa" in alice and "40 GiB" in alice and "gpu" in alice
    assert "bob/exp" in text and "GPU 2 MIG 0 1g.10gb" in text
    carol, dave = (next(line for line in lines if who in line) for who in ("carol", "dave"))
    assert "yes, 2/4" in carol and "yes, 2/4" in dave and "GPU-bbbb" in carol and "GPU-bbbb" not in dave
    free = next(line for line in lines if "MIG-2222" in line)
    assert "free" in free
    assert status_summary(rows, cpu_servers=1) == (
        "4 unit(s): 3 held, 1 free; 4 server(s) hold GPUs, 1 run without a GPU"
    )


def test_status_reads_the_labels_the_spawner_writes():
    from gpuspawner.labels import ServerRecord, server_labels

    record = ServerRecord("ana", "exp", "shared", ("GPU-bbbb",), shared=True, groups=frozenset({"cn=ml,ou=courses"}))
    running = [{"Id": "d" * 64, "Names": ["/jupyter-ana-exp"], "Labels": server_labels(record)}]
    rows = status_rows(view_of(running))
    assert rows[1]["holders"] == [
        {"user": "ana", "server": "exp", "profile": "shared", "container": "jupyter-ana-exp", "shared": True}
    ]


def test_a_mig_instance_of_unknown_index_is_named_as_the_inventory_names_it():
    mig = GPU(2, "MIG-9999", "NVIDIA A100-SXM4-40GB", 10 * 1024**3, mig_profile="1g.10gb", parent_uuid="GPU-cccc")
    view = build_view(Inventory(units=(mig,)), Policy(), [], now=datetime.now(timezone.utc))
    assert status_rows(view)[0]["unit"] == mig.describe().split(" (")[0] == "GPU 2 MIG"


# --- config loading and the commands' glue


def write_config(tmp_path, body: str, name="jupyterhub_config.py"):
    path = tmp_path / name
    path.write_text("c = get_config()  # noqa\n" + textwrap.dedent(body))
    return path


HUB_CONFIG = f"""
c.JupyterHub.spawner_class = "gpu"
c.GPUSpawner.profiles = {PROFILES[:2]!r}
c.GPUSpawner.gpus = {STATIC!r}
c.GPUSpawner.driver_cuda_version = "12.4"
c.Spawner.cmd = ["jupyterhub-singleuser"]
"""


def test_load_lab_reads_the_hubs_config(tmp_path):
    lab = load_hub_config(str(write_config(tmp_path, HUB_CONFIG)))
    assert isinstance(lab.spawner, GPUSpawner)
    assert [p.slug for p in lab.profiles] == ["cpu", "gpu"]
    assert [u.uuid for u in lab.inventory.units] == ["GPU-aaaa", "GPU-bbbb"]
    assert lab.driver_cuda == "12.4"
    assert lab.spawner.cmd == ["jupyterhub-singleuser"]  # c.Spawner applies, as in the hub
    assert (lab.spawner_problem, lab.notes) == ("", [])


def test_load_lab_overrides_from_the_command_line(tmp_path):
    overrides = Config({"GPUSpawner": {"allow_root": True, "driver_cuda_version": "12.8"}})
    lab = load_hub_config(str(write_config(tmp_path, HUB_CONFIG)), overrides=overrides)
    assert lab.spawner.allow_root and lab.driver_cuda == "12.8"


def test_load_lab_subclass_in_config(tmp_path):
    body = "from gpuspawner import GPUSpawner\nclass CourseSpawner(GPUSpawner):\n    pass\n"
    body += "c.JupyterHub.spawner_class = CourseSpawner\nc.CourseSpawner.allow_root = True\n"
    lab = load_hub_config(str(write_config(tmp_path, body)))
    assert type(lab.spawner).__name__ == "CourseSpawner" and lab.spawner.allow_root


@pytest.mark.parametrize(
    "body, problem",
    [
        ("", "is not set"),
        ('c.JupyterHub.spawner_class = "docker"', "not gpuspawner's GPUSpawner"),
        ('c.JupyterHub.spawner_class = "no.such.Spawner"', "cannot be loaded"),
    ],
)
def test_load_lab_names_a_foreign_spawner(tmp_path, body, problem):
    lab = load_hub_config(str(write_config(tmp_path, body)))
    assert problem in lab.spawner_problem


@pytest.mark.parametrize(
    "body, error",
    [
        ("c.GPUSpawner.profiles = [{'slug': 'x'}]", "field 'display_name': is required"),
        ("c.GPUSpawner.gpus = 'all'", 'must be "nvml", "auto" or a list'),
        ("c.JupyterHub.spawner_class = (", "SyntaxError"),
        ("import no_such_module", "ModuleNotFoundError"),
    ],
    ids=["bad-profile", "bad-gpus", "syntax", "import"],
)
def test_load_lab_refuses_a_broken_config(tmp_path, body, error):
    with pytest.raises(ConfigError, match="jupyterhub_config.py") as e:
        load_hub_config(str(write_config(tmp_path, body)))
    assert error in str(e.value)


def test_unpinned_images_are_refused_as_the_hub_does(tmp_path):
    body = 'c.JupyterHub.spawner_class = "gpu"\nc.GPUSpawner.profiles = [{"slug": "a", "display_name": "A", "image": "lab"}]\n'
    lab = load_hub_config(str(write_config(tmp_path, body)))
    with pytest.raises(ProfileError, match="pin a tag"):
        lab.profiles


def test_mounts_the_admin_does_not_allow_are_refused_as_the_hub_does(tmp_path):
    """The command, the dashboard and the culler read profiles through HubConfig.profiles: the hub's check."""
    share = {"name": "all", "source": "/", "writable_by": ["teachers"]}
    profile = {"slug": "a", "display_name": "A", "image": "lab:1", "shares": [share]}
    body = f'c.JupyterHub.spawner_class = "gpu"\nc.GPUSpawner.profiles = [{profile!r}]\n'
    body += 'c.GPUSpawner.mount_roots = ["/srv/courses"]\n'
    lab = load_hub_config(str(write_config(tmp_path, body)))
    with pytest.raises(ProfileError) as e:
        lab.profiles
    assert str(e.value) == (
        "profile 'a': field 'shares': all: source '/' is not under the mount roots the admin allows"
        " (c.GPUSpawner.mount_roots: /srv/courses)"
    )


def test_load_lab_without_a_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config file"):
        load_hub_config("jupyterhub_config.py", explicit=True)
    lab = load_hub_config("jupyterhub_config.py", explicit=False)
    assert lab.config_file == "" and "using the hub's defaults" in lab.notes[0]
    assert [p.slug for p in lab.profiles] == ["default"]


def test_the_repositorys_config_loads():
    from pathlib import Path

    lab = load_hub_config(str(Path(__file__).resolve().parent.parent / "jupyterhub_config.py"))
    assert lab.spawner_problem == "" and [p.slug for p in lab.profiles] == ["cpu", "gpu", "shared"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["image", "--help"],
        ["image", "check", "--help"],
        ["image", "build", "--help"],
        ["prepull", "--help"],
        ["doctor", "--help"],
        ["status", "--help"],
    ],
)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "-f, --config" in out or "Subcommands" in out


def test_image_check_needs_an_image_or_profiles(capsys):
    assert main(["image", "check"]) == 2
    assert main(["image", "check", "a:1", "b:1"]) == 2
    assert "give one IMAGE, or --profiles" in capsys.readouterr().err


def test_a_missing_config_named_with_f_is_an_error(tmp_path, capsys):
    assert main(["status", "-f", str(tmp_path / "nope.py")]) == 2
    assert "no config file" in capsys.readouterr().err


class FakeEngine:
    """The one Docker call ``status`` makes."""

    def __init__(self, containers):
        self.running = containers
        self.filters = None

    def containers(self, filters=None):
        self.filters = filters
        return self.running


def test_status_json_and_table(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, HUB_CONFIG)
    engine = FakeEngine([container("alice", "", ["GPU-bbbb"]), container("erin", "", [], profile="cpu")])
    monkeypatch.setattr(HubConfig, "docker", lambda self: engine)

    assert main(["status", "--json", "-f", str(config)]) == 0
    assert engine.filters == {"label": "gpuspawner.gpus"}
    data = json.loads(capsys.readouterr().out)
    assert data["inventory"]["source"] == "static" and data["share_limit"] == 4
    assert [(u["id"], u["free"]) for u in data["units"]] == [("GPU-aaaa", True), ("GPU-bbbb", False)]
    assert data["units"][1]["holders"][0]["user"] == "alice"
    assert (data["servers_without_gpu"], data["warnings"]) == (1, [])

    assert main(["status", "-f", str(config)]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "free" in out
    assert "2 unit(s): 1 held, 1 free; 1 server(s) hold GPUs, 1 run without a GPU" in out


def test_doctor_without_an_engine_still_checks_the_rest(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, HUB_CONFIG)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert main(["doctor", "-f", str(config)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # columns aside
    assert f"fail docker no Docker engine answers at unix://{tmp_path}/no-engine.sock" in out
    assert "ok profiles 2 profile(s) valid, images pinned: cpu, gpu" in out
    assert "ok gpus 2 unit(s) from the list in c.GPUSpawner.gpus" in out
    assert "ok profile gpu 1 whole GPU: 2 unit(s) fit" in out
    assert "verdict: FAIL (1 failure" in out


# --- doctor and per-user subdomains (c.JupyterHub.subdomain_host)

LAB = "gpu-lab.example.edu"


def test_subdomain_findings_say_where_servers_and_the_dashboard_are():
    assert doctor.subdomain_findings("") == []
    (where, tls) = doctor.subdomain_findings(f"https://{LAB}", dashboard="gpu-dashboard")
    assert where.level == OK
    assert f"(https://alice.{LAB}/user/alice/)" in where.message and f"*.{LAB}" in where.message
    assert f"dashboard is at https://gpu-dashboard--service.{LAB}/services/gpu-dashboard/" in where.message
    assert (
        tls.level == OK
        and tls.message == f"TLS ends in front of the hub: that proxy's certificate must cover {LAB} and *.{LAB}"
    )
    # No scheme is https, as for the hub; a port is kept; JupyterHub's legacy hook puts services at services.<domain>.
    (where, _) = doctor.subdomain_findings(
        f"{LAB}:8443", dashboard="gpu-dashboard", hook=doctor.SUBDOMAIN_HOOKS["legacy"]
    )
    assert f"https://alice.{LAB}:8443/user/alice/" in where.message
    assert f"https://services.{LAB}:8443/services/gpu-dashboard/" in where.message


@pytest.mark.parametrize(
    ("subdomain_host", "warns"),
    [(f"http://{LAB}", True), (f"https://{LAB}", False), ("http://localhost:8000", False)],
    ids=["http", "https", "localhost"],
)
def test_subdomains_over_plain_http_warn_except_on_loopback_names(subdomain_host, warns):
    warnings = [f for f in doctor.subdomain_findings(subdomain_host) if f.level == WARN]
    assert bool(warnings) == warns
    if warns:
        assert warnings[0].fix == f'c.JupyterHub.subdomain_host = "https://{LAB}"'


@pytest.mark.parametrize(
    ("names", "level", "missing"),
    [
        ([LAB, f"*.{LAB}"], OK, ""),
        ([f"*.{LAB}", LAB.upper()], OK, ""),
        ([LAB], FAIL, f"not alice.{LAB}, gpu-dashboard--service.{LAB}"),
        ([f"*.{LAB}"], FAIL, f"not {LAB}:"),
        ([LAB, f"*.x.{LAB}", f"alice.{LAB}"], FAIL, f"not gpu-dashboard--service.{LAB}:"),  # one label deep
        ([], FAIL, "is for no DNS name"),
    ],
    ids=["both", "case", "hub-only", "wildcard-only", "deeper-wildcard", "no-names"],
)
def test_the_hubs_certificate_must_cover_the_domain_and_its_wildcard(names, level, missing):
    findings = doctor.subdomain_findings(
        f"https://{LAB}", ssl_cert="/etc/jupyterhub/tls/fullchain.pem", cert_names=names, dashboard="gpu-dashboard"
    )
    (tls,) = [f for f in findings if f.subject == "tls"]
    assert tls.level == level, tls
    assert missing in tls.message
    if level == FAIL:
        assert tls.fix.endswith(f"certbot certonly --dns-<provider> -d {LAB} -d '*.{LAB}'")
    unreadable = doctor.subdomain_findings(f"https://{LAB}", ssl_cert="/nope.pem", cert_error="No such file")
    assert (unreadable[-1].level, unreadable[-1].subject) == (FAIL, "tls")
    assert "cannot read the hub's certificate /nope.pem: No such file" in unreadable[-1].message


def self_signed(path, names):
    """A PEM certificate (and nothing else) for ``names``: what certbot's fullchain.pem starts with."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    )
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM) * 2)  # a "chain"
    return path


def test_doctor_checks_the_hubs_certificate_for_the_subdomains(tmp_path, monkeypatch, capsys):
    cert = self_signed(tmp_path / "fullchain.pem", [LAB])
    config = write_config(
        tmp_path,
        HUB_CONFIG
        + f"""
from gpuspawner import services
c.JupyterHub.subdomain_host = "https://{LAB}"
c.JupyterHub.ssl_cert = {str(cert)!r}
services.add_dashboard(c, __file__)
""",
    )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert main(["doctor", "-f", str(config)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"the GPU dashboard is at https://gpu-dashboard--service.{LAB}/services/gpu-dashboard/" in out
    assert f"fail tls the hub's certificate {cert} is for {LAB}, not alice.{LAB}, gpu-dashboard--service.{LAB}" in out
    self_signed(cert, [LAB, f"*.{LAB}"])
    main(["doctor", "-f", str(config)])
    assert f"ok tls the hub's certificate covers {LAB} and *.{LAB}" in " ".join(capsys.readouterr().out.split())
    cert.write_text("not a certificate")
    main(["doctor", "-f", str(config)])
    assert f"fail tls cannot read the hub's certificate {cert}:" in " ".join(capsys.readouterr().out.split())


# --- image build: the plan, the Dockerfile, the arguments (no Docker)


def plan(**changes) -> build_plan.BuildPlan:
    values = dict(
        base="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        tag="ml101-cuda:2026.1",
        jupyterhub=HUB,
        install_jupyterhub=True,
        python="/opt/conda/bin/python3",
        user="jovyan",
        requirements_sha256="ab" * 32,
        datasets=(build_plan.Dataset("mnist", "/data/mnist", 11 * 1000**2),),
    )
    return build_plan.BuildPlan(**{**values, **changes})


def test_the_dockerfile_of_a_build():
    text = build_plan.dockerfile(plan())
    lines = text.splitlines()
    assert lines[1:3] == ["FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "USER root"]
    assert "COPY requirements.txt /tmp/gpuspawner-build/requirements.txt" in lines
    # requirements and the hub's JupyterHub in one pip run, with the base's own Python
    assert (
        "RUN /opt/conda/bin/python3 -m pip install --no-cache-dir -r /tmp/gpuspawner-build/requirements.txt"
        " jupyterhub==6.1.1 && rm -rf /tmp/gpuspawner-build"
    ) in lines
    assert "COPY data/mnist /opt/datasets/mnist" in lines
    label = next(ln for ln in lines if ln.startswith("LABEL "))
    assert '"org.opencontainers.image.base.name"="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"' in label
    assert '"gpuspawner.jupyterhub"="6.1.1"' in label
    assert f'"gpuspawner.requirements"="sha256:{"ab" * 32}"' in label
    assert '"gpuspawner.datasets"="mnist"' in label
    assert lines[-1] == "USER jovyan"  # the base's user again: students never run as root
    assert "latest" not in text


def test_the_dockerfile_with_wheels_and_nothing_to_install():
    text = build_plan.dockerfile(plan(wheels=True, python="/opt/my venv/bin/python"))
    assert "COPY wheels /tmp/gpuspawner-build/wheels" in text
    assert (
        "RUN '/opt/my venv/bin/python' -m pip install --no-cache-dir --no-index --find-links"
        " /tmp/gpuspawner-build/wheels" in text  # the offline route: the wheels only, no index
    )
    # A base with the hub's JupyterHub, no requirements, no data: no pip at all; its USER kept.
    bare = build_plan.dockerfile(plan(install_jupyterhub=False, requirements_sha256="", datasets=(), user=""))
    assert "pip" not in bare and "COPY" not in bare
    # a base that runs as root: students get uid 1000 with a home, never root
    assert bare.splitlines()[-4:] == [
        "RUN (getent passwd 1000 >/dev/null || useradd -m -u 1000 -s /bin/bash jovyan"
        " || echo 'jovyan:x:1000:1000::/home/jovyan:/bin/sh' >> /etc/passwd)"
        " && mkdir -p /home/jovyan && chown 1000:1000 /home/jovyan",
        "ENV HOME=/home/jovyan",
        "WORKDIR /home/jovyan",
        "USER 1000",
    ]
    assert build_plan.dockerfile(plan(user="root")).splitlines()[-1] == "USER 1000"
    labels = plan(requirements_sha256="", datasets=()).labels
    assert build_plan.LABEL_REQUIREMENTS not in labels and labels[build_plan.LABEL_DATASETS] == ""


@pytest.mark.parametrize(
    "base, tag, says",
    [
        ("lab:1", "", "--tag is required"),
        ("", "lab:2", "--base is required"),
        ("lab:1", "lab:latest", "--tag: image 'lab:latest' uses the tag 'latest'"),
        ("lab:1", "lab", "--tag: image 'lab' has no tag"),
        ("lab", "lab:2", "--base: image 'lab' has no tag"),
        ("lab:latest", "lab:2", "--base: image 'lab:latest' uses the tag 'latest'"),
        ("lab:1", "lab@sha256:" + "a" * 64, "a digest is what a build produces"),
    ],
)
def test_build_refuses_unpinned_names(base, tag, says):
    with pytest.raises(build_plan.BuildRefused, match=re.escape(says)):
        build_plan.check_build_tags(base, tag)


def test_build_accepts_pinned_names():
    build_plan.check_build_tags("lab@sha256:" + "a" * 64, "registry.example.edu:5000/ml101:2026.1")
    build_plan.check_build_tags("lab:1", "lab:2")


def test_dataset_names():
    assert build_plan.dataset_names(["/data/mnist/", "cifar-10"]) == ["mnist", "cifar-10"]
    with pytest.raises(build_plan.BuildRefused, match="two datasets named 'mnist'"):
        build_plan.dataset_names(["/a/mnist", "/b/mnist"])
    with pytest.raises(build_plan.BuildRefused, match="cannot name a dataset"):
        build_plan.dataset_names(["/data/my data"])


def test_big_datasets_belong_in_a_mount():
    small = build_plan.dataset_finding(build_plan.Dataset("mnist", "/d/mnist", 11 * 1000**2))
    assert small.level == OK and "/opt/datasets/mnist" in small.message
    big = build_plan.dataset_finding(build_plan.Dataset("imagenet", "/d/imagenet", 600 * 1000**2))
    assert big.level == WARN and "mount it instead" in big.fix


@pytest.mark.parametrize(
    "singleuser, version, install",
    [
        ("", "", True),  # no jupyterhub-singleuser: install the hub's
        ("/opt/venv/bin/jupyterhub-singleuser", "6.1.1", False),
        ("/opt/venv/bin/jupyterhub-singleuser", "6.1.0", False),  # same major.minor: image check accepts it
        ("/opt/venv/bin/jupyterhub-singleuser", "5.2.1", True),
        ("", "6.1.1", True),  # importable but not on PATH
    ],
)
def test_when_the_build_installs_jupyterhub(singleuser, version, install):
    facts = good_image(singleuser=singleuser, jupyterhub=version)
    assert build_plan.needs_jupyterhub(facts, HUB) is install
    assert build_plan.jupyterhub_step(facts, HUB)[0] is install


def test_a_base_without_python_is_refused():
    assert build_plan.base_findings(good_image()) == []
    (no_python,) = build_plan.base_findings(good_image(python=""))
    assert no_python.level == FAIL and "pip cannot install" in no_python.message
    (broken,) = build_plan.base_findings(good_image(probe_error="exit status 127"))
    assert broken.level == FAIL


def test_build_events():
    assert build_plan.build_event({"stream": "Step 1/7 : FROM lab:1\n"}) == ("Step 1/7 : FROM lab:1", "", "")
    assert build_plan.build_event({"aux": {"ID": "sha256:abc"}}) == ("", "sha256:abc", "")
    assert (
        build_plan.build_event({"status": "Downloading", "id": "l1", "progress": "[=>  ]"})[0]
        == "l1 Downloading [=>  ]"
    )
    assert build_plan.build_event({"error": "x", "errorDetail": {"message": "pip failed\n"}}) == ("", "", "pip failed")


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--base", "lab:1", "--tag", "lab:latest"], "uses the tag 'latest'"),
        (["--base", "lab:1"], "--tag is required"),
        (["--base", "lab:1", "--tag", "lab:2", "--requirements", "/nonexistent/req.txt"], "no such file"),
        (["--base", "lab:1", "--tag", "lab:2", "--data", "/nonexistent/mnist"], "--data /nonexistent/mnist: no such"),
    ],
)
def test_image_build_refuses_before_asking_docker(argv, says, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["image", "build", *argv]) == 2
    assert says in capsys.readouterr().err


# --- prepull: the summary, and the progress of the hub's puller


def test_prepull_summary_and_table():
    results = [
        prepull.PullResult("lab:1", prepull.PRESENT, 2 * 1024**3, 0.0, profiles=("cpu",)),
        prepull.PullResult("lab:2", prepull.PULLED, 3 * 1024**3, 41.5, profiles=("gpu", "gpu-big")),
        prepull.PullResult("lab:3", prepull.FAILED, 0, 1.2, error="Could not pull lab:3: not found"),
    ]
    assert prepull.prepull_summary(results) == (1, "3 image(s): 1 already present, 1 pulled, 1 failed")
    assert prepull.prepull_summary(results[:2])[0] == 0
    buf = io.StringIO()
    Console(file=buf, width=160).print(prepull.prepull_table(results))
    out = buf.getvalue()
    assert "gpu, gpu-big" in out and "3 GiB" in out and "41.5" in out and "failed" in out


async def test_prepull_follows_the_pullers_tasks():
    present, pulling, failing = PullTask.present("lab:1"), PullTask("lab:2"), PullTask("lab:3")

    class Puller:
        async def prepull(self, images):
            assert list(images) == ["lab:1", "lab:2", "lab:3"]
            loop = asyncio.get_running_loop()
            loop.call_later(0.02, lambda: pulling._update(50, "Pulling lab:2"))
            loop.call_later(0.04, lambda: pulling._update(100, "Pulled lab:2", done=True))
            loop.call_later(0.03, lambda: failing._update(0, "Pull failed", done=True, error="Could not pull lab:3"))
            return [present, pulling, failing]

    users = {"lab:1": ["cpu"], "lab:2": ["gpu"], "lab:3": ["old"]}
    results = await PrepullApp.pull_all(Puller(), users, Console(file=io.StringIO()))
    assert [(r.image, r.state, r.profiles) for r in results] == [
        ("lab:1", prepull.PRESENT, ("cpu",)),
        ("lab:2", prepull.PULLED, ("gpu",)),
        ("lab:3", prepull.FAILED, ("old",)),
    ]
    assert results[2].error == "Could not pull lab:3" and results[1].seconds >= 0.04


# --- image check: the server started as the hub would (no Docker)


@pytest.mark.parametrize(
    "config, cmd, args, argv, source",
    [
        ({"Cmd": ["jupyterhub-singleuser"]}, None, (), ("jupyterhub-singleuser",), "the image's CMD"),
        ({"Cmd": ["python3"]}, ["jupyterhub-singleuser"], (), ("jupyterhub-singleuser",), "c.Spawner.cmd"),
        (
            {"Entrypoint": ["tini", "-g", "--"], "Cmd": ["start-notebook.py"]},
            None,
            ["--debug"],
            ("tini", "-g", "--", "start-notebook.py", "--debug"),
            "the image's CMD",
        ),
        (  # c.Spawner.cmd replaces the CMD, never the ENTRYPOINT
            {"Entrypoint": ["/opt/nvidia/nvidia_entrypoint.sh"], "Cmd": None},
            ["jupyterhub-singleuser"],
            (),
            ("/opt/nvidia/nvidia_entrypoint.sh", "jupyterhub-singleuser"),
            "c.Spawner.cmd",
        ),
        ({"Entrypoint": ["jupyterhub-singleuser"], "Cmd": None}, None, (), ("jupyterhub-singleuser",), ""),
        ({}, None, (), (), ""),
    ],
    ids=["image-cmd", "spawner-cmd-wins", "entrypoint-and-args", "entrypoint-kept", "no-cmd", "nothing"],
)
def test_the_command_the_hub_runs(config, cmd, args, argv, source):
    """As DockerSpawner.get_command: c.Spawner.cmd, else the image's CMD (None: the spawn fails); then the args."""
    command = server_start.server_command(config, cmd, args)
    assert command.argv == argv and command.source == source
    assert command.missing is (source == "")


def test_what_looks_like_a_jupyter_server():
    looks = lambda *argv: server_start.ServerCommand((), argv, "x").looks_like_jupyter  # noqa: E731
    assert looks("jupyterhub-singleuser") and looks("start-notebook.sh") and looks("/opt/conda/bin/jupyter", "lab")
    assert not looks("python3") and not looks("/bin/bash") and not looks()


def a_start_plan(command=("jupyterhub-singleuser",), home="/home/jovyan", profile=""):
    from gpuspawner.container import Limits, ServerContainer

    container = ServerContainer({}, {}, (), Limits(), (), True, ("ALL",), 4096)
    return server_start.StartPlan(
        "ml101:1",
        server_start.ServerCommand((), command, "the image's CMD"),
        container,
        8888,
        "/user/x/",
        30,
        8081,
        home,
        profile,
    )


@pytest.mark.parametrize(
    "plan, result, level, says, fix",
    [
        (
            a_start_plan(profile="ml101"),
            server_start.StartResult(answered=200, seconds=3.2),
            OK,
            "the server answered on port 8888 after 3.2 s, started as the hub starts it with profile ml101's"
            " settings (a new home volume at /home/jovyan, no network, no GPU)",
            "",
        ),
        (
            a_start_plan(command=("python3",)),
            server_start.StartResult(seconds=0.1, exited=Exited(0)),
            FAIL,
            "python3 (the image's CMD) exited with status 0, 0.1 s after it started, without answering, and wrote"
            " nothing to its log: students' spawns on the hub would fail the same way",
            'CMD ["jupyterhub-singleuser"] in the Dockerfile',
        ),
        (
            a_start_plan(),
            server_start.StartResult(seconds=2.5, exited=Exited(1), log=("ImportError: no module named torch",)),
            FAIL,
            "jupyterhub-singleuser (the image's CMD) exited with status 1, 2.5 s after it started, without answering:",
            "fix what the server's log below says",
        ),
        (
            a_start_plan(),
            server_start.StartResult(seconds=9, exited=Exited(137, oom_killed=True), log=("Killed",)),
            FAIL,
            "exited with status 137 (out of memory: more than the server's mem_limit)",
            "",
        ),
        (
            a_start_plan(command=("jupyter-nope",)),
            server_start.StartResult(refused='exec: "jupyter-nope": executable file not found in $PATH'),
            FAIL,
            "the engine could not start jupyter-nope (the image's CMD): exec:",
            "the command must be a program on the image's PATH",
        ),
        (
            a_start_plan(),
            server_start.StartResult(seconds=30, log=("[I ServerApp] loading",)),
            FAIL,
            "did not answer on port 8888 within 30 s (the hub's c.Spawner.http_timeout)",
            "",
        ),
        (
            a_start_plan(home=""),
            server_start.StartResult(seconds=1, helper_error="python3 -c <helper> said: no such file"),
            FAIL,
            "the server started, but the check could not watch it: python3 -c <helper> said: no such file",
            "Python 3",
        ),
    ],
    ids=["answered", "command-exits", "server-crashes", "out-of-memory", "no-such-program", "silent", "no-helper"],
)
def test_the_start_finding(plan, result, level, says, fix):
    finding = server_start.start_finding(plan, result)
    assert (finding.level, finding.subject) == (level, "start")
    assert says in finding.message, finding.message
    assert fix in finding.fix
    if level == FAIL:
        assert finding.fix


def test_the_start_is_planned_as_the_hub_would_start_it(tmp_path):
    profiles = [
        {
            "slug": "ml101",
            "display_name": "ML 101",
            "image": "ml101:1",
            "mem_limit": "2G",
            "cpu_limit": 1.5,
            "shm_size": "1G",
            "environment": {"COURSE": "ml101"},
            "datasets": [{"name": "mnist", "source": "/srv/datasets/mnist"}],
        }
    ]
    body = f"""
    c.JupyterHub.spawner_class = "gpu"
    c.GPUSpawner.profiles = {profiles!r}
    c.GPUSpawner.mount_roots = ["/srv/datasets"]
    c.GPUSpawner.volumes = {{"/srv/admin-tools": "/opt/tools"}}
    c.Spawner.environment = {{"TERM_OF": lambda spawner: "2026 for " + spawner.user.name}}
    c.Spawner.http_timeout = 45
    c.Spawner.hub_connect_url = "http://hub.example.edu:8081"
    c.Spawner.args = ["--ServerApp.shutdown_no_activity_timeout=600"]
    """
    hub = load_hub_config(str(write_config(tmp_path, body)))
    inspect = {
        "Id": "sha256:1",
        "Config": {"User": "jovyan", "Cmd": ["jupyterhub-singleuser"], "Env": ["HOME=/home/jovyan"]},
    }
    plan = server_start.start_plan(hub, "ml101:1", inspect, hub.profiles[0])
    env = plan.container.environment
    # JupyterHub's own environment, for the stand-in user, with the hub's API on the server's loopback
    assert env["JUPYTERHUB_API_URL"] == "http://127.0.0.1:8081/hub/api"  # not hub_connect_url: no network
    assert env["JUPYTERHUB_USER"] == "image-check" and env["JUPYTERHUB_API_TOKEN"]
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/user/image-check/"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/user/image-check/"
    assert env["JUPYTERHUB_ACTIVITY_URL"] == "http://127.0.0.1:8081/hub/api/users/image-check/activity"
    assert env["MEM_LIMIT"] == str(2 * 1024**3) and env["CPU_LIMIT"] == "1.5"  # the profile's
    assert env["COURSE"] == "ml101" and env["TERM_OF"] == "2026 for image-check"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["JUPYTER_IMAGE_SPEC"] == "ml101:1"
    # the command, with c.Spawner.args; the hub's wait
    assert plan.command.argv == ("jupyterhub-singleuser", "--ServerApp.shutdown_no_activity_timeout=600")
    assert plan.timeout == 45 and plan.port == 8888 and plan.profile == "ml101"
    # a fresh home volume of its own at the image's home; no dataset, share or admin volume
    (home,) = plan.container.mounts
    assert home.target == "/home/jovyan" and home.mode == "rw" and plan.home == "/home/jovyan"
    assert re.fullmatch(r"gpuspawner-check-home-[0-9a-f]{12}", home.source)
    assert plan.container.limits.mem_limit == 2 * 1024**3 and plan.container.limits.shm_size == 1024**3
    assert plan.container.cap_drop == ("ALL",) and plan.container.no_new_privileges
    assert plan.container.pids_limit == 4096
    # what Docker is given: the hub's limits and hardening, no network
    client = docker.APIClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    host = server_start.host_config_of(client, plan.container)
    assert host["NetworkMode"] == "none" and host["Binds"] == [f"{home.source}:/home/jovyan:rw"]
    assert host["Memory"] == 2 * 1024**3 and host["CpuQuota"] == 150_000 and host["CpuPeriod"] == 100_000
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 4096 and host["ShmSize"] == 1024**3
    assert "DeviceRequests" not in host


def test_the_start_with_the_hubs_defaults_and_no_home_volume(tmp_path):
    body = (
        'c.JupyterHub.spawner_class = "gpu"\nc.GPUSpawner.home_volume_name = ""\nc.GPUSpawner.network_name = "host"\n'
    )
    hub = load_hub_config(str(write_config(tmp_path, body)))
    plan = server_start.start_plan(hub, "lab:1", {"Id": "sha256:1", "Config": {"User": "1000", "Cmd": ["python3"]}})
    assert plan.container.mounts == () and plan.home == "" and plan.profile == ""
    assert plan.container.limits.mem_limit == 4 * 1024**3  # the hub's default
    assert plan.container.environment["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.1:8888/user/image-check/"
    assert plan.command.argv == ("python3",) and not plan.command.looks_like_jupyter
    assert plan.timeout == 30


# --- image build: the start command, a tag in use, pip's errors, the arguments (no Docker)


@pytest.mark.parametrize(
    "config, command, says",
    [
        ({"Cmd": ["python3"]}, ("jupyterhub-singleuser",), "the base runs python3 (the image's CMD): setting CMD [\""),
        ({"Cmd": ["/bin/bash"]}, ("jupyterhub-singleuser",), "the base runs /bin/bash"),
        ({"Cmd": None}, ("jupyterhub-singleuser",), "the base runs no command: setting CMD"),
        (
            {"Entrypoint": ["/opt/nvidia/nvidia_entrypoint.sh"], "Cmd": None},
            ("jupyterhub-singleuser",),
            "setting CMD",
        ),
        ({"Cmd": ["jupyterhub-singleuser"]}, (), "the base runs jupyterhub-singleuser (the image's CMD): kept"),
        ({"Entrypoint": ["tini", "-g", "--"], "Cmd": ["start-notebook.py"]}, (), "kept"),
    ],
    ids=["python3", "bash", "none", "nvidia-entrypoint", "jupyter", "docker-stacks"],
)
def test_the_build_sets_a_jupyter_start_command(config, command, says):
    got, finding = build_plan.start_command_step(config)
    assert got == command and finding.level == OK and says in finding.message
    lines = build_plan.dockerfile(plan(command=got, user="")).splitlines()
    if command:
        assert lines[-1] == 'CMD ["jupyterhub-singleuser"]'  # after USER: the image's last word
    else:
        assert not any(ln.startswith("CMD") for ln in lines)


def profile_named(slug, image):
    return parse_profiles([{"slug": slug, "display_name": slug, "image": image}])[0]


@pytest.mark.parametrize(
    "tag, image, moves",
    [
        ("ml101-cuda:2026.1", "ml101-cuda:2026.1", True),
        ("ml101-cuda:2026.1", "docker.io/library/ml101-cuda:2026.1", True),
        ("lab/ml101:1", "docker.io/lab/ml101:1", True),
        ("ml101-cuda:2026.1", "ml101-cuda:2026.1@sha256:" + "a" * 64, False),  # pinned: the tag does not matter
        ("ml101-cuda:2026.2", "ml101-cuda:2026.1", False),
        ("registry.example.edu/ml101-cuda:2026.1", "ml101-cuda:2026.1", False),
    ],
    ids=["same", "docker-hub-long-form", "docker-hub-user", "pinned-by-digest", "other-tag", "other-registry"],
)
def test_the_tags_the_profiles_use(tag, image, moves):
    assert bool(build_plan.tag_users(tag, [profile_named("ml101", image)])) is moves


def test_a_tag_a_profile_uses_is_moved_only_when_forced():
    profiles = [profile_named("ml101", "ml101:1"), profile_named("ml101-gpu", "ml101:1"), profile_named("x", "x:1")]
    with pytest.raises(build_plan.BuildRefused) as refused:
        build_plan.check_tag_unused("ml101:1", profiles, force=False)
    assert "the hub's profiles ml101, ml101-gpu use this tag" in str(refused.value)
    assert "Build under a new tag" in str(refused.value) and "--force" in str(refused.value)
    moving = build_plan.check_tag_unused("ml101:1", profiles, force=True)
    assert moving.level == WARN and "profiles ml101, ml101-gpu get the new image at their next start" in moving.message
    assert build_plan.check_tag_unused("ml101:2", profiles, force=False) is None


# What pip printed in real builds on the test bed (the classic builder's stream: stderr in red).
PIP_CERTIFICATE = (
    "Step 5/11 : RUN /opt/venv/bin/python3 -m pip install --no-cache-dir -r /tmp/gpuspawner-build/requirements.txt"
    " jupyterhub==6.1.1\n"
    "\x1b[91mWARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection"
    " broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:"
    " self-signed certificate in certificate chain (_ssl.c:992)'))': /simple/jupyterhub/\n\x1b[0m"
    "Could not fetch URL https://pypi.org/simple/jupyterhub/: There was a problem confirming the ssl certificate\n"
    "\x1b[91mERROR: Could not find a version that satisfies the requirement jupyterhub==6.1.1 (from versions: none)\n"
    "\x1b[0m\x1b[91mERROR: No matching distribution found for jupyterhub==6.1.1\n\x1b[0m"
)
PIP_NO_NETWORK = (
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken"
    " by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f4f7beeeb50>: Failed to"
    " establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/six/\n"
    "ERROR: Could not find a version that satisfies the requirement six==1.16.0 (from versions: none)\n"
    "ERROR: No matching distribution found for six==1.16.0\n"
)
PIP_MISSPELLED = (
    "Looking in links: /tmp/gpuspawner-build/wheels\n"
    "ERROR: Could not find a version that satisfies the requirement torchvison==0.20.1 (from versions: none)\n"
    "ERROR: No matching distribution found for torchvison==0.20.1\n"
)
PIP_NO_SUCH_VERSION = (
    "ERROR: Could not find a version that satisfies the requirement jupyterhub==6.1.9 (from versions: 5.4.0, 6.0.0,"
    " 6.1.0, 6.1.1)\nERROR: No matching distribution found for jupyterhub==6.1.9\n"
)
PIP_CONFLICT = (
    "ERROR: Cannot install numpy==1.26.4 and pandas==2.3.0 because these package versions have conflicting"
    " dependencies.\nERROR: ResolutionImpossible: for help visit https://pip.pypa.io/...\n"
)
PIP_SYSTEM = (  # pip 23+ on a Debian or Ubuntu system Python
    "error: externally-managed-environment\n\n\u00d7 This environment is externally managed\n"
    "\u2570\u2500> To install Python packages system-wide, try apt install\n    python3-xyz\n"
    "hint: See PEP 668 for the detailed specification.\n"
)
ENGINE = "The command '/bin/sh -c /opt/venv/bin/python3 -m pip install ...' returned a non-zero code: 1"


@pytest.mark.parametrize(
    "log, wheels, errors, fix",
    [
        (
            PIP_CERTIFICATE,
            False,
            [
                "ERROR: Could not find a version that satisfies the requirement jupyterhub==6.1.1 (from versions: none)",
                "ERROR: No matching distribution found for jupyterhub==6.1.1",
            ],
            "pip in the build could not reach the package index (a certificate error): build offline instead."
            " Where pip reaches the index, `pip download -d wheels -r requirements.txt jupyterhub==6.1.1`, then add"
            " `--wheels wheels` to this command",
        ),
        (PIP_NO_NETWORK, False, 2, "could not reach the package index (a network error)"),
        (
            PIP_MISSPELLED,
            True,
            2,
            "torchvison==0.20.1 is not among the wheels: a misspelled name or version? Correct it, then make the"
            " wheels again: `pip download -d wheels -r requirements.txt jupyterhub==6.1.1`",
        ),
        (
            PIP_MISSPELLED,
            False,
            2,
            "no package torchvison==0.20.1 on the index: a misspelled name or version? (`pip index versions"
            " torchvison` lists",
        ),
        (
            PIP_NO_SUCH_VERSION,
            False,
            2,
            "no release jupyterhub==6.1.9 on the index: a misspelled version? jupyterhub has 5.4.0, 6.0.0, 6.1.0,"
            " 6.1.1",
        ),
        (PIP_CONFLICT, False, 2, "two pins conflict"),
        (PIP_SYSTEM, False, 1, "(PEP 668)"),
    ],
    ids=["certificate", "no-network", "misspelled-with-wheels", "misspelled", "no-such-version", "conflict", "pep668"],
)
def test_a_failed_pip_is_quoted_with_what_to_do(log, wheels, errors, fix):
    findings = build_plan.build_failure_findings(
        ENGINE, log, plan(wheels=wheels), "requirements.txt", "3.11.2", "3.11.7"
    )
    assert all(f.level == FAIL and f.subject == "pip" for f in findings)
    if isinstance(errors, list):
        assert [f.message for f in findings] == errors  # pip's own lines, without its colour codes
    else:
        assert len(findings) == errors
    assert fix in findings[-1].fix, findings[-1].fix
    assert not any("\x1b" in f.message or "[0m" in f.message for f in findings)


def test_a_failed_build_without_pip_says_the_engines_message():
    (finding,) = build_plan.build_failure_findings(
        "COPY failed: file not found in build context", "Step 3/9 : COPY data/x /opt/datasets/x\n", plan(), "", "", ""
    )
    assert (finding.level, finding.subject, finding.message) == (
        FAIL,
        "build",
        "COPY failed: file not found in build context",
    )


@pytest.mark.parametrize(
    "requirements, install, base, here, command",
    [
        ("requirements.txt", True, "3.11.2", "3.11.7", "pip download -d wheels -r requirements.txt jupyterhub==6.1.1"),
        ("req.txt", False, "3.11.2", "3.11.7", "pip download -d wheels -r req.txt"),
        (
            "requirements.txt",
            True,
            "3.10.14",
            "3.12.1",
            "pip download -d wheels -r requirements.txt jupyterhub==6.1.1 --python-version 3.10 --only-binary=:all:",
        ),
        ("", True, "3.11.2", "3.11.7", "pip download -d wheels jupyterhub==6.1.1"),
        ("my reqs.txt", False, "", "3.11.7", "pip download -d wheels -r 'my reqs.txt'"),
    ],
)
def test_the_pip_download_of_the_offline_route(requirements, install, base, here, command):
    assert build_plan.pip_download_command(requirements, plan(install_jupyterhub=install), base, here) == command


def test_escape_codes_are_stripped():
    assert build_plan.strip_escapes("\x1b[91mERROR: x\n\x1b[0m\x1b[1;31mbold\x1b[K") == "ERROR: x\nbold"
    assert build_plan.pip_errors(PIP_CERTIFICATE)[-1] == "ERROR: No matching distribution found for jupyterhub==6.1.1"


def test_dockers_colours_are_dropped_in_a_pipe_and_kept_on_a_terminal():
    from gpuspawner.cli.output import docker_text

    line = "  \x1b[91mERROR: No matching distribution found for torchvison\n\x1b[0m"
    piped = io.StringIO()
    Console(file=piped, width=160).print(docker_text(line))
    assert piped.getvalue() == "  ERROR: No matching distribution found for torchvison\n"  # no [91m, no stray [0m
    terminal = io.StringIO()
    Console(file=terminal, force_terminal=True, color_system="standard", width=160).print(docker_text(line))
    assert "\x1b[91m" in terminal.getvalue() and "[0m" in terminal.getvalue()


@pytest.mark.parametrize(
    "argv, more",
    [
        (["--base", "b:1", "--data", "a", "b", "--tag", "t:1"], ["b"]),
        (["--data", "a", "b", "c"], ["b", "c"]),
        (["--data=a", "b", "--data", "c", "d"], ["b", "d"]),
        (["--data", "a", "--data", "b"], []),
        (["--tag", "t:1", "stray"], []),
    ],
)
def test_more_data_dirs(argv, more):
    assert build_plan.more_data_dirs(argv) == more


def test_data_takes_several_dirs_after_one_option(tmp_path):
    from gpuspawner.cli.image_build import ImageBuildApp

    for name in ("mnist", "labels", "extra"):
        (tmp_path / name).mkdir()
    a, b, c = (str(tmp_path / n) for n in ("mnist", "labels", "extra"))
    app = ImageBuildApp()
    try:
        app.initialize(["--base", "lab:1", "--tag", "lab:2", "--data", a, b, "--data", c])
        assert app.validate() == ["mnist", "extra", "labels"] and app.extra_args == [b]
    finally:
        ImageBuildApp.clear_instance()
    app = ImageBuildApp()
    try:
        app.initialize(["--base", "lab:1", "--tag", "lab:2", "stray", "--data", a])
        with pytest.raises(build_plan.BuildRefused, match="unexpected arguments stray: name the base and the result"):
            app.validate()
    finally:
        ImageBuildApp.clear_instance()


def test_the_start_takes_the_admins_user_and_says_when_the_environment_cannot_be_made(tmp_path):
    body = """
    c.JupyterHub.spawner_class = "gpu"
    c.GPUSpawner.extra_create_kwargs = {"user": "root", "labels": {"lab": "x"}}
    c.Spawner.environment = {"COURSE": lambda spawner: spawner.user.auth_state["course"]}
    """
    hub = load_hub_config(str(write_config(tmp_path, body)))
    plan = server_start.start_plan(hub, "lab:1", {"Id": "sha256:1", "Config": {"Cmd": ["start-notebook.sh"]}})
    assert plan.user == "root"  # docker-stacks' start.sh switches to NB_UID itself
    assert plan.environment_error.startswith("AttributeError:") and "auth_state" in plan.environment_error


# --- sftp-server, for scp and sftp over the hub's SSH gateway


def test_the_probe_finds_sftp_server_and_the_package_manager():
    facts = probe.parse_probe_output(
        "lab:1", "uid=1000\nsftp_server=/usr/lib/openssh/sftp-server\npackage_manager=apt-get\n"
    )
    assert (facts.sftp_server, facts.package_manager) == ("/usr/lib/openssh/sftp-server", "apt-get")
    assert "/usr/libexec/openssh/sftp-server" in probe.PROBE_SH  # Fedora's and RHEL's place too


def test_sftp_server_is_judged_only_where_the_hub_runs_the_ssh_gateway():
    missing = good_image()
    assert "sftp" not in [f.subject for f in image_check.image_findings(missing, ctx())]
    (finding,) = [f for f in image_check.image_findings(missing, ctx(ssh_gateway=True)) if f.subject == "sftp"]
    assert finding.level == WARN and "scp and sftp do not" in finding.message
    assert finding.fix.startswith(f"gpuspawner image build --base {missing.image} --tag NAME:TAG --sftp")
    there = replace(missing, sftp_server="/usr/lib/openssh/sftp-server")
    (finding,) = [f for f in image_check.image_findings(there, ctx(ssh_gateway=True)) if f.subject == "sftp"]
    assert finding.level == OK


@pytest.mark.parametrize(
    "sftp_server, manager, installs, level",
    [
        ("/usr/lib/openssh/sftp-server", "apt-get", "", OK),
        ("", "apt-get", "apt-get", OK),
        ("", "dnf", "dnf", OK),
        ("", "apk", "apk", OK),
        ("", "", "", FAIL),
    ],
    ids=["kept", "apt", "dnf", "apk", "no-package-manager"],
)
def test_image_build_sftp_step(sftp_server, manager, installs, level):
    got, finding = build_plan.sftp_step(replace(good_image(), sftp_server=sftp_server, package_manager=manager))
    assert (got, finding.level) == (installs, level)


def test_the_dockerfile_installs_sftp_server_first_as_root():
    lines = build_plan.dockerfile(plan(sftp_with="apt-get")).splitlines()
    assert lines[2:4] == [
        "USER root",
        "RUN apt-get update -q && apt-get install -y -q --no-install-recommends openssh-sftp-server"
        " && rm -rf /var/lib/apt/lists/*",
    ]
    assert "openssh" not in build_plan.dockerfile(plan())
