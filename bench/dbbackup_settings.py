"""The site's settings plus django-dbbackup, for the benchmark's peer only.

    manage.py dbbackup -z --settings=bench.dbbackup_settings

django-dbbackup keeps its defaults (for PostgreSQL: ``pg_dump --format=custom``, then gzip with
``-z``); only where it stores the files is set, from ``BENCH_DBBACKUP_DIR``.
"""

import os

from django.conf import global_settings

from hoppybrew_site.settings import *  # noqa: F403
from hoppybrew_site.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "dbbackup"]
STORAGES = {
    **global_settings.STORAGES,
    "dbbackup": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.environ.get("BENCH_DBBACKUP_DIR", "bench/data/dbbackup")},
    },
}
