"""gpuspawner.config: the hub's config, read once for the command, the dashboard and the culler.

How a config file is read (overrides, foreign spawners, broken files) is tested
through the command in ``test_cli.py``; here, what the services and the engine add,
which file a command reads (``-f``, ``GPUSPAWNER_CONFIG``, or none: refused), and the
environment variables a config reads that are not set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from traitlets import Unicode
from traitlets.config import Application

from gpuspawner.cli import main
from gpuspawner.config import (
    CONFIG_VARIABLE,
    ConfigError,
    HubConfig,
    NoConfigFile,
    UnsetVariable,
    engine_where,
    load_hub_config,
    load_service_config,
    recording_environ,
    settings_changed,
)


class Service(Application):
    """A hub-managed service as the dashboard and the culler are: ``-f`` names the hub's config."""

    hub_config = Unicode("jupyterhub_config.py").tag(config=True)
    aliases = {"f": "Service.hub_config"}


@pytest.fixture
def service():
    yield Service
    Service.clear_instance()


def write_config(tmp_path, body=""):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text('c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n' + textwrap.dedent(body))
    return path


def test_a_service_reads_the_config_it_is_given(tmp_path, service):
    path = write_config(tmp_path, "c.GPUSpawner.shared_gpu_users = 3\n")
    app = service()
    app.initialize(["-f", str(path)])
    hub = load_service_config(app, app.hub_config)
    assert isinstance(hub, HubConfig) and hub.config_file == str(path)
    assert hub.spawner.shared_gpu_users == 3 and hub.spawner_problem == ""


def test_a_service_without_a_config_file_warns_and_uses_the_defaults(tmp_path, monkeypatch, service, caplog):
    monkeypatch.chdir(tmp_path)
    app = service()
    app.initialize([])
    app.log = logging.getLogger("service-test")
    with caplog.at_level(logging.WARNING, logger="service-test"):
        hub = load_service_config(app, app.hub_config)
    assert hub.config_file == "" and [p.slug for p in hub.profiles] == ["default"]
    assert "using the hub's defaults" in caplog.text


def test_a_service_given_a_missing_file_stops(tmp_path, service):
    app = service()
    app.initialize(["-f", str(tmp_path / "nope.py")])
    with pytest.raises(ConfigError, match="no config file"):
        load_service_config(app, app.hub_config)


