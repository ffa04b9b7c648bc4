"""startup.py: the race between a server's answer and its container's exit, and what the student is told."""

from __future__ import annotations

import pytest

from gpuspawner.startup import (
    Exited,
    NotAServer,
    command_line,
    exit_message,
    last_lines,
    never_serves,
    not_a_server_message,
    top_commands,
    watch_start,
)


@pytest.mark.parametrize(
    "state, exited",
    [
        ({"Status": "running", "Running": True}, None),
        ({"Status": "paused", "Running": True, "Paused": True}, None),
        ({"Status": "exited", "Running": False, "ExitCode": 1}, Exited(1)),
        ({"Status": "exited", "Running": False, "ExitCode": 137, "OOMKilled": True}, Exited(137, oom_killed=True)),
        (
            {"Status": "dead", "Running": False, "ExitCode": 128, "Error": "hook failed"},
            Exited(128, error="hook failed"),
        ),
        ({"Running": False, "ExitCode": 2}, Exited(2)),  # an engine that says no Status
    ],
    ids=["running", "paused", "exited", "oom", "dead", "no-status"],
)
def test_exited_from_dockers_state(state, exited):
    assert Exited.of(state) == exited


def test_the_command_is_what_docker_says_it_ran():
    assert command_line({"Path": "python3", "Args": []}) == "python3"
    assert command_line({"Path": "/bin/sh", "Args": ["-c", "exit 1", "x"]}) == "/bin/sh -c exit 1 x"
    assert command_line({"Path": "sleep", "Args": ["9" * 300]}, width=12) == "sleep 99999…"
    assert command_line({}) == ""
    assert Exited.of({"Running": False}, "python3") == Exited(0, command="python3")


@pytest.mark.parametrize(
    "processes, never",
    [
        (["sleep infinity"], "sleep infinity"),
        (["tail -f /dev/null"], "tail -f /dev/null"),
        (["python3"], "python3"),
        (["/usr/bin/python3.11 -u -i"], "/usr/bin/python3.11 -u -i"),
        (["-bash"], "-bash"),  # a login shell
        (["/usr/bin/tini -- sleep infinity", "sleep infinity"], "sleep infinity"),
        (["sh", "cat"], "sh"),
        # Each of these may serve, or start something that does: never a false alarm.
        (["/opt/venv/bin/python3 /opt/venv/bin/jupyterhub-singleuser"], None),
        (["python3 -m jupyterhub.singleuser"], None),
        (["python3 -c import server"], None),
        (["/bin/sh /start.sh", "sleep 2"], None),
        (["bash -c sleep 2 && exec jupyter lab", "sleep 2"], None),
        (["jhsingle-native-proxy --destport 8505 streamlit hello"], None),
        (["sleep infinity", "/opt/conda/bin/python /opt/conda/bin/jupyter-lab"], None),
        (["/usr/bin/tini --"], None),  # only the init: its child is on its way, or gone (then it exits)
        ([], None),
    ],
)
def test_never_serves_only_when_no_process_can_be_a_server(processes, never):
    assert never_serves(processes) == (NotAServer(never) if never else None)


def test_top_commands_reads_the_command_column():
    top = {"Titles": ["UID", "PID", "CMD"], "Processes": [["1000", "1", "sleep infinity"], ["1000"]]}
    assert top_commands(top) == ["sleep infinity"]
    assert top_commands({"Titles": ["PID", "COMMAND"], "Processes": [["1", "cat"]]}) == ["cat"]
    assert top_commands({"Titles": ["PID"], "Processes": [["1"]]}) == []
    assert top_commands({}) == []


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


def looks(answers_at=None, exits_at=None, clock=None):
    async def answers():
        return answers_at is not None and clock() >= answers_at

    async def exited():
        return Exited(1) if exits_at is not None and clock() >= exits_at else None

    return answers, exited


@pytest.mark.parametrize(
    "answers_at, exits_at, result",
    [(2.0, None, None), (None, 1.5, Exited(1)), (3.0, 1.0, Exited(1)), (1.0, 1.5, None), (1.0, 1.0, Exited(1))],
    ids=["answers", "exits", "exits-first", "answers-then-exits", "exited-when-it-answers"],
)
async def test_the_first_of_answer_and_exit_wins(answers_at, exits_at, result):
    clock = Clock()
    answers, exited = looks(answers_at, exits_at, clock)
    assert await watch_start(answers, exited, timeout=10, every=0.5, clock=clock, sleep=clock.sleep) == result
    assert clock.now <= max(t for t in (answers_at, exits_at) if t is not None) + 0.5


