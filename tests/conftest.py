"""Shared fixtures and helpers: real servers, a private backup directory per test, API clients,
SQL on every engine, damaged backups, Pagila, servers run as child processes. Test modules
import what they share from here, never from one another."""

import difflib
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
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import psycopg2
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backups import services
from backups.engines import get_engine
from backups.engines.base import name_prefix
from backups.models import Backup, Operation, Origin
from backups.services.journal import this_worker

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


@pytest.fixture
def model_workers(monkeypatch):
    """Job workers that know the test app's models, as this process does: model restores need them."""
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.worker_settings")


def job_worker_pids():
    """The ``manage.py backups job`` processes this test process started and that still run."""
    return [
        pid
        for pid, argv in running_processes()
        if b"job" in argv and b"backups" in argv and parent_of(pid) == os.getpid()
    ]


def running_processes():
    """(pid, argv) of every process whose command line can be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue


# -- processes of this test -----------------------------------------------------------------------


def parent_of(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def descends_from_this_test(pid):
    while pid > 1:
        pid = parent_of(pid)
        if pid == os.getpid():
            return True
    return False


def processes_named(name):
    """(pid, argv, environ) of the processes started by this test whose program is ``name``
    (other jobs on the machine may run the same tools)."""
    found = []
    for pid, argv in running_processes():
        try:
            if Path(argv[0].decode()).name != name or not descends_from_this_test(pid):
                continue
            found.append((pid, argv, Path(f"/proc/{pid}/environ").read_bytes()))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def wait_for_process(name, timeout=30, argument=None):
    """The processes called ``name`` (with ``argument`` among their arguments, if given), once
    there is one."""
    deadline = time.monotonic() + timeout
    while not (found := [p for p in processes_named(name) if argument is None or argument in p[1]]):
        assert time.monotonic() < deadline, f"{name} never started"
        time.sleep(0.05)
    return found


# -- users and the API ---------------------------------------------------------------------------


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


def create(api, **body):
    """A backup made through the API by ``api``; its filename."""
    response = api.post("/backups", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["filename"]


def assert_error(response, status, *fragments):
    """An API error as the spec describes it, whose message has every fragment; the message."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"status", "message"}
    assert body["status"] == "error"
    for fragment in fragments:
        assert fragment in body["message"]
    return body["message"]


def pending_restore(backup, action="restore", **arguments):
    """A restore job as a request leaves it, its worker (this process) yet to begin."""
    return Operation.objects.create(
        action=action,
        status="pending",
        filename=backup.filename,
        database="default",
        actor="root",
        origin=Origin.ADMIN,
        started_at=timezone.now(),
        details={"worker": this_worker(), "arguments": arguments},
    )


# -- SQL on any alias -------------------------------------------------------------------------


# One alias per engine, as tests/settings.py defines them: PostgreSQL, SQLite, MariaDB.
ALIASES = ["default", "sqlite", "mariadb"]
# The rows of the brew table that tests on every engine change and expect back.
BREW_ROWS = [(1, "Pale Ale", "citra"), (2, "Stout", "roasty\nand dark"), (3, "Saison", None)]

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


@contextmanager
def new_database(name):
    """A new, empty database ``name`` on the server for one block, made and dropped by the
    superuser (and dropped first, should an interrupted run have left it)."""
    as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}"')


def by_hand_psql(database):
    """README's psql command for a restore by hand, as a shell command line."""
    return f"psql -X -q -v ON_ERROR_STOP=1 -h {POSTGRES_SERVER['host']} -U {SUPERUSER} {database}"


class TableBlocker:
    """Another session holding a lock on a table, ACCESS EXCLUSIVE unless told: pg_dump (and a
    restore's lock step) wait on it, which keeps them running while a test looks at them.
    (SHARE lets reads through and holds up writes.)"""

    def __init__(self, table="brew", mode="ACCESS EXCLUSIVE"):
        self.connection = raw_postgres_connection()
        self.connection.cursor().execute(f"BEGIN; LOCK TABLE {table} IN {mode} MODE")

    def release(self):
        self.connection.close()


