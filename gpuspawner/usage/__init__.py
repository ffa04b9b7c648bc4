"""GPU-hours: a record of every server's holding of GPU units, budgets, and reports.

- ``records``: a usage record as the pure parts read it, the stop reasons, exact GPU-seconds.
- ``store``: the database (SQLAlchemy; SQLite by default, any URL), its schema kept by Alembic.
- ``book``: what the spawner tells it (``assigned``, ``released``, ``rebuilt`` after a restart).
- ``budgets``: GPU-hour budgets per user, group or everyone, per week or term (pure).
- ``report``: GPU-hours by user, group, profile or day over a window (pure), as a table, CSV or JSON.
"""

from .book import Rebuilt, Running, UsageBook
from .budgets import Budget, BudgetError, parse_budgets
from .records import STOP_REASONS, Record
from .store import DEFAULT_DB_URL, UsageStore, UsageStoreError, next_to

__all__ = [
    "Budget",
    "BudgetError",
    "DEFAULT_DB_URL",
    "STOP_REASONS",
    "Rebuilt",
    "Record",
    "Running",
    "UsageBook",
    "UsageStore",
    "UsageStoreError",
    "next_to",
    "parse_budgets",
]
