"""Class burst: N students press "Start" at once, across CPU and GPU profiles, on simulated GPUs.

Both hubs run side by side on the test bed's engine (see ``_lab.py``), and take
turns: each round, one burst on each (who goes first alternates). Every user's
request is sent at the same moment from its own thread; ``--gpus`` of them ask
for the one-GPU profile, the others for the CPU profile. Reported per spawner
(medians over rounds): the time from the first request until every container
is running and until every server is ready, and p50/p95 per user; for
gpuspawner, that the GPU assignments were all distinct. Plain DockerSpawner
has no GPU assignment: its GPU users get the same container without one.

By default the containers run a stub HTTP server (``--server stub``), so that
the figures are the hub's and the engine's; ``--server singleuser`` runs
jupyterhub-singleuser, whose start-up is CPU-bound (and on 2 cores dominates).

    .venv/bin/python benchmarks/class_burst.py --users 40 --gpus 8 --rounds 3
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _lab
import _report
from _lab import DOCKER, GPU, KINDS, Spawn


def class_list(prefix: str, users: int, gpus: int, run_id: str, big: int = 0) -> list[Spawn]:
    """``users`` students: ``gpus`` of them (spread through the list) on the GPU profile, ``big`` on the big image."""
    names = _lab.user_names(prefix, users, run_id)
    every = max(users // gpus, 1) if gpus else 0
    spawns = []
    for i, name in enumerate(names):
        if i < big:
            profile = "big"
        elif gpus and (i - big) % every == 0 and (i - big) // every < gpus:
            profile = "gpu"
        else:
            profile = "cpu"
        spawns.append(Spawn(name, profile))
    return spawns


def summarise(spawns: list[Spawn], gpus: int, kind: str) -> dict:
    """One burst's figures: all running/ready from the first request, p50/p95 per user, the GPU check."""
    start = min(s.requested for s in spawns)
    ok = [s for s in spawns if not s.error]
    gpu_ids = [g for s in spawns for g in s.gpus]
    result = {
        "users": len(spawns),
        "errors": [f"{s.user}: {s.error}" for s in spawns if s.error],
        "all_running_s": max((s.running for s in ok), default=start) - start if len(ok) == len(spawns) else None,
        "all_ready_s": max((s.ready for s in ok), default=start) - start if len(ok) == len(spawns) else None,
        "running_p50_s": _lab.percentile([s.to_running for s in ok], 50),
        "running_p95_s": _lab.percentile([s.to_running for s in ok], 95),
        "running_max_s": max((s.to_running for s in ok), default=float("nan")),
        "ready_p50_s": _lab.percentile([s.to_ready for s in ok], 50),
        "ready_p95_s": _lab.percentile([s.to_ready for s in ok], 95),
        "gpu_users": sum(s.profile == "gpu" for s in spawns),
        "gpus_assigned": len(gpu_ids),
        "gpus_distinct": len(set(gpu_ids)) == len(gpu_ids),
    }
    if kind == GPU:
        result["gpus_ok"] = (
            result["gpus_distinct"]
            and len(gpu_ids) == result["gpu_users"]
            and all(len(s.gpus) == (1 if s.profile == "gpu" else 0) for s in spawns)
        )
    return result


def one_burst(hub, kind: str, spawns: list[Spawn], gpus: int, stagger: dict | None = None) -> dict:
    try:
        _lab.burst(hub, kind, spawns, stagger=stagger)
        return summarise(spawns, gpus, kind) | {"spawns": spawns}
    finally:
        _lab.stop_all(hub, [s.user for s in spawns])


def run(hubs: dict, users: int, gpus: int, rounds: int, run_id: str) -> dict:
    bursts: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in range(rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in order:
            spawns = class_list(f"b{kind[0]}{r}", users, gpus, run_id)
            bursts[kind].append(one_burst(hubs[kind], kind, spawns, gpus))
    result = {"users": users, "gpus": gpus, "rounds": rounds}
    for kind in KINDS:
        result[kind] = aggregate(bursts[kind])
    result["all_running_ratio"] = _lab.ratio(result[GPU]["all_running_s"], result[DOCKER]["all_running_s"])
    result["all_ready_ratio"] = _lab.ratio(result[GPU]["all_ready_s"], result[DOCKER]["all_ready_s"])
    return result


FIGURES = ("all_running_s", "all_ready_s", "running_p50_s", "running_p95_s", "ready_p50_s", "ready_p95_s")


def aggregate(bursts: list[dict]) -> dict:
    """Medians over rounds of each burst's figures, and every burst's own."""
    out = {key: _lab.median(b[key] for b in bursts) for key in FIGURES}
    out["errors"] = [e for b in bursts for e in b["errors"]]
    out["gpus_ok"] = all(b.get("gpus_ok", True) for b in bursts)
    out["bursts"] = [{k: v for k, v in b.items() if k != "spawns"} for b in bursts]
    return out


def report(result: dict) -> str:
    title = f"class burst, {result['users']} users, {result['gpus']} GPUs (median of {result['rounds']})"
    table = _lab.Table([title, "gpuspawner", "DockerSpawner", "ratio"])
    names = {
        "all_running_s": "first request → all containers running (s)",
        "all_ready_s": "first request → all servers ready (s)",
        "running_p50_s": "per user → running, p50 (s)",
        "running_p95_s": "per user → running, p95 (s)",
        "ready_p50_s": "per user → ready, p50 (s)",
        "ready_p95_s": "per user → ready, p95 (s)",
    }
    for key, name in names.items():
        g, d = result[GPU][key], result[DOCKER][key]
        table.add(name, _lab.fmt(g), _lab.fmt(d), f"{_lab.ratio(g, d):.2f}")
    table.add("GPU assignments all distinct", "yes" if result[GPU]["gpus_ok"] else "NO", "(no GPUs)", "")
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--users", type=int, default=40, help="students in the burst (default 40)")
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs, one per GPU student (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per spawner, alternating (default 3)")
    _lab.server_option(parser, default="stub")
    parser.add_argument("--docker-threads", type=int, default=8, help="gpuspawner's docker_threads (default 8)")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        with _lab.hub_pair(Path(tmp), run_id, gpus=args.gpus, server=args.server, threads=args.docker_threads) as hubs:
            result = run(hubs, args.users, args.gpus, args.rounds, run_id)
    return _report.report_table(result, args.json, report, machine=before, notes=errors, server=args.server)


def errors(result: dict) -> list[str]:
    """The first errors of each spawner, printed after its figures."""
    return [f"{kind} errors: {result[kind]['errors'][:5]}" for kind in KINDS if result[kind]["errors"]]


if __name__ == "__main__":
    main()
