"""Single spawn: hub-side latency of one user's spawn, gpuspawner against plain DockerSpawner,
and gpuspawner on its lab network against gpuspawner on the host network.

The three hubs run side by side on the test bed's engine (see ``_lab.py``); one user
at a time spawns the CPU profile, taking the hubs in turn (in another order each
round), and each spawn is stopped before the next. For each spawn: from the REST request to the container
running (Docker's ``State.StartedAt``), and to the hub reporting the server ready.
The first spawn of each hub is a warm-up and is not counted.

    .venv/bin/python benchmarks/single_spawn.py --rounds 10
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _lab
import _report
from _lab import DOCKER, GPU, GPU_HOST

KINDS = (GPU, GPU_HOST, DOCKER)


def run(hubs: dict, rounds: int, run_id: str, warmup: bool = True) -> dict:
    kinds = tuple(hubs)
    samples = _lab.alternating(hubs, rounds, run_id, "cpu", warmup)
    result = {"rounds": rounds}
    for kind in kinds:
        spawns = samples[kind]
        result[kind] = {
            "running_median_s": _lab.median(s.to_running for s in spawns),
            "ready_median_s": _lab.median(s.to_ready for s in spawns),
            "running_s": [s.to_running for s in spawns],
            "ready_s": [s.to_ready for s in spawns],
            "errors": [s.error for s in spawns if s.error],
        }
    for what in ("running", "ready"):
        key = f"{what}_median_s"
        result[f"{what}_ratio"] = _lab.ratio(result[GPU][key], result[DOCKER][key])
        if GPU_HOST in hubs:  # the lab network's cost
            result[f"{what}_network_ratio"] = _lab.ratio(result[GPU][key], result[GPU_HOST][key])
    return result


def report(result: dict) -> str:
    network = GPU_HOST in result
    head = ["single spawn (median of %d)" % result["rounds"], "gpuspawner"]
    head += ["gpuspawner, host network", "lab ÷ host"] if network else []
    table = _lab.Table(head + ["DockerSpawner", "gpuspawner ÷ DockerSpawner"])
    for what in ("running", "ready"):
        key = f"{what}_median_s"
        row = [f"request → {'container running' if what == 'running' else 'server ready'} (s)"]
        row.append(_lab.fmt(result[GPU][key]))
        if network:
            row += [_lab.fmt(result[GPU_HOST][key]), f"{result[what + '_network_ratio']:.2f}"]
        row += [_lab.fmt(result[DOCKER][key]), f"{result[what + '_ratio']:.2f}"]
        table.add(*row)
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="spawns per spawner, alternating (default 10)")
    _lab.server_option(parser, default="singleuser")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    with tempfile.TemporaryDirectory(prefix="bench-single-") as tmp:
        with _lab.hub_pair(Path(tmp), run_id, server=args.server, kinds=KINDS) as hubs:
            result = run(hubs, args.rounds, run_id)
    return _report.report_table(result, args.json, report, machine=before, server=args.server)


if __name__ == "__main__":
    main()
