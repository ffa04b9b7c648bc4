"""Allocation core: GPU decisions per second, with 64 units and 1,000 users.

The pure core (``gpuspawner.gpus.allocation``) decides every spawn under the
hub's lock, so its speed bounds how fast a class can be placed. The lab here:
48 whole GPUs and 16 MIG instances (64 units), 1,000 students in 10 course
groups, each group with a GPU quota and every student with a cap of 1 GPU; the
requests mix a whole GPU, two GPUs, a MIG instance, a slot on a shared GPU and
the CPU profile (``--help``: also timed without quotas). Each step picks a student at random: one who holds units
stops (a release, not timed), one who holds none asks (``Ledger.assign``: a
decision, granted or refused with ``NoCapacity``, timed). The ledger stays
near full, as at 9:00, where every decision looks at every holding.

    .venv/bin/python benchmarks/allocation.py --decisions 50000
"""

from __future__ import annotations

import argparse
import random
import time

import _lab  # noqa: F401  (puts the repository on sys.path)

from gpuspawner.gpus.allocation import GPURequest, Ledger, NoCapacity, Policy, Requester, holder_key
from gpuspawner.gpus.inventory import GPU

REQUESTS = (
    GPURequest(count=1),
    GPURequest(count=2),
    GPURequest(count=1, kind="mig", mig_profile="1g.10gb"),
    GPURequest(count=1, shared=True),
    GPURequest(count=0),
)


def lab(units: int = 64, mig: int = 16) -> list[GPU]:
    whole = [GPU(i, f"GPU-{i:08d}-0000-4000-8000-000000000000", "A100-80GB", 80 << 30) for i in range(units - mig)]
    parent = units - mig
    migs = [
        GPU(
            parent + i // 7,
            f"MIG-{i:08d}-0000-4000-8000-000000000000",
            "A100-80GB",
            10 << 30,
            mig_profile="1g.10gb",
            parent_uuid=f"GPU-p{i // 7:07d}-0000-4000-8000-000000000000",
            mig_index=i % 7,
        )
        for i in range(mig)
    ]
    return whole + migs


def run(
    decisions: int = 50_000, units: int = 64, users: int = 1000, groups: int = 10, quotas: bool = True, seed: int = 1
) -> dict:
    rng = random.Random(seed)
    if quotas:
        quota = units / groups * 1.5  # the courses together may ask for more than there is
        policy = Policy(share_limit=4, max_gpus_per_user=1, group_quotas={f"g{g}": quota for g in range(groups)})
    else:
        policy = Policy(share_limit=4)
    ledger = Ledger(lab(units, mig=min(16, units // 4)), policy)
    students = [Requester(f"u{i:04d}", frozenset({f"g{i % groups}"})) for i in range(users)]
    wants = [REQUESTS[i % len(REQUESTS)] for i in range(users)]
    granted = refused = 0
    spent_granting = spent_refusing = 0.0
    clock = time.perf_counter
    while granted + refused < decisions:
        i = rng.randrange(users)
        holder = holder_key(students[i].user)
        if ledger.assignment(holder) is not None:
            ledger.release(holder)
            continue
        t0 = clock()
        try:
            ledger.assign(holder, wants[i], students[i])
            granted += 1
            spent_granting += clock() - t0
        except NoCapacity:
            refused += 1
            spent_refusing += clock() - t0
    spent = spent_granting + spent_refusing
    held = ledger.assignments()
    ids = [u for a in held for u in a.ids]
    exclusive = [u for a in held if not a.shared for u in a.ids]
    return {
        "quotas": quotas,
        "units": units,
        "users": users,
        "decisions": granted + refused,
        "granted": granted,
        "refused": refused,
        "seconds": spent,
        "decisions_per_s": (granted + refused) / spent if spent else float("nan"),
        "grants_per_s": granted / spent_granting if spent_granting else float("nan"),
        "refusals_per_s": refused / spent_refusing if spent_refusing else float("nan"),
        "holders_at_end": len(held),
        "units_held_at_end": len(set(ids)),
        "exclusive_units_distinct": len(set(exclusive)) == len(exclusive),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=50_000, help="decisions to time (default 50,000)")
    parser.add_argument("--units", type=int, default=64, help="GPU units (default 64)")
    parser.add_argument("--users", type=int, default=1000, help="students (default 1,000)")
    parser.add_argument("--json", help="write all figures to this file ('-': stdout)")
    args = parser.parse_args(argv)
    result = {}
    for quotas in (True, False):
        key = "with_quotas" if quotas else "without_quotas"
        r = result[key] = run(args.decisions, args.units, args.users, quotas=quotas)
        r["load"] = _lab.loadavg()
        print(
            f"allocation core, {'with' if quotas else 'without'} quotas: {r['decisions_per_s']:,.0f} decisions/s"
            f" ({r['decisions']:,} decisions: {r['granted']:,} granted at {r['grants_per_s']:,.0f}/s,"
            f" {r['refused']:,} refused at {r['refusals_per_s']:,.0f}/s;"
            f" {r['units']} units, {r['users']:,} users; load {r['load']})"
        )
    if args.json:
        _lab.print_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
