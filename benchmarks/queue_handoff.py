"""Hand-off: how soon a freed GPU reaches the first student waiting in line, on a real hub.

One gpuspawner hub on the test bed's engine (``_lab.py``'s config, stub servers by default,
``--server singleuser`` for the test bed image's real server) with one simulated GPU and a
profile that waits (``queue_timeout``). Each of ``--rounds`` rounds: a holder takes the GPU, a
second student asks for it and waits in line, then the holder's server is stopped through the
REST API. Timed from the hub's own log, to the millisecond:

- *release to grant*: from the log line that frees the holder's GPU to the one that grants it
  to the waiting student (the hub's own work);
- *stop to grant*: from the REST stop request's arrival (the proxy route's removal, the first
  thing JupyterHub does) to the grant, which includes the stopped container's exit;
- *stop to ready*: from the stop request to the waiting student's server answering.

    .venv/bin/python benchmarks/queue_handoff.py --rounds 10
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import _lab
import _report
from _lab import GPU

from tests.realhub import wait_for

WAITS = """
c.GPUSpawner.queue_timeout = "10m"
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 1}
"""


def logged_at(hub, pattern: str, after: datetime) -> datetime | None:
    """When the hub's log first says ``pattern`` at or after ``after``."""
    for line in hub.log_text().splitlines():
        if len(line) < 26 or not re.search(pattern, line):
            continue
        try:
            when = datetime.strptime(line[3:26], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            continue
        if when >= after:
            return when
    return None


def wait_logged(hub, pattern: str, after: datetime, timeout: float = 60) -> datetime:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = logged_at(hub, pattern, after)
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"no log line matching {pattern!r} within {timeout:g} s:\n{hub.log_tail()}")


def waiting(hub) -> list[str]:
    path = hub.workdir / "gpuspawner-queue.json"
    return [w["user"] for w in json.loads(path.read_text())["waiting"]] if path.exists() else []


def one_round(hub, holder: str, waiter: str) -> dict:
    body = json.dumps({"user_options": {"profile": "gpu"}})
    for name in (holder, waiter):
        hub.ensure_user(name)
    r = hub.request("POST", f"/users/{holder}/servers/", data=body)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(holder)
    r = hub.request("POST", f"/users/{waiter}/servers/", data=body)
    assert r.status_code == 202, r.text
    wait_for(lambda: waiting(hub) == [waiter], 30, f"{waiter} in line", every=0.05, details=hub.log_tail)
    before = datetime.now().replace(microsecond=0)
    t0 = time.monotonic()
    r = hub.request("DELETE", f"/users/{holder}/servers/")
    assert r.status_code in (202, 204), r.text
    hub.wait_ready(waiter, timeout=60)
    ready = time.monotonic() - t0
    stop = wait_logged(hub, rf"Removing user {holder} from proxy", before)
    released = wait_logged(hub, rf"Released GPUs \S+ of {holder}/", before)
    granted = wait_logged(hub, rf"Granted \S+ to {waiter}/", before)
    hub.stop_server(waiter)
    return {
        "release_to_grant_s": (granted - released).total_seconds(),
        "stop_to_grant_s": (granted - stop).total_seconds(),
        "stop_to_ready_s": ready,
    }


def report(result: dict) -> str:
    table = _lab.Table(["freed GPU to the first in line (s)", "rounds", "median", "worst"])
    for key, label in (
        ("release_to_grant_s", "release to grant (the hub's work)"),
        ("stop_to_grant_s", "stop request to grant"),
        ("stop_to_ready_s", "stop request to the waiting server ready"),
    ):
        values = [r[key] for r in result["rounds"]]
        table.add(label, len(values), _lab.fmt(_lab.median(values)), _lab.fmt(max(values)))
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="hand-offs timed (default 10)")
    _lab.server_option(parser, "stub")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    config = _lab.hub_configs(_lab.read_testbed("image"), 1, args.server)[GPU] + WAITS
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        with _lab.running_hub(Path(tmp), config, run_id) as hub:
            for n in range(args.rounds):
                holder, waiter = _lab.user_names(f"h{n}", 2, run_id)
                rounds.append(one_round(hub, holder, waiter))
    return _report.report_table({"rounds": rounds}, args.json, report, machine=before, server=args.server)


if __name__ == "__main__":
    main()
