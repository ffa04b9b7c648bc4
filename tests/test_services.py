"""The hub's services in one call (gpuspawner.services): what they write, least privilege,
and living next to an admin's own services, scopes and roles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from jupyterhub.scopes import scope_definitions
from traitlets.config import Config, PyFileConfigLoader

from gpuspawner import services

from .isolation import import_without_heavy

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = "/etc/jupyterhub/jupyterhub_config.py"


@pytest.fixture(autouse=True)
def docker_env(monkeypatch):
    """The hub's environment: a remote engine with TLS, and variables that are none of the services' business."""
    monkeypatch.setenv("DOCKER_HOST", "tcp://gpu-host:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", "/etc/docker/certs")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "never handed on")


def config(admins=("ada",)) -> Config:
    c = Config()
    c.Authenticator.admin_users = set(admins)
    return c


def role(c: Config, name: str) -> dict:
    (found,) = [r for r in c.JupyterHub.load_roles if r["name"] == name]
    return found


def service(c: Config, name: str) -> dict:
    (found,) = [s for s in c.JupyterHub.services if s["name"] == name]
    return found


DOCKER = {"DOCKER_HOST": "tcp://gpu-host:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/etc/docker/certs"}


# --- what each call writes


def test_the_dashboard_service_reads_the_hubs_config_and_docker_settings():
    c = config()
    written = services.add_dashboard(c, HUB_CONFIG, args=["--refresh=30"])
    assert c.JupyterHub.services == [written]
    assert written == {
        "name": "gpu-dashboard",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "gpuspawner.dashboard", "-f", HUB_CONFIG, "--refresh=30"],
        "environment": DOCKER,
        "oauth_client_allowed_scopes": [
            "custom:gpu-dashboard:read",
            "custom:gpu-dashboard:read-groups",
            "custom:gpu-dashboard:stop",
            "custom:gpu-dashboard:mine",
        ],
        "oauth_no_confirm": True,
        "display": True,
    }
    assert set(c.JupyterHub.custom_scopes) == set(written["oauth_client_allowed_scopes"])
    assert all(spec["description"] for spec in c.JupyterHub.custom_scopes.values())
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["gpu-dashboard-admins", "gpu-dashboard-service"]
    assert role(c, "gpu-dashboard-admins")["users"] == ["ada"]
    # Every user: My GPU, through JupyterHub 6's own way of adding to the default user role (its "self" kept).
    assert c.JupyterHub.extra_user_scopes == {"custom:gpu-dashboard:mine", "access:services!service=gpu-dashboard"}
    # The hub's home page: gpuspawner's template after the admin's own, and the link to My GPU.
    assert c.JupyterHub.template_paths == [services.HUB_TEMPLATES]
    assert (Path(services.HUB_TEMPLATES) / "home.html").is_file()
    assert c.GPUSpawner.my_gpu_page == "services/gpu-dashboard/mine"


def test_the_culler_service_reads_the_hubs_config_and_docker_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = config()
    written = services.add_culler(c, "jupyterhub_config.py", cull_every=30, args=["--timeout=3600"])
    assert written == {
        "name": "gpu-culler",
        "command": [
            sys.executable,
            "-m",
            "gpuspawner.culler",
            "-f",
            str(tmp_path / "jupyterhub_config.py"),  # absolute: the hub may start it elsewhere
            "--cull-every=30",
            "--timeout=3600",
        ],
        "environment": DOCKER,
    }
    assert c.JupyterHub.services == [written]
    assert "custom_scopes" not in c.JupyterHub
    assert c.JupyterHub.load_roles == [{"name": "gpu-culler", "services": ["gpu-culler"], "scopes": CULLER}]


def test_only_the_docker_variables_that_are_set_are_handed_on(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY")
    monkeypatch.delenv("DOCKER_CERT_PATH")
    assert services.add_culler(Config(), HUB_CONFIG)["environment"] == {"DOCKER_HOST": "tcp://gpu-host:2376"}
    monkeypatch.delenv("DOCKER_HOST")
    assert services.add_culler(Config(), HUB_CONFIG)["environment"] == {}


def test_admin_and_teacher_groups():
    c = Config()  # no admin_users in the config: the role lists none, rather than reading a default
    services.add_dashboard(c, HUB_CONFIG, admin_groups=["gpu-lab-admins"], teacher_groups=["ml101-t", "cv201-t"])
    assert "admin_users" not in c.Authenticator
    admins = role(c, "gpu-dashboard-admins")
    assert (admins["users"], admins["groups"]) == ([], ["gpu-lab-admins"])
    teachers = role(c, "gpu-dashboard-teachers")
    assert teachers["groups"] == ["cv201-t", "ml101-t"] and "users" not in teachers
    assert set(teachers["scopes"]) == {"custom:gpu-dashboard:read-groups", "access:services!service=gpu-dashboard"}


def test_an_external_node_culler_has_a_token_and_the_culler_scopes():
    c = Config()
    services.add_node_culler(c, "gpu-culler-node-1", "t0ken")
    assert c.JupyterHub.services == [{"name": "gpu-culler-node-1", "api_token": "t0ken"}]
    assert role(c, "gpu-culler-node-1") == {
        "name": "gpu-culler-node-1",
        "services": ["gpu-culler-node-1"],
        "scopes": CULLER,
    }


# --- least privilege: exactly the scopes each needs

DASHBOARD_SERVICE = [
    "list:users",
    "read:users:activity",
    "read:users:groups",
    "read:servers",
    "delete:servers",
    "list:services",
    "read:services",
]
CULLER = ["list:users", "read:users:activity", "read:servers", "delete:servers", "read:users:name"]


def test_roles_grant_exactly_the_scopes_needed():
    c = config()
    services.add_dashboard(c, HUB_CONFIG, teacher_groups=["teachers"])
    services.add_culler(c, HUB_CONFIG)
    granted = {r["name"]: r["scopes"] for r in c.JupyterHub.load_roles}
    assert granted == {
        # GET /hub/api/users?state=active with servers, activity and groups; DELETE a server (the stop button);
        # GET /hub/api/services with each one's prefix and display (the Services menu).
        "gpu-dashboard-service": DASHBOARD_SERVICE,
        # See everything and stop, through this service only (not the hub's admin pages).
        "gpu-dashboard-admins": [
            "custom:gpu-dashboard:read",
            "custom:gpu-dashboard:stop",
            "access:services!service=gpu-dashboard",
        ],
        "gpu-dashboard-teachers": ["custom:gpu-dashboard:read-groups", "access:services!service=gpu-dashboard"],
        # jupyterhub-idle-culler's documented least privilege.
        "gpu-culler": CULLER,
    }
    for scopes in granted.values():
        for scope in scopes:
            base = scope.split("!")[0]
            assert base in scope_definitions or base in c.JupyterHub.custom_scopes, scope
            assert not base.startswith("admin") and base not in ("users", "servers", "tokens", "read:users"), scope
    # The services hold no custom scope (they check them), the people no hub API scope.
    assert not any(s.startswith("custom:") for s in granted["gpu-dashboard-service"] + granted["gpu-culler"])


def test_the_scopes_are_the_ones_the_dashboard_checks():
    from gpuspawner.dashboard import app

    assert services.READ_SCOPE == app.READ_SCOPE
    assert services.READ_GROUPS_SCOPE == app.READ_GROUPS_SCOPE
    assert services.STOP_SCOPE == app.STOP_SCOPE


def test_every_user_gets_my_gpu_whether_or_not_the_config_redefines_the_user_role():
    """JupyterHub ignores extra_user_scopes once load_roles gives the user role scopes of its own:
    then they go into that role as well, before or after the call, "self" and the admin's kept."""
    mine = ["custom:gpu-dashboard:mine", "access:services!service=gpu-dashboard"]
    own = {"name": "user", "scopes": ["self", "read:groups"]}
    before = config()
    before.JupyterHub.load_roles = [dict(own)]
    before.JupyterHub.extra_user_scopes = {"access:services"}
    services.add_dashboard(before, HUB_CONFIG)
    services.add_ssh_gateway(before, HUB_CONFIG)
    assert role(before, "user")["scopes"] == ["self", "read:groups", *mine, "access:services!service=gpu-ssh"]
    assert before.JupyterHub.extra_user_scopes == {"access:services", *mine, "access:services!service=gpu-ssh"}
    # The SSH gateway's page the same way: neither call redefines the user role.
    after = config()
    services.add_ssh_gateway(after, HUB_CONFIG)
    services.add_dashboard(after, HUB_CONFIG)
    assert "user" not in {r["name"] for r in after.JupyterHub.load_roles}
    assert after.JupyterHub.extra_user_scopes == {*mine, "access:services!service=gpu-ssh"}


