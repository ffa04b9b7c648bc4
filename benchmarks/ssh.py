"""The SSH gateway: login to a prompt on a running server, and scp against plain ``docker cp``.

One real hub on the test bed (its lab network, the gateway as its managed service, one
profile on the test bed's image with sftp-server), one student whose server runs. Then,
with Debian's OpenSSH client:

- **login to prompt**: ``ssh -tt`` on a terminal (a pty), from the start of the ``ssh``
  process until the shell's prompt shows, with a registered key and with a token as the
  password; and ``ssh HOST true`` (connect, log in, run, exit); ``--rounds`` each, median;
- **scp**: a file of ``--mb`` MB of random bytes into the home and back, with scp's SFTP
  protocol (OpenSSH's default, which takes the gateway's direct line into the server) and
  its legacy one (``scp -O``, through the engine's exec stream); against ``docker cp`` (the
  Docker CLI, on the same engine and container) both ways, and against an exec's path
  without SSH (``docker exec -i C sh -c 'cat > f' < file``, ``docker exec C cat f``);
  ``--copies`` each, median, in MB/s, with the CPU seconds each copy cost the gateway,
  dockerd (with the tar helpers it starts for ``docker cp``), the container's
  containerd-shim (which carries an exec's stdin and stdout) with the sftp-server or cat it
  reaps, and the client (scp or the Docker CLI). The kinds take turns, one copy of each a
  round, and every copy is checked by its SHA-256.

    python benchmarks/ssh.py --rounds 10 --mb 100 --copies 3
"""

from __future__ import annotations

import hashlib
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import _lab
import _report

from tests.realhub import TESTBED, free_port, read_testbed, running_hub, wait_for
from tests.ssh_client import OpenSSH, answers, new_key


def prompt_seconds(gateway: OpenSSH, user: str, key: Path | None = None, token: str | None = None) -> float:
    """From starting ``ssh -tt`` on a terminal until the shell's prompt (``$ ``) shows on it."""
    began = time.monotonic()
    shell, master = gateway.shell_on_a_terminal(user, 40, 120, token=token, key=key)
    seen = b""
    try:
        while b"$ " not in seen:
            if time.monotonic() - began > 60:
                raise RuntimeError(f"no prompt within 60 s: {seen!r}")
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        took = time.monotonic() - began
        os.write(master, b"exit\n")
        shell.wait(30)
        return took
    finally:
        if shell.poll() is None:
            shell.kill()
        os.close(master)


