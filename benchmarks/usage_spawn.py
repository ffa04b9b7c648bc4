"""Usage records on a spawn: one GPU spawn with the hub recording GPU-hours, side by side with one without.

Two gpuspawner hubs on the test bed's engine (``_lab.py``'s config; stub servers by default),
one with ``usage_db_url`` (SQLite in its working directory, as by default) and one with
``usage_db_url = ""``. One user at a time spawns the GPU profile, taking the hubs in turn (in
another order each round), and each spawn is stopped before the next: a record opened and closed
per spawn. From the REST request to the container running (Docker's ``State.StartedAt``), and to
the hub reporting the server ready; the first spawn of each hub is a warm-up. Then, apart from
any hub: what the spawn's own path pays (the recorder's ``assigned`` and ``released`` calls on
the event loop), and how long the recorder's thread takes to write each.

    .venv/bin/python benchmarks/usage_spawn.py --rounds 10
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import _lab
import _report
from _lab import GPU

from gpuspawner.usage.recorder import UsageRecorder
from tests.realhub import running_hub

ON, OFF = "recording", "not recording"


def run(hubs: dict, rounds: int, run_id: str) -> dict:
    samples = _lab.alternating(hubs, rounds, run_id, "gpu", spawner_of=lambda kind: GPU)
    result = {"rounds": rounds}
    for kind in hubs:
        spawns = samples[kind]
        result[kind] = {
            "running_median_s": _lab.median(s.to_running for s in spawns),
            "ready_median_s": _lab.median(s.to_ready for s in spawns),
            "errors": [s.error for s in spawns if s.error],
        }
    return result


def on_the_loop(n: int = 1000) -> dict:
    """The recorder's calls as a spawn makes them (µs on the event loop), and its thread's writes (ms)."""

    async def measure(folder: str) -> dict:
        recorder = UsageRecorder(f"sqlite:///{folder}/usage.sqlite")
        await recorder.uses()  # opened and migrated, as after the hub's first spawn
        calls, writes = [], []
        for i in range(n):
            t0 = time.perf_counter()
            opened = recorder.assigned(f"u{i}/", units=["GPU-0"], user=f"u{i}", profile="gpu")
            t1 = time.perf_counter()
            closed = recorder.released(f"u{i}/", "user")
            t2 = time.perf_counter()
            calls += [(t1 - t0) * 1e6, (t2 - t1) * 1e6]
            w0 = time.perf_counter()
            await asyncio.wrap_future(opened)
            await asyncio.wrap_future(closed)
            writes.append((time.perf_counter() - w0) * 1e3)
        recorder.close()
        return {
            "call_mean_us": statistics.fmean(calls),
            "call_p99_us": _lab.percentile(calls, 99),
            "open_and_close_write_median_ms": statistics.median(writes),
            "open_and_close_write_p99_ms": _lab.percentile(writes, 99),
        }

    with tempfile.TemporaryDirectory(prefix="bench-usage-") as folder:
        return asyncio.run(measure(folder))


def report(result: dict) -> str:
    table = _lab.Table([f"GPU spawn (median of {result['rounds']})", ON, OFF, "difference"])
    for what in ("running", "ready"):
        key = f"{what}_median_s"
        on, off = result[ON][key], result[OFF][key]
        table.add(
            f"request → {'container running' if what == 'running' else 'server ready'} (s)",
            _lab.fmt(on),
            _lab.fmt(off),
            f"{(on - off) * 1000:+.0f} ms",
        )
    loop = result["loop"]
    return (
        table.markdown()
        + f"\n\non the spawn's path: {loop['call_mean_us']:.0f} µs a call (p99 {loop['call_p99_us']:.0f} µs);"
        + f" the thread's open and close: {loop['open_and_close_write_median_ms']:.1f} ms"
        + f" (p99 {loop['open_and_close_write_p99_ms']:.1f} ms), off the spawn's path"
    )


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="spawns per hub, alternating (default 10)")
    _lab.server_option(parser, "stub")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    config = _lab.hub_configs(_lab.read_testbed("image"), 2, args.server)[GPU]
    configs = {ON: config, OFF: config + 'c.GPUSpawner.usage_db_url = ""\n'}
    with tempfile.TemporaryDirectory(prefix="bench-usage-spawn-") as tmp, contextlib.ExitStack() as stack:
        hubs = {
            kind: stack.enter_context(
                running_hub(Path(tmp) / kind.replace(" ", "-"), configs[kind], run_id, lab=n == 0)
            )
            for n, kind in enumerate((ON, OFF))
        }
        result = run(hubs, args.rounds, run_id)
    result["loop"] = on_the_loop()
    return _report.report_table(result, args.json, report, machine=before, server=args.server)


if __name__ == "__main__":
    main()