async def test_neither_within_the_timeout_is_a_timeout():
    clock = Clock()
    answers, exited = looks(clock=clock)
    with pytest.raises(TimeoutError, match="within 3 s"):
        await watch_start(answers, exited, timeout=3, every=0.5, clock=clock, sleep=clock.sleep)
    assert clock.now == 3.0


def test_the_message_has_the_status_and_the_logs_last_lines_escaped_in_html():
    lines = last_lines(b"one\r\n\n  \ntwo <b>\n" + "é".encode() + b"\xff" + b"x" * 400 + b"\n", lines=2, width=10)
    assert lines == ["two <b>", "é\ufffdxxxxxxx…"]
    text, page = exit_message(Exited(1), lines, 0.64)
    assert text.startswith("Your server exited with status 1 before it answered (0.6 s after it started).\n")
    assert "\ntwo <b>\n" in text and "two &lt;b&gt;" in page and "<b>" not in page
    assert "out of memory" not in text
    oom, _ = exit_message(Exited(137, oom_killed=True), [], 3)
    assert "more memory than its profile allows" in oom and "It wrote nothing to its log." in oom


# --- HTTPS: a certificate that is configured but unusable stops the hub


def test_tls_refusal_passes_a_readable_pair_and_names_what_is_wrong_otherwise(tmp_path):
    from gpuspawner.checks import tls_refusal

    from .tls import make_certificate

    good = make_certificate(tmp_path / "good", ["127.0.0.1", "gpu-lab.example.edu"])
    other = make_certificate(tmp_path / "other", ["127.0.0.1"])
    assert tls_refusal("", "") == ""  # no HTTPS asked for
    assert tls_refusal(str(good.fullchain), str(good.privkey)) == ""

    assert "c.JupyterHub.ssl_key is not" in tls_refusal(str(good.fullchain), "")
    missing = tls_refusal(str(tmp_path / "nope.pem"), str(good.privkey))
    assert "nope.pem does not exist" in missing and "will not serve plain HTTP" in missing

    # certbot's files linked, not copied: the link dangles where only the tls folder is mounted
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "fullchain.pem").symlink_to("/etc/letsencrypt/live/gpu-lab.example.edu/fullchain.pem")
    dangling = tls_refusal(str(tls / "fullchain.pem"), str(good.privkey))
    assert "is a symbolic link to /etc/letsencrypt/live/gpu-lab.example.edu/fullchain.pem" in dangling
    assert "copy the files" in dangling

    assert "is not a file" in tls_refusal(str(tmp_path), str(good.privkey))
    mismatch = tls_refusal(str(good.fullchain), str(other.privkey))
    assert "do not make a pair" in mismatch
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "do not make a pair" in tls_refusal(str(garbage), str(good.privkey))


def test_check_config_refuses_a_configured_certificate_it_cannot_read(tmp_path):
    from traitlets.config import Config

    from gpuspawner.checks import ConfigInvalid, check_config

    c = Config()
    c.JupyterHub.ssl_cert = str(tmp_path / "fullchain.pem")
    c.JupyterHub.ssl_key = str(tmp_path / "privkey.pem")
    c.GPUSpawner.gpus = []
    c.GPUSpawner.network_name = "host"
    with pytest.raises(ConfigInvalid, match="fullchain.pem does not exist; the hub will not serve plain HTTP"):
        check_config(c, prepull=False)


def test_a_command_that_ends_by_itself_or_never_serves_is_said_to_be_no_server():
    """The first line (the HTML's first paragraph) is the sentence for the student; then the details."""
    text, page = exit_message(Exited(0, command="python3"), [], 1.52)
    assert text.splitlines()[0] == (
        "Your server exited with status 0 before it answered (1.5 s after it started): its command, python3,"
        " ended by itself, where a Jupyter server keeps running."
    )
    assert 'CMD ["jupyterhub-singleuser"] in the image\'s Dockerfile' in text and "It wrote nothing" in text
    assert page.startswith("<p>Your server exited with status 0") and "&quot;jupyterhub-singleuser&quot;" in page
    # A non-zero status is the log's to explain; the command is a detail.
    text, _ = exit_message(Exited(1, command="jupyterhub-singleuser"), ["ImportError: x"], 1)
    assert "ended by itself" not in text and "Its command: jupyterhub-singleuser." in text
    text, page = not_a_server_message(NotAServer("sleep infinity"), ["<waiting>"], 0.84)
    assert text.splitlines()[0] == (
        "Your server's command, sleep infinity, is not a Jupyter server: it runs, but will never answer"
        " (seen 0.8 s after it started)."
    )
    assert text.splitlines()[1:3] == ["The last lines of its log:", "<waiting>"]
    assert "<pre>&lt;waiting&gt;</pre>" in page
