"""gpuspawner: a JupyterHub spawner for GPU course labs.

``c.JupyterHub.spawner_class = "gpu"`` (or ``gpuspawner.GPUSpawner``) gives
each student the image of their course profile, whole GPUs no one else holds,
CPU/RAM/shm limits and a persistent home volume.
"""

from ._version import __version__
from .checks import check_config
from .spawner import GPUSpawner

__all__ = ["GPUSpawner", "__version__", "check_config"]
