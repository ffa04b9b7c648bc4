"""Expected refusals in the hub's log: one WARNING line, not an ERROR with a traceback (issue 22)."""

import logging
import sys

from gpuspawner.refusal_log import ExpectedRefusals
from gpuspawner.spawner import LabSpawnException, refused


def record(message, level=logging.ERROR, exception=None):
    exc_info = (type(exception), exception, None) if exception else None
    return logging.LogRecord("JupyterHub", level, "user.py", 1, message, (), exc_info)


def filtered(r):
    assert ExpectedRefusals().filter(r) is True  # never dropped: lowered at most
    return r


def test_an_expected_refusal_is_one_warning_line_without_a_traceback():
    e = LabSpawnException("GPU: all 2 A100 GPUs are taken.", reason="no_gpu", status_code=503, expected=True)
    assert str(e) == "refused (no_gpu): GPU: all 2 A100 GPUs are taken."
    assert e.jupyterhub_message == "GPU: all 2 A100 GPUs are taken."  # the spawn page's sentence
    form = filtered(record("Failed to spawn single-user server with form", exception=e))
    assert (form.levelname, form.exc_info) == ("WARNING", None)
    assert (
        form.getMessage()
        == "Failed to spawn single-user server with form: refused (no_gpu): GPU: all 2 A100 GPUs are taken."
    )
    line = filtered(record(f"Not starting ann's server : {e}"))
    assert line.levelname == "WARNING"
    access = filtered(record("503 POST /hub/api/users/ann/servers/ (e2e@127.0.0.1) 12.00ms"))
    assert access.levelname == "WARNING"
    choice = refused(403, "profile 'exam' is not for you")
    assert choice.jupyterhub_message == "profile 'exam' is not for you"  # not "HTTP 403: Forbidden (...)"
    assert filtered(record("Failed to spawn", exception=choice)).levelname == "WARNING"


def test_every_other_error_is_left_as_it_is():
    try:
        raise RuntimeError("the engine is gone")
    except RuntimeError as e:
        crash = record("Failed to spawn single-user server with form", exception=e)
        crash.exc_info = sys.exc_info()
    kept = filtered(crash)
    assert kept.levelname == "ERROR" and kept.exc_info is not None
    failed = LabSpawnException("Your server exited with status 1.", reason="early_exit", status_code=424)
    assert str(failed) == "424 early_exit: Your server exited with status 1."
    assert filtered(record(f"Not starting ann's server : {failed}")).levelname == "ERROR"
    assert filtered(record("500 POST /hub/api/users/ann/servers/ (e2e@127.0.0.1) 12.00ms")).levelname == "ERROR"
    assert filtered(record("503 GET /hub/api/users (e2e@127.0.0.1) 1.00ms")).levelname == "ERROR"
