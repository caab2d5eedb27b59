"""Dead-man pings: the scheduled backup calls a URL when it starts, succeeds and fails, so an
outside service (healthchecks.io, Uptime Kuma, Cronitor ...) notices when it reports a failure,
and also when it reports nothing at all: cron stopped, the host is down, the job hangs.

The healthchecks.io convention: ``BASE/start``, ``BASE`` on success, ``BASE/fail`` on failure,
each a POST whose body (the failure's reason, a summary) the service shows. A ping that cannot
be sent is logged; it never fails the backup. The URL itself is a secret (whoever knows it can
report on the job's behalf), so log lines name only its host.
"""

import logging
import urllib.request
from urllib.parse import urlsplit

from ..conf import backup_settings

logger = logging.getLogger("backups")

PING_TIMEOUT = 10
SUFFIXES = {"start": "/start", "success": "", "fail": "/fail"}
MAX_BODY = 10_000  # healthchecks.io keeps the first 100 kB; a reason needs far less


def ping(event, text=""):
    """Call the ping URL for ``event`` ("start", "success" or "fail"); True when it answered."""
    try:
        base = backup_settings.PING_URL
    except Exception:
        logger.exception("Dead-man ping not sent: BACKUP_PING_URL is invalid")
        return False
    if base is None:
        return False
    url = base.rstrip("/") + SUFFIXES[event]
    request = urllib.request.Request(
        url, data=text[:MAX_BODY].encode(), headers={"Content-Type": "text/plain; charset=utf-8"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=PING_TIMEOUT) as response:
            response.read()
    except Exception as exc:
        logger.error("Dead-man ping (%s) to %s failed: %s", event, urlsplit(url).hostname, exc)
        return False
    return True
