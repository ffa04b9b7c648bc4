# gpuspawner: the runnable default configuration.
#
# `bash deploy/demo.sh` runs this file: a hub at http://127.0.0.1:8000 with a
# demo login, a CPU profile and a GPU profile. It reads like the config of a
# small course lab; copy it and change what your lab needs.
#
# Every GPUSpawner option is listed in docs/reference/config.md and by
# `python -m jupyterhub --help-all | grep -A3 GPUSpawner`.

import os

from gpuspawner.gpus.nvml import NVMLUnavailable, read_gpus_as_config

c = get_config()  # noqa: F821 (injected by jupyterhub)

# --- The hub -----------------------------------------------------------------
# Loopback only: put a TLS-terminating proxy in front for a real class.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = 8000

# --- The students' network -----------------------------------------------------
# Each server in its own network namespace on the lab network (10.213.0.0/24 on the
# bridge gpulab0), reaching the hub's API on the gateway and nothing else on the host
# or in the lab: not the proxy's API, the dashboard, another student's server or any
# other port. Made when the hub starts (it sets c.JupyterHub.hub_ip); see
# docs/topic/security.md. A profile with "internet": True may also reach outside.
from gpuspawner.lab_network import add_lab_network  # noqa: E402

c.JupyterHub.hub_port = 8081
add_lab_network(c)

# Students keep working while the hub restarts (an upgrade, a config change):
# their servers are left running and their GPU assignments are re-read from Docker.
c.JupyterHub.cleanup_servers = False

# --- Who may log in (demo) ---------------------------------------------------
# DEMO ONLY: any user name with this shared password. A lab uses its
# university login instead (oauthenticator, ldapauthenticator, ...).
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("GPUSPAWNER_DEMO_PASSWORD", "gpu-lab-demo")
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

# --- The spawner ---------------------------------------------------------------
# "gpu" is gpuspawner.GPUSpawner, a DockerSpawner: its options work here too.
c.JupyterHub.spawner_class = "gpu"

# The class image: a pinned tag, never `latest`. The demo builds one locally
# (deploy/testbed/testbed.sh image) and passes its name in GPUSPAWNER_DEMO_IMAGE.
image = os.environ.get("GPUSPAWNER_DEMO_IMAGE", "gpuspawner-lab:demo")

# The GPUs students may be given. Real NVIDIA GPUs (and MIG instances) when a
# driver answers; otherwise a SIMULATED inventory, so the demo runs on any
# machine (with the test bed's stand-in for the NVIDIA hook, containers get the
# ids, not a GPU). On a GPU server, `c.GPUSpawner.gpus = "nvml"` is all you need.
try:
    gpus = read_gpus_as_config()
    inventory_note = f"{len(gpus)} real NVIDIA GPU(s) or MIG instance(s)"
except NVMLUnavailable:
    gpus = [
        {
            "index": i,
            "uuid": f"GPU-51a11a7e-0000-4000-8000-00000000000{i}",
            "name": "simulated GPU",  # the cards say "3 of 4 simulated GPUs free now"
            "memory": "16G",
        }
        for i in range(4)
    ]
    inventory_note = "SIMULATED inventory of 4 GPUs: no NVIDIA driver answered"
c.GPUSpawner.gpus = gpus

# Course profiles: the first is the default when a student chooses none.
c.GPUSpawner.profiles = [
    {
        "slug": "cpu",
        "display_name": "Python (CPU only)",
        "description": "For notebooks that need no GPU: data wrangling, plotting, homework.",
        "image": image,
        "gpus": 0,
        "mem_limit": "2G",
        "cpu_limit": 1,
    },
    {
        "slug": "gpu",
        "display_name": "Deep learning (1 GPU)",
        "description": f"One whole GPU for you alone ({inventory_note}).",
        "image": image,
        "gpus": 1,
        "mem_limit": "4G",
        "cpu_limit": 2,
        # PyTorch DataLoader workers pass batches through /dev/shm (Docker's default is 64M).
        "shm_size": "1G",
    },
    {
        "slug": "shared",
        "display_name": "Small experiments (shared GPU)",
        "description": "A GPU shared with up to 3 classmates: no memory or fault isolation.",
        "image": image,
        "shared_gpu": True,
        "mem_limit": "2G",
        "cpu_limit": 1,
        "shm_size": "512M",
    },
    # A course's own profile: only its group (and admins) see it, with its
    # datasets read-only at ~/datasets/<name> and a share its teachers can write:
    # {"slug": "ml101", "display_name": "ML101 - PyTorch (1 GPU)", "image": image,
    #  "gpus": 1, "groups": ["ml101", "ml101-teachers"], "default": True,
    #  "environment": {"COURSE": "ml101"},
    #  "datasets": [{"name": "mnist", "source": "/srv/datasets/mnist"}],
    #  "shares": [{"name": "ml101", "source": "/srv/courses/ml101", "writable_by": ["ml101-teachers"]}]},
    # A MIG slice, where the server has MIG-mode GPUs (isolated memory and faults):
    # {"slug": "slice", "display_name": "ML101 (A100 slice)", "image": image,
    #  "gpus": 1, "mig_profile": "1g.10gb", "mem_limit": "4G", "cpu_limit": 2},
]
# Where datasets and shares may come from (default: nowhere). Whoever edits the profiles
# can mount only folders under these roots, and volumes matching these names:
# c.GPUSpawner.mount_roots = ["/srv/datasets", "/srv/courses"]
# c.GPUSpawner.mount_volumes = ["course-*"]

