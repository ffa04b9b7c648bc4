"""``gpuspawner quarantine [list|put-back UNIT...]``: the units set aside after failed starts.

The hub quarantines a unit whose container starts failed ``quarantine_after`` times
in a row because of the device (``gpuspawner.gpus.health``), in its
``quarantine_file``; placement skips it until it is put back here (or on the GPU
dashboard). The hub reads the file again at its next spawn: no restart.
"""

from __future__ import annotations

import os
from textwrap import dedent

from rich.table import Table
from traitlets import Bool

from ..config import ConfigError
from ..quarantine import put_back, read_quarantine
from . import output
from .command import LabCommand


class _QuarantineCommand(LabCommand):
    judges_the_hub = True

    def quarantine_file(self) -> tuple[str, dict]:
        """The hub's quarantine file and, by unit id, the units its inventory knows (to describe them)."""
        hub = self.load_hub_config()
        path = hub.spawner.quarantine_file
        if not path:
            raise ConfigError("c.GPUSpawner.quarantine_file is '': this hub keeps no quarantine")
        # Relative to the hub's working directory, as the hub and its services read it: run the
        # command there (`docker compose exec hub` does: the hub image's /srv/jupyterhub).
        path = os.path.abspath(path)
        try:
            units = {u.id: u for u in hub.inventory.units}
        except Exception:  # noqa: BLE001 - NVML down: the ids still say which unit
            units = {}
        return path, units


class QuarantineListApp(_QuarantineCommand):
    name = "gpuspawner quarantine list"
    description = "The quarantined units: since when, after how many failed starts, and the last error."
    examples = "gpuspawner quarantine list\ngpuspawner quarantine list --json"

    json = Bool(False, help="Print JSON for scripts instead of a table.").tag(config=True)
    flags = {**LabCommand.flags, "json": ({"QuarantineListApp": {"json": True}}, "Print JSON instead of a table.")}

    def start(self) -> int:
        path, units = self.quarantine_file()
        found = read_quarantine(path)
        if self.json:
            output.print_json({"file": path, "units": [q.as_json() for q in found.values()]})
            return 0
        out = output.console()
        if not found:
            out.print(f"No unit is quarantined ({path}).")
            return 0
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for column in ("Unit", "Id", "Since", "Failed starts", "Last server", "Error"):
            table.add_column(column, no_wrap=column in ("Unit", "Id", "Since"))
        for q in found.values():
            unit = units.get(q.unit)
            table.add_row(
                unit.describe() if unit else "(not in the inventory)",
                q.unit,
                q.since.isoformat(timespec="seconds"),
                str(q.failures),
                q.holder,
                q.reason,
            )
        out.print(table)
        out.print(f"{len(found)} unit(s) quarantined; put one back with: gpuspawner quarantine put-back UNIT")
        return 0


class QuarantinePutBackApp(_QuarantineCommand):
    name = "gpuspawner quarantine put-back"
    description = "Put units back: the hub hands them out again from its next spawn."
    examples = dedent("""
    gpuspawner quarantine put-back GPU-5a4d...
    gpuspawner quarantine put-back --all
    """)

    all = Bool(False, help="Put back every quarantined unit.").tag(config=True)
    flags = {**LabCommand.flags, "all": ({"QuarantinePutBackApp": {"all": True}}, "Put back every unit.")}

    def start(self) -> int:
        path, units = self.quarantine_file()
        wanted = list(read_quarantine(path)) if self.all else list(self.extra_args)
        if not wanted:
            raise ConfigError("name the units to put back (their ids, from `gpuspawner quarantine list`), or --all")
        try:
            removed = put_back(path, wanted)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
        out = output.console()
        for unit in removed:
            described = units[unit].describe() if unit in units else unit
            out.print(f"put back: {described} ({unit})")
        missing = [u for u in wanted if u not in removed]
        for unit in missing:
            out.print(f"not quarantined: {unit}")
        return 1 if missing else 0


class QuarantineApp(LabCommand):
    name = "gpuspawner quarantine"
    description = "Units set aside after failed starts: list them, put them back."
    judges_the_hub = True
    subcommands = {
        "list": (QuarantineListApp, QuarantineListApp.description),
        "put-back": (QuarantinePutBackApp, QuarantinePutBackApp.description),
    }

    def start(self) -> int:
        if self.subapp:
            return self.subapp.start()
        return QuarantineListApp(config=self.config, parent=self).start()
