# gpuspawner: an example jupyterhub_config.py for a course lab on one GPU server.
#
# Two courses share a server with four GPUs: ML101 (PyTorch, one whole GPU each,
# at most 3 GPUs for the course at once) and CV201 (a slot on a shared GPU, or a
# MIG slice on an A100 if the server has one). Students log in with the
# university's single sign-on; their course groups come from it.
#
# Install it where deploy/hub/compose.yaml reads it, with the teachers' profiles file:
#   cp deploy/hub/jupyterhub_config.py deploy/hub/profiles.yaml /etc/jupyterhub/
# fill in the block below, start the hub, and check the whole set-up in its container:
#   docker compose exec hub gpuspawner doctor
#
# Every GPUSpawner option is in the configuration reference (docs/reference/config.md).

import os

from gpuspawner import check_config, services
from gpuspawner.lab_network import add_lab_network

c = get_config()  # noqa: F821 (injected by jupyterhub)

# --- Fill in: your site ------------------------------------------------------------
# What every site changes is here, and only here; the rest is the lab's policy (courses,
# quotas, culling), to adapt when you like. Secrets go in /etc/jupyterhub/hub.env.
PUBLIC_URL = "https://gpu-lab.example.edu"  # what students type; the name on the certificate
LISTEN_IP = ""  # the proxy's address: "" for all of this host's addresses
PORTS = {"https": 443, "hub_api": 8081, "proxy_api": 8001, "dashboard": 10101}  # this host's ports the hub uses
# The certificate (fullchain.pem, privkey.pem: copies, not links), or None behind a TLS-terminating
# reverse proxy, which then forwards to 127.0.0.1:8000 (docs/tutorials/admin.md, "HTTPS").
TLS = "/etc/jupyterhub/tls"
# The university's OpenID Connect provider (Keycloak's layout here); the client's id and
# secret are OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET in hub.env.
SSO_AUTHORIZE_URL = "https://sso.example.edu/realms/uni/protocol/openid-connect/auth"
SSO_TOKEN_URL = "https://sso.example.edu/realms/uni/protocol/openid-connect/token"
SSO_USERINFO_URL = "https://sso.example.edu/realms/uni/protocol/openid-connect/userinfo"
# The host's GPUs: "nvml" reads them as the hub starts (compose.yaml gives the hub's container
# the driver's utility libraries for that), or list them:
#   [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA L40S", "memory": "48G"}, ...]
# (`nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv`).
GPUS = "nvml"
# The students' network: change the subnets if these are in use on campus.
LAB_NETWORK = {"subnet": "10.213.0.0/24", "internet_subnet": "10.213.1.0/24"}
# Host folders the profiles mount: datasets (read-only for all) and course shares.
DATASETS = "/srv/datasets"
COURSES = "/srv/courses"
# The class images, built and checked by the teachers (`gpuspawner image build`), pinned,
# pulled before class (`gpuspawner prepull`).
ML101_IMAGE = "registry.example.edu/ml101-cuda:2026.1"
CV201_IMAGE = "registry.example.edu/cv201-cuda:2026.1"
CPU_IMAGE = "registry.example.edu/python-cpu:2026.1"
# --- End of what to fill in ------------------------------------------------------------

# --- The hub ----------------------------------------------------------------------
# Where the hub keeps its state: the volume of the compose file (back it up).
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PORTS['proxy_api']}"

# HTTPS. With TLS set, the hub's proxy terminates TLS itself; the hub refuses to start if
# the certificate or key cannot be read (never plain HTTP instead). Without it, the proxy
# listens on loopback only, for a TLS-terminating reverse proxy on the same host.
if TLS:
    c.JupyterHub.ip = LISTEN_IP
    c.JupyterHub.port = PORTS["https"]
    c.JupyterHub.ssl_cert = f"{TLS}/fullchain.pem"
    c.JupyterHub.ssl_key = f"{TLS}/privkey.pem"
else:
    c.JupyterHub.ip = "127.0.0.1"
    c.JupyterHub.port = 8000