def test_an_admins_own_templates_come_first_and_the_home_page_can_be_left_alone():
    c = config()
    c.JupyterHub.template_paths = ["/srv/our-templates"]
    services.add_dashboard(c, HUB_CONFIG)
    services.add_dashboard(c, HUB_CONFIG)
    assert c.JupyterHub.template_paths == ["/srv/our-templates", services.HUB_TEMPLATES]
    plain = config()
    services.add_dashboard(plain, HUB_CONFIG, home_page=False)
    assert "template_paths" not in plain.JupyterHub
    assert plain.GPUSpawner.my_gpu_page  # the progress page still links My GPU


def test_a_renamed_service_gets_roles_and_access_of_its_own_name():
    c = config()
    services.add_dashboard(c, HUB_CONFIG, name="gpu-dash-2", url="http://127.0.0.1:10102")
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["gpu-dash-2-admins", "gpu-dash-2-service"]
    assert "access:services!service=gpu-dash-2" in role(c, "gpu-dash-2-admins")["scopes"]
    assert "access:services!service=gpu-dash-2" in c.JupyterHub.extra_user_scopes
    assert c.GPUSpawner.my_gpu_page == "services/gpu-dash-2/mine"
    assert role(c, "gpu-dash-2-service")["services"] == ["gpu-dash-2"]


