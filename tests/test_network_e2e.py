"""Students' servers on the lab network, attacked from inside: what a student's terminal can reach.

A real hub and proxy, the test bed's engine, and the lab network the hub makes as
it starts (``add_lab_network``, a network of this hub's own: ``realhub.e2e_lab``).
Each probe runs inside a student's running server, with ``docker exec`` as the
server's own user, exactly as a terminal in JupyterLab would.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import threading
import time

import pytest

from .realhub import read_testbed, run_command, running_hub, simulated_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)

#: Tries each (address, port) of argv[1] from inside the server: "open", "refused" or "timeout".
PROBE = r"""
import json, socket, sys, urllib.request
found = {}
for address, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((address, port))
        found[f"{address}:{port}"] = "open"
    except ConnectionRefusedError:
        found[f"{address}:{port}"] = "refused"
    except (socket.timeout, TimeoutError):
        found[f"{address}:{port}"] = "timeout"
    except OSError as e:
        found[f"{address}:{port}"] = f"unreachable ({e.strerror})"
    finally:
        s.close()
if len(sys.argv) > 2:
    found["hub_api"] = json.load(urllib.request.urlopen(sys.argv[2], timeout=5))
print(json.dumps(found))
"""


def user(name: str) -> str:
    return f"{name}-{RUN}"


def host_addresses() -> list[str]:
    """Every IPv4 address of the host (its loopback, its interfaces, the lab's gateways)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()})


@contextlib.contextmanager
def host_listener():
    """A service of the host on every address (0.0.0.0): what a careless admin leaves open."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def probe(container, targets, api_url: str | None = None) -> dict:
    command = ["python3", "-c", PROBE, json.dumps(targets)] + ([api_url] if api_url else [])
    result = container.exec_run(command)  # as the image's (the server's) user
    assert result.exit_code == 0, result.output.decode()
    return json.loads(result.output.decode().strip().splitlines()[-1])


def address_of(hub, container) -> str:
    container.reload()
    (network,) = container.attrs["NetworkSettings"]["Networks"].values()
    return network["IPAddress"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    image = read_testbed("image")
    config = f"""
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "CPU", "image": {image!r}, "mem_limit": "512M", "cpu_limit": 1}},
        {{"slug": "pip", "display_name": "With the internet", "image": {image!r}, "mem_limit": "512M",
          "cpu_limit": 1, "internet": True}},
    ]
    c.GPUSpawner.gpus = {simulated_gpus(["GPU-net00000-0000-0000-0000-000000000000"])!r}
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:
        yield h


def test_a_server_reaches_the_hubs_api_and_nothing_else_on_the_host_or_in_the_lab(hub):
    eve, bob = user("eve"), user("bob")
    hub.spawn_all((eve, "cpu"), (bob, "cpu"))  # ready through the proxy: started, reached the hub, answered
    attacker, victim = hub.container(eve), hub.container(bob)
    # The victim's own listener, as a student opens one in a terminal.
    victim.exec_run(["python3", "-m", "http.server", "45678", "--bind", "0.0.0.0"], detach=True)
    victim_ip = address_of(hub, victim)

    with host_listener() as open_port:
        ports = [hub.hub_port, hub.proxy_port, hub.proxy_api_port, open_port]
        addresses = host_addresses()
        assert hub.lab.gateway in addresses
        targets = [(a, p) for a in addresses for p in ports] + [(victim_ip, 8888), (victim_ip, 45678)]
        found = probe(attacker, targets, f"http://{hub.lab.gateway}:{hub.hub_port}/hub/api/")

        # The hub's API answers, on the lab's gateway only.
        assert found.pop("hub_api")["version"]
        assert found.pop(f"{hub.lab.gateway}:{hub.hub_port}") == "open"
        # Nothing else: not the proxy's API or its public port, not a service on 0.0.0.0, not the
        # hub's API on another address, not another student's server or listener. Each is refused
        # at once (the rules answer with a reset), none waits out a timeout.
        assert set(found.values()) == {"refused"}, {k: v for k, v in found.items() if v != "refused"}
        assert len(found) == len(targets) - 1

        # The host itself reaches the listener it runs (the rules are the lab's, not the host's).
        with socket.create_connection((hub.lab.gateway, open_port), timeout=3):
            pass

    # The victim's listener is on no host address: only in its own namespace.
    for address in addresses:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, 45678), timeout=3).close()


