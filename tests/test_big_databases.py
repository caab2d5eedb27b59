"""Big databases: a restore beside the live database, then a switch of names; the undo database
it leaves and its cleanup; the in-place path for a role that may not create databases; parallel
backups that restore exactly as serial ones do.

Fingerprints (schema, every catalog object, ordered row checksums, sequences, large objects,
privileges) are those of tests/test_exact_postgresql.py, on the same Pagila copy.
"""

import gzip
import io
from datetime import timedelta

import psycopg2
import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from backups import services
from backups.engines import get_engine, pg_parallel, postgresql
from backups.engines.base import name_prefix
from backups.exceptions import DatabaseBusy, InvalidRequest, RestoreFailed
from backups.services import restore as restore_service
from backups.services import retention
from backups.services.copies import write_manifest
from backups.services.retention import drop_expired_undo_databases

from .conftest import (
    PAGILA_CHANGES,
    as_superuser,
    assert_same_fingerprint,
    backup_of,
    databases_like,
    drop_databases_left_beside,
    postgres_fingerprint,
    quick_restore,
    server_connection,
)

pytestmark = pytest.mark.django_db(transaction=True)

DATABASE_PROPERTIES = """
SELECT shobj_description(d.oid, 'pg_database'), d.datconnlimit, d.datallowconn, d.datdba::regrole::text,
       (SELECT array_agg(item::text ORDER BY item::text) FROM unnest(d.datacl) item),
       d.datcollate, d.datctype, pg_encoding_to_char(d.encoding),
       (SELECT array_agg(coalesce(r.rolname, '*') || ':' || array_to_string(s.setconfig, ',') ORDER BY r.rolname)
        FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid)
FROM pg_database d WHERE d.datname = %s
"""


