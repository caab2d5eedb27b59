"""Shared fixtures: real servers, a private backup directory per test, API clients, SQL helpers."""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import psycopg2
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

IN_CI = os.environ.get("CI", "").lower() == "true"
PROJECT = Path(__file__).resolve().parent.parent


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


def require_tool(name):
    """Skip when a command-line tool is missing on a developer's machine; fail in CI."""
    if shutil.which(name) is not None:
        return
    message = f"{name} is not installed (scripts/system-packages installs it)"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests needing it must run)")
    pytest.skip(message)


def mysql_servers():
    """{alias: (host, port)} of the MariaDB (MySQL) aliases of the test settings."""
    from django.conf import settings

    return {
        alias: (config["HOST"] or "localhost", int(config["PORT"] or 3306))
        for alias, config in settings.DATABASES.items()
        if config["ENGINE"] == "django.db.backends.mysql"
    }


def databases_of(item):
    marker = item.get_closest_marker("django_db")
    return set(marker.kwargs.get("databases") or ["default"]) if marker else set()


def pytest_collection_modifyitems(config, items):
    """Tests on a MariaDB alias are left out when its server is down on a developer's machine:
    their test database could not even be created. With CI=true they stay, and fail."""
    down = {alias for alias, (host, port) in mysql_servers().items() if not server_reachable(host, port)}
    if not down or IN_CI:
        return
    left_out = [item for item in items if databases_of(item) & down]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not databases_of(item) & down]
        config.stash[LEFT_OUT] = f"MariaDB is not reachable: {len(left_out)} tests on it were not run."


LEFT_OUT = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, config):
    if LEFT_OUT in config.stash:
        terminalreporter.write_line(config.stash[LEFT_OUT], yellow=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, django_db_modify_db_settings_parallel_suffix):
    """Runs before the test databases are created: the servers the tests use must be there."""
    from django.conf import settings

    postgres = settings.DATABASES["default"]
    require_server("PostgreSQL", postgres["HOST"] or "localhost", int(postgres["PORT"] or 5432))
    used = set().union(*(databases_of(item) for item in request.session.items))
    for alias, (host, port) in mysql_servers().items():
        if alias in used:
            require_server("MariaDB", host, port)


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


# Real public sample databases (Pagila, Sakila, Chinook), beside the project as in CI.
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@contextmanager
def mariadb_user(name, *grants, password=None):
    """A MariaDB user with ``grants`` (``"ALL PRIVILEGES ON `db`.*"``, ...) for one block."""
    identified = " IDENTIFIED BY '{}'".format(password.replace("'", "''")) if password else ""
    execute(
        "mariadb",
        f"DROP USER IF EXISTS '{name}'@'%'",
        f"CREATE USER '{name}'@'%'{identified}",
        *(f"GRANT {grant} TO '{name}'@'%'" for grant in grants),
    )
    try:
        yield name
    finally:
        execute("mariadb", f"DROP USER IF EXISTS '{name}'@'%'")


def execute(alias, *statements):
    with connections[alias].cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def fetch(alias, sql):
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


def raw_postgres_connection(alias="default"):
    """A psycopg2 session of its own on the test database, outside Django's connections."""
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg2.connect(**params)


# The PostgreSQL server and its superuser (trust authentication), for what no site's role may
# do: create and drop databases and roles, end others' sessions, look into other databases.
POSTGRES_SERVER = {"host": "127.0.0.1", "port": 5432}
SUPERUSER = "postgres"


def superuser_url(database):
    """A DATABASE_URL as the superuser, for the site's own processes."""
    return f"postgres://{SUPERUSER}@{POSTGRES_SERVER['host']}:{POSTGRES_SERVER['port']}/{database}"


def server_connection(database="postgres", role=SUPERUSER):
    """A psycopg2 session on the server's ``database`` as ``role``, in autocommit."""
    connection = psycopg2.connect(dbname=database, user=role, **POSTGRES_SERVER)
    connection.autocommit = True
    return connection


def as_superuser(database, *statements):
    """Runs ``statements`` as the superuser on ``database``, each committed on its own;
    returns the rows of the last one, if it has any."""
    connection = server_connection(database)
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def table_exists(alias, name):
    return name in connections[alias].introspection.table_names()


# -- backup files -------------------------------------------------------------------------------


def read_manifest(directory, filename):
    return json.loads((directory / f"{filename}.json").read_text())


def flip_byte(path, position=None):
    """Damage a stored file the way a bad disk does: one bit of one byte (the middle one)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if position is None else position] ^= 0x01
    path.write_bytes(bytes(data))


def resign(directory, filename, data, **manifest_changes):
    """Store ``data`` as the backup and make its manifest's sha256 and size match, as if the
    backup had been written that way: damage that the checksum cannot see."""
    (directory / filename).write_bytes(data)
    manifest = read_manifest(directory, filename)
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), **manifest_changes)
    (directory / f"{filename}.json").write_text(json.dumps(manifest))


def truncate_and_resign(directory, filename, cut=40):
    """The backup without its last ``cut`` bytes (into the last compressed block and the
    trailer), with a manifest that matches."""
    resign(directory, filename, (directory / filename).read_bytes()[:-cut])


def rewrite_backup(directory, filename, transform):
    """Replace a backup's SQL with ``transform(sql)`` and re-sign its manifest, as if the
    backup had been made that way: for tests of what a restore does with bad SQL."""
    sql = transform(gzip.decompress((directory / filename).read_bytes()).decode()).encode()
    resign(directory, filename, gzip.compress(sql), uncompressed_bytes=len(sql))


def first_half(path):
    """A file's first half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    return data[: len(data) // 2]


