"""Burst during a pull: the class burst while one student's profile image is being pulled.

The benchmark starts a registry on loopback (Debian's ``docker-registry``, as
``tests/registry.py`` runs it), pushes a ``--pull-mb`` MB image there (the test
bed image plus one incompressible layer) and removes it from the engine. Both
hubs (see ``_lab.py``) have a "big" profile with that image and
``pull_policy = "ifnotpresent"``. Each round, on each hub in turn:

1. the no-pull burst: N-1 students on the CPU and GPU profiles at once;
2. the pull burst: one student asks for the big profile (the image is absent,
   so the spawn pulls it), and 1 s later the same N-1 students' burst;
3. the control: the same pull started by the benchmark itself, outside the
   hub, and 1 s later the N-1 students' burst. Its delay is what the pull's
   own load (network, decompression, disk, on the same CPUs) costs everyone,
   whatever the spawner; the pull burst's delay beyond it is the spawner's.

The target: no student who is not pulling is delayed by more than 1 s beyond
the no-pull burst, compared worst user against worst user (request → running),
and also at the median.

    .venv/bin/python benchmarks/burst_during_pull.py --users 40 --gpus 8 --pull-mb 512 --rounds 2
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import _lab
import _report
import class_burst
from _lab import DOCKER, GPU, KINDS

from tests.registry import CACHE, local_registry

HEAD_START = 1.0  # seconds the pulling student asks before the others


def run(hubs: dict, users: int, gpus: int, rounds: int, run_id: str, big_image: str) -> dict:
    rows: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in range(rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in order:
            hub = hubs[kind]
            quiet = class_burst.class_list(f"q{kind[0]}{r}", users - 1, gpus, run_id)
            calm = class_burst.one_burst(hub, kind, quiet, gpus)
            _lab.remove_image(big_image)
            spawns = class_burst.class_list(f"p{kind[0]}{r}", users, gpus, run_id, big=1)
            puller, others = spawns[0], spawns[1:]
            try:
                _lab.burst(hub, kind, spawns, stagger={puller.user: HEAD_START})
                busy = class_burst.summarise(others, gpus, kind)
            finally:
                _lab.stop_all(hub, [s.user for s in spawns])
            _lab.remove_image(big_image)
            # the control: the same pull started outside the hub, for the machine's own contention
            outside = class_burst.class_list(f"o{kind[0]}{r}", users - 1, gpus, run_id)
            pull = threading.Thread(target=_pull_outside, args=(big_image,))
            pull.start()
            time.sleep(HEAD_START)
            try:
                contended = class_burst.one_burst(hub, kind, outside, gpus)
            finally:
                pull.join()
                _lab.remove_image(big_image)
            rows[kind].append(
                {
                    "no_pull": {k: v for k, v in calm.items() if k != "spawns"},
                    "during_pull": busy,
                    "puller_running_s": puller.to_running,
                    "puller_error": puller.error,
                    "max_delay_s": busy["running_max_s"] - calm["running_max_s"],
                    "p50_delay_s": busy["running_p50_s"] - calm["running_p50_s"],
                    "all_running_delay_s": _none_minus(busy["all_running_s"], calm["all_running_s"]),
                    "outside_pull": {k: v for k, v in contended.items() if k != "spawns"},
                    "outside_max_delay_s": contended["running_max_s"] - calm["running_max_s"],
                    "outside_p50_delay_s": contended["running_p50_s"] - calm["running_p50_s"],
                }
            )
    result = {"users": users, "gpus": gpus, "rounds": rounds, "image": big_image}
    for kind in KINDS:
        result[kind] = {
            key: _lab.median(row[key] for row in rows[kind])
            for key in (
                "max_delay_s",
                "p50_delay_s",
                "all_running_delay_s",
                "puller_running_s",
                "outside_max_delay_s",
                "outside_p50_delay_s",
            )
        }
        result[kind]["worst_max_delay_s"] = max((row["max_delay_s"] for row in rows[kind]), default=float("nan"))
        result[kind]["gpus_ok"] = all(
            row["during_pull"].get("gpus_ok", True) and row["no_pull"].get("gpus_ok", True) for row in rows[kind]
        )
        result[kind]["errors"] = [
            e
            for row in rows[kind]
            for e in row["during_pull"]["errors"] + row["no_pull"]["errors"] + row["outside_pull"]["errors"]
        ]
        result[kind]["puller_errors"] = [row["puller_error"] for row in rows[kind] if row["puller_error"]]
        result[kind]["rounds"] = rows[kind]
    return result


def _pull_outside(ref: str) -> None:
    """Pull ``ref`` with a client of our own: the load of a pull, with no spawner involved."""
    for line in _lab.engine().api.pull(ref, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"pull of {ref} failed: {line['error']}")


def _none_minus(a, b):
    return None if a is None or b is None else a - b


def report(result: dict) -> str:
    title = f"burst during a pull, {result['users']} users, {result['gpus']} GPUs (median of {result['rounds']})"
    table = _lab.Table([title, "gpuspawner", "DockerSpawner"])
    names = {
        "max_delay_s": "worst non-pulling user's extra delay to running (s)",
        "p50_delay_s": "median user's extra delay to running (s)",
        "all_running_delay_s": "extra time until all others are running (s)",
        "puller_running_s": "pulling user: request → running (s)",
        "outside_max_delay_s": "control, pull from outside the hub: worst user's extra delay (s)",
        "outside_p50_delay_s": "control, pull from outside the hub: median user's extra delay (s)",
    }
    for key, name in names.items():
        table.add(name, _lab.fmt(result[GPU][key]), _lab.fmt(result[DOCKER][key]))
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--users", type=int, default=40, help="students, one of them pulling (default 40)")
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per spawner, alternating (default 2)")
    parser.add_argument("--pull-mb", type=int, default=512, help="size of the pulled image's own layer (default 512)")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        tmp = Path(tmp)
        os.environ["DOCKER_CONFIG"] = str(tmp / "docker-config")  # no user's credential helper for our registry
        with local_registry(tmp / "registry", storage=CACHE) as (address, _):
            big = _lab.push_large_image(address, args.pull_mb, tmp, run_id)
            before = _lab.machine()
            with _lab.hub_pair(tmp / "hubs", run_id, gpus=args.gpus, big_image=big) as hubs:
                result = run(hubs, args.users, args.gpus, args.rounds, run_id, big)
    return _report.report_table(result, args.json, report, machine=before, pull_mb=args.pull_mb)


if __name__ == "__main__":
    main()
