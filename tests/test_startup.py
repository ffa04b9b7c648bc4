"""startup.py: the race between a server's answer and its container's exit, and what the student is told."""

from __future__ import annotations

import pytest

from gpuspawner.startup import Exited, exit_message, last_lines, watch_start


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
    [(2.0, None, None), (None, 1.5, Exited(1)), (3.0, 1.0, Exited(1)), (1.0, 1.0, None)],
    ids=["answers", "exits", "exits-first", "answers-then-exits"],
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
    assert text.startswith("Your server exited with status 1 before it answered (0.6 s after it started).")
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