def break_near_the_end(sql):
    """The SQL with a statement that fails just before its last three lines: after every row of
    every table, before the end of the transaction or the dump's closing settings."""
    lines = sql.splitlines(keepends=True)
    return "".join([*lines[:-3], "INSERT INTO no_such_table VALUES (1);\n", *lines[-3:]])


def cut_in_a_statement(sql, table="brew"):
    """The SQL up to 30 characters into the first INSERT into ``table`` (quoted either way)."""
    return sql[: re.search(rf'INSERT INTO [`"]{table}[`"]', sql).start() + 30]


# Damage that the checksum cannot see (the manifest is re-signed to match), by name: each
# damages the backup ``filename`` in ``directory``.
DAMAGES = {
    "bad-sql-at-end": lambda directory, filename: rewrite_backup(directory, filename, break_near_the_end),
    "cut-statement": lambda directory, filename: rewrite_backup(directory, filename, cut_in_a_statement),
    "truncated-near-end": truncate_and_resign,
    "truncated-in-middle": lambda directory, filename: resign(directory, filename, first_half(directory / filename)),
}


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


# -- servers as child processes on 127.0.0.1 ----------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_listening(name, command, port, log, **options):
    """``command`` as a child process with its output in ``log``, once it listens on
    127.0.0.1:``port``; fails with the end of that log if it exits first or takes over a minute."""
    with open(log, "wb") as output:
        process = subprocess.Popen([str(part) for part in command], stdout=output, stderr=subprocess.STDOUT, **options)
    deadline = time.monotonic() + 60
    while not server_reachable("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            pytest.fail(f"{name} did not start: {Path(log).read_text()[-3000:]}")
        time.sleep(0.1)
    return process


def stop_process(process):
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


class RunServer:
    """``manage.py runserver`` (without its reloader) on a free port, until ``stop()`` or the end
    of a ``with`` block. The checkout's site unless ``python`` and ``directory`` say another."""

    def __init__(self, environment, log, python=sys.executable, directory=PROJECT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        command = [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"]
        self.process = start_listening("runserver", command, self.port, self.log, cwd=directory, env=environment)

    def stop(self):
        stop_process(self.process)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


class Received(NamedTuple):
    """A request as an HTTPReceiver got it."""

    method: str
    path: str
    content_type: str | None
    body: str


class HTTPReceiver(ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 that keeps every POST it receives and answers ``answer``."""

    def __init__(self, answer=200):
        self.requests = []
        self.answer = answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                receiver.requests.append(Received(self.command, self.path, self.headers["Content-Type"], body))
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def paths(self):
        return [request.path for request in self.requests]

    @property
    def json_bodies(self):
        return [json.loads(request.body) for request in self.requests]


@contextmanager
def http_receiver(answer=200):
    """An HTTPReceiver serving from a thread of this process, for one block."""
    receiver = HTTPReceiver(answer)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


# -- S3: moto in server mode, a real HTTP API on 127.0.0.1 --------------------------------------

REGION = "us-east-1"
AWS_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's S3 server as a child process for the whole session; yields its endpoint URL."""
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        require_tool("moto_server")
        executable = shutil.which("moto_server")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    process = start_listening("moto_server", [executable, "-H", "127.0.0.1", "-p", port], port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


class S3:
    """The moto server as the tests see it: fresh buckets, and a boto3 client to look inside."""

    def __init__(self, endpoint):
        import boto3

        self.endpoint = endpoint
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=AWS_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        )
        self.buckets = []

    def bucket(self, create=True):
        """A bucket name of this test alone (S3 names take no underscores)."""
        suffix = os.environ.get("TEST_DB_SUFFIX", "").lower().replace("_", "-")
        name = f"hoppybrew{suffix}-{uuid.uuid4().hex[:12]}"
        if create:
            self.client.create_bucket(Bucket=name)
            self.buckets.append(name)
        return name

    def keys(self, bucket, prefix=""):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket, key):
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def write(self, bucket, key, data):
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def unfinished_uploads(self, bucket):
        return self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def environment(self):
        """What a process needs to reach this S3, as the README tells operators to set it."""
        return {**AWS_ENVIRONMENT, "AWS_S3_ENDPOINT_URL": self.endpoint}

    def remove_buckets(self):
        """moto keeps everything in memory: empty what this test made."""
        for bucket in self.buckets:
            for upload in self.unfinished_uploads(bucket):
                self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            for key in self.keys(bucket):
                self.client.delete_object(Bucket=bucket, Key=key)
            self.client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3(moto_server, monkeypatch, settings):
    """S3 reachable from this process (as a deployment configures it) and from its children."""
    for variable, value in AWS_ENVIRONMENT.items():
        monkeypatch.setenv(variable, value)
    settings.AWS_S3_ENDPOINT_URL = moto_server
    settings.AWS_S3_REGION_NAME = REGION
    service = S3(moto_server)
    yield service
    service.remove_buckets()


# -- age keys -----------------------------------------------------------------------------------


def make_age_key(path):
    """A new key pair from age-keygen: the identity file at ``path``; returns the public key."""
    require_tool("age-keygen")
    result = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return result.stderr.split("Public key:")[1].strip()


@pytest.fixture
def age_key(tmp_path):
    """(identity file, public key) of a key pair made for this test."""
    path = tmp_path / "backup-key.txt"
    return path, make_age_key(path)
