"""The ``gpuspawner`` command's run time, as an admin runs it, on the test bed's engine.

Each command runs in a process of its own (``python -m gpuspawner.cli``, so the
figures include Python's start and the imports), in a folder with a
``jupyterhub_config.py`` whose profiles use the test bed's two images:

- ``image build`` refused for an unpinned tag, with no engine to reach (the
  check comes before any Docker call: this is start-up and argument checking);
- ``status --json`` with one server holding a GPU (a labelled container);
- ``image check IMAGE``: one check container, then the server started as the hub would;
- the server's start alone (``server_start.start_server``, in this process: the home
  volume, the container, the helper's wait for the server's answer, the clean-up):
  what the start adds to ``image check`` and to ``image build``;
- ``image check --profiles``: each profile's image once (two here);
- ``doctor``: the config, the engine, the toolkit, the driver, every image;
- ``doctor`` again, the two profiles mounting four datasets and shares each: one more
  short container per image, looking at them as its user.

``--rounds`` runs of each, one at a time; median and max in seconds. The
end-to-end tests check what these commands say; their durations are measured here.

    .venv/bin/python benchmarks/cli.py --rounds 5
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _lab
import _report

from tests.realhub import run_command, simulated_gpus, write_command_config

GPUS = simulated_gpus([f"GPU-c11be0c0-0000-4000-8000-00000000000{i}" for i in range(2)], "Bench GPU", "16G")


def write_config(folder: Path, base: str, cuda: str, mounts: Path | None = None) -> None:
    """The two profiles; with ``mounts``, each mounts two datasets and two shares (teachers write one) from it."""
    profiles = [
        {"slug": "cpu", "display_name": "CPU", "image": base},
        {"slug": "gpu", "display_name": "GPU", "image": cuda, "gpus": 1},
    ]
    extra = ""
    if mounts is not None:
        for name in ("mnist", "cifar", "notes", "ml101"):
            (mounts / name).mkdir()
            (mounts / name / "README").write_text("data\n")
            (mounts / name).chmod(0o755)
        os.chown(mounts / "ml101", 1000, 100)  # the test bed images' user writes it
        for p in profiles:
            p["datasets"] = [{"name": n, "source": str(mounts / n)} for n in ("mnist", "cifar")]
            p["shares"] = [
                {"name": "notes", "source": str(mounts / "notes")},
                {"name": "ml101", "source": str(mounts / "ml101"), "writable_by": ["teachers"]},
            ]
        extra = f"c.GPUSpawner.mount_roots = [{str(mounts)!r}]\n"
    write_command_config(folder, GPUS, profiles, extra)


def server_container(image: str, run_id: str):
    """A container labelled as gpuspawner labels a server holding GPU 1 (it runs ``sleep``)."""
    from gpuspawner import labels

    record = labels.ServerRecord(f"bench-{run_id}", "exp", "gpu", (GPUS[1]["uuid"],), groups=frozenset({"ml101"}))
    return _lab.engine().containers.run(
        image,
        ["sleep", "3600"],
        detach=True,
        network_mode="none",
        labels={**labels.server_labels(record), "gpuspawner-bench": run_id},
        name=f"gpuspawner-cli-bench-{run_id}",
    )


def timed(folder: Path, args: list[str], docker_host: str) -> tuple[int, float]:
    done, seconds = run_command(folder, args, engine_at=docker_host, timeout=600)
    return done.returncode, seconds


def start_seconds(folder: Path, image: str, docker_host: str) -> tuple[int, float]:
    """(0 when the server answered, else 1; seconds) of one start of ``image``'s server as the hub would."""
    import os
    import time

    from gpuspawner.cli import probe, server_start
    from gpuspawner.config import load_hub_config

    os.environ["DOCKER_HOST"] = docker_host
    hub = load_hub_config(str(folder / "jupyterhub_config.py"))
    client = hub.docker()
    facts = probe.run_probe(client, image)
    plan = server_start.start_plan(hub, image, client.inspect_image(image))
    began = time.monotonic()
    result = server_start.start_server(client, plan, facts.python)
    return (0 if result.answered else 1), time.monotonic() - began


def run(rounds: int, run_id: str) -> dict:
    base, cuda = _lab.read_testbed("image"), _lab.read_testbed("image-cuda")
    engine_host = _lab.docker_host()
    commands = {
        "image build, refused (no engine)": (
            ["image", "build", "--base", base, "--tag", "lab:latest"],
            "unix:///nonexistent/docker.sock",
        ),
        "status --json (1 server)": (["status", "--json"], engine_host),
        "image check IMAGE": (["image", "check", base], engine_host),
        "image check --profiles (2 images)": (["image", "check", "--profiles"], engine_host),
        "doctor": (["doctor"], engine_host),
        "doctor, 2 images mounting 4 datasets and shares each": (["doctor"], engine_host),
    }
    result = {"rounds": rounds, "commands": {}}
    container = server_container(base, run_id)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp,
            tempfile.TemporaryDirectory(prefix="bench-cli-mounts-") as with_mounts,
        ):
            folder, mounts_folder = Path(tmp), Path(with_mounts)
            write_config(folder, base, cuda)
            mounts_folder.chmod(0o755)  # the servers' user must pass it
            (mounts_folder / "hub").mkdir()
            (mounts_folder / "srv").mkdir(mode=0o755)
            write_config(mounts_folder / "hub", base, cuda, mounts_folder / "srv")
            samples = {name: [] for name in commands}
            statuses = {name: set() for name in commands}
            started = "image check: the server's start alone"
            samples[started], statuses[started] = [], set()
            for _ in range(rounds):
                for name, (args, host) in commands.items():
                    where = mounts_folder / "hub" if "mounting" in name else folder
                    status, seconds = timed(where, args, host)
                    samples[name].append(seconds)
                    statuses[name].add(status)
                status, seconds = start_seconds(folder, base, engine_host)
                samples[started].append(seconds)
                statuses[started].add(status)
    finally:
        container.remove(force=True)
    for name in samples:
        result["commands"][name] = {
            "median_s": _lab.median(samples[name]),
            "max_s": max(samples[name]),
            "exit_statuses": sorted(statuses[name]),
            "seconds": samples[name],
        }
    return result


def report(result: dict) -> str:
    table = _lab.Table([f"gpuspawner command ({result['rounds']} runs)", "median (s)", "max (s)", "exit status"])
    for name, figures in result["commands"].items():
        statuses = ", ".join(map(str, figures["exit_statuses"]))
        table.add(name, _lab.fmt(figures["median_s"]), _lab.fmt(figures["max_s"]), statuses)
    return table.markdown()


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each command (default 3)")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    result = run(args.rounds, run_id)
    return _report.report_table(result, args.json, report, machine=before)


if __name__ == "__main__":
    main()