def database_properties(database):
    connection = server_connection("postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute(DATABASE_PROPERTIES, (database,))
            return cursor.fetchone()
    finally:
        connection.close()


def give_database_properties(database, role):
    as_superuser(
        "postgres",
        f"""
        COMMENT ON DATABASE {database} IS 'the brewery''s own';
        ALTER DATABASE {database} CONNECTION LIMIT 40;
        ALTER DATABASE {database} SET work_mem = '12MB';
        ALTER DATABASE {database} SET search_path = "$user", public;
        ALTER ROLE {role} IN DATABASE {database} SET statement_timeout = '5s';
        REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC;
        GRANT CONNECT, CREATE ON DATABASE {database} TO {role};
        """,
    )


@pytest.fixture
def switching(pagila, settings):
    alias, database, role = pagila
    settings.BACKUP_RESTORE_METHOD = "switch"
    drop_databases_left_beside(database)
    yield alias, database, role
    drop_databases_left_beside(database)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_switch_restores_exactly_keeps_what_lives_on_the_database_and_keeps_the_old_one(switching, settings, jobs):
    """With one session, or with a pool loading rows and building indexes side by side."""
    alias, database, role = switching
    settings.BACKUP_RESTORE_JOBS = jobs
    give_database_properties(database, role)
    before, properties = postgres_fingerprint(database), database_properties(database)
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    changed = postgres_fingerprint(database)
    site_session = server_connection(database)  # the site's: ended by the switch

    result = quick_restore(made.filename)

    assert result.method == "switch"
    assert_same_fingerprint(postgres_fingerprint(database), before)
    assert database_properties(database) == properties
    # The replaced database is the undo: as it was just before the restore, listed by the engine.
    assert result.undo_database in dict(get_engine(alias).undo_databases())
    assert_same_fingerprint(postgres_fingerprint(result.undo_database), changed)
    assert databases_like(f"{database}_restore_") == []
    with pytest.raises(psycopg2.OperationalError), site_session.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_the_catalog_is_carried_across_a_switch_of_the_site_database(settings):
    """The catalog lives in the site's database: rows made after the backup survive the switch,
    and Django's connections reach the new database afterwards."""
    from django.db import connection

    from backups.models import Backup

    settings.BACKUP_RESTORE_METHOD = "auto"
    database = connection.settings_dict["NAME"]
    first = backup_of("default")
    second = backup_of("default")
    try:
        result = quick_restore(first.filename)
        assert result.method == "switch"
        assert set(Backup.objects.values_list("filename", flat=True)) >= {first.filename, second.filename}
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database(), pg_backend_pid() <> %s", (0,))
            assert cursor.fetchone() == (database, True)
        assert result.undo_database.startswith(f"{name_prefix(database)}_undo_")
    finally:
        drop_databases_left_beside(database)


# Text that looks like the entries of a dump, where the dump reader must not take it for them:
# in a function body, in a string that spans lines (a real newline before each fake header), in
# names with "$", and rows whose text starts with "\."; a table and a column whose names hold a
# newline, so that its COPY statement spans lines, with rows full of quotes after it.
LOOKALIKES = r"""
CREATE FUNCTION public.looks_like_a_dump() RETURNS text LANGUAGE sql AS $body$
SELECT '
--
-- Data for Name: film; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.film (film_id) FROM stdin;
1
\.
'::text $body$;
CREATE TABLE public."odd$name" ("we$ird" text DEFAULT E'it\'s $x$ -- not a comment' NOT NULL, note text);
COMMENT ON TABLE public."odd$name" IS '
-- Name: odd$name_idx; Type: INDEX; Schema: public; Owner: -
'' still the string /* no comment $$ no quote';
INSERT INTO public."odd$name" (note) SELECT '\.' || g FROM generate_series(1, 5) g;
CREATE INDEX "odd$name_idx" ON public."odd$name" (note);
COMMENT ON INDEX public."odd$name_idx" IS 'an index; Type: TABLE DATA;';
CREATE TABLE public."two
lines" (id int PRIMARY KEY, "it""s
note" text);
INSERT INTO public."two
lines" SELECT g, 'it''s row ' || g || ' "quoted" $$' FROM generate_series(1, 40) g;
CREATE TABLE public."odd FROM stdin;
name" (v text);
INSERT INTO public."odd FROM stdin;
name" SELECT 'it''s ' || g FROM generate_series(1, 7) g;
"""
TWO_LINES = 'public."two\nlines"'  # as the dump names it


def test_the_dump_reader_sees_the_same_entries_whatever_the_size_of_the_reads(switching, backup_dir):
    """Entries finds the same entries, rows and settings in a dump read 7 bytes at a time as in
    one read in large chunks, and hands out every byte of it once, in order."""
    alias, database, role = switching
    as_superuser(database, LOOKALIKES)
    with gzip.open(backup_dir / backup_of(alias).filename, "rb") as dump:
        text = dump.read()

    def events(size):
        position = 0

        def read(_wanted):
            nonlocal position
            position += size
            return text[position - size : position]

        found, handed = [], []
        for event, payload in pg_parallel.Entries(read):
            if event != "entry":
                handed.append(payload)
            found.append(event if event in ("text", "rows") else (event, payload))
        return [item for index, item in enumerate(found) if index == 0 or item != found[index - 1]], b"".join(handed)

    large, whole = events(1 << 20)
    assert whole == text
    assert events(7) == (large, text)
    marked = [item for item in large if isinstance(item, tuple)]
    kinds = [payload for event, payload in marked if event == "entry"]
    assert kinds.count(b"TABLE DATA") == text.count(b"; Type: TABLE DATA; Schema: ") - 1  # one is in the function
    assert (b"INDEX" in kinds, b"FK CONSTRAINT" in kinds, b"BLOBS" in kinds or b"BLOB" in kinds) == (True, True, True)
    copies = [payload for event, payload in marked if event == "copy"]
    assert b'COPY public."odd$name" ("we$ird", note) FROM stdin;\n' in copies
    assert b"COPY public.film (film_id) FROM stdin;\n" not in copies  # the function's, not the table's
    assert b'COPY public."two\nlines" (id, "it""s\nnote") FROM stdin;\n' in copies
    assert b'COPY public."odd FROM stdin;\nname" (v) FROM stdin;\n' in copies


@pytest.mark.parametrize("method,jobs", [("switch", 2), ("switch", 1), ("in-place", 1)])
def test_a_latin1_database_with_accented_names_backs_up_and_restores_exactly(extra_alias, settings, method, jobs):
    """pg_dump writes a LATIN1 database's text in LATIN1: the manifest names its tables as they
    are (the catalog, in LATIN1 too, once refused the backup for a name read as UTF-8), the pool
    sends its statements as they are, and a switch checks its rows under those names."""
    database = f"latin_exact{settings.SUFFIX}"
    as_superuser(
        "postgres",
        f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
        f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'",
    )
    alias = extra_alias("latin", NAME=database)
    settings.BACKUP_RESTORE_METHOD, settings.BACKUP_RESTORE_JOBS = method, jobs
    try:
        as_superuser(
            database,
            'CREATE TABLE "café" (id int PRIMARY KEY, "naïve" text)',
            """INSERT INTO "café" SELECT g, 'crème ' || g FROM generate_series(1, 25) g""",
            'CREATE INDEX ON "café" ("naïve")',
        )
        before = postgres_fingerprint(database)
        made = backup_of(alias)
        assert made.manifest["table_rows"] == {'public."café"': 25}
        as_superuser(database, 'DELETE FROM "café"')
        assert quick_restore(made.filename).method == method
        assert_same_fingerprint(postgres_fingerprint(database), before)
        # The drill's scratch database takes the encoding, so that its dump compares line by line.
        drill = services.verify_backup(made.filename, actor=services.Actor.command(), level="restore")
        assert drill.passed, drill.message
    finally:
        connections[alias].close()
        drop_databases_left_beside(database)
        as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def backed_up_then_changed(switching, statements):
    """Pagila with ``statements`` run, its fingerprint and a backup of it; then changed."""
    alias, database, role = switching
    as_superuser(database, statements)
    before = postgres_fingerprint(database)
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    return made, before


def test_a_parallel_switch_restores_lookalikes_of_dump_entries_exactly(switching, settings):
    database = switching[1]
    settings.BACKUP_RESTORE_JOBS = 3
    made, before = backed_up_then_changed(switching, LOOKALIKES)
    rows = made.manifest["table_rows"]  # the rows a switch checks it loaded
    assert (rows[TWO_LINES], rows['public."odd FROM stdin;\nname"']) == (40, 7)

    assert quick_restore(made.filename).method == "switch"
    assert_same_fingerprint(postgres_fingerprint(database), before)


def record_sql_sent(monkeypatch):
    """The SQL the dispatcher hands the pool and the first session, as it goes ("pool" and
    "serial"); the real ``put`` still runs."""
    sent = {"pool": [], "serial": []}
    put = pg_parallel.ParallelLoad.put

    def recording(self, items, item):
        if item is not None and item[0] == "sql":
            sent["pool" if items is self.shared else "serial"].append(item[1][1])
        put(self, items, item)

    monkeypatch.setattr(pg_parallel.ParallelLoad, "put", recording)
    return sent


KEYS = r"""
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Keyed ""t"" rows" ("Id" int NOT NULL, code text, note text, at int);
INSERT INTO "Odd Schema"."Keyed ""t"" rows" SELECT g, 'c' || g, 'n' || g, g FROM generate_series(1, 500) g;
ALTER TABLE "Odd Schema"."Keyed ""t"" rows" ADD PRIMARY KEY ("Id");
ALTER TABLE "Odd Schema"."Keyed ""t"" rows" ADD CONSTRAINT code_key UNIQUE (code, note);
ALTER TABLE "Odd Schema"."Keyed ""t"" rows" ADD CONSTRAINT deferred_key UNIQUE (at) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE "Odd Schema"."Keyed ""t"" rows" ADD CONSTRAINT covering_key UNIQUE (note) INCLUDE (code);
ALTER TABLE "Odd Schema"."Keyed ""t"" rows" ADD CONSTRAINT nulls_key UNIQUE NULLS NOT DISTINCT (at, code);
ALTER TABLE public.film ADD CONSTRAINT film_title_key UNIQUE (title) WITH (fillfactor = 70);
ALTER TABLE public.actor CLUSTER ON actor_pkey;
CREATE TABLE public.by_code (code text, note text,
    FOREIGN KEY (code, note) REFERENCES "Odd Schema"."Keyed ""t"" rows" (code, note));
INSERT INTO public.by_code VALUES ('c1', 'n1');
"""


def test_keys_are_built_by_the_pool_as_their_indexes_then_made_constraints_exactly(switching, settings, monkeypatch):
    """A plain primary key or unique constraint of an ordinary table is built as its index side by
    side with the others, then linked by the first session; one with options, or of a partitioned
    table (Pagila's payment), is added as the dump says. The catalog is the same either way."""
    database = switching[1]
    settings.BACKUP_RESTORE_JOBS = 2
    made, before = backed_up_then_changed(switching, KEYS)
    sent = record_sql_sent(monkeypatch)

    assert quick_restore(made.filename).method == "switch"
    assert_same_fingerprint(postgres_fingerprint(database), before)
    pool, serial = b"".join(sent["pool"]), b"".join(sent["serial"])
    for index in (
        b'CREATE UNIQUE INDEX "Keyed ""t"" rows_pkey" ON "Odd Schema"."Keyed ""t"" rows" USING btree ("Id");',
        b'CREATE UNIQUE INDEX code_key ON "Odd Schema"."Keyed ""t"" rows" USING btree (code, note);',
        b"CREATE UNIQUE INDEX payment_p2022_01_pkey ON public.payment_p2022_01 USING btree (payment_date, payment_id);",
        b"CREATE UNIQUE INDEX actor_pkey ON public.actor USING btree (actor_id);",
    ):
        assert index in pool
    for link in (
        b'ADD CONSTRAINT "Keyed ""t"" rows_pkey" PRIMARY KEY USING INDEX "Keyed ""t"" rows_pkey";',
        b"ADD CONSTRAINT code_key UNIQUE USING INDEX code_key;",
        b"ADD CONSTRAINT payment_p2022_01_pkey PRIMARY KEY USING INDEX payment_p2022_01_pkey;",
        # The key's table flag is set after the link, in the first session (see the next test).
        b"ADD CONSTRAINT actor_pkey PRIMARY KEY USING INDEX actor_pkey;\n"
        b"ALTER TABLE public.actor CLUSTER ON actor_pkey;",
    ):
        assert link in serial
    for as_dumped in (
        b"ADD CONSTRAINT payment_pkey PRIMARY KEY (payment_date, payment_id);",
        b"ADD CONSTRAINT deferred_key UNIQUE (at) DEFERRABLE INITIALLY DEFERRED;",
        b"ADD CONSTRAINT covering_key UNIQUE (note) INCLUDE (code);",
        b"ADD CONSTRAINT nulls_key UNIQUE NULLS NOT DISTINCT (at, code);",
        b"ADD CONSTRAINT film_title_key UNIQUE (title) WITH (fillfactor='70');",
    ):
        assert as_dumped in pool
    assert b"CLUSTER ON" not in pool


# Two flags of one table, each set by an index's entry after its build. In two sessions of the
# pool, side by side, each build's SHARE lock blocks the other's flag: a deadlock, unless the
# flags wait for the pool. Enough rows that the two builds overlap.
TWO_FLAGS = """
CREATE TABLE public.reading_log (id int NOT NULL, sensor int, value int);
INSERT INTO public.reading_log SELECT g, g % 97, g % 1013 FROM generate_series(1, 400000) g;
CREATE INDEX reading_log_sensor ON public.reading_log (sensor);
ALTER TABLE public.reading_log CLUSTER ON reading_log_sensor;
CREATE UNIQUE INDEX reading_log_id ON public.reading_log (id);
ALTER TABLE public.reading_log REPLICA IDENTITY USING INDEX reading_log_id;
CREATE TABLE public.keyed_log (id int PRIMARY KEY, at int NOT NULL);
ALTER TABLE public.keyed_log REPLICA IDENTITY USING INDEX keyed_log_pkey;
"""


def test_table_flags_set_by_index_entries_wait_for_the_pool_and_come_back(switching, settings, monkeypatch):
    database = switching[1]
    settings.BACKUP_RESTORE_JOBS = 2
    made, before = backed_up_then_changed(switching, TWO_FLAGS)
    in_pool = record_sql_sent(monkeypatch)["pool"]

    assert quick_restore(made.filename).method == "switch"
    assert_same_fingerprint(postgres_fingerprint(database), before)
    assert [text for text in in_pool if b"CLUSTER ON" in text or b"REPLICA IDENTITY" in text] == []
    assert any(b"CREATE INDEX reading_log_sensor ON public.reading_log" in text for text in in_pool)


def row_bytes_by_table(path):
    """The bytes of each table's rows in a plain dump, read line by line."""
    sizes, table = {}, None
    with gzip.open(path, "rb") as dump:
        for line in dump:
            if table is not None:
                if line == b"\\.\n":
                    table = None
                else:
                    sizes[table] += len(line)
            elif line.startswith(b"COPY ") and line.endswith(b" FROM stdin;\n"):
                table = line.split(b" ")[1]
                sizes.setdefault(table, 0)
    return sizes


def test_the_pool_builds_the_indexes_of_the_largest_tables_first(switching, settings, monkeypatch, backup_dir):
    """Pagila's dump lists its keys and indexes by name; the pool is handed them by the size of
    their table's rows, largest first (the longest builds start together), and the restore is
    exact."""
    alias, database, role = switching
    settings.BACKUP_RESTORE_JOBS = 2
    before = postgres_fingerprint(database)
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    sizes = row_bytes_by_table(backup_dir / made.filename)
    in_pool = record_sql_sent(monkeypatch)["pool"]

    assert quick_restore(made.filename).method == "switch"
    assert_same_fingerprint(postgres_fingerprint(database), before)
    tables = [pg_parallel.BUILT_ON.search(text).group(1) for text in in_pool]
    largest = max(sizes, key=sizes.get)
    assert tables[0] == largest, (tables[:3], largest)
    handed = [sizes.get(table, 0) for table in tables]
    assert handed == sorted(handed, reverse=True)
    assert len(set(tables)) > 10


def test_a_row_that_fails_in_the_pool_stops_the_load_and_changes_nothing(switching, settings, monkeypatch):
    """A row the server refuses (here: one made up on the way) fails its session of the pool;
    every session stops, the new database is dropped, and the live one is as it was."""
    alias, database, role = switching
    settings.BACKUP_RESTORE_JOBS = 2
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    changed = postgres_fingerprint(database)
    reader = pg_parallel.Entries.__iter__

    def with_a_bad_row(self):
        spoiled = False
        for event, payload in reader(self):
            if event == "rows" and not spoiled and payload.count(b"\n") > 100:
                payload, spoiled = payload + b"not\ta\trow\n", True
            yield event, payload

    monkeypatch.setattr(pg_parallel.Entries, "__iter__", with_a_bad_row)

    with pytest.raises(RestoreFailed, match="not changed.*(invalid input|extra data|missing data)"):
        quick_restore(made.filename)
    assert_same_fingerprint(postgres_fingerprint(database), changed)
    assert databases_like(f"{database}_restore_") == []


class Failure(Exception):
    """Raised by a step that was made to fail after doing its work."""


def fail_after(function):
    def failing(*args, **kwargs):
        function(*args, **kwargs)
        raise Failure(function.__name__)

    return failing


@pytest.mark.parametrize(
    "step",
    [
        (postgresql, "create_database_like"),
        (postgresql.PostgreSQLEngine, "restore"),
        (restore_service, "check_loaded"),
        (postgresql, "copy_database_properties"),
        (postgresql, "end_sessions"),
    ],
    ids=lambda step: step[1],
)
def test_a_switch_that_fails_at_any_step_leaves_the_live_database_as_it_was(switching, monkeypatch, step):
    alias, database, role = switching
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    changed, properties = postgres_fingerprint(database), database_properties(database)
    owner, name = step
    monkeypatch.setattr(owner, name, fail_after(getattr(owner, name)))

    with pytest.raises(Failure):
        quick_restore(made.filename)

    assert_same_fingerprint(postgres_fingerprint(database), changed)
    assert database_properties(database) == properties  # connections allowed again, among others
    assert databases_like(f"{database}_restore_") == []
    assert databases_like(f"{database}_undo_") == []


@pytest.mark.parametrize("jobs", [1, 2], ids=["counted by psql's load", "as the pool's COPYs loaded them"])
def test_a_switch_whose_rows_do_not_match_the_manifest_changes_nothing(switching, settings, jobs):
    alias, database, role = switching
    settings.BACKUP_RESTORE_JOBS = jobs
    made = backup_of(alias)
    table = sorted(made.manifest["table_rows"])[0]
    made.manifest["table_rows"][table] += 1
    write_manifest(made)  # as if rows had been lost on the way
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    changed = postgres_fingerprint(database)

    with pytest.raises(RestoreFailed, match=f"not changed. Table {table} has"):
        quick_restore(made.filename)
    assert_same_fingerprint(postgres_fingerprint(database), changed)
    assert databases_like(f"{database}_restore_") == []


def test_the_rows_the_pool_says_it_loaded_are_those_in_the_tables(switching, settings, monkeypatch):
    """The switch's check takes the server's answer to each COPY of the parallel load: for every
    table of the manifest (one whose name holds what a COPY line holds, too), the rows a count
    finds in the loaded database."""
    alias, database, role = switching
    settings.BACKUP_RESTORE_JOBS = 2
    as_superuser(
        database,
        """CREATE TABLE public."rows (of"" FROM stdin; kind" (id int);
        INSERT INTO public."rows (of"" FROM stdin; kind" SELECT generate_series(1, 700);""",
    )
    made = backup_of(alias)
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    checked = []
    check_loaded = restore_service.check_loaded

    def recording(loaded, copied, table_rows):
        counted = {table: loaded.count_rows(table, among=table_rows) for table in table_rows}
        checked.append((copied, counted))
        check_loaded(loaded, copied, table_rows)

    monkeypatch.setattr(restore_service, "check_loaded", recording)

    assert quick_restore(made.filename).method == "switch"
    [(copied, counted)] = checked
    assert counted == made.manifest["table_rows"]
    assert {table: copied.get(table, 0) for table in counted} == counted
    assert copied['public."rows (of"" FROM stdin; kind"'] == 700
    assert sum(counted.values()) > 40000


def change(owned):
    with owned.cursor() as cursor:
        cursor.execute("INSERT INTO brew (name) VALUES ('stout'); CREATE TABLE later (id int)")


def test_a_switch_waits_for_sessions_it_cannot_end_then_changes_nothing(owned_database, settings):
    """A superuser's session on the live database cannot be ended by the site's role: the
    rename cannot happen, and after the lock timeout nothing has changed."""
    alias, database, role, owned = owned_database
    as_superuser("postgres", f"ALTER ROLE {role} CREATEDB")
    settings.BACKUP_RESTORE_METHOD = "switch"
    settings.BACKUP_RESTORE_LOCK_TIMEOUT = 1
    made = backup_of(alias)
    change(owned)
    changed, properties = postgres_fingerprint(database), database_properties(database)
    superuser_session = server_connection(database)
    try:
        with pytest.raises(DatabaseBusy, match="could not be ended"):
            quick_restore(made.filename)
    finally:
        superuser_session.close()
    assert_same_fingerprint(postgres_fingerprint(database), changed)
    assert database_properties(database) == properties
    assert databases_like(f"{database}_restore_") == []
    # Once that session is gone, the same role switches.
    assert quick_restore(made.filename).method == "switch"


def test_without_createdb_a_restore_works_in_place(owned_database, settings):
    alias, database, role, owned = owned_database
    as_superuser("postgres", f"ALTER ROLE {role} NOCREATEDB")
    settings.BACKUP_RESTORE_METHOD = "auto"
    before = postgres_fingerprint(database)
    made = backup_of(alias)
    change(owned)

    result = quick_restore(made.filename)

    assert result.method == "in-place"
    assert result.undo_database is None
    assert_same_fingerprint(postgres_fingerprint(database), before)
    settings.BACKUP_RESTORE_METHOD = "switch"
    with pytest.raises(InvalidRequest, match="cannot be restored beside the live one"):
        quick_restore(made.filename)


def test_the_undo_database_is_dropped_after_its_time(switching, settings):
    alias, database, role = switching
    settings.BACKUP_RESTORE_KEEP_OLD_HOURS = 2
    made = backup_of(alias)
    undo = quick_restore(made.filename).undo_database
    now = timezone.now()

    assert drop_expired_undo_databases(now + timedelta(hours=1)) == []
    assert drop_expired_undo_databases(now + timedelta(hours=3), dry_run=True) == [(alias, undo)]
    assert databases_like(undo) == [undo]
    assert drop_expired_undo_databases(now + timedelta(hours=3)) == [(alias, undo)]
    assert databases_like(undo) == []


def left_by_an_interrupted_restore(made, monkeypatch):
    """The database a switch restore of ``made`` leaves when its process is killed just before
    the switch: made, marked and loaded by restore_beside, never dropped."""
    prefix = f"{name_prefix(made.database_name)}_restore_"
    before = set(databases_like(prefix))
    with monkeypatch.context() as killed:
        killed.setattr(postgresql.PostgreSQLEngine, "drop_database", lambda engine, name: None)
        killed.setattr(postgresql, "end_sessions", fail_after(lambda cursor, databases: None))
        killed.setattr(restore_service, "drop_interrupted_loads", lambda engine, **options: [])  # keep the others
        with pytest.raises(Failure):
            quick_restore(made.filename)
    [left] = set(databases_like(prefix)) - before
    return left


def test_the_next_restore_drops_a_database_an_interrupted_restore_left(switching, monkeypatch):
    alias, database, role = switching
    properties = database_properties(database)
    made = backup_of(alias)
    left = left_by_an_interrupted_restore(made, monkeypatch)
    hand_made = f"{name_prefix(database)}_restore_20261204"  # a name alone proves nothing
    as_superuser("postgres", f"CREATE DATABASE {hand_made}")
    anothers = f"{name_prefix(database)}_restore_abcdef12"  # a database whose 40 first bytes are the same
    as_superuser(
        "postgres",
        f"CREATE DATABASE {anothers}",
        f"COMMENT ON DATABASE {anothers} IS '{postgresql.loading_mark(database + '_too')}'",
    )

    result = quick_restore(made.filename)

    assert result.method == "switch"
    assert f"Dropped {left}, a database that an interrupted restore had left beside this one." in result.warnings
    assert databases_like(f"{name_prefix(database)}_restore_") == [hand_made, anothers]
    assert database_properties(database) == properties  # the mark went with the switch


def test_the_cleanup_drops_what_interrupted_restores_left_unless_a_restore_is_running(switching, monkeypatch):
    alias, database, role = switching
    engine = get_engine(alias)
    made = backup_of(alias)
    left, looked_at = sorted(left_by_an_interrupted_restore(made, monkeypatch) for _ in range(2))

    def cleanup(dry_run=False):
        return services.cleanup_backups(actor=services.Actor.command(), dry_run=dry_run).dropped_interrupted_loads

    with engine.lock(exclusive=True):  # a restore is running: it may be loading into one of them
        assert cleanup() == []
    output = io.StringIO()
    call_command("backups", "cleanup", "--dry-run", stdout=output)
    assert f"Would drop {left}, left beside {alias} by a switch restore that was interrupted" in output.getvalue()
    session = server_connection(looked_at)  # someone looking at it: it stays
    try:
        assert cleanup() == [(alias, left)]
        assert databases_like(f"{name_prefix(database)}_restore_") == [looked_at]
    finally:
        session.close()
    assert cleanup() == [(alias, looked_at)]
    assert databases_like(f"{name_prefix(database)}_restore_") == []


def left_by_a_killed_drill(made, monkeypatch):
    """The scratch database a restore drill of ``made`` leaves when its process is killed: made,
    marked and loaded, never dropped."""
    prefix = f"{name_prefix(made.database_name)}_drill_"
    before = set(databases_like(prefix))
    with monkeypatch.context() as killed:
        killed.setattr(postgresql.PostgreSQLEngine, "drop_database", lambda engine, name: None)
        services.verify_backup(made.filename, actor=services.Actor.command(), level="restore")
    [left] = set(databases_like(prefix)) - before
    return left


def test_the_cleanup_drops_a_scratch_database_a_killed_drill_left_once_it_is_a_day_old(pagila, monkeypatch):
    alias, database, role = pagila
    hand_made = f"{name_prefix(database)}_drill_abcdef12"  # a name alone proves nothing
    drop_databases_left_beside(database)

    def cleanup(days_later):
        later = timezone.now() + timedelta(days=days_later)
        return services.cleanup_backups(actor=services.Actor.command(), now=later).dropped_scratches

    try:
        left = left_by_a_killed_drill(backup_of(alias), monkeypatch)
        as_superuser("postgres", f"CREATE DATABASE {hand_made}")
        assert cleanup(0) == []  # a drill may still be loading it
        with monkeypatch.context() as a_day_later:
            a_day_later.setattr(retention, "STALE_SCRATCH_HOURS", -1)
            output = io.StringIO()
            call_command("backups", "cleanup", "--dry-run", stdout=output)
        assert f"Would drop {left}, a scratch database of {alias} that a killed drill" in output.getvalue()
        session = server_connection(left)  # someone looking at it: it stays
        try:
            assert cleanup(2) == []
        finally:
            session.close()
        assert cleanup(2) == [(alias, left)]
        assert databases_like(f"{name_prefix(database)}_drill_") == [hand_made]
    finally:
        drop_databases_left_beside(database)


def test_a_scratch_database_in_use_is_never_taken_for_a_leftover(pagila):
    """However long a drill lasts, and between its own connections, its scratch database has a
    session of its own: the cleanup's DROP without FORCE is refused."""
    alias, database, role = pagila
    engine = get_engine(alias)
    with engine.scratch() as scratch:
        later = timezone.now() + timedelta(days=2)
        assert services.cleanup_backups(actor=services.Actor.command(), now=later).dropped_scratches == []
        assert databases_like(scratch.database_name) == [scratch.database_name]
    assert databases_like(scratch.database_name) == []


def test_a_parallel_backup_restores_exactly_as_a_serial_one(pagila, backup_dir, settings):
    """BACKUP_JOBS=2: pg_dump -j from one snapshot, turned into the same one-transaction plain SQL
    (cleanup included), which restores to the same fingerprint; the two files differ only in
    psql's random \\restrict key."""
    alias, database, role = pagila
    before = postgres_fingerprint(database)
    serial = backup_of(alias)
    settings.BACKUP_JOBS = 2
    parallel = backup_of(alias)

    def statements(backup):
        with gzip.open(backup_dir / backup.filename, "rt") as sql:
            return [line for line in sql if not line.startswith(("\\restrict", "\\unrestrict"))]

    assert statements(parallel) == statements(serial)
    assert parallel.manifest["table_rows"] == serial.manifest["table_rows"]
    as_superuser(database, PAGILA_CHANGES.format(role=role))
    quick_restore(parallel.filename)
    assert_same_fingerprint(postgres_fingerprint(database), before)


def test_a_name_in_another_script_keeps_its_undo_database_findable(extra_alias, settings):
    """PostgreSQL cuts names at 63 bytes: 31 Cyrillic letters are 61, so the undo's name is made
    from the name's first 40 bytes, not 40 letters, or its date would be cut off (and the undo
    database never found, nor dropped)."""
    name = "пивоварня_" + "я" * 21
    as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    as_superuser("postgres", f'CREATE DATABASE "{name}"')
    as_superuser(name, "CREATE TABLE brew (id int); INSERT INTO brew VALUES (1)")
    alias = extra_alias("cyrillic", NAME=name)
    settings.BACKUP_RESTORE_METHOD = "switch"
    try:
        undo = quick_restore(backup_of(alias).filename).undo_database
        assert len(undo.encode()) <= 63 and databases_like(undo) == [undo]
        assert drop_expired_undo_databases(timezone.now() + timedelta(days=3)) == [(alias, undo)]
    finally:
        connections[alias].close()
        as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_databases_left_beside(name)
