"""The command's look inside an image: one short container run, and what it reports.

Every container started here has no network and no GPU (``NVIDIA_VISIBLE_DEVICES=void``),
drops all capabilities, carries the label ``gpuspawner.cli``, and is removed
whatever happens. Its output is parsed into ``ImageFacts`` (``parse_probe_output``,
pure), which the checks of ``image check``, ``image build`` and ``doctor`` judge.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field

import docker
import docker.errors
import docker.types
import requests

from ..images import split_reference
from ..ssh.policy import SFTP_SERVER_PATHS

#: The label on the command's own short-lived containers (never a server's).
CLI_LABEL = "gpuspawner.cli"

# Run by /bin/sh as the image's user: who, where, which python runs jupyterhub-singleuser,
# which CUDA is in the image; then that python for the rest (PROBE_PY). Output: key=value lines.
PROBE_SH = r"""
say() { printf '%s=%s\n' "$1" "$2"; }
say uid "$(id -u 2>/dev/null)"
say user "$(id -un 2>/dev/null)"
say home "$HOME"
if [ -n "$HOME" ] && [ -d "$HOME" ] && [ -w "$HOME" ]; then say home_writable 1; else say home_writable 0; fi
su=$(command -v jupyterhub-singleuser 2>/dev/null || true)
say singleuser "$su"
py=""
if [ -n "$su" ]; then
    first=$(head -n 1 "$su" 2>/dev/null || true)
    case "$first" in "#!"*python*) py=${first#??} ;; esac
fi
[ -n "$py" ] || py=$(command -v python3 2>/dev/null || command -v python 2>/dev/null || true)
nvcc=$(command -v nvcc 2>/dev/null || true)
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [ -n "$nvcc" ]; then
    say nvcc "$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n 1)"
fi
for p in SFTP_SERVER_PATHS; do if [ -x "$p" ]; then say sftp_server "$p"; break; fi; done
for m in apt-get dnf microdnf yum apk; do if command -v "$m" >/dev/null 2>&1; then say package_manager "$m"; break; fi; done
find / -xdev -name 'libcudart.so.*' 2>/dev/null | head -n 20 | while read -r f; do say libcudart "${f##*/}"; done
# $py unquoted: a "#!/usr/bin/env python3" line gives two words.
if [ -n "$py" ]; then $py -c "$GPUSPAWNER_PROBE_PY"; fi
""".replace("SFTP_SERVER_PATHS", " ".join(SFTP_SERVER_PATHS))

# Any Python 3 in the image; frameworks are imported each in a process of its own,
# so one that crashes (two CUDA copies: a segfault) is named and the rest still run.
PROBE_PY = r"""
import importlib.util, json, os, subprocess, sys, time
start = time.time()
budget = float(os.environ.get("GPUSPAWNER_PROBE_TIMEOUT", "60"))
facts = {"python": sys.executable, "python_version": "%d.%d.%d" % tuple(sys.version_info[:3])}
try:
    import jupyterhub
    facts["jupyterhub"] = jupyterhub.__version__
except Exception as e:
    facts["jupyterhub_error"] = "%s: %s" % (type(e).__name__, e)
def version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return ""
for dist in ("jupyter_server", "jupyterlab", "notebook"):
    facts[dist] = version(dist)
print("python=" + json.dumps(facts), flush=True)
CODE = {
    "torch": "import torch; v = torch.__version__; c = torch.version.cuda or ''",
    "tensorflow": "import tensorflow as tf; b = tf.sysconfig.get_build_info(); v = tf.__version__;"
    " c = b.get('cuda_version', '') if b.get('is_cuda_build') else ''",
    "jax": "import jax, importlib.util; v = jax.__version__;"
    " c = next((m for m in ('13', '12', '11') if importlib.util.find_spec('jax_cuda%s_plugin' % m)), '')",
}
for name, code in CODE.items():
    if importlib.util.find_spec(name) is None:
        continue
    out = {"name": name}
    left = max(1.0, budget - (time.time() - start) - 2)
    try:
        r = subprocess.run([sys.executable, "-c", code + "; import json; print(json.dumps([str(v), str(c)]))"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=left)
        lines = [l for l in r.stdout.decode(errors="replace").splitlines() if l.startswith("[")]
        if r.returncode == 0 and lines:
            out["version"], out["cuda"] = json.loads(lines[-1])
        elif r.returncode < 0:
            out["error"] = "the import crashed (signal %d)" % -r.returncode
        else:
            err = [l for l in r.stderr.decode(errors="replace").splitlines() if l.strip()]
            out["error"] = err[-1].strip() if err else "exit status %d" % r.returncode
    except subprocess.TimeoutExpired:
        out["error"] = "the import took longer than %.0f s" % left
    print("framework=" + json.dumps(out), flush=True)
"""


#: The frameworks whose versions ``image check`` reports, when installed in the image.
FRAMEWORKS = ("torch", "tensorflow", "jax")


@dataclass(frozen=True)
class Framework:
    """A deep-learning framework found in the image: its version and the CUDA it was built for."""

    name: str
    version: str = ""
    cuda: str = ""  # "" for a CPU-only build (or when it cannot say)
    error: str = ""  # installed, but ``import`` failed: the last line of the error


@dataclass(frozen=True)
class ImageFacts:
    """What ``image check`` learnt about one image: from ``inspect_image`` and one probe run."""

    image: str
    size: int = 0  # bytes, as the engine reports it
    config: dict = field(default_factory=dict, hash=False)  # inspect_image()["Config"]
    probe_error: str = ""  # the probe did not run (or not to the end): why
    uid: int | None = None
    user: str = ""
    home: str = ""
    home_writable: bool | None = None
    singleuser: str = ""  # path of jupyterhub-singleuser, '' when not on PATH
    python: str = ""  # the interpreter that runs jupyterhub-singleuser (else python3 on PATH)
    python_version: str = ""
    jupyterhub: str = ""  # the version ``import jupyterhub`` gives
    jupyterhub_error: str = ""
    jupyter_server: str = ""
    jupyterlab: str = ""
    notebook: str = ""
    libcudart: tuple[str, ...] = ()  # CUDA runtime versions from libcudart.so.<version> files
    nvcc: str = ""  # "12.4" from nvcc --version
    frameworks: tuple[Framework, ...] = ()  # only those installed
    sftp_server: str = ""  # OpenSSH's sftp-server, which scp and sftp over the SSH gateway run; '' when none
    package_manager: str = ""  # apt-get, dnf, microdnf, yum or apk: what `image build --sftp` installs with


_PROBE_LINE = re.compile(r"^([a-z_]+)=(.*)$")


def parse_probe_output(image: str, text: str, size: int = 0, config: dict | None = None) -> ImageFacts:
    """Facts from the probe's stdout: ``key=value`` lines, ``python=<json>`` and ``framework=<json>``.

    Unknown lines are ignored (an image's shell profile may print things).
    """
    values: dict = {"libcudart": [], "frameworks": []}
    for line in text.splitlines():
        m = _PROBE_LINE.match(line.strip())
        if not m:
            continue
        key, value = m.groups()
        if key == "libcudart":
            version = value.split(".so.", 1)[1] if ".so." in value else ""
            if version and version not in values["libcudart"]:
                values["libcudart"].append(version)
        elif key in ("python", "framework"):
            try:
                data = json.loads(value)
            except ValueError:
                continue
            if key == "python" and isinstance(data, dict):
                for name in (
                    "python",
                    "python_version",
                    "jupyterhub",
                    "jupyterhub_error",
                    "jupyter_server",
                    "jupyterlab",
                    "notebook",
                ):
                    values[name] = str(data.get(name) or "")
            elif isinstance(data, dict) and data.get("name"):
                values["frameworks"].append(
                    Framework(
                        str(data["name"]),
                        str(data.get("version") or ""),
                        str(data.get("cuda") or ""),
                        str(data.get("error") or ""),
                    )
                )
        elif key == "uid":
            values["uid"] = int(value) if value.isdigit() else None
        elif key == "home_writable":
            values["home_writable"] = value == "1"
        elif key in ("user", "home", "singleuser", "nvcc", "sftp_server", "package_manager"):
            values[key] = value.strip()
    values["libcudart"] = tuple(values["libcudart"])
    values["frameworks"] = tuple(values["frameworks"])
    return ImageFacts(image=image, size=size, config=config or {}, **values)


def run_probe(client: docker.APIClient, image: str, timeout: float = 60) -> ImageFacts:
    """Run the probe in ``image`` (present on the engine) and return what it found.

    Raises ``docker.errors.ImageNotFound`` when the image is not on the engine.
    """
    inspect = client.inspect_image(image)
    size, config = int(inspect.get("Size") or 0), inspect.get("Config") or {}
    host_config = client.create_host_config(
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=512,
        mem_limit="4g",
    )
    container = client.create_container(
        image,
        command=[PROBE_SH],
        entrypoint=["/bin/sh", "-c"],
        environment={
            "NVIDIA_VISIBLE_DEVICES": "void",  # CUDA images say "all": never give the check a GPU
            "GPUSPAWNER_PROBE_PY": PROBE_PY,
            "GPUSPAWNER_PROBE_TIMEOUT": str(timeout),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        },
        labels={CLI_LABEL: "image-check"},
        host_config=host_config,
        network_disabled=True,
    )
    cid = container["Id"]
    try:
        try:
            client.start(cid)
            status = client.wait(cid, timeout=timeout).get("StatusCode", 0)
        except docker.errors.APIError as e:
            return ImageFacts(image, size, config, probe_error=str(e.explanation or e))
        except requests.exceptions.RequestException:
            return ImageFacts(image, size, config, probe_error=f"it did not finish within {timeout:g} s")
        out = client.logs(cid, stdout=True, stderr=False).decode(errors="replace")
        if status and not out.strip():
            err = client.logs(cid, stdout=False, stderr=True).decode(errors="replace").strip().splitlines()
            return ImageFacts(image, size, config, probe_error=f"exit status {status}: {err[-1] if err else ''}")
        return parse_probe_output(image, out, size, config)
    finally:
        try:
            client.remove_container(cid, force=True)
        except docker.errors.APIError:
            pass


def gpu_request_refusal(client: docker.APIClient, image: str, capabilities=(("gpu",),)) -> str | None:
    """'' when the engine starts a container that asks for GPU capabilities, else its refusal;
    None when the test itself could not run (the image has no ``true``, say).

    The container asks for no device (count 0) and sees none (``NVIDIA_VISIBLE_DEVICES=void``):
    it only shows whether dockerd found the NVIDIA hook when it started, which is what
    decides whether a server can be given a GPU (``docker info`` does not show it).
    """
    host_config = client.create_host_config(
        network_mode="none",
        cap_drop=["ALL"],
        device_requests=[docker.types.DeviceRequest(count=0, capabilities=[list(c) for c in capabilities])],
    )
    container = client.create_container(
        image,
        command=["true"],
        entrypoint=[],
        environment={"NVIDIA_VISIBLE_DEVICES": "void"},
        labels={CLI_LABEL: "gpu-request"},
        host_config=host_config,
        network_disabled=True,
    )
    try:
        client.start(container["Id"])
        client.wait(container["Id"], timeout=30)
        return ""
    except docker.errors.APIError as e:
        why = str(e.explanation or e)
        return why if "device driver" in why else None
    except requests.exceptions.RequestException:
        return None
    finally:
        try:
            client.remove_container(container["Id"], force=True)
        except docker.errors.APIError:
            pass


def pull(client: docker.APIClient, image: str) -> str:
    """Pull ``image`` onto the engine, with the registry login of whoever runs the command;
    '' when it is there, else the registry's or the engine's message."""
    repo, tag, digest = split_reference(image)
    try:
        for event in client.pull(repo, tag=digest or tag or "latest", stream=True, decode=True):
            if "error" in event:
                return (event.get("errorDetail") or {}).get("message") or event["error"]
    except docker.errors.APIError as e:
        return str(e.explanation or e)
    return ""


def image_inspect(client: docker.APIClient, image: str) -> dict | None:
    """``inspect_image()`` of an image on the engine; None when it is not there."""
    try:
        return client.inspect_image(image)
    except docker.errors.NotFound:
        return None


#: The NVIDIA Container Toolkit's programs, any of which shows it is installed.
TOOLKIT_PROGRAMS = ("nvidia-container-runtime-hook", "nvidia-container-toolkit", "nvidia-ctk")


def toolkit_on_path() -> list[str]:
    return [name for name in TOOLKIT_PROGRAMS if shutil.which(name)]
