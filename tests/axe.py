"""axe-core (from npm, installed by ``testbed.sh install``) run inside a page the browser tests drive.

The pages keep their Content Security Policy: the script is evaluated through the browser's
debugging protocol, which no page policy governs, so a test checks the page as served.
"""

from __future__ import annotations

import functools
import subprocess

from .realhub import TESTBED, MissingTestbed

AXE = TESTBED / "axe" / "node_modules" / "axe-core" / "axe.min.js"
#: The impacts a page may not have (axe-core's four: minor, moderate, serious, critical).
FORBIDDEN = ("serious", "critical")

_RUN = """async (within) => {
  const result = await axe.run(within || document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(" ") + ": " + (n.failureSummary || "").split("\\n").slice(1, 2).join("")),
  }));
}"""


@functools.cache
def axe_source() -> str:
    """axe-core's script; installed into the test bed with npm when missing (as ``testbed.sh install`` does)."""
    if not AXE.exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(AXE.parents[2]), "--no-audit", "--no-fund", "axe-core@>=4.10"],
            check=False,
            capture_output=True,
        )
    if not AXE.exists():
        raise MissingTestbed(f"{AXE} is missing: run `bash deploy/testbed/testbed.sh install`")
    return AXE.read_text()


def violations(page, impacts=FORBIDDEN, within: str | None = None) -> list[dict]:
    """axe-core's violations of ``impacts`` in ``page`` as it is now (a Playwright page), in the
    elements of the CSS selector ``within`` (default: the whole page)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    return [v for v in page.evaluate(_RUN, within) if v["impact"] in impacts]


def assert_accessible(page, what: str, within: str | None = None) -> None:
    """No serious or critical violation in ``page`` (or in ``within``, a CSS selector: on the hub's
    own pages, the part gpuspawner draws); ``what`` names the page and viewer in the failure."""
    found = violations(page, within=within)
    assert not found, f"axe-core in {what} ({page.url}):\n" + "\n".join(
        f"- {v['impact']} {v['id']}: {v['help']}\n    " + "\n    ".join(v["nodes"]) for v in found
    )