def table_exists(alias, name):
    return name in connections[alias].introspection.table_names()


def database_exists(alias, name):
    """Whether the database ``name`` (SQLite: the file) exists on the server of ``alias``."""
    vendor = connections[alias].vendor
    if vendor == "sqlite":
        return Path(name).exists()
    if vendor == "postgresql":
        return bool(fetch(alias, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))
    return bool(fetch(alias, f"SHOW DATABASES LIKE '{name}'"))


def read_copy(alias, name, sql):
    """Rows from the copy ``name``, on a connection of its own (not one of the site's aliases)."""
    live = connections[alias]
    connection = type(live)({**live.settings_dict, "NAME": name}, alias="copy")
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        connection.close()


# -- the test app's models (tests/recoveryapp) ---------------------------------------------------


def brew_recipes(alias):
    """Two breweries with a recipe each, a hop in the first recipe and a tasting of it; returns
    a backup of them."""
    from backups import services
    from tests.recoveryapp.models import Brewery, Ingredient, Recipe, Tasting

    hoppy = Brewery.objects.using(alias).create(id=1, name="Hoppy")
    malty = Brewery.objects.using(alias).create(id=2, name="Malty")
    pale = Recipe.objects.using(alias).create(id=1, name="Pale Ale", brewery=hoppy, style="ale")
    Recipe.objects.using(alias).create(id=2, name="Stout", brewery=malty, style="stout")
    citra = Ingredient.objects.using(alias).create(id=1, name="Citra")
    pale.ingredients.add(citra)
    Tasting.objects.using(alias).create(id=1, recipe=pale, note="bright")
    return services.create_backup(actor=services.Actor.command(), database=alias)


def names(alias, model):
    return list(model.objects.using(alias).order_by("pk").values_list("name", flat=True))


def create_brew(alias):
    """The brew table, holding BREW_ROWS."""
    execute(alias, "CREATE TABLE brew (id integer PRIMARY KEY, name varchar(100), notes text)")
    with connections[alias].cursor() as cursor:
        cursor.executemany("INSERT INTO brew VALUES (%s, %s, %s)", BREW_ROWS)


def brew_rows(alias):
    return fetch(alias, "SELECT id, name, notes FROM brew ORDER BY id")


def fill_big_table(rows, first=1):
    """Rows of hex digits, which compress to a little over half: about 75 bytes of backup each."""
    execute("default", "CREATE TABLE IF NOT EXISTS big (id integer, payload text)")
    execute(
        "default",
        "INSERT INTO big SELECT g, md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd') "
        f"FROM generate_series({first}, {first + rows - 1}) g",
    )


def scratch_pattern(database):
    """The LIKE pattern (MariaDB's GRANT takes it too) of the scratch databases that drills and
    MariaDB's restores make beside ``database``."""
    return database.replace("_", "\\_") + "\\_drill\\_%"


# -- backups and restores through the service, as the command makes them ---------------------


def backup_of(alias, **options):
    """A backup of ``alias`` made as the command makes it."""
    return services.create_backup(actor=services.Actor.command(), database=alias, **options)


def quick_restore(filename, **options):
    """Restore, skipping the pre-restore backup (quicker) where the engine lets a restore skip it."""
    alias = options.get("target") or Backup.objects.get(filename=filename).database
    if get_engine(alias).restore_is_transactional:
        options.setdefault("pre_restore_backup", False)
    return services.restore_backup(filename, actor=services.Actor.command(), **options)


# -- backup files -------------------------------------------------------------------------------


def alternate_gzip_levels(monkeypatch):
    """gzip's level changed at every sample, 2 then 3 and so on (the real choice is tested in
    test_streaming), sampled every 64 KiB: returns the levels chosen so far."""
    from backups import compression

    chosen = []

    def alternating(sample):
        chosen.append(3 if chosen and chosen[-1] == 2 else 2)
        return chosen[-1]

    monkeypatch.setattr(compression, "SEGMENT_BYTES", 64 * 1024)
    monkeypatch.setattr(compression, "level_for", alternating)
    return chosen