# --- Per-user subdomains (recommended) ---------------------------------------------------
# Each student's server on its own origin (https://alice.gpu-lab.example.edu/user/alice/):
# one student's cookies and JavaScript then cannot act on another's server or on the hub.
# Needs a wildcard DNS record (*.gpu-lab.example.edu -> this host) and a certificate in
# /etc/jupyterhub/tls for both names, which Let's Encrypt issues through a DNS challenge:
#   certbot certonly --dns-<provider> -d gpu-lab.example.edu -d '*.gpu-lab.example.edu'
# The GPU dashboard then is at https://gpu-dashboard--service.gpu-lab.example.edu/services/gpu-dashboard/
# `gpuspawner doctor` checks the certificate. See docs/how-to/subdomains.md.
# c.JupyterHub.subdomain_host = "https://gpu-lab.example.edu"

# --- The students' network ---------------------------------------------------------
# Each server in its own network namespace on the lab network (10.213.0.0/24 on the
# bridge gpulab0): it reaches the hub's API on the network's gateway (this call sets
# c.JupyterHub.hub_ip) and nothing else, not the proxy's API, the dashboard, another
# student's server or any other port of this host. The hub makes the networks and
# installs its iptables rules as it starts (compose.yaml gives it NET_ADMIN for that);
# `gpuspawner doctor` checks them. The subnets are LAB_NETWORK's, above. A course database
# every server may reach: add_lab_network(c, **LAB_NETWORK, allow=["10.0.5.20:5432"]).
# See docs/topic/security.md.
c.JupyterHub.hub_port = PORTS["hub_api"]
add_lab_network(c, **LAB_NETWORK)

# Students keep working while the hub restarts (an upgrade, a config change):
# their servers are left running and their GPU assignments are re-read from Docker.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True

# --- Who may log in: the university's single sign-on (OpenID Connect) ---------------
# Register the hub with the identity provider (Keycloak, Entra ID, Shibboleth's
# OIDC, ...) with the callback URL below; pass the client's id and secret in the
# environment (compose.yaml: an env_file), never in this file.
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.login_service = "university login"  # the button: "Sign in with university login"
c.GenericOAuthenticator.oauth_callback_url = f"{PUBLIC_URL}/hub/oauth_callback"
c.GenericOAuthenticator.client_id = os.environ.get("OAUTH_CLIENT_ID", "")
c.GenericOAuthenticator.client_secret = os.environ.get("OAUTH_CLIENT_SECRET", "")
c.GenericOAuthenticator.authorize_url = SSO_AUTHORIZE_URL
c.GenericOAuthenticator.token_url = SSO_TOKEN_URL
c.GenericOAuthenticator.userdata_url = SSO_USERINFO_URL
c.GenericOAuthenticator.scope = ["openid", "profile", "groups"]
c.GenericOAuthenticator.username_claim = "preferred_username"
# The course groups come from the provider's "groups" claim (in its userinfo answer; in
# Keycloak, a "Group Membership" mapper with "Full group path" off), and JupyterHub's groups
# follow it at every login: enrolment is managed in one place. Its values must be the
# groups named here and in the profiles.
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
c.GenericOAuthenticator.allowed_groups = {"ml101", "ml101-teachers", "cv201", "cv201-teachers"}
c.GenericOAuthenticator.admin_groups = {"gpu-lab-admins"}
#
# From the learning platform instead (Moodle, Canvas, ...), with LTI 1.3:
#   c.JupyterHub.authenticator_class = "ltiauthenticator.lti13.authenticator.LTI13Authenticator"
#   (HUB_PACKAGES="ltiauthenticator==<pinned>" when building the image)
# Or the hub's own accounts, with an admin approving sign-ups (nativeauthenticator),
# and the course groups listed here:
#   c.JupyterHub.authenticator_class = "native"
#   c.JupyterHub.load_groups = {"ml101": {"users": ["alice", "bob"]}, "ml101-teachers": {"users": ["carol"]}}