def timed(command: list[str], env: dict | None = None) -> float:
    began = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return time.monotonic() - began


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far: its threads, and the children it has
    waited for (dockerd's tar helpers of ``docker cp``; the exec's sftp-server, which the
    container's shim reaps)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def copied(command: list[str], env: dict, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    """One copy: its seconds, and the CPU seconds it cost each process of ``pids`` and the client."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = children_seconds()
    seconds = timed(command, env)
    cost = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cost["client"] = children_seconds() - client
    return seconds, cost


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(rounds: int, megabytes: int, copies: int, run_id: str) -> dict:
    docker = shutil.which("docker")
    if docker is None:
        raise SystemExit("the Docker CLI is needed for the docker cp figures (Debian: docker.io)")
    image = read_testbed("image-ssh")
    result: dict = {"rounds": rounds, "mb": megabytes, "copies": copies, "login": {}, "copy": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        folder = Path(tmp)
        port = free_port()
        config = f"""
        c.GPUSpawner.profiles = [dict(slug="cpu", display_name="CPU", image={image!r}, mem_limit="1G", cpu_limit=2)]
        c.GPUSpawner.home_volume_name = "jupyterhub-user-{{username}}"
        from gpuspawner import services
        services.add_ssh_gateway(c, __file__, port={port}, ip="127.0.0.1", url="http://127.0.0.1:{free_port()}")
        """
        with running_hub(folder / "hub", config, run_id) as hub:
            user = f"bench-{run_id}"
            gateway = OpenSSH(hub, port, folder)
            wait_for(lambda: answers(port), 30, "the SSH gateway listens", details=hub.log_tail)
            gateway.trust_host_key()
            hub.spawn(user)
            key = new_key(folder / "key")
            gateway.register_key(user, key)
            token = gateway.token(user)
            prompt_seconds(gateway, user, key=key)  # a first login, not counted (the exec path warms up)
            samples = {"prompt, key": [], "prompt, token": [], "ssh HOST true, key": []}
            opts, env = gateway.options(key=key)
            for _ in range(rounds):
                samples["prompt, key"].append(prompt_seconds(gateway, user, key=key))
                samples["prompt, token"].append(prompt_seconds(gateway, user, token=token))
                samples["ssh HOST true, key"].append(
                    timed(["ssh", *opts, "-p", str(port), f"{user}@127.0.0.1", "true"], env)
                )
            for name, values in samples.items():
                result["login"][name] = {"median_s": _lab.median(values), "max_s": max(values), "seconds": values}

            data = folder / "data.bin"
            with open(data, "wb") as f:
                for _ in range(megabytes):
                    f.write(os.urandom(1000**2))
            size, digest = data.stat().st_size, sha256(data)
            container = hub.container(user).id
            home = "/home/jovyan"
            docker_env = {**os.environ, "DOCKER_HOST": _lab.docker_host()}
            scp = ["scp", *opts, "-P", str(port)]
            exec_in = f"{docker} exec -i {container} sh -c 'cat > {home}/exec.bin' < {shlex.quote(str(data))}"
            exec_out = f"{docker} exec {container} cat {home}/exec.bin > {shlex.quote(str(folder / 'down-exec.bin'))}"
            # Each kind: its command, its environment, and the copy to check: in the home, or here.
            kinds = {
                "scp (SFTP protocol), up": (scp + [str(data), f"{user}@127.0.0.1:up.bin"], env, "up.bin", ""),
                "scp (SFTP protocol), down": (
                    scp + [f"{user}@127.0.0.1:up.bin", str(folder / "down.bin")],
                    env,
                    "",
                    folder / "down.bin",
                ),
                "scp -O (legacy protocol), up": (
                    scp + ["-O", str(data), f"{user}@127.0.0.1:up-o.bin"],
                    env,
                    "up-o.bin",
                    "",
                ),
                "scp -O (legacy protocol), down": (
                    scp + ["-O", f"{user}@127.0.0.1:up-o.bin", str(folder / "down-o.bin")],
                    env,
                    "",
                    folder / "down-o.bin",
                ),
                # An exec's path without SSH (scp -O's and commands'): the Docker CLI's exec, its stdin or stdout the file.
                "docker exec (cat), up": (["sh", "-c", exec_in], docker_env, "exec.bin", ""),
                "docker exec (cat), down": (["sh", "-c", exec_out], docker_env, "", folder / "down-exec.bin"),
                "docker cp, up": ([docker, "cp", str(data), f"{container}:{home}/cp.bin"], docker_env, "cp.bin", ""),
                "docker cp, down": (
                    [docker, "cp", f"{container}:{home}/cp.bin", str(folder / "down-cp.bin")],
                    docker_env,
                    "",
                    folder / "down-cp.bin",
                ),
            }
            gateway_pid = int(
                subprocess.run(
                    ["pgrep", "-f", f"gpuspawner.ssh .*--port={port}"], capture_output=True, text=True
                ).stdout.split()[0]
            )
            pids = {
                "gateway": gateway_pid,
                "dockerd": int((TESTBED / "docker.pid").read_text()),
                "shim": parent_pid(hub.container(user).attrs["State"]["Pid"]),  # the container's containerd-shim
            }
            # Round by round, each kind once a round: a change in the machine's load falls on every kind alike.
            runs: dict[str, list] = {name: [] for name in kinds}
            for _ in range(copies):
                for name, (command, command_env, inside, outside) in kinds.items():
                    runs[name].append(copied(command, command_env, pids))
                    if inside:
                        got = hub.container(user).exec_run(["sha256sum", f"{home}/{inside}"]).output.decode()
                        got = got.split()[0]
                    else:
                        got = sha256(outside)
                    if got != digest:
                        raise RuntimeError(f"{name}: the copy differs from the file (sha256 {got}, not {digest})")
            for name, copies_of_kind in runs.items():
                seconds = [took for took, _ in copies_of_kind]
                cpu = {who: _lab.median([cost[who] for _, cost in copies_of_kind]) for who in copies_of_kind[0][1]}
                median = _lab.median(seconds)
                result["copy"][name] = {
                    "median_s": median,
                    "mb_per_s": size / 1000**2 / median,
                    "cpu_s": cpu,
                    "seconds": seconds,
                }
            hub.stop_server(user)
    for direction in ("up", "down"):
        scp, cp = result["copy"][f"scp (SFTP protocol), {direction}"], result["copy"][f"docker cp, {direction}"]
        result[f"scp_vs_docker_cp_{direction}"] = cp["mb_per_s"] / scp["mb_per_s"]
        exec_ = result["copy"][f"docker exec (cat), {direction}"]
        result[f"docker_exec_vs_docker_cp_{direction}"] = cp["mb_per_s"] / exec_["mb_per_s"]
    return result


def report(result: dict) -> str:
    login = _lab.Table([f"login (median of {result['rounds']})", "median (s)", "max (s)"])
    for name, figures in result["login"].items():
        login.add(name, _lab.fmt(figures["median_s"]), _lab.fmt(figures["max_s"]))
    copy = _lab.Table(
        [
            f"{result['mb']} MB copy (median of {result['copies']})",
            "seconds",
            "MB/s",
            "CPU s: gateway",
            "dockerd",
            "shim + its exec",
            "client",
        ]
    )
    for name, figures in result["copy"].items():
        cpu = figures["cpu_s"]
        copy.add(
            name,
            _lab.fmt(figures["median_s"]),
            f"{figures['mb_per_s']:.0f}",
            *(f"{cpu[who]:.2f}" for who in ("gateway", "dockerd", "shim", "client")),
        )
    ratios = ", ".join(f"{d}: {result[f'scp_vs_docker_cp_{d}']:.2f}" for d in ("up", "down"))
    floor = ", ".join(f"{d}: {result[f'docker_exec_vs_docker_cp_{d}']:.2f}" for d in ("up", "down"))
    return (
        f"{login.markdown()}\n\n{copy.markdown()}\n\ndocker cp's throughput / scp's (target ≤ 2): {ratios}"
        f"\ndocker cp's throughput / plain docker exec's (no SSH): {floor}"
    )


def main(argv=None) -> dict:
    parser = _report.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="logins of each kind (default 10)")
    parser.add_argument("--mb", type=int, default=100, help="the copied file's size in MB (default 100)")
    parser.add_argument("--copies", type=int, default=3, help="copies of each kind (default 3)")
    args = parser.parse_args(argv)
    run_id = _lab.new_run()
    before = _lab.machine()
    result = run(args.rounds, args.mb, args.copies, run_id)
    return _report.report_table(result, args.json, report, machine=before)


if __name__ == "__main__":
    main()