# --- Fair use ------------------------------------------------------------------
# Shared GPUs: up to 4 servers on one GPU, time-sliced. Only MIG isolates memory.
c.GPUSpawner.shared_gpu_users = 4
# "pack" fills GPUs already in use first, keeping idle ones free for whole-GPU work.
c.GPUSpawner.placement = "pack"
# At most one GPU per student at a time, across all their servers (admins exempt).
c.GPUSpawner.max_gpus_per_user = 1
# A course's cap, for the members of a JupyterHub group:
# c.GPUSpawner.group_gpu_quotas = {"ml101": 4}
c.JupyterHub.allow_named_servers = True
# At most 2 named servers per student besides their default one: a script cannot start
# hundreds. JupyterHub counts stopped named servers too; a student deletes one on the home page.
c.JupyterHub.named_server_limit_per_user = 2
# CPUs and memory across all of a student's servers, each counting its profile's limits:
# the GPU profile (2 CPUs, 4G) and two small servers fit, nothing more (admins exempt).
c.GPUSpawner.max_cpus_per_user = 4
c.GPUSpawner.max_memory_per_user = "8G"
# A course's cap on CPUs and memory: c.GPUSpawner.group_memory_quotas = {"ml101": "64G"}
# A profile without mem_limit or cpu_limit gets the hub-wide c.GPUSpawner.mem_limit ("4G")
# and cpu_limit (2) by default: no server is unlimited.

# Profiles may instead live in a YAML file that teachers edit; a change takes
# effect on the next spawn, and a broken edit keeps the last good profiles:
# c.GPUSpawner.profiles_file = "/srv/jupyterhub/profiles.yaml"

# Each student's files live in a Docker volume that outlives their servers.
c.GPUSpawner.home_volume_name = "jupyterhub-user-{username}"

# Server start-up is CPU-bound on small hosts: give it time.
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# --- The GPU dashboard: who holds which GPU (a hub-managed service) -----------------
# In the hub's Services menu, at /services/gpu-dashboard/, for the admins above; JSON
# at api/v1/gpus and Prometheus metrics at /metrics. It reads this same file (-f).
# Teachers may see their own groups' GPUs: add teacher_groups=["teachers"].
from gpuspawner import services  # noqa: E402

services.add_dashboard(c, __file__)

# --- GPU culling: free GPUs left idle (a hub-managed service) ----------------------
# A GPU server whose GPUs stay idle 30 minutes is stopped (not if its student was
# active in Jupyter in the last 10), and none runs longer than 8 hours; the home
# volume is kept and the next spawn page says why. A profile may set its own
# gpu_idle_timeout / max_runtime / jupyter_activity_grace. Usage comes from NVML:
# with the SIMULATED inventory nothing reads as idle, and only max_runtime applies.
c.GPUSpawner.gpu_idle_timeout = "30m"
c.GPUSpawner.max_runtime = "8h"
c.GPUSpawner.jupyter_activity_grace = "10m"
services.add_culler(c, __file__)

# --- SSH into one's own server (a hub-managed service) -------------------------------
# ssh -p 2222 USER@this-host: a shell, scp, sftp and -L forwards in the user's own server,
# logged in with a token of theirs as the password or a key registered on the page in the
# Services menu (docs/how-to/ssh.md). Uncomment to try it:
# services.add_ssh_gateway(c, __file__, port=2222)

# --- Last: check it all now -----------------------------------------------------
# The hub refuses to start on a broken profile or GPU list, naming the profile
# and the field, instead of a student meeting it; missing images start pulling.
from gpuspawner import check_config  # noqa: E402

check_config(c)
