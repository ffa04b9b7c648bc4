"""Expected refusals in the hub's log: one WARNING line with the reason, not an ERROR with a traceback.

JupyterHub logs every failed spawn as an error: "Not starting ann's server: ..." (ERROR), the spawn
form's "Failed to spawn single-user server with form" (ERROR, with the traceback) and the REST
request's access line ("503 POST /hub/api/users/ann/servers/", ERROR). A refusal gpuspawner makes on
purpose (no GPU free, a quota, a spent budget, a wait that ran out, a profile the user may not choose)
is the lab working as configured, and would bury real errors in the admin's log. ``ExpectedRefusals``,
a filter on the hub's loggers, turns those records into WARNING lines without the traceback; every
other error is left as it is.
"""

from __future__ import annotations

import logging
import re

#: The text of an expected refusal in a message (``LabSpawnException.__str__``), and the access line of
#: a spawn request the hub answered with a refusal's status.
_REFUSED = re.compile(r"refused \(\w+\): ")
_SPAWN_REQUEST = re.compile(r"^(403|503) POST \S*/(hub/api/users/[^/ ]+/servers?/|hub/spawn/)")


def expected(exception: BaseException | None) -> bool:
    return bool(getattr(exception, "expected", False))


class ExpectedRefusals(logging.Filter):
    """Lowers the hub's records of an expected refusal to one WARNING line (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exception = record.exc_info[1] if record.exc_info else None
        if expected(exception):
            message = f"{record.getMessage()}: {exception}"
        elif exception is None and (_REFUSED.search(record.getMessage()) or _SPAWN_REQUEST.match(record.getMessage())):
            message = record.getMessage()
        else:
            return True
        record.msg, record.args = message, ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_installed: set[int] = set()


#: Where JupyterHub logs a failed spawn: its ``User`` and handlers log to tornado's application logger
#: (which propagates to the hub's), the access lines to tornado's access logger. A logger's filters see
#: only the records made on it, not those propagated from its children: each gets its own.
TORNADO_LOGGERS = ("tornado.application", "tornado.access", "tornado.general")


def install(*loggers: logging.Logger) -> None:
    """Put the filter on ``loggers`` (once each), and on tornado's loggers."""
    for logger in (*loggers, *map(logging.getLogger, TORNADO_LOGGERS)):
        if id(logger) not in _installed:
            logger.addFilter(ExpectedRefusals())
            _installed.add(id(logger))
