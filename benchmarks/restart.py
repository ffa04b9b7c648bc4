"""Restart: the time to rebuild the GPU ledger from the labels of 200 running containers.

A restarted hub knows who holds which GPU only from the labels of the running
containers (``gpuspawner.labels``). The benchmark starts ``--containers``
containers of the test bed image on its engine (``sleep``, no network), each
labelled as gpuspawner labels a server holding a slot on one of 64 shared
GPUs, then times what a restarted hub does on its first spawn or poll:
``GPUSpawner.ledger()``, i.e. the Docker ``containers`` call through the
spawner's Docker pool and ``adopt_containers``, from a fresh ledger each time.
The containers are removed afterwards.

    .venv/bin/python benchmarks/restart.py --containers 200
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import _lab
import _report

from gpuspawner import GPUSpawner
from gpuspawner import labels as label
from gpuspawner.hub_state import reset_hub_state
from tests.fakes import make_spawner
from tests.realhub import E2E_LABEL, engine, read_testbed

UNITS = 64


def start_containers(n: int, run_id: str, threads: int = 8) -> list[str]:
    """``n`` labelled, running containers: server i holds a shared slot on GPU i % 64."""
    image = read_testbed("image")
    api = engine().api
    gpus = _lab.fake_gpus(UNITS)

    def one(i: int) -> str:
        record = label.ServerRecord(
            user=f"r{i:04d}x{run_id}",
            profile="shared",
            unit_ids=(gpus[i % UNITS]["uuid"],),
            shared=True,
            groups=frozenset({f"g{i % 10}"}),
        )
        labels = {E2E_LABEL: f"{run_id}:{os.getpid()}", **label.server_labels(record)}
        host = api.create_host_config(network_mode="none")
        c = api.create_container(
            image, ["sleep", "86400"], name=f"bench-restart-{i:04d}-{run_id}", labels=labels, host_config=host
        )
        api.start(c["Id"])
        return c["Id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def remove_containers(ids: list[str], threads: int = 8) -> None:
    api = engine().api
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda cid: api.remove_container(cid, force=True), ids))


def rebuild_times(repeats: int, containers: int) -> list[float]:
    """Seconds for ``GPUSpawner.ledger()`` of a just-restarted hub, ``repeats`` times."""
    client = engine().api
    spawner = make_spawner(
        GPUSpawner,
        client,
        user="bench",
        gpus=_lab.fake_gpus(UNITS),
        shared_gpu_users=4,
        denials_file="",
        prepull_images=False,
    )
    times = []

    async def once() -> float:
        reset_hub_state()  # the hub restarts: its ledger is empty and unsynced
        t0 = time.perf_counter()
        ledger = await spawner.ledger()
        elapsed = time.perf_counter() - t0
        held = ledger.assignments()
        if len(held) < containers:
            raise AssertionError(f"the ledger adopted {len(held)} servers, expected {containers}")
        return elapsed

    async def all_runs():
        for _ in range(repeats):
            times.append(await once())

    asyncio.run(all_runs())
    reset_hub_state()
    return times


def run(containers: int, repeats: int, run_id: str) -> dict:
    t0 = time.monotonic()
    ids = []
    try:
        ids = start_containers(containers, run_id)
        setup = time.monotonic() - t0
        times = rebuild_times(repeats, containers)
    finally:
        with contextlib.suppress(Exception):
            remove_containers(ids)
    return {
        "containers": containers,
        "repeats": repeats,
        "setup_s": setup,
        "rebuild_median_s": statistics.median(times),
        "rebuild_max_s": max(times),
        "rebuild_s": times,
    }


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--containers", type=int, default=200, help="running servers to adopt (default 200)")
    parser.add_argument("--repeats", type=int, default=20, help="rebuilds to time (default 20)")
    args = parser.parse_args(argv)
    result = run(args.containers, args.repeats, _lab.new_run())
    return _report.report(
        result,
        args.json,
        lambda r: (
            f"ledger rebuild from {r['containers']} running containers: median"
            f" {r['rebuild_median_s'] * 1000:.1f} ms, max {r['rebuild_max_s'] * 1000:.1f} ms"
            f" ({r['repeats']} rebuilds; load {r['load']})"
        ),
    )


if __name__ == "__main__":
    main()