# --- The spawner -------------------------------------------------------------------
c.JupyterHub.spawner_class = "gpu"

# The host's GPUs (and MIG instances): GPUS, above.
c.GPUSpawner.gpus = GPUS

# Each student's files: a Docker volume that outlives their servers (back it up).
c.GPUSpawner.home_volume_name = "jupyterhub-user-{username}"
# A size limit on each home (a profile may set its own "home_quota"): homes become btrfs subvolumes
# under homes_root, a btrfs filesystem with quotas on; the hub refuses to start if it cannot enforce
# it. Mount it into the hub in compose.yaml (docs/how-to/homes.md, "Disk quotas").
#   c.GPUSpawner.homes_root = "/srv/homes"
#   c.GPUSpawner.home_quota = "10G"
# The writable layer of each server (needs the engine on XFS with pquota, or btrfs):
#   c.GPUSpawner.container_quota = "20G"

# Course profiles. Each course's students see their own (admins see all); the
# datasets are host folders mounted read-only at ~/datasets/<name>, the shares
# at ~/shared/<name>, writable by the course's teachers only.
c.GPUSpawner.profiles = [
    {
        "slug": "cpu",
        "display_name": "Python (CPU only)",
        "description": "Homework, plotting, data wrangling: no GPU.",
        "image": CPU_IMAGE,
        "mem_limit": "4G",
        "cpu_limit": 2,
    },
    {
        "slug": "ml101-gpu",
        "display_name": "ML101 - PyTorch 2.5, 1 GPU",
        "description": "A whole GPU for you alone, with the ML101 datasets.",
        "image": ML101_IMAGE,
        "groups": ["ml101", "ml101-teachers"],
        "default": True,
        "gpus": 1,
        "mem_limit": "16G",
        "cpu_limit": 4,
        "shm_size": "2G",  # PyTorch DataLoader workers (Docker's default is 64M)
        "environment": {"COURSE": "ml101"},
        "datasets": [
            {"name": "mnist", "source": f"{DATASETS}/mnist"},
            {"name": "cifar10", "source": f"{DATASETS}/cifar10"},
        ],
        "shares": [{"name": "ml101", "source": f"{COURSES}/ml101", "writable_by": ["ml101-teachers"]}],
        # Lab sessions are long; the GPU is freed sooner when left idle.
        "max_runtime": "6h",
    },
    {
        "slug": "cv201-shared",
        "display_name": "CV201 - small experiments (shared GPU)",
        "description": "A slot on a GPU shared with up to 3 classmates: no memory or fault isolation.",
        "image": CV201_IMAGE,
        "groups": ["cv201", "cv201-teachers"],
        "shared_gpu": True,
        "mem_limit": "8G",
        "cpu_limit": 2,
        "shm_size": "1G",
        "datasets": [{"name": "coco-val", "source": f"{DATASETS}/coco-val"}],
        "shares": [{"name": "cv201", "source": f"{COURSES}/cv201", "writable_by": ["cv201-teachers"]}],
    },
    # On an A100/H100 in MIG mode: an isolated slice (memory and faults) per student.
    # {"slug": "cv201-mig", "display_name": "CV201 - A100 slice", "image": CV201_IMAGE,
    #  "groups": ["cv201", "cv201-teachers"], "gpus": 1, "mig_profile": "1g.10gb",
    #  "mem_limit": "8G", "cpu_limit": 2, "shm_size": "1G"},
]
# More profiles, which teachers edit without a hub restart: the hub re-reads this file when it
# changes (a broken edit keeps the last good profiles). It may not ask for more than the
# admin allows: mounts under mount_roots, at most profiles_file_max_gpus GPUs (1), never
# allow_root or internet. The example, deploy/hub/profiles.yaml, lists none yet.
c.GPUSpawner.profiles_file = "/etc/jupyterhub/profiles.yaml"
# What a profile may mount as a dataset or share, whoever edits the profiles: only host
# folders under these (the profiles above use them), never /, the Docker socket or hub-data.
c.GPUSpawner.mount_roots = [DATASETS, COURSES]
# Docker volumes by name or pattern; none here.
c.GPUSpawner.mount_volumes = []

