"""DCGM job-mapping files: so that dcgm-exporter's series carry the user holding each GPU.

dcgm-exporter, started with ``--kubernetes=false`` and the environment variable
``DCGM_HPC_JOB_MAPPING_DIR`` (or ``--hpc-job-mapping-dir``), reads one file per GPU
in that directory, named by the GPU's index (``0``; ``2.1`` for MIG instance 1 of
GPU 2), and adds its content as the ``hpc_job`` label. The dashboard writes there
the user names of the unit's holders (sorted, comma-separated for a shared unit)
and removes the file when the unit is free.

``job_mapping`` is pure; ``sync_job_mapping`` does the I/O.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping

from .model import UNKNOWN, DashboardView

_INDEX = re.compile(r"^\d+(\.\d+)?$")  # the only names this module writes or removes


def unit_file_name(index: int, mig_index: int | None) -> str:
    return str(index) if mig_index is None else f"{index}.{mig_index}"


def job_mapping(view: DashboardView) -> dict[str, str] | None:
    """``{file name: content}`` for every held unit; None while Docker cannot be read
    (then nothing is known, and the files are left as they are)."""
    if view.docker_error or any(u.state == UNKNOWN for u in view.units):
        return None
    return {
        unit_file_name(u.index, u.mig_index): ",".join(sorted({h.user for h in u.holders}))
        for u in view.units
        if u.holders
    }


def sync_job_mapping(directory: str, mapping: Mapping[str, str] | None) -> tuple[list[str], list[str]]:
    """Make ``directory`` hold exactly ``mapping``'s files (of the names this module owns).

    Each file is replaced atomically (written aside, then renamed). Returns (written,
    removed). ``mapping`` None changes nothing. Files whose names are not GPU indices
    are left alone.
    """
    if mapping is None:
        return [], []
    os.makedirs(directory, exist_ok=True)
    written, removed = [], []
    for name, content in sorted(mapping.items()):
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == content + "\n":
                    continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(name)
    for name in sorted(os.listdir(directory)):
        if _INDEX.match(name) and name not in mapping:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return written, removed