def assert_one_gzip_member(data):
    """What every gzip reader reads whole, even one that stops after the first member."""
    inflater = zlib.decompressobj(31)
    inflater.decompress(data)
    assert inflater.eof and not inflater.unused_data


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


# -- PostgreSQL's exact restores: Pagila and a fingerprint of everything ------------------------

# Objects of the kinds Pagila lacks, in the backup: a range type with its constructors (whose
# cleanup once failed every restore), a large object, grants and default privileges to a role.
PAGILA_ADDITIONS = """
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE TABLE reading (id serial PRIMARY KEY, span floatrange, note text);
INSERT INTO reading (span, note) SELECT floatrange(g, g + 1), 'reading ' || g FROM generate_series(1, 50) g;
SELECT lo_from_bytea(0, 'the label artwork, as a large object');
CREATE PROCEDURE tidy() LANGUAGE sql AS 'DELETE FROM reading WHERE id < 0';
CREATE SCHEMA brewing;
CREATE TABLE brewing.batch (id int PRIMARY KEY, label text);
INSERT INTO brewing.batch VALUES (1, 'first'), (2, 'second');
CREATE POLICY own_batches ON brewing.batch USING (label <> '');
CREATE RULE no_delete AS ON DELETE TO reading WHERE old.id = 1 DO INSTEAD NOTHING;
COMMENT ON TABLE reading IS 'sensor readings';
GRANT USAGE ON SCHEMA brewing TO {role};
GRANT SELECT ON actor, brewing.batch TO {role};
GRANT SELECT (title) ON film TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA brewing GRANT SELECT ON TABLES TO {role};
SELECT setval('actor_actor_id_seq', 500);
"""

# After the backup: rows changed, a table dropped, and one new object of every kind.
PAGILA_CHANGES = """
UPDATE actor SET last_name = 'CHANGED' WHERE actor_id <= 10;
DELETE FROM payment_p2022_07 WHERE payment_id % 3 = 0;
INSERT INTO payment_p2022_02 SELECT * FROM payment_p2022_03 LIMIT 0;
DELETE FROM brewing.batch;
DROP TABLE reading CASCADE;
SELECT nextval('actor_actor_id_seq');
SELECT lo_from_bytea(0, 'created after the backup');
CREATE TABLE added_later (id int);
CREATE SCHEMA later;
CREATE TABLE later.t (id int);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TYPE intspan AS RANGE (subtype = int4);
CREATE FUNCTION same(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';
CREATE OPERATOR === (leftarg = int, rightarg = int, function = same);
CREATE AGGREGATE total(int) (sfunc = int4pl, stype = int);
CREATE PROCEDURE later_proc() LANGUAGE sql AS 'SELECT 1';
CREATE COLLATION phonebook (provider = icu, locale = 'de-u-co-phonebk');
CREATE TEXT SEARCH CONFIGURATION brewer (COPY = english);
CREATE VIEW later_view AS SELECT 1 AS one;
CREATE MATERIALIZED VIEW later_matview AS SELECT 2 AS two;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER touch BEFORE UPDATE ON actor FOR EACH ROW EXECUTE FUNCTION touch();
CREATE RULE later_rule AS ON INSERT TO added_later DO ALSO NOTHING;
CREATE POLICY later_policy ON actor USING (true);
CREATE STATISTICS actor_names ON first_name, last_name FROM actor;
CREATE PUBLICATION later_pub FOR TABLE actor;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE CAST (int4 AS pair) WITH INOUT;
COMMENT ON TABLE actor IS 'changed comment';
COMMENT ON SCHEMA public IS 'changed';
GRANT INSERT ON actor TO {role};
REVOKE SELECT ON brewing.batch FROM {role};
GRANT CREATE ON SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
"""

