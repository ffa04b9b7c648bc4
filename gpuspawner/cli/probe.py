"""The command's I/O: one short container run per image, and the engine's GPU path.

Every container started here has no network and no GPU (``NVIDIA_VISIBLE_DEVICES=void``),
drops all capabilities, carries the label ``gpuspawner.cli``, and is removed
whatever happens. The facts go to the pure functions in ``checks.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

import docker
import docker.errors
import docker.types
import requests

from .checks import BuildPlan, ImageFacts, build_event, dockerfile, parse_probe_output

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
find / -xdev -name 'libcudart.so.*' 2>/dev/null | head -n 20 | while read -r f; do say libcudart "${f##*/}"; done
# $py unquoted: a "#!/usr/bin/env python3" line gives two words.
if [ -n "$py" ]; then $py -c "$GPUSPAWNER_PROBE_PY"; fi
"""

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


#: The NVIDIA Container Toolkit's programs, any of which shows it is installed.
TOOLKIT_PROGRAMS = ("nvidia-container-runtime-hook", "nvidia-container-toolkit", "nvidia-ctk")


def toolkit_on_path() -> list[str]:
    return [name for name in TOOLKIT_PROGRAMS if shutil.which(name)]


# --- image build -------------------------------------------------------------------------------


def dir_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_size
    return total


def build_context(
    plan: BuildPlan, requirements: str = "", wheels: str = "", data: dict[str, str] | None = None
) -> IO[bytes]:
    """A temporary tar (deleted when closed): the generated Dockerfile, the requirements file,
    the wheel dir and each dataset dir, under the names ``dockerfile()`` expects."""
    context = tempfile.TemporaryFile(prefix="gpuspawner-build-")
    with tarfile.open(fileobj=context, mode="w") as tar:
        text = dockerfile(plan).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(text), 0o644
        tar.addfile(info, io.BytesIO(text))
        if requirements:
            tar.add(requirements, arcname="requirements.txt", filter=_readable)
        if wheels:
            tar.add(wheels, arcname="wheels", filter=_readable)
        for name, source in (data or {}).items():
            tar.add(source, arcname=f"data/{name}", filter=_readable)
    context.seek(0)
    return context


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root in the image, readable by the image's user (students): files 644, dirs 755."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = (info.mode | 0o444 | (0o111 if info.isdir() else 0)) & 0o7755
    return info


def build_image(
    client: docker.APIClient,
    context: IO[bytes],
    tag: str,
    network_mode: str = "host",
    show: Callable[[str], None] = print,
) -> str:
    """Build with the engine's classic builder; each line of its output goes to ``show``.

    Returns the image id; raises ``docker.errors.BuildError`` with the engine's message.
    """
    stream: Iterator[dict] = client.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        pull=False,
        network_mode=network_mode,
        decode=True,
    )
    image_id, log = "", []
    for event in stream:
        text, found, error = build_event(event)
        if error:
            raise docker.errors.BuildError(error, log)
        if text:
            log.append(event)
            show(text)
        image_id = found or image_id
    if not image_id:
        raise docker.errors.BuildError("the engine reported no image", log)
    return image_id
