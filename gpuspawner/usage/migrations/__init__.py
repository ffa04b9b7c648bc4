"""The usage database's Alembic migrations, run by ``UsageStore`` when it opens (``store.upgrade``).

To write the next revision after changing ``store.UsageRow``: ``versions/`` holds one file per
revision, each naming its ``down_revision``; with a database at the current head,
``alembic -x url=sqlite:///usage.sqlite revision --autogenerate -m "what changed"`` run with
``script_location`` set to this folder writes a draft to read and correct.
"""
