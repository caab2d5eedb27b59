"""Test settings: the site's settings on the real PostgreSQL server, plus SQLite and MariaDB aliases.

Nothing from the machine's environment or .env may change what the tests test, so BACKUP_*
values are dropped here and set by the tests themselves.
"""

import os
import tempfile

from hoppybrew_site.settings import *  # noqa: F403
from hoppybrew_site.settings import database_config

for _name in [name for name in globals() if name.startswith("BACKUP_")]:
    del globals()[_name]

# Lets two checkouts run their suites side by side against one server.
SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/hoppybrew")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/hoppybrew")
SQLITE_DIR = os.path.join(tempfile.gettempdir(), f"hoppybrew-tests{SUFFIX}")
os.makedirs(SQLITE_DIR, exist_ok=True)
# A password that the server (trust auth) ignores, so tests can prove it never leaks.
TEST_DATABASE_PASSWORD = "Sekrit-Hoppy-Pass-93"

DATABASES = {
    "default": {
        **database_config(POSTGRES_URL),
        "PASSWORD": TEST_DATABASE_PASSWORD,
        "TEST": {"NAME": f"test_hoppybrew{SUFFIX}"},
    },
    "sqlite": {
        **database_config(f"sqlite:///{SQLITE_DIR}/main.sqlite3"),
        "TEST": {"NAME": f"{SQLITE_DIR}/test_main.sqlite3"},
    },
    "mariadb": {
        **database_config(MARIADB_URL),
        "TEST": {"NAME": f"test_hoppybrew{SUFFIX}", "CHARSET": "utf8mb4"},
    },
}

CRONJOBS = []
# The live-server tests serve the admin's CSS straight from the apps, without collectstatic.
STATIC_ROOT = os.path.join(SQLITE_DIR, "static")
os.makedirs(STATIC_ROOT, exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Through the root logger, where pytest's caplog listens.
LOGGING["loggers"]["backups"].update(level="INFO", handlers=[], propagate=True)  # noqa: F405
# A site app with a migration history, for the migration-aware restore tests.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.recoveryapp"]  # noqa: F405
