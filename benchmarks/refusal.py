"""Refusal latency: how fast a spawn that cannot get a GPU is refused, on a real hub.

One gpuspawner hub on the test bed's engine (``_lab.py``'s config, stub servers)
with ``--gpus`` simulated GPUs, all of them taken first. Then, for the GPU
profile, with every unit held:

- one student at a time (``--single`` requests): the refusal a student meets;
- ``--burst`` students at once (a class pressing "Start" together), ``--rounds`` times;
- once more right after the hub was killed and started again (its ledger rebuilt
  from the containers' labels).

Each time is from the REST request to the hub's answer (503, "all N GPUs are
taken"): never a start timeout, since the spawner refuses before any container
exists. The end-to-end tests check the refusal itself; the times are measured here.

    .venv/bin/python benchmarks/refusal.py --gpus 4 --burst 30
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _lab
import _report
from _lab import GPU, Spawn


def refuse(hub, users: list[str]) -> list[dict]:
    """Ask for the GPU profile for every user at once; each answer's status and seconds."""
    for name in users:
        hub.ensure_user(name)
    gate = threading.Event()
    body = json.dumps({"user_options": {"profile": "gpu"}})

    def ask(name: str) -> dict:
        gate.wait()
        t0 = time.monotonic()
        r = hub.request("POST", f"/users/{name}/servers/", data=body)
        return {"user": name, "status": r.status_code, "seconds": time.monotonic() - t0, "message": r.text[:200]}

    with ThreadPoolExecutor(len(users)) as pool:
        answers = [pool.submit(ask, name) for name in users]
        gate.set()
        return [a.result() for a in answers]


def summary(answers: list[dict]) -> dict:
    seconds = [a["seconds"] for a in answers]
    return {
        "requests": len(answers),
        "refused_503": sum(a["status"] == 503 for a in answers),
        "other": [f"{a['status']} {a['message']}" for a in answers if a["status"] != 503],
        "median_s": _lab.median(seconds),
        "p95_s": _lab.percentile(seconds, 95),
        "max_s": max(seconds, default=float("nan")),
        "seconds": seconds,
    }


def run(hub, gpus: int, burst: int, rounds: int, single: int, run_id: str) -> dict:
    holders = _lab.user_names("hold", gpus, run_id)
    held = _lab.burst(hub, GPU, [Spawn(u, "gpu") for u in holders])
    errors = [s.error for s in held if s.error]
    if errors:
        raise RuntimeError(f"could not take every GPU first: {errors}")
    result = {"gpus": gpus}
    singles = []
    for name in _lab.user_names("one", single, run_id):
        singles += refuse(hub, [name])
    result["single"] = summary(singles)
    bursts = []
    for r in range(rounds):
        bursts += refuse(hub, _lab.user_names(f"b{r}", burst, run_id))
    result["burst"] = {**summary(bursts), "size": burst, "rounds": rounds}
    hub.kill()
    t0 = time.monotonic()
    hub.start()
    restarted = time.monotonic() - t0
    result["after_restart"] = {**summary(refuse(hub, _lab.user_names("late", 1, run_id))), "hub_start_s": restarted}
    _lab.stop_all(hub, holders)
    return result


def report(result: dict) -> str:
    table = _lab.Table(["refusal, every GPU taken (s)", "requests", "503", "median", "p95", "max"])
    rows = (
        ("one student at a time", result["single"]),
        (f"{result['burst']['size']} students at once", result["burst"]),
        ("first after a hub restart", result["after_restart"]),
    )
    for label, figures in rows:
        table.add(
            label,
            figures["requests"],
            figures["refused_503"],
            _lab.fmt(figures["median_s"]),
            _lab.fmt(figures["p95_s"]),
            _lab.fmt(figures["max_s"]),
        )
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--gpus", type=int, default=4, help="simulated GPUs, all taken before the refusals (default 4)")
    parser.add_argument("--burst", type=int, default=30, help="students refused at once (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts (default 3)")
    parser.add_argument("--single", type=int, default=20, help="refusals one at a time (default 20)")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    config = _lab.hub_configs(_lab.read_testbed("image"), args.gpus, "stub")[GPU]
    with tempfile.TemporaryDirectory(prefix="bench-refusal-") as tmp:
        with _lab.running_hub(Path(tmp), config, run_id) as hub:
            result = run(hub, args.gpus, args.burst, args.rounds, args.single, run_id)
    return _report.report_table(result, args.json, report, machine=before)


if __name__ == "__main__":
    main()