def test_ports_held_in_one_server_touch_nobody_else(hub):
    """Port exhaustion or a squatted port stays inside the squatter's namespace."""
    mallory, ann = user("mallory"), user("ann")
    hub.spawn(mallory, "cpu")
    squat = (
        "import socket, time\n"
        "held = []\n"
        "for port in range(8889, 9389):\n"
        "    s = socket.socket(); s.bind(('0.0.0.0', port)); s.listen(); held.append(s)\n"
        "open('/tmp/squatting', 'w').write(str(len(held)))\n"
        "time.sleep(600)\n"
    )
    squatter = hub.container(mallory)
    squatter.exec_run(["python3", "-c", squat], detach=True)
    wait = squatter.exec_run(
        ["sh", "-c", "for i in $(seq 50); do [ -s /tmp/squatting ] && break; sleep 0.1; done; cat /tmp/squatting"]
    )
    assert wait.output.decode().strip() == "500"
    model = hub.spawn(ann, "cpu")  # on the same fixed port as everyone, in its own namespace
    assert model["ready"]
    assert hub.container(ann).attrs["Config"]["ExposedPorts"] == {"8888/tcp": {}}


def test_the_command_checks_removes_and_reinstalls_the_rules_and_they_are_what_closes_the_lab(hub):
    from gpuspawner.lab_network import check_rules, remove_rules

    config = str(hub.workdir / "jupyterhub_config.py")
    sam = user("sam")
    hub.spawn(sam, "cpu")
    server = hub.container(sam)
    with host_listener() as open_port:
        target = [(hub.lab.gateway, open_port)]
        assert check_rules(hub.lab) == []
        done, _ = run_command(hub.workdir, ["network", "-f", config])
        assert done.returncode == 0 and f"servers run on {hub.lab.name!r}" in done.stdout, done.stdout + done.stderr
        # Taken away (as by a host firewall reload), the host's own service answers the student ...
        remove_rules(hub.lab)
        assert probe(server, target) == {f"{hub.lab.gateway}:{open_port}": "open"}
        done, _ = run_command(hub.workdir, ["network", "-f", config])
        assert done.returncode == 1 and f"GPUSPAWNER-{hub.lab.interface}-IN" in done.stdout, done.stdout
        # ... until an admin puts them back (the hub does at every start).
        done, _ = run_command(hub.workdir, ["network", "up", "-f", config])
        assert done.returncode == 0, done.stdout + done.stderr
        assert probe(server, target) == {f"{hub.lab.gateway}:{open_port}": "refused"}
        assert check_rules(hub.lab) == []
    # Never taken down under a running server.
    done, _ = run_command(hub.workdir, ["network", "down", "-f", config])
    assert done.returncode == 1 and "servers still use the lab network" in done.stderr, done.stderr


@contextlib.contextmanager
def outside(k: int):
    """ "The internet": a network namespace of the test's own behind a veth, answering TCP on port 80,
    with the host forwarding IPv4 meanwhile (as Docker's engines set it where they manage iptables)."""
    ns, host_end, ns_end = f"gse-out-{RUN}", f"gseo{k}h", f"gseo{k}n"
    address = f"10.216.{k}.2"

    def sh(*command, check=True):
        return subprocess.run(command, check=check, capture_output=True, text=True)

    forward = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    sh("ip", "netns", "add", ns)
    listener = None
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", f"10.216.{k}.1/30", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/30", "dev", ns_end)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up")
        serve = (
            "import socket; s = socket.create_server(('0.0.0.0', 80)); [s.accept()[0].close() for _ in iter(int, 1)]"
        )
        listener = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", serve])
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        for _ in range(50):  # the listener is up when the host reaches it
            if sh("ip", "netns", "exec", ns, "ss", "-ltn", "sport", "= :80", check=False).stdout.count(":80") > 0:
                break
            time.sleep(0.1)
        yield address
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(forward)
        if listener is not None:
            listener.kill()
            listener.wait()
        sh("ip", "link", "del", host_end, check=False)
        sh("ip", "netns", "del", ns, check=False)


def test_only_an_internet_profile_reaches_outside_the_host(hub):
    closed, open_ = user("exam"), user("pip")
    hub.spawn_all((closed, "cpu"), (open_, "pip"))
    exam, pip = hub.container(closed), hub.container(open_)
    pip.reload()
    assert list(pip.attrs["NetworkSettings"]["Networks"]) == [hub.lab.internet_name]
    exam_ip = address_of(hub, exam)
    k = int(hub.lab.subnet.split(".")[2])
    with outside(k) as address:
        assert probe(pip, [(address, 80), (exam_ip, 8888)]) == {f"{address}:80": "open", f"{exam_ip}:8888": "refused"}
        assert probe(exam, [(address, 80)]) == {f"{address}:80": "refused"}
        # The hub's API, from the internet network too.
        found = probe(pip, [], f"http://{hub.lab.gateway}:{hub.hub_port}/hub/api/")
        assert found["hub_api"]["version"]
