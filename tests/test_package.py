"""The app as others get it: the wheel built from pyproject.toml, installed into a virtual
environment of its own, in a new ``django-admin startproject`` site set up as README's "Adding
backups to your Django project" says, on SQLite and on PostgreSQL. Backups, lists and restores
go through the command, the REST API over HTTP and the admin pages of a running server.
"""

import http.cookiejar
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

import pytest

from .conftest import (
    POSTGRES_SERVER,
    SUPERUSER,
    RunServer,
    as_superuser,
    require_server,
    require_tool,
    server_connection,
)

REPOSITORY = Path(__file__).resolve().parent.parent
SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
SECTION = "## Adding backups to your Django project"
# Imports that `backups list` has no use for, and that cost most of its start-up (croniter's
# import runs `file` on the interpreter, through platform.architecture()).
HEAVY_MODULES = [
    "boto3",
    "botocore",
    "storages.backends.s3",
    "drf_spectacular",
    "rest_framework.serializers",
    "croniter",
]
PASSWORD = "Package-Test-Pass-41"
# What only the [s3] and [age] extras install: left out of the new environment.
EXTRAS_ONLY = ("boto3", "botocore", "s3transfer", "storages", "django_storages", "pyrage")


def readme_blocks():
    """{file: [python code]} of README's section, by the ``# settings.py`` line each block opens with."""
    text = (REPOSITORY / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for code in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        first, _, rest = code.partition("\n")
        blocks.setdefault(first.removeprefix("# ").strip(), []).append(rest)
    return blocks


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of what it is made of, so that the checkout stays clean."""
    source = tmp_path_factory.mktemp("source")
    shutil.copy(REPOSITORY / "pyproject.toml", source)
    shutil.copy(REPOSITORY / "README.md", source)
    shutil.copytree(REPOSITORY / "backups", source / "backups", ignore=shutil.ignore_patterns("__pycache__"))
    output = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", output, source])
    (built,) = output.glob("hoppybrew_backups-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A new virtual environment with the wheel installed, without the extras. The other
    dependencies are this checkout's (the pinned versions, not installed again), linked into a
    directory that a .pth file puts after the venv's own site-packages: no `backups` but the wheel's."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root])
    python = root / "bin" / "python"
    dependencies = root / "dependencies"
    dependencies.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(EXTRAS_ONLY):
            (dependencies / entry.name).symlink_to(entry)
    site_packages = Path(query(python, "import sysconfig; print(sysconfig.get_path('purelib'))"))
    (site_packages / "project-dependencies.pth").write_text(f"{dependencies}\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel])
    return python


def test_wheel_holds_the_app_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names}
    assert packages == {"backups", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in [
        "backups/migrations/0001_initial.py",
        "backups/templates/admin/backups/backup/restore_confirmation.html",
        "backups/static/backups/admin.css",
        "backups/management/commands/backups.py",
    ]:
        assert expected in names
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    assert "Requires-Dist: boto3" in metadata and 'extra == "s3"' in metadata
    assert 'Requires-Dist: pyrage>=1.1; extra == "age"' in metadata
    for site_only in ["gunicorn", "whitenoise", "django-environ", "drf-spectacular-sidecar", "psycopg2"]:
        assert f"Requires-Dist: {site_only}" not in metadata


def test_app_imports_nothing_of_the_site():
    sources = list((REPOSITORY / "backups").rglob("*.py"))
    assert sources
    assert [str(path) for path in sources if "hoppybrew_site" in path.read_text()] == []


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_new_project(engine, venv, tmp_path):
    project = Project(venv, tmp_path / "mysite")
    if engine == "sqlite":
        project.exercise()  # on the project's own db.sqlite3
        return
    require_server("PostgreSQL", POSTGRES_SERVER["host"], POSTGRES_SERVER["port"])
    require_tool("pg_dump")
    require_tool("psql")
    database = f"package_site{SUFFIX}"
    project.use_postgresql(database)
    try:
        project.exercise()
    finally:
        drop_database(database)


def test_app_alone_without_extras(venv, tmp_path):
    """The app alone in INSTALLED_APPS is all that migrate and the command need; S3 and
    encryption settings without their extras are refused by name."""
    project = Project(venv, tmp_path / "mysite", readme=False)
    assert "No module named 'pyrage'" in project.manage("shell", "-c", "import pyrage", check=False)
    project.manage("migrate", "--noinput")
    filename = re.search(r"Created (\S+)", project.manage("backups", "create"))[1]
    assert filename in project.manage("backups", "list")
    with open(project.directory / "mysite" / "settings.py", "a") as handle:
        handle.write("BACKUP_STORAGE_URL = 's3://hoppybrew-unused'\nBACKUP_ENCRYPTION_RECIPIENTS = 'age1unchecked'\n")
    output = project.manage("check", check=False)
    assert "BACKUP_STORAGE_URL: needs the Python packages storages, boto3" in output
    assert "pip install 'hoppybrew-backups[s3]'" in output
    assert "BACKUP_ENCRYPTION_RECIPIENTS: needs the Python packages pyrage" in output
    assert "pip install 'hoppybrew-backups[age]'" in output
    assert "Traceback" not in output


def test_site_backups_list_imports_only_what_it_needs(tmp_path):
    """The HoppyBrew site, with S3 storage configured (new projects: test_new_project)."""
    site = {
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_ENV_FILE": os.devnull,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'site.sqlite3'}",
        "BACKUP_STORAGE_URL": "s3://hoppybrew-unused",
    }
    run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPOSITORY, env=site)
    # A catalog that lists something: an empty one makes the list look into the storage for
    # manifests it does not know, which does need the S3 client.
    listed = (
        "from django.utils import timezone; from backups.models import Backup; Backup.objects.create("
        "filename='hoppybrew_backup_20260101_000000.sql.gz', engine='sqlite', database_name='site', "
        "status='succeeded', created_at=timezone.now())"
    )
    run([sys.executable, "manage.py", "shell", "-c", listed], cwd=REPOSITORY, env=site)
    # The site has drf_spectacular in INSTALLED_APPS, so its package is loaded; its utils are not.
    heavy = ["boto3", "botocore", "storages.backends.s3", "drf_spectacular.utils", "rest_framework.serializers"]
    assert loaded_by_backups_list(sys.executable, REPOSITORY, site, heavy) == []


# -- the project ----------------------------------------------------------------------------


class Project:
    """A site made by ``django-admin startproject`` with README's blocks appended (or, without
    ``readme``, the app alone in INSTALLED_APPS)."""

    def __init__(self, python, directory, readme=True):
        self.python = python
        self.directory = directory
        directory.mkdir()
        run([python, "-m", "django", "startproject", "mysite", directory])
        if readme:
            blocks = readme_blocks()
            assert set(blocks) == {"settings.py", "urls.py"}
        else:
            blocks = {"settings.py": ['INSTALLED_APPS += ["backups"]\n']}
        for name, codes in blocks.items():
            with open(directory / "mysite" / name, "a") as handle:
                handle.write("\n" + "\n".join(codes))
        self.environment = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}
        self.postgresql_database = None

    def use_postgresql(self, name):
        drop_database(name)
        as_superuser("postgres", f'CREATE DATABASE "{name}"')
        self.postgresql_database = name
        with open(self.directory / "mysite" / "settings.py", "a") as handle:
            handle.write(
                "\nDATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', "
                f"'NAME': {name!r}, 'USER': {SUPERUSER!r}, 'HOST': {POSTGRES_SERVER['host']!r}, "
                f"'PORT': {POSTGRES_SERVER['port']}}}}}\n"
            )

    def manage(self, *arguments, check=True):
        return run([self.python, "manage.py", *arguments], cwd=self.directory, env=self.environment, check=check)

    def shell(self, code):
        return self.manage("shell", "--verbosity", "0", "-c", code)

    def sql(self, statement, *parameters):
        """Straight to the project's database: a row to see restored, without another manage.py."""
        if self.postgresql_database:
            connect = partial(server_connection, self.postgresql_database)
            statement = statement.replace("?", "%s")
        else:
            connect = partial(sqlite3.connect, self.directory / "db.sqlite3")
        connection = connect()
        try:
            with connection:
                cursor = connection.cursor()
                cursor.execute(statement, parameters)
                return cursor.fetchall() if cursor.description else None
        finally:
            connection.close()

    def groups(self):
        return [name for (name,) in self.sql("SELECT name FROM auth_group ORDER BY name")]

    def add_group(self, name):
        self.sql("INSERT INTO auth_group (name) VALUES (?)", name)

    def exercise(self):
        imported = Path(query(self.python, "import backups; print(backups.__file__)", cwd=self.directory))
        assert imported.is_relative_to(self.python.parent.parent), imported  # the wheel's, not the checkout's
        assert self.manage("migrate", "--noinput")
        assert "no issues" in self.manage("check")
        assert loaded_by_backups_list(self.python, self.directory, self.environment, HEAVY_MODULES) == []
        # The lines `crontab add` would write, without touching this machine's crontab.
        jobs = self.shell(
            "from django_crontab.crontab import Crontab; crontab = Crontab(readonly=True); crontab.add_jobs()\n"
            "print(*crontab.crontab_lines, sep='')"
        ).splitlines()[-3:]  # after django-crontab's "adding cronjob" lines
        assert [" ".join(line.split()[:5]) for line in jobs] == ["0 2 * * *", "30 3 * * *", "45 4 * * *"]
        assert all(f"{self.directory}/manage.py crontab run" in line for line in jobs), jobs
        token = self.shell(
            "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token\n"
            f"Token.objects.create(user=User.objects.create_superuser('admin', 'a@example.com', {PASSWORD!r}))\n"
            "print(Token.objects.get().key)"
        )
        self.add_group("kept")

        # The command.
        filename = re.search(r"Created (\S+)", self.manage("backups", "create", "--description", "cli"))[1]
        assert filename in self.manage("backups", "list")
        self.add_group("after the command's backup")
        assert "Restored database 'default'" in self.manage("backups", "restore", filename, "--yes")
        assert self.groups() == ["kept"]

        with self.server() as server:
            # The REST API.
            api = Client(server.url, {"Authorization": f"Token {token}"})
            status, created = api.json("POST", "/backups", {"description": "api"})
            assert status == 201, created
            status, listed = api.json("GET", "/backups")
            assert status == 200 and created["filename"] in [backup["filename"] for backup in listed]
            self.add_group("after the API's backup")
            status, restored = api.json("POST", "/backups/restore", {"filename": created["filename"]})
            assert status == 200, restored
            assert self.groups() == ["kept"]

            # The admin pages, and the app's static files beside them.
            admin = Client(server.url)
            admin.log_in("admin", PASSWORD)
            # Backups and restores run as jobs: the page that follows shows their progress
            # until they end.
            page = admin.follow_job(*admin.post_to("/admin/backups/backup/create/", {"description": "admin"}))
            made = re.search(r"Backup (\S+) created", page)[1]
            assert admin.get("/static/backups/admin.css")
            restore_link = rf'href="(/admin/backups/backup/[^"]+/restore/)" aria-label="Restore {re.escape(made)}"'
            button = re.search(restore_link, page)
            assert button, page
            self.add_group("after the admin's backup")
            restore_page = button[1]
            database = re.search(r'data-expected="([^"]+)"', admin.get(restore_page))[1]
            result = admin.follow_job(*admin.post_to(restore_page, {"confirm_database": database}))
            assert "Database restored" in result, result
            assert self.groups() == ["kept"]

    def server(self):
        """The project's ``manage.py runserver``, for one ``with`` block."""
        return RunServer(
            environment(self.environment), self.directory / "server.log", python=self.python, directory=self.directory
        )