def test_no_engine_is_a_config_error_naming_where(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    hub = load_hub_config(str(write_config(tmp_path)))
    assert engine_where(hub.spawner) == f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(ConfigError, match=f"no Docker engine answers at unix://{tmp_path}/no-engine.sock"):
        hub.docker()


def test_the_engine_the_config_names_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///from/env.sock")
    hub = load_hub_config(str(write_config(tmp_path, 'c.GPUSpawner.client_kwargs = {"base_url": "tcp://hub:2375"}\n')))
    assert engine_where(hub.spawner) == "tcp://hub:2375"


def test_it_imports_neither_rich_nor_the_command():
    code = "import sys, gpuspawner.config; print(sorted(m for m in ('rich', 'gpuspawner.cli') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# --- which config file a command reads


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A folder with no jupyterhub_config.py, as the working directory; GPUSPAWNER_CONFIG not set."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv(CONFIG_VARIABLE, raising=False)
    return folder


@pytest.mark.parametrize("command", [["doctor"], ["prepull"], ["status"], ["network"], ["quarantine", "list"]])
def test_commands_that_judge_a_hub_refuse_to_judge_no_config(command, elsewhere, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err
    name = " ".join(["gpuspawner", *command])
    assert err == (
        f"gpuspawner: no hub config: there is no jupyterhub_config.py in {elsewhere} (the default;"
        f" GPUSPAWNER_CONFIG is not set). Name the hub's config: {name} -f /etc/jupyterhub/jupyterhub_config.py,"
        " or export GPUSPAWNER_CONFIG=/etc/jupyterhub/jupyterhub_config.py; or add --defaults to judge the hub's"
        " defaults instead\n"
    )


def test_doctor_judges_the_defaults_when_told(elsewhere, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{elsewhere}/no-engine.sock")
    main(["doctor", "--defaults"])
    captured = capsys.readouterr()
    assert "using the hub's defaults" in captured.err
    assert "no config file: checking the hub's defaults (--defaults)" in captured.out
    assert "-> fix: name the hub's config with -f or GPUSPAWNER_CONFIG" in captured.out


def test_gpuspawner_config_names_the_file_when_f_does_not(elsewhere, tmp_path, monkeypatch):
    from gpuspawner.cli.doctor import DoctorApp

    path = write_config(tmp_path, "c.GPUSpawner.shared_gpu_users = 3\n")
    monkeypatch.setenv(CONFIG_VARIABLE, str(path))
    app = DoctorApp()
    try:
        app.initialize([])
        assert app.hub_config == str(path) and app.config_named() == CONFIG_VARIABLE
        assert app.load_hub_config().spawner.shared_gpu_users == 3
        other = write_config(elsewhere, "c.GPUSpawner.shared_gpu_users = 2\n")
        DoctorApp.clear_instance()
        app = DoctorApp()
        app.initialize(["-f", str(other)])  # -f wins
        assert app.config_named() == "-f" and app.load_hub_config().spawner.shared_gpu_users == 2
    finally:
        DoctorApp.clear_instance()


def test_a_missing_file_named_by_gpuspawner_config_is_an_error_even_with_defaults(elsewhere, monkeypatch, capsys):
    monkeypatch.setenv(CONFIG_VARIABLE, str(elsewhere / "nope.py"))
    assert main(["status", "--defaults"]) == 2
    assert capsys.readouterr().err == f"gpuspawner: no config file {elsewhere}/nope.py (named by GPUSPAWNER_CONFIG)\n"
    assert main(["image", "check", "lab:1"]) == 2  # image check too: the file was named


def test_the_help_names_the_variable_and_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "The hub's config file (default: $GPUSPAWNER_CONFIG, else ./jupyterhub_config.py)" in out
    assert "--defaults With no config file found, judge the hub's defaults instead of stopping." in out


def test_a_named_missing_file_is_no_config_file(tmp_path):
    with pytest.raises(NoConfigFile, match="no config file"):
        load_hub_config(str(tmp_path / "nope.py"), explicit=True)


# --- the environment a config reads


def test_the_record_notes_unset_variables_the_config_reads_and_their_defaults(monkeypatch):
    monkeypatch.setenv("GPUSPAWNER_TEST_SET", "here")
    monkeypatch.delenv("GPUSPAWNER_TEST_UNSET", raising=False)
    real = os.environ
    with recording_environ() as unset:
        assert os.environ.get("GPUSPAWNER_TEST_SET", "x") == "here"
        assert os.getenv("GPUSPAWNER_TEST_UNSET", "lab:demo") == "lab:demo"
        assert "GPUSPAWNER_TEST_IN" not in os.environ
        assert os.environ.get("GPUSPAWNER_TEST_IN", "late") == "late"  # a default named later is kept
        with pytest.raises(KeyError):
            os.environ["GPUSPAWNER_TEST_INDEX"]
        os.environ["GPUSPAWNER_TEST_WRITTEN"] = "1"  # goes through
    assert os.environ is real and real.pop("GPUSPAWNER_TEST_WRITTEN") == "1"
    assert unset == {"GPUSPAWNER_TEST_UNSET": "lab:demo", "GPUSPAWNER_TEST_IN": "late", "GPUSPAWNER_TEST_INDEX": None}


def test_the_record_serves_pretended_values_without_setting_them():
    with recording_environ({"GPUSPAWNER_TEST_PRETEND": "m"}) as unset:
        assert os.environ.get("GPUSPAWNER_TEST_PRETEND") == "m" and os.getenv("GPUSPAWNER_TEST_PRETEND") == "m"
    assert "GPUSPAWNER_TEST_PRETEND" not in os.environ and unset == {}


def test_settings_changed_by_a_marker_or_plain_data():
    before = {"GPUSpawner.profiles": [{"image": "lab:demo"}], "JupyterHub.hook": len, "A.b": 1}
    after = {"GPUSpawner.profiles": [{"image": "m:m"}], "JupyterHub.hook": len, "A.b": 1, "A.new": True}
    assert settings_changed(before, after, "m:m") == ("A.new", "GPUSpawner.profiles")
    # Functions made anew by each load are not compared: only the marker shows in them.
    assert settings_changed({"X.f": lambda: 1}, {"X.f": lambda: 1}, "m:m") == ()


def test_a_hub_config_knows_what_each_unset_variable_decides(tmp_path, monkeypatch):
    for name in ("LAB_IMAGE", "OAUTH_CLIENT_ID", "WORKERS"):
        monkeypatch.delenv(name, raising=False)
    path = write_config(
        tmp_path,
        """
        import os
        image = os.environ.get("LAB_IMAGE", "gpuspawner-lab:demo")
        c.GPUSpawner.profiles = [{"slug": "cpu", "display_name": "CPU", "image": image}]
        c.GenericOAuthenticator.client_id = os.getenv("OAUTH_CLIENT_ID", "")
        c.GPUSpawner.shared_gpu_users = int(os.environ.get("WORKERS", "2"))
        """,
    )
    hub = load_hub_config(str(path))
    assert hub.unset_variables == (
        UnsetVariable("LAB_IMAGE", "gpuspawner-lab:demo", ("GPUSpawner.profiles",)),
        UnsetVariable("OAUTH_CLIENT_ID", "", ("GenericOAuthenticator.client_id",)),
        UnsetVariable("WORKERS", "2", unknown="with it set, the config fails: ValueError"),
    )
    assert [v.decides_the_lab for v in hub.unset_variables] == [True, False, True]
    assert hub.unset_variables[0].note() == (
        "the config reads LAB_IMAGE, which is not set here ('gpuspawner-lab:demo' used instead): it decides"
        " c.GPUSpawner.profiles, so the hub, where it is set, may see another set-up than this command"
    )
    assert [p.image for p in hub.profiles] == ["gpuspawner-lab:demo"]  # the first load's, untouched
    monkeypatch.setenv("LAB_IMAGE", "lab:1")
    assert [v.name for v in load_hub_config(str(path)).unset_variables] == ["OAUTH_CLIENT_ID", "WORKERS"]


def test_variables_read_by_libraries_the_config_imports_are_not_the_configs(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "gpuspawner_test_helper.py").write_text(
        'import os\nVALUE = os.environ.get("GPUSPAWNER_TEST_LIBRARY_VARIABLE", "x")\n'
    )
    path = write_config(
        tmp_path,
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        import gpuspawner_test_helper
        sys.path.pop(0)
        """,
    )
    try:
        assert load_hub_config(str(path)).unset_variables == ()
    finally:
        sys.modules.pop("gpuspawner_test_helper", None)


def test_the_commands_say_which_unset_variables_may_change_the_lab(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LAB_IMAGE", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    path = write_config(
        tmp_path,
        """
        import os
        c.GPUSpawner.profiles = [{"slug": "cpu", "display_name": "CPU", "image": os.getenv("LAB_IMAGE", "lab:1")}]
        """,
    )
    assert main(["prepull", "-f", str(path)]) == 2  # no engine
    assert "gpuspawner: the config reads LAB_IMAGE, which is not set here ('lab:1' used instead)" in (
        capsys.readouterr().err
    )


def test_a_service_warns_of_unset_variables_that_change_the_lab(tmp_path, monkeypatch, service, caplog):
    monkeypatch.delenv("LAB_IMAGE", raising=False)
    path = write_config(tmp_path, 'import os\nc.GPUSpawner.default_url = os.getenv("LAB_IMAGE", "/lab")\n')
    app = service()
    app.initialize(["-f", str(path)])
    app.log = logging.getLogger("service-test")
    with caplog.at_level(logging.WARNING, logger="service-test"):
        load_service_config(app, app.hub_config)
    assert "the config reads LAB_IMAGE, which is not set here" in caplog.text
    assert "(set it in the service's environment)" in caplog.text
