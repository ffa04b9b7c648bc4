"""``gpuspawner status [--json]``: who holds which GPU now.

The dashboard's view (``gpuspawner.dashboard.model.build_view``), built the same
way from the running containers' labels and the hub's inventory, printed as a
table or as JSON for scripts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from textwrap import dedent

from rich.table import Table
from rich.text import Text
from traitlets import Bool

from .. import labels as label
from ..config import ConfigError
from ..dashboard.model import DashboardView, UnitView, build_view
from ..traits import format_bytes
from . import output
from .command import LabCommand
from .findings import WARN, Finding


def status_rows(view: DashboardView) -> list[dict]:
    """One entry per unit of the inventory, with who holds it (several, when shared): what --json prints."""
    return [
        {
            "id": u.id,
            "index": u.index,
            "mig_profile": u.mig_profile,
            "mig_index": u.mig_index,
            "parent": u.parent_uuid,
            "model": u.model,
            "memory": u.memory,
            "unit": _unit_name(u),
            "holders": [
                {"user": h.user, "server": h.server, "profile": h.profile, "container": h.container, "shared": h.shared}
                for h in u.holders
            ],
            "free": not u.holders,
        }
        for u in view.units
    ]


def _unit_name(u: UnitView) -> str:
    # As the inventory describes it: a MIG instance of unknown index is "GPU 2 MIG".
    return u.label + (" MIG" if u.mig_profile and u.mig_index is None else "")


def holder_name(holder: dict) -> str:
    return f"{holder['user']}/{holder['server']}" if holder["server"] else holder["user"]


def status_table(rows: list[dict], share_limit: int, ids: dict[str, str] | None = None) -> Table:
    """The assignment of every GPU unit: one line per unit and holder, 'free' for units no one holds.

    ``ids``: how to print each unit's id (``output.short_ids``); whole when not given.
    """
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("Unit", "Id", "Model", "Memory", "Holder", "Profile", "Shared"):
        table.add_column(column, no_wrap=column in ("Unit", "Id", "Memory"))
    for row in rows:
        unit = row["unit"] + (f" {row['mig_profile']}" if row["mig_profile"] else "")
        first = [unit, (ids or {}).get(row["id"], row["id"]), row["model"], format_bytes(row["memory"])]
        if row["free"]:
            table.add_row(*first, Text("free", style="green"), "", "")
            continue
        holders = row["holders"]
        for n, h in enumerate(holders):
            shared = f"yes, {len(holders)}/{share_limit}" if h["shared"] else ""
            cells = first if n == 0 else ["", "", "", ""]
            table.add_row(*cells, holder_name(h), h["profile"], shared)
    return table


def status_lines(rows: list[dict], share_limit: int, ids: dict[str, str] | None = None) -> list[Text]:
    """The same as ``status_table``, one line per unit, for a console too narrow for the table."""
    lines = []
    for row in rows:
        unit = row["unit"] + (f" {row['mig_profile']}" if row["mig_profile"] else "")
        unit_id = (ids or {}).get(row["id"], row["id"])
        line = Text(f"{unit}  {unit_id}  {row['model']}  {format_bytes(row['memory'])}: ")
        if row["free"]:
            line.append("free", style="green")
        holders = row["holders"]
        for n, h in enumerate(holders):
            shared = f", shared {len(holders)}/{share_limit}" if h["shared"] else ""
            line.append(f"{', ' if n else ''}{holder_name(h)} (profile {h['profile']}{shared})")
        lines.append(line)
    return lines


def print_status(out, rows: list[dict], share_limit: int) -> None:
    """The table when it fits whole; else with short ids; else one line per unit. Nothing is cut."""
    table = status_table(rows, share_limit)
    if output.fits(out, table):
        out.print(table)
        return
    ids = output.short_ids(r["id"] for r in rows)
    table = status_table(rows, share_limit, ids)
    if output.fits(out, table):
        out.print(table)
    else:
        for line in status_lines(rows, share_limit, ids):
            out.print(line)
    if any(short != whole for whole, short in ids.items()):
        out.print("(ids shortened: `gpuspawner status --json` prints them whole)")


def status_summary(rows: list[dict], cpu_servers: int) -> str:
    held = sum(not r["free"] for r in rows)
    servers = {holder_name(h) for r in rows for h in r["holders"]}
    return (
        f"{len(rows)} unit(s): {held} held, {len(rows) - held} free; {len(servers)} server(s) hold GPUs,"
        f" {cpu_servers} run without a GPU"
    )


class StatusApp(LabCommand):
    name = "gpuspawner status"
    description = """Who holds which GPU now, from the labels of the running servers' containers.

    The same record a restarted hub reads its ledger from: every unit of the hub's
    inventory, its holder (user/server), profile and whether it is shared.
    """
    judges_the_hub = True
    examples = dedent("""
    gpuspawner status
    gpuspawner status --json | jq '.units[] | select(.free)'
    """)

    json = Bool(False, help="Print JSON for scripts instead of a table.").tag(config=True)
    flags = {**LabCommand.flags, "json": ({"StatusApp": {"json": True}}, "Print JSON instead of a table.")}

    def start(self) -> int:
        hub = self.load_hub_config()
        try:
            inventory = hub.inventory
        except Exception as e:  # noqa: BLE001 - NVML errors other than "no driver"
            raise ConfigError(f"the hub's GPUs cannot be read: {e}") from None
        containers = hub.docker().containers(filters={"label": label.GPUS})
        view = build_view(inventory, hub.spawner.policy, containers, now=datetime.now(timezone.utc))
        rows = status_rows(view)
        if self.json:
            output.print_json(
                {
                    "inventory": {
                        "source": view.inventory_source,
                        "driver_version": inventory.driver_version,
                        "cuda_version": inventory.cuda_version,
                        "note": view.inventory_note,
                    },
                    "share_limit": view.share_limit,
                    "units": rows,
                    "servers_without_gpu": view.servers_without_gpu,
                    "warnings": list(view.warnings),
                }
            )
            return 0
        out = output.console()
        if rows:
            print_status(out, rows, view.share_limit)
        else:
            note = f": {view.inventory_note}" if view.inventory_note else ""
            out.print(f"The hub hands out no GPU ({view.inventory_source}{note}).")
        out.print(status_summary(rows, view.servers_without_gpu))
        for warning in view.warnings:
            out.print(output.finding_lines([Finding(WARN, "labels", warning)])[0])
        return 0
