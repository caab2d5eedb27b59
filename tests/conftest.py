"""Shared fixtures: real servers, a private backup directory per test, API clients, SQL helpers."""

import gzip
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

IN_CI = os.environ.get("CI", "").lower() == "true"


def server_reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name, host, port):
    """Skip when a server is down on a developer's machine; fail in CI, where it must be up."""
    if server_reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests needing it must run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Runs before the test databases are created: the PostgreSQL server must be there."""
    require_server("PostgreSQL", "127.0.0.1", 5432)


@pytest.fixture(autouse=True)
def backup_dir(tmp_path, settings):
    """Every test writes its backups into a directory of its own."""
    directory = tmp_path / "backups"
    settings.BACKUP_DIR = str(directory)
    return directory


@pytest.fixture(autouse=True)
def job_workers(monkeypatch, settings, backup_dir, tmp_path):
    """Worker processes that asynchronous requests start inherit this environment: the site's
    own settings on the test databases and this test's backup directory. The test ends when
    they have, so that none writes into the next test's database."""
    postgres, sqlite = settings.DATABASES["default"], settings.DATABASES["sqlite"]
    environment = {
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_ENV_FILE": os.devnull,
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": (
            f"postgres://{postgres['USER']}:{postgres['PASSWORD']}@{postgres['HOST']}:{postgres['PORT']}"
            f"/{postgres['TEST']['NAME']}"
        ),
        "DATABASE_URL_SQLITE": f"sqlite:///{sqlite['TEST']['NAME']}",
        "BACKUP_DIR": str(backup_dir),
        "BACKUP_JOB_LOG": str(tmp_path / "jobs.log"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings.BACKUP_JOB_LOG = environment["BACKUP_JOB_LOG"]
    yield
    deadline = time.monotonic() + 120
    while workers := job_worker_pids():
        if time.monotonic() > deadline:
            for pid in workers:
                os.killpg(pid, signal.SIGKILL)
            pytest.fail(f"job workers {workers} still running at the end of the test")
        time.sleep(0.1)


def job_worker_pids():
    """The ``manage.py backups job`` processes this test process started and that still run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if parent == os.getpid() and b"job" in argv and b"backups" in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


def make_staff(username, *codenames):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="backups", codename__in=codenames))
    return get_user_model().objects.get(pk=user.pk)  # fresh, without the permission cache


def token_client(user):
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(superuser):
    """An API client authenticated by token as a superuser."""
    return token_client(superuser)


# -- SQL on any alias -------------------------------------------------------------------------


def execute(alias, *statements):
    with connections[alias].cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def fetch(alias, sql):
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


def table_exists(alias, name):
    return name in connections[alias].introspection.table_names()


# -- backup files -------------------------------------------------------------------------------


def read_manifest(directory, filename):
    return json.loads((directory / f"{filename}.json").read_text())


def rewrite_backup(directory, filename, transform):
    """Replace a backup's SQL with ``transform(sql)`` and re-sign its manifest, as if the
    backup had been made that way: for tests of what a restore does with bad SQL."""
    path = directory / filename
    sql = gzip.decompress(path.read_bytes()).decode()
    data = gzip.compress(transform(sql).encode())
    path.write_bytes(data)
    manifest = read_manifest(directory, filename)
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    (directory / f"{filename}.json").write_text(json.dumps(manifest))


@pytest.fixture(autouse=True)
def drop_stray_tables(request, django_db_blocker):
    """Transactional tests only truncate Django's tables afterwards; tables a test created
    itself (to be backed up and restored) are dropped here."""
    yield
    marker = request.node.get_closest_marker("django_db")
    if not marker or not (marker.kwargs.get("transaction") or "transactional_db" in request.fixturenames):
        return
    with django_db_blocker.unblock():
        for alias in marker.kwargs.get("databases") or ["default"]:
            connection = connections[alias]
            known = set(connection.introspection.django_table_names(include_views=False)) | {"django_migrations"}
            stray = [name for name in connection.introspection.table_names() if name not in known]
            with connection.cursor() as cursor:
                for name in stray:
                    cascade = " CASCADE" if connection.vendor == "postgresql" else ""
                    cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(name)}{cascade}")


@pytest.fixture
def extra_alias():
    """Adds database aliases for one test: copies of 'default' with some settings changed."""
    added = []

    def add(alias, base="default", **overrides):
        connections.settings[alias] = {**connections.settings[base], **overrides}
        added.append(alias)
        return alias

    yield add
    for alias in added:
        if alias in connections:
            connections[alias].close()
            del connections[alias]
        connections.settings.pop(alias, None)
