"""``python -m gpuspawner``: the same as the ``gpuspawner`` command."""

from .cli import main

raise SystemExit(main())
