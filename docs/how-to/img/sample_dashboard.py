"""The how-to's picture of the dashboard's map (``dashboard-map-dark.png``), made again.

A sample lab with every state a unit can show (held, shared, free with lab hours ahead,
reserved, quarantined, MIG) and an hour of sampled utilisation, rendered by the dashboard's
own page code, served with the hub's static files, and taken in Debian's Chromium in the
dark theme. From the repository's root, with the test environment's Python:

    .venv/bin/python docs/how-to/img/sample_dashboard.py
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tornado import web

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from gpuspawner.dashboard.app import page_csp  # noqa: E402
from gpuspawner.dashboard.history import UsageHistory  # noqa: E402
from gpuspawner.dashboard.model import build_view  # noqa: E402
from gpuspawner.dashboard.page import UPDATES_HASH, HubLinks, inline_script_hashes, render_page  # noqa: E402
from gpuspawner.gpus import GPU, Inventory, Policy  # noqa: E402
from gpuspawner.gpus.health import Quarantined  # noqa: E402
from gpuspawner.gpus.nvml import UnitUsage  # noqa: E402
from tests.conftest import chromium  # noqa: E402
from tests.realhub import free_port  # noqa: E402
from tests.test_dashboard import container  # noqa: E402

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
G = 1024**3
A100, A100_40 = "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB"
STATIC = Path(sys.prefix) / "share" / "jupyterhub" / "static"


def sample_view():
    units = [GPU(i, f"GPU-{i}", A100, 80 * G) for i in range(6)]
    units += [
        GPU(6, f"MIG-6{s}", A100_40, 10 * G, mig_profile="1g.10gb", parent_uuid="GPU-6", mig_index=i)
        for i, s in enumerate("ab")
    ]
    inventory = Inventory(units=tuple(units), source="static")
    deep = "Deep learning (1 GPU)"
    containers = [
        container("mia", gpus="GPU-0", profile=deep),
        container("noor", gpus="GPU-1", profile="Shared GPU", shared=True),
        container("li", gpus="GPU-1", profile="Shared GPU", shared=True),
        container("ana", "thesis", gpus="GPU-1", profile="Shared GPU", shared=True),
        container("max", gpus="MIG-6a", profile="MIG slice"),
        container("sam", gpus="GPU-5", profile=deep),
    ]
    policy = Policy(share_limit=4)
    history = UsageHistory(3600, 30)
    for k in range(120):  # an hour, every 30 s
        sampled = build_view(
            inventory,
            policy,
            containers,
            now=NOW,
            usage={
                "GPU-0": UnitUsage(int(50 + 45 * math.sin(k / 9)), 30 * G, 80 * G, 61, ()),
                "GPU-1": UnitUsage(
                    int(20 + 15 * math.sin(k / 5)) if k % 40 > 5 else None, int((10 + k / 6) * G), 80 * G, 55, ()
                ),
                "GPU-5": UnitUsage(0 if k > 60 else 90, 2 * G, 80 * G, 40, ()),
                "MIG-6a": UnitUsage(None, 4 * G, 10 * G, None, ()),
            },
        )
        history.record(sampled.units, NOW.timestamp() - 3600 + k * 30)
    usage = {
        "GPU-0": UnitUsage(87, 30 * G, 80 * G, 61, ()),
        "GPU-1": UnitUsage(33, 30 * G, 80 * G, 55, ()),
        "GPU-5": UnitUsage(0, 2 * G, 80 * G, 40, ()),
        "MIG-6a": UnitUsage(None, 4 * G, 10 * G, None, ()),
    }
    aside = Quarantined("GPU-4", NOW - timedelta(minutes=12), "nvidia-container-cli: device error", 2, "zed/")
    view = build_view(
        inventory, policy, containers, now=NOW, host="gpu1.lab.example.edu", usage=usage, quarantined={"GPU-4": aside}
    )
    hours = {
        "GPU-2": "next lab hours: ML101 lab, Tuesday 14 April 2026, 14:00-16:00 (Europe/Berlin)",
        "GPU-3": "reserved for ML101 lab until 16:00 (Europe/Berlin)",
    }
    view = replace(view, units=tuple(replace(u, lab_hours=hours[u.id]) if u.id in hours else u for u in view.units))
    return history.sample(view)


def main(out: Path = Path(__file__).with_name("dashboard-map-dark.png")) -> None:
    view, port = sample_view(), free_port()
    hub = HubLinks(services=(("gpu-dashboard", "/services/gpu-dashboard/"),))

    class Page(web.RequestHandler):
        def get(self):
            page = render_page(
                view,
                user="admin",
                can_stop=True,
                can_put_back=True,
                xsrf_form_html='<input type="hidden" name="_xsrf" value="t">',
                refresh=15,
                shown="map",
                hub=hub,
                xsrf_token="t",
                scopes=["admin-ui"],
            )
            self.set_header("Content-Security-Policy", page_csp("", [*inline_script_hashes(page), UPDATES_HASH]))
            self.write(page)

    class Logo(web.RequestHandler):
        def get(self):
            self.set_header("Content-Type", "image/png")
            self.write((STATIC / "images" / "jupyterhub-80.png").read_bytes())

    def serve():
        asyncio.set_event_loop(asyncio.new_event_loop())
        routes = [
            ("/services/gpu-dashboard/", Page),
            ("/hub/logo", Logo),
            (r"/hub/static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
        ]
        web.Application(routes).listen(port, "127.0.0.1")
        asyncio.get_event_loop().run_forever()

    threading.Thread(target=serve, daemon=True).start()
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1300, "height": 900}, color_scheme="dark")
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/services/gpu-dashboard/?view=map")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(out), full_page=True)
    print(out)


if __name__ == "__main__":
    main()