# Objects of every catalog that holds them, by the name PostgreSQL describes them with.
PG_CATALOGS = [
    "pg_namespace", "pg_class", "pg_type", "pg_proc", "pg_operator", "pg_opclass", "pg_opfamily",
    "pg_collation", "pg_conversion", "pg_ts_config", "pg_ts_dict", "pg_ts_parser", "pg_ts_template",
    "pg_extension", "pg_publication", "pg_event_trigger", "pg_cast", "pg_constraint", "pg_trigger",
    "pg_rewrite", "pg_policy", "pg_statistic_ext", "pg_foreign_data_wrapper", "pg_foreign_server",
    "pg_language", "pg_am", "pg_default_acl", "pg_attrdef", "pg_transform",
]  # fmt: skip
PG_ACLS = {
    "pg_class": "relacl",
    "pg_namespace": "nspacl",
    "pg_proc": "proacl",
    "pg_type": "typacl",
    "pg_default_acl": "defaclacl",
    "pg_largeobject_metadata": "lomacl",
}


OID_IN_NAME = re.compile(r"(?<=_)\d{5,}(?!\d)")


def postgres_fingerprint(database):
    """Everything a restore must bring back, as a dict of sorted lines."""
    print_ = {}
    dump = subprocess.run(
        ["pg_dump", "--schema-only", "--encoding=UTF8", "-h", "127.0.0.1", "-U", "postgres", database],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print_["schema"] = [line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    connection = server_connection(database)
    try:
        with connection.cursor() as cursor:

            def lines(sql, by_oid=OID_IN_NAME):
                # Foreign-key triggers are named after OIDs, which differ; toast tables are storage.
                cursor.execute(sql)
                found = (by_oid.sub("#", " | ".join(str(value) for value in row)) for row in cursor.fetchall())
                return sorted(line for line in found if "pg_toast" not in line)

            for catalog in PG_CATALOGS:
                acl = PG_ACLS.get(catalog)
                print_[catalog] = lines(
                    f"SELECT pg_describe_object('{catalog}'::regclass, oid, 0), {acl or 'NULL'}::text "
                    f"FROM {catalog} WHERE oid >= 16384 OR '{catalog}' = 'pg_namespace'"
                )
            print_["columns"] = lines(
                "SELECT attrelid::regclass, attname, atttypid::regtype, attacl::text FROM pg_attribute "
                "WHERE attrelid >= 16384 AND attnum > 0 AND NOT attisdropped"
            )
            print_["comments"] = lines(
                "SELECT pg_describe_object(classoid, objoid, objsubid), description FROM pg_description "
                "WHERE objoid >= 16384 OR objoid = 'public'::regnamespace"
            )
            print_["schemas"] = lines("SELECT nspname, nspowner::regrole, nspacl FROM pg_namespace")
            print_["large_objects"] = lines(
                "SELECT oid, md5(lo_get(oid)), lomacl FROM pg_largeobject_metadata ORDER BY oid"
            )
            cursor.execute(
                "SELECT format('%I.%I', n.nspname, c.relname), c.relkind, c.relispopulated FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'S', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
            )
            relations = sorted(cursor.fetchall())
            for name, kind, populated in relations:
                if not populated:
                    cursor.execute("SELECT 'not populated'")
                elif kind == "S":
                    cursor.execute(f"SELECT last_value, is_called FROM {name}")
                else:
                    cursor.execute(f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {name} t")
                print_[f"rows {name}"] = [str(cursor.fetchone())]
    finally:
        connection.close()
    return print_


def databases_like(prefix):
    connection = server_connection("postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,))
            return [name for (name,) in cursor.fetchall()]
    finally:
        connection.close()


def drop_databases_left_beside(database):
    """Undo databases, and restored copies and scratch databases an interrupted run may have left."""
    prefix = name_prefix(database)
    for name in (
        databases_like(f"{prefix}_undo_") + databases_like(f"{prefix}_restore_") + databases_like(f"{prefix}_drill_")
    ):
        as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def owned_database(extra_alias, settings):
    """A database owned, with everything in it, by a login role that is no superuser; the alias
    "small" connects as that role. Yields (alias, database, role, a connection as the role)."""
    role, database = f"hb_site{settings.SUFFIX}", f"hb_small{settings.SUFFIX}"
    as_superuser("postgres", f"DO $$BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    drop_databases_left_beside(database)
    as_superuser("postgres", f"CREATE DATABASE {database} OWNER {role}")
    as_superuser(database, f"ALTER SCHEMA public OWNER TO {role}")
    alias = extra_alias("small", NAME=database, USER=role)
    owned = server_connection(database, role=role)
    with owned.cursor() as cursor:
        cursor.execute("CREATE TABLE brew (id serial PRIMARY KEY, name text)")
        cursor.execute("INSERT INTO brew (name) VALUES ('ale')")
    yield alias, database, role, owned
    owned.close()
    connections[alias].close()
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    drop_databases_left_beside(database)
    as_superuser("postgres", f"DROP ROLE IF EXISTS {role}")


def assert_same_fingerprint(found, expected):
    """Equal fingerprints, or a readable diff of what differs."""
    if found == expected:
        return
    report = []
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            diff = difflib.unified_diff(expected.get(key, []), found.get(key, []), "expected", "found", lineterm="")
            report.append(f"== {key}\n" + "\n".join(list(diff)[:40]))
    pytest.fail("The database differs from the backup:\n" + "\n".join(report[:15]))


@pytest.fixture(scope="session")
def pagila_template(django_db_blocker):
    """Pagila, loaded once per run into a template database, and a role to grant to."""
    from django.conf import settings

    require_tool("psql")
    template = f"pagila_template{settings.SUFFIX}"
    role = f"hb_reporter{settings.SUFFIX}"
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {template}")
    as_superuser("postgres", f"CREATE DATABASE {template}")
    as_superuser("postgres", f"DO $$BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", template,
         "-f", DATASETS / "pagila-schema.sql", "-f", DATASETS / "pagila-data.sql"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    as_superuser(template, PAGILA_ADDITIONS.format(role=role))
    yield template, role
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {template}")
    as_superuser("postgres", f"DROP ROLE IF EXISTS {role}")  # its grants went with the databases


@pytest.fixture
def pagila(pagila_template, extra_alias, settings):
    """A fresh copy of Pagila under the alias "pagila"; yields (alias, database name, role)."""
    template, role = pagila_template
    database = f"pagila_exact{settings.SUFFIX}"
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    as_superuser("postgres", f"CREATE DATABASE {database} TEMPLATE {template}")
    alias = extra_alias("pagila", NAME=database)
    yield alias, database, role
    connections["pagila"].close()
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database}_by_hand WITH (FORCE)")


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


def manage(environment, *args, check=False):
    """The checkout's ``manage.py`` with ``environment``, output captured; with ``check``, it must succeed."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result


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


# -- the API's background jobs, and the engines restores of chosen models run on -------------

DONE = {"succeeded", "failed"}


def poll(api, url, until, timeout=120):
    """GET ``url`` until ``until(body)`` holds; the last body."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        if until(body):
            return body
        assert time.monotonic() < deadline, f"{url} never got there: {body}"
        time.sleep(0.1)


def start_restore(api, filename, **body):
    response = api.post("/backups/restore", {"filename": filename, **body, "async": True}, format="json")
    assert response.status_code == 202, response.content
    return response


ENGINES = [
    pytest.param("default", marks=pytest.mark.django_db(transaction=True, databases=["default"]), id="postgresql"),
    pytest.param("sqlite", marks=pytest.mark.django_db(transaction=True, databases=["default", "sqlite"]), id="sqlite"),
    pytest.param(
        "mariadb", marks=pytest.mark.django_db(transaction=True, databases=["default", "mariadb"]), id="mariadb"
    ),
]
