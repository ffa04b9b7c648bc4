"""``gpuspawner``: the command for teachers and admins.

- ``gpuspawner image check IMAGE`` (or ``--profiles``): will this image start under this hub?
- ``gpuspawner image build --base IMAGE --tag NAME:TAG``: a class image from a pinned base, then checked.
- ``gpuspawner prepull``: pull every profile's image before class, with progress and a summary.
- ``gpuspawner doctor``: is this host ready (Docker, NVIDIA toolkit, driver, images, datasets)?
- ``gpuspawner status [--json]``: who holds which GPU now.
- ``gpuspawner network [check|up|down]``: the students' lab network and the rules that close it.
- ``gpuspawner quarantine [list|put-back UNIT]``: units set aside after failed starts.
- ``gpuspawner usage [--by user|group|profile|day]``, ``usage purge``: GPU-hours from the usage database.

Each reads the hub's own ``jupyterhub_config.py`` (``-f``, else ``GPUSPAWNER_CONFIG``; ``gpuspawner.config``), so
profiles are written once. One module per command, its checks beside it (pure
functions of the facts it gathers); ``probe.py`` looks inside images, ``output.py``
prints.
"""

from __future__ import annotations

import sys

from ..config import ConfigError
from .command import LabCommand
from .doctor import DoctorApp
from .image_build import ImageBuildApp
from .image_check import ImageCheckApp
from .network import NetworkApp
from .prepull import PrepullApp
from .quarantine import QuarantineApp, QuarantineListApp, QuarantinePutBackApp
from .status import StatusApp
from .usage import UsageApp, UsagePurgeApp


class ImageApp(LabCommand):
    name = "gpuspawner image"
    description = "Class images: build one from a pinned base, check that one will start under this hub."
    subcommands = {
        "check": (ImageCheckApp, ImageCheckApp.description.splitlines()[0]),
        "build": (ImageBuildApp, ImageBuildApp.description.splitlines()[0]),
    }


class GPUSpawnerApp(LabCommand):
    name = "gpuspawner"
    description = """gpuspawner's command for teachers and admins: check images, check the host, see GPU use.

    Every subcommand reads the hub's jupyterhub_config.py, so profiles are written once: the file -f
    names, else the one $GPUSPAWNER_CONFIG names, else ./jupyterhub_config.py. With none found, the
    commands that judge a hub (doctor, prepull, status, network, quarantine) stop, unless --defaults.
    `gpuspawner SUBCOMMAND --help` for each.
    """
    subcommands = {
        "image": (ImageApp, "Class images: `gpuspawner image build --base B --tag T`, `image check IMAGE`."),
        "prepull": (PrepullApp, "Pull every profile's image before class, with progress and a summary."),
        "doctor": (DoctorApp, "Check this host: Docker, NVIDIA toolkit and driver, images, datasets."),
        "status": (StatusApp, "Who holds which GPU now (a table, or --json)."),
        "network": (NetworkApp, "The students' lab network and its rules: check (default), up, down."),
        "quarantine": (QuarantineApp, "Units set aside after failed starts: `quarantine list`, `put-back UNIT`."),
        "usage": (UsageApp, "GPU-hours: `usage --by user|group|profile|day`, `usage purge --older-than DAYS`."),
    }


_APPS = (
    GPUSpawnerApp,
    ImageApp,
    ImageCheckApp,
    ImageBuildApp,
    PrepullApp,
    DoctorApp,
    StatusApp,
    QuarantineApp,
    QuarantineListApp,
    QuarantinePutBackApp,
    NetworkApp,
    UsageApp,
    UsagePurgeApp,
)


def main(argv: list[str] | None = None) -> int:
    """The ``gpuspawner`` console script; returns the exit status."""
    app = GPUSpawnerApp()
    try:
        app.initialize(argv)
        return int(app.start() or 0)
    except ConfigError as e:
        print(f"gpuspawner: {e}", file=sys.stderr)
        return 2
    finally:
        for cls in _APPS:  # subcommands are singletons: the next main() starts afresh
            cls.clear_instance()


__all__ = ["main"]