# --- Fair use: quotas ----------------------------------------------------------------
c.GPUSpawner.max_gpus_per_user = 1  # across all of a student's servers
c.GPUSpawner.group_gpu_quotas = {"ml101": 3, "cv201": 1}  # a course's cap (a shared slot counts 1/4)
c.GPUSpawner.shared_gpu_users = 4
c.GPUSpawner.placement = "pack"  # keep whole GPUs free for whole-GPU profiles
# At most 2 named servers per student besides the default one, so that no script starts
# hundreds (JupyterHub counts stopped named servers too: delete one on the home page).
c.JupyterHub.named_server_limit_per_user = 2
# CPUs and memory across all of a student's servers, each counting its profile's limits:
# an ML101 GPU server (4 CPUs, 16G) and a CPU notebook (2 CPUs, 4G) fit, a third does not.
c.GPUSpawner.max_cpus_per_user = 6
c.GPUSpawner.max_memory_per_user = "20G"
# A course's cap on CPUs and memory, if you want one (size it to the host, less what the hub needs):
#   c.GPUSpawner.group_cpu_quotas = {"ml101": 48, "cv201": 16}
#   c.GPUSpawner.group_memory_quotas = {"ml101": "192G", "cv201": "64G"}
# Limits of a profile that sets none (these are the defaults): no server is unlimited.
c.GPUSpawner.mem_limit = "4G"
c.GPUSpawner.cpu_limit = 2

# Server start-up of a large image takes time on a busy host.
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120

# --- The GPU dashboard: who holds which GPU (a hub-managed service) -------------------
# At /services/gpu-dashboard/ (with per-user subdomains: on its own host,
# gpu-dashboard--service.<domain>) for admins, and for teachers about their own groups: a
# teacher in the groups ml101 and ml101-teachers sees the GPUs of ML101's students.
# It reads this file (-f) and the hub's Docker settings (DOCKER_HOST, TLS).
services.add_dashboard(
    c,
    __file__,
    url=f"http://127.0.0.1:{PORTS['dashboard']}",
    admin_groups=["gpu-lab-admins"],
    teacher_groups=["ml101-teachers", "cv201-teachers"],
)

# --- Culling ---------------------------------------------------------------------------
# GPU-aware culling: per-profile keys gpu_idle_timeout / max_runtime / jupyter_activity_grace override these
c.GPUSpawner.gpu_idle_timeout = "30m"  # stop a server whose GPUs stayed idle that long
c.GPUSpawner.max_runtime = "4h"  # stop a GPU server after this long, whatever it does
c.GPUSpawner.jupyter_activity_grace = "10m"  # not stopped for GPU idleness if active in Jupyter this recently
services.add_culler(c, __file__)

# --- SSH: a terminal, scp, sftp and VS Code Remote-SSH into one's own server ----------------
# The SSH gateway, a hub-managed service: `ssh -p 2222 alice@gpu-lab.example.edu` lands in the
# student's own server (started with their default profile when none runs; alice+ml101-gpu@...
# names another), as the image's user, with its GPU and home. They log in with a token of theirs
# (the hub's Token page) as the password, or with a key registered on the gateway's page, in the
# Services menu. Port forwarding (-L) reaches ports inside their own server only. It keeps its
# host key and the registered keys in the hub's folder (hub-data: back them up). Class images
# need sftp-server for scp and sftp (`gpuspawner image build --sftp`; `image check` says so).
# To turn it on: add "ssh": 2222 and "ssh_page": 10102 to PORTS above, open the SSH port in the
# host's firewall, and uncomment (docs/how-to/ssh.md):
# services.add_ssh_gateway(c, __file__, port=PORTS["ssh"], url=f"http://127.0.0.1:{PORTS['ssh_page']}")

# --- Last: check it all now --------------------------------------------------------------
# The hub refuses to start on a broken profile or GPU list, naming the profile and
# the field; missing images start pulling.
check_config(c)
