"""gpuspawner: a JupyterHub spawner for GPU course labs.

``c.JupyterHub.spawner_class = "gpu"`` (or ``gpuspawner.GPUSpawner``) gives
each student the image of their course profile, whole GPUs no one else holds,
CPU/RAM/shm limits and a persistent home volume.

The spawner (and with it JupyterHub, dockerspawner and docker-py) is imported
on first use of ``gpuspawner.GPUSpawner`` or ``gpuspawner.check_config``, not
by ``import gpuspawner``: the NVML seam (``gpuspawner.gpus.nvml``), the
allocation core (``gpuspawner.gpus.allocation``) and the culler's rules
(``gpuspawner.culler.policy``) import none of them, and run on a GPU machine
that has only nvidia-ml-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from .checks import check_config
    from .spawner import GPUSpawner

__all__ = ["GPUSpawner", "__version__", "check_config"]

_LAZY = {"GPUSpawner": "spawner", "check_config": "checks"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
