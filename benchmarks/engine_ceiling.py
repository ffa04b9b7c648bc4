"""The engine's own ceiling: how much faster can N containers start with 8 Docker calls at once than with 1?

No hub here: docker-py straight to the test bed's engine, create + start of N
labelled containers (``sleep``, no network) with 1 thread (DockerSpawner's
executor) and with ``--threads`` threads (gpuspawner's default pool),
alternating, then removed. The ratio is the best any spawner could reach for
a class burst on this machine: when dockerd, containerd and runc already use
all CPUs with one call at a time, more calls at once only queue inside them.

    .venv/bin/python benchmarks/engine_ceiling.py --containers 40 --rounds 3
"""

from __future__ import annotations

import statistics
import time

import _lab
import _report
from restart import remove_containers, start_containers


def run(containers: int, threads: int, rounds: int, run_id: str) -> dict:
    times: dict[int, list[float]] = {1: [], threads: []}
    for r in range(rounds):
        for n in (1, threads) if r % 2 == 0 else (threads, 1):
            t0 = time.monotonic()
            ids = start_containers(containers, f"{run_id}{r}{n}", threads=n)
            times[n].append(time.monotonic() - t0)
            remove_containers(ids)
    one, many = statistics.median(times[1]), statistics.median(times[threads])
    return {
        "containers": containers,
        "threads": threads,
        "rounds": rounds,
        "one_thread_s": one,
        "pool_s": many,
        "ratio": many / one,
        "times": {str(k): v for k, v in times.items()},
    }


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--containers", type=int, default=40, help="containers per round (default 40)")
    parser.add_argument("--threads", type=int, default=8, help="calls at once in the pool (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating (default 3)")
    args = parser.parse_args(argv)
    result = run(args.containers, args.threads, args.rounds, _lab.new_run())
    return _report.report(
        result,
        args.json,
        lambda r: (
            f"create + start of {r['containers']} containers: 1 thread {r['one_thread_s']:.2f} s,"
            f" {r['threads']} threads {r['pool_s']:.2f} s, ratio {r['ratio']:.2f} (load {r['load']})"
        ),
    )


if __name__ == "__main__":
    main()
