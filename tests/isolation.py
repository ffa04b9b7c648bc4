"""Import modules in a fresh Python that refuses the hub's heavy packages, as if they were not installed.

Some modules must load where only the standard library (and nvidia-ml-py) is: the GPU seam,
the allocation core and the culling rules on a GPU machine, ``gpuspawner.services`` in a
config file before the hub has loaded anything.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("jupyterhub", "dockerspawner", "docker", "traitlets", "tornado", "rich")

_SCRIPT = """
import importlib, importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
print("ok")
"""


def import_without_heavy(*modules: str) -> subprocess.CompletedProcess:
    """Import ``modules`` in a new interpreter where the ``HEAVY`` packages fail to import; it prints "ok" at the end."""
    script = _SCRIPT.format(heavy=list(HEAVY), modules=list(modules))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