# --- next to what the config already holds


def test_calling_twice_changes_nothing_more():
    once, twice = config(), config()
    for c in (once, twice):
        services.add_dashboard(c, HUB_CONFIG, teacher_groups=["teachers"])
        services.add_culler(c, HUB_CONFIG)
    services.add_dashboard(twice, HUB_CONFIG, teacher_groups=["teachers"])
    services.add_culler(twice, HUB_CONFIG)
    assert twice == once
    assert len(twice.JupyterHub.services) == 2 and len(twice.JupyterHub.load_roles) == 4


def test_an_admins_own_services_scopes_and_roles_are_kept():
    c = config()
    own_service = {"name": "prometheus", "api_token": "secret"}
    own_roles = [
        {"name": "gpu-dashboard-metrics", "services": ["prometheus"], "scopes": ["custom:gpu-dashboard:read"]},
        # The admin's own role of the same name: its members stay, the dashboard's are added.
        {"name": "gpu-dashboard-admins", "groups": ["ops"], "scopes": ["custom:gpu-dashboard:read"]},
    ]
    c.JupyterHub.services = [own_service]
    c.JupyterHub.custom_scopes = {"custom:gpu-dashboard:read": {"description": "Our own words"}}
    c.JupyterHub.load_roles = [dict(r) for r in own_roles]
    services.add_dashboard(c, HUB_CONFIG)
    services.add_dashboard(c, HUB_CONFIG)
    assert c.JupyterHub.services[0] == own_service and len(c.JupyterHub.services) == 2
    assert c.JupyterHub.custom_scopes["custom:gpu-dashboard:read"] == {"description": "Our own words"}
    assert len(c.JupyterHub.custom_scopes) == 4
    assert c.JupyterHub.load_roles[0] == own_roles[0]
    admins = role(c, "gpu-dashboard-admins")
    assert admins == {
        "name": "gpu-dashboard-admins",
        "groups": ["ops"],
        "scopes": ["custom:gpu-dashboard:read", "custom:gpu-dashboard:stop", "access:services!service=gpu-dashboard"],
        "users": ["ada"],
    }
    assert [r["name"] for r in c.JupyterHub.load_roles].count("gpu-dashboard-admins") == 1


def test_a_same_named_service_is_updated_in_place_keeping_its_other_keys():
    c = Config()
    c.JupyterHub.services = [
        {"name": "gpu-culler", "command": ["old"], "environment": {"TZ": "Europe/Paris"}, "user": "culler"},
        {"name": "other"},
    ]
    services.add_culler(c, HUB_CONFIG)
    culler, other = c.JupyterHub.services
    assert other == {"name": "other"}
    assert culler["command"][:5] == [sys.executable, "-m", "gpuspawner.culler", "-f", HUB_CONFIG]
    assert culler["user"] == "culler" and culler["environment"] == {"TZ": "Europe/Paris", **DOCKER}


