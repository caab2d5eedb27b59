"""The settings of job workers that restore the test app's models: the site's own (read from
the environment, as conftest's ``job_workers`` sets it) with that app, which the test process
has too (tests/settings.py)."""

from hoppybrew_site.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.recoveryapp"]  # noqa: F405