class Client:
    """urllib with a cookie jar: the admin's session and CSRF cookie, as a browser keeps them."""

    def __init__(self, base, headers=None):
        self.base = base
        self.headers = headers or {}
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, method, path, body=None, content_type=None):
        status, text, _ = self.request_to(method, path, body, content_type)
        return status, text

    def request_to(self, method, path, body=None, content_type=None):
        """Status, text and the path of the page that answered, after redirects."""
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode(), response.geturl().removeprefix(self.base)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), path

    def json(self, method, path, data=None):
        body = None if data is None else json.dumps(data).encode()
        status, text = self.request(method, path, body, "application/json" if body else None)
        return status, json.loads(text)

    def get(self, path):
        status, text = self.request("GET", path)
        assert status == 200, text
        return text

    def post(self, path, fields):
        return self.post_to(path, fields)[1]

    def post_to(self, path, fields):
        """POST a form; the page that answered (after redirects) and its text."""
        csrf = next(cookie.value for cookie in self.cookies if cookie.name == "csrftoken")
        body = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": csrf}).encode()
        status, text, where = self.request_to("POST", path, body, "application/x-www-form-urlencoded")
        assert status == 200, text
        return where, text

    def follow_job(self, where, text):
        """Reload a job's progress page until the job has ended; the page that follows."""
        deadline = time.monotonic() + 120
        while 'id="job-progress"' in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
            status, text, where = self.request_to("GET", where)
        return text

    def log_in(self, username, password):
        self.get("/admin/login/")
        page = self.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"})
        assert "Log out" in page, page


# -- helpers --------------------------------------------------------------------------------


def environment(extra):
    """This process's environment without what would lead a child to the checkout's code or
    settings (PYTHONPATH, the test settings), plus ``extra``."""
    base = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE"}}
    return {**base, **{key: value for key, value in extra.items() if value}}


def run(command, cwd=None, env=None, check=True):
    """The command's stdout; with check=False, its stdout and stderr, which must not be a success."""
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=environment(env or {}), capture_output=True, text=True
    )
    if not check:
        assert result.returncode != 0, result.stdout
        return result.stdout + result.stderr
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def query(python, code, cwd=None):
    return run([python, "-c", code], cwd=cwd)


def loaded_by_backups_list(python, directory, env, modules):
    """Which of ``modules`` are imported once ``manage.py backups list`` has run."""
    code = (
        "import sys; from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'backups', 'list'])\n"
        f"print('LOADED', *[name for name in {modules!r} if name in sys.modules])"
    )
    output = run([python, "-c", code], cwd=directory, env=env)
    return output.rsplit("LOADED", 1)[1].split()


def drop_database(name):
    as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