def test_lists_appended_to_before_they_were_set_are_kept():
    """``c.JupyterHub.load_roles.append(...)`` with nothing set before is a LazyConfigValue."""
    c = config()
    c.JupyterHub.load_roles.append({"name": "teachers", "groups": ["teachers"], "scopes": ["read:users:name"]})
    c.JupyterHub.services.append({"name": "grader", "api_token": "g"})
    services.add_culler(c, HUB_CONFIG)
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["teachers", "gpu-culler"]
    assert [s["name"] for s in c.JupyterHub.services] == ["grader", "gpu-culler"]


# --- the configs that use it


def load(path: Path, monkeypatch) -> Config:
    import gpuspawner

    monkeypatch.setattr(gpuspawner, "check_config", lambda c, **kw: None, raising=False)  # no NVML, no engine here
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


@pytest.mark.parametrize("path", ["jupyterhub_config.py", "deploy/hub/jupyterhub_config.py"], ids=["demo", "deploy"])
def test_the_shipped_configs_run_both_services_on_their_own_file(path, monkeypatch):
    c = load(REPO / path, monkeypatch)
    for name, module in (("gpu-dashboard", "gpuspawner.dashboard"), ("gpu-culler", "gpuspawner.culler")):
        s = service(c, name)
        assert s["command"][:5] == [sys.executable, "-m", module, "-f", str(REPO / path)], s
        assert s["environment"] == DOCKER
    assert {r["name"] for r in c.JupyterHub.load_roles} >= {
        "gpu-dashboard-admins",
        "gpu-dashboard-service",
        "gpu-culler",
    }


@pytest.mark.parametrize("path", ["jupyterhub_config.py", "deploy/hub/jupyterhub_config.py"], ids=["demo", "deploy"])
def test_the_shipped_configs_profiles_mount_only_under_their_roots(path, monkeypatch):
    from gpuspawner.spawner import GPUSpawner

    c = load(REPO / path, monkeypatch)
    if "profiles_file" in c.GPUSpawner:  # /etc/jupyterhub/profiles.yaml: the one deploy/hub ships
        assert c.GPUSpawner.profiles_file == "/etc/jupyterhub/profiles.yaml"
        c.GPUSpawner.profiles_file = str(REPO / "deploy/hub/profiles.yaml")
    profiles = GPUSpawner(config=c).lab_profiles  # raises on a refused mount
    assert profiles


def test_the_deploy_config_names_the_roots_of_its_datasets(monkeypatch):
    c = load(REPO / "deploy/hub/jupyterhub_config.py", monkeypatch)
    assert c.GPUSpawner.mount_roots == ["/srv/datasets", "/srv/courses"]


def test_deploy_admins_and_teachers_are_groups(monkeypatch):
    c = load(REPO / "deploy/hub/jupyterhub_config.py", monkeypatch)
    assert role(c, "gpu-dashboard-admins")["groups"] == ["gpu-lab-admins"]
    assert role(c, "gpu-dashboard-teachers")["groups"] == ["cv201-teachers", "ml101-teachers"]


def test_it_imports_nothing_but_the_standard_library():
    """A config file imports it before the hub has loaded anything: no traitlets, no rich, no Docker."""
    done = import_without_heavy("gpuspawner.services")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_deploy_profiles_files_commented_example_is_a_valid_teachers_profile():
    """deploy/hub/profiles.yaml ships no profile, and an example a teacher uncomments: it must load as it is."""
    import yaml

    from gpuspawner.profiles import FileLimits, MountPolicy, parse_profiles

    text = (REPO / "deploy/hub/profiles.yaml").read_text()
    assert yaml.safe_load(text) == {"profiles": []}
    example = text[text.index("# profiles:") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    (profile,) = parse_profiles(
        yaml.safe_load(uncommented)["profiles"],
        mount_policy=MountPolicy(roots=("/srv/datasets", "/srv/courses")),
        file_limits=FileLimits(),
    )
    assert profile.slug == "ml101-exam" and profile.datasets[0].source == "/srv/datasets/ml101-exam"
