"""Exact and safe MariaDB restores, on Sakila and on a torture schema of every kind of object.

A restore must leave the database equal to the backup (objects created since are gone), and a
restore that cannot finish must leave it as it was: MariaDB cannot roll back DDL, so a dump (and
the pre-restore backup that would undo it) is proven to load in a scratch database before the
live one is touched, and a restore that still stops partway is undone. Each case compares a
full fingerprint: the SHOW CREATE of every object, every row (past rows of system-versioned
tables and invisible columns included) and every sequence.
"""

import hashlib
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from backups import services
from backups.engines import get_engine
from backups.exceptions import DatabaseUnavailable, RestoreFailed, RestoreIncomplete
from backups.models import Backup, Trigger

from .conftest import (
    DAMAGES,
    DATASETS,
    break_near_the_end,
    execute,
    fetch,
    first_half,
    mariadb_user,
    processes_named,
    read_manifest,
    rewrite_backup,
    scratch_pattern,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mariadb"])
COMMAND = services.Actor.command()

TORTURE = [
    # 4-byte UTF-8 in ENUM and SET members and in a default; generated and invisible columns.
    "CREATE TABLE brew (id int PRIMARY KEY, name varchar(50) DEFAULT '🍺 house',"
    " mood ENUM('calm', '🍺 cheers', '😀') DEFAULT '🍺 cheers', tags SET('hoppy', '🌶') DEFAULT '🌶',"
    " abv decimal(4,1), strength decimal(5,1) AS (abv * 2) VIRTUAL,"
    " name_length int AS (CHAR_LENGTH(name)) PERSISTENT, secret varchar(20) INVISIBLE DEFAULT 'hidden')"
    " DEFAULT CHARSET=utf8mb4",
    "INSERT INTO brew (id, name, mood, tags, abv, secret) VALUES (1, 'Pale 🍺', '😀', 'hoppy,🌶', 5.2, 's1'),"
    " (2, 'Stout', 'calm', '', 7.5, 's2'), (3, 'IPA', DEFAULT, DEFAULT, 6.4, DEFAULT)",
    # A system-versioned table with history.
    "CREATE TABLE ledger (id int PRIMARY KEY, amount int) WITH SYSTEM VERSIONING",
    "INSERT INTO ledger VALUES (1, 10), (2, 20)",
    "UPDATE ledger SET amount = amount + 1",
    "UPDATE ledger SET amount = amount + 1",
    "DELETE FROM ledger WHERE id = 2",
    # Views on views WITH CHECK OPTION, named so that name order is the wrong order.
    "CREATE VIEW strong AS SELECT id, name, abv FROM brew WHERE abv > 5",
    "CREATE VIEW b_stronger AS SELECT id, name, abv FROM strong WHERE abv > 6 WITH CHECK OPTION",
    "CREATE VIEW a_strongest AS SELECT id, abv FROM b_stronger WHERE abv > 7 WITH CASCADED CHECK OPTION",
    # A sequence that has moved, routines (a view uses a function), a trigger, an event.
    "CREATE SEQUENCE batch_number START WITH 100 INCREMENT BY 5",
    "SELECT NEXTVAL(batch_number)",
    "CREATE FUNCTION double_it(x int) RETURNS int DETERMINISTIC RETURN x * 2",
    "CREATE VIEW doubled AS SELECT id, double_it(id) AS twice FROM brew",
    "CREATE PROCEDURE add_brew(IN brew_name varchar(50))"
    " INSERT INTO brew (id, name, abv) VALUES (NEXTVAL(batch_number), brew_name, 4.0)",
    "CREATE TRIGGER brew_tick BEFORE INSERT ON brew FOR EACH ROW SET NEW.name = CONCAT(NEW.name, ' ✓')",
    "CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM brew WHERE id < 0",
]

CHANGES = [
    "UPDATE brew SET abv = abv + 1, mood = 'calm'",
    "UPDATE ledger SET amount = 99",
    "DROP VIEW a_strongest",
    "DROP TABLE ledger",
    "SELECT NEXTVAL(batch_number)",
    "DROP VIEW doubled",
    "DROP FUNCTION double_it",
    # One object of each kind created after the backup.
    "CREATE TABLE hops (id int)",
    "CREATE VIEW new_view AS SELECT id FROM hops",
    "CREATE PROCEDURE new_procedure() SELECT 1",
    "CREATE FUNCTION new_function() RETURNS int DETERMINISTIC RETURN 1",
    "CREATE EVENT new_event ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM hops",
    "CREATE TRIGGER new_trigger BEFORE INSERT ON hops FOR EACH ROW SET NEW.id = NEW.id + 1",
    "CREATE SEQUENCE new_sequence",
]


# What neither Sakila nor the torture schema holds: foreign keys in a circle, CHECK constraints,
# binary and JSON values with every escape, extreme floats, a zero date (sql_mode ''), bits,
# fractional seconds, comments, an AUTO_INCREMENT ahead of the rows, partitions, a MyISAM table
# with duplicate rows and no key, spatial and full-text indexes, an invoker's view, ordered triggers.
MORE_KINDS = [
    "CREATE TABLE a (id int PRIMARY KEY AUTO_INCREMENT, b_id int, blobby longblob, f float, d double, bits bit(7),"
    " j json CHECK (JSON_VALID(j)), at datetime(6), z date,"
    " note text COLLATE utf8mb4_bin COMMENT 'a ''quoted'' comment',"
    " CONSTRAINT positive CHECK (b_id IS NULL OR b_id > 0)) COMMENT='table comment' AUTO_INCREMENT=1000",
    "CREATE TABLE b (id int PRIMARY KEY, a_id int, FOREIGN KEY (a_id) REFERENCES a (id) ON DELETE CASCADE)",
    "ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b (id)",
    "INSERT INTO a (blobby, f, d, bits, j, at, z, note) VALUES (UNHEX('00FF0A0D5C27225C30'), 0.1, 0.1 + 0.2,"
    " b'1010101', '{\"k\": \"v\\\\n\"}', '2024-01-02 03:04:05.123456', '0000-00-00', 'x\\ny\\tz\\\\'),"
    " (NULL, 3.4028235e38, 1.7976931348623157e308, NULL, NULL, NULL, NULL, '')",
    "INSERT INTO b VALUES (1, 1000)",
    "UPDATE a SET b_id = 1 WHERE id = 1000",
    "CREATE TABLE p (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (YEAR(at))"
    " (PARTITION p2023 VALUES LESS THAN (2024), PARTITION pmax VALUES LESS THAN MAXVALUE)",
    "INSERT INTO p VALUES (1, '2023-05-05'), (2, '2025-01-01')",
    "CREATE TABLE nopk (v varchar(10)) ENGINE=MyISAM",
    "INSERT INTO nopk VALUES ('dup'), ('dup')",
    "CREATE TABLE spatial_t (id int PRIMARY KEY, g geometry NOT NULL, SPATIAL INDEX (g), t text, FULLTEXT (t))",
    "INSERT INTO spatial_t VALUES (1, ST_GeomFromText('POINT(1 2)'), 'hello world')",
    "CREATE DEFINER=CURRENT_USER SQL SECURITY INVOKER VIEW v AS SELECT id FROM a",
    "CREATE TRIGGER t1 BEFORE INSERT ON b FOR EACH ROW SET NEW.id = NEW.id",
    "CREATE TRIGGER t2 BEFORE INSERT ON b FOR EACH ROW FOLLOWS t1 SET NEW.id = NEW.id",
]


def backup():
    return services.create_backup(actor=COMMAND, database="mariadb")


def restore(filename):
    return services.restore_backup(filename, actor=COMMAND)


@pytest.fixture(autouse=True)
def empty_schema():
    """Each test starts from the Django tables alone and leaves them so: everything else a
    test made (views, routines, events, sequences as well as tables) is dropped."""
    drop_all_but_django()
    yield
    drop_all_but_django()


def drop_all_but_django():
    known = set(connections["mariadb"].introspection.django_table_names(include_views=False))
    known.add("django_migrations")
    execute("mariadb", "SET SESSION foreign_key_checks = 0")
    for kind, name in objects():
        if kind in ("VIEW", "PROCEDURE", "FUNCTION", "EVENT") or (kind != "TRIGGER" and name not in known):
            statement_kind = "TABLE" if kind in ("BASE TABLE", "SYSTEM VERSIONED", "SEQUENCE") else kind
            execute("mariadb", f"DROP {statement_kind} IF EXISTS `{name}`")
    execute("mariadb", "SET SESSION foreign_key_checks = 1")


def objects():
    return fetch(
        "mariadb",
        "SELECT TABLE_TYPE, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "UNION ALL SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = DATABASE() "
        "UNION ALL SELECT 'EVENT', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE() "
        "UNION ALL SELECT 'TRIGGER', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
    )


def fingerprint():
    """Everything a restore must bring back, as comparable values."""
    definitions = []
    show = {"VIEW": "TABLE", "BASE TABLE": "TABLE", "SYSTEM VERSIONED": "TABLE", "SEQUENCE": "TABLE"}
    for kind, name in sorted(objects()):
        row = fetch("mariadb", f"SHOW CREATE {show.get(kind, kind)} `{name}`")[0]
        # SHOW CREATE TRIGGER also answers when the trigger was created (not restorable).
        statement = {"EVENT": 3, "TRIGGER": 2, "PROCEDURE": 2, "FUNCTION": 2}.get(kind, 1)
        definitions.append((kind, name, row[statement]))
    rows = {}
    for kind, name in objects():
        if kind in ("BASE TABLE", "SYSTEM VERSIONED", "SEQUENCE"):
            columns = [
                f"`{column}`"
                for (column,) in fetch(
                    "mariadb",
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    f"AND TABLE_NAME = '{name}' ORDER BY ORDINAL_POSITION",
                )
            ]
            history = " FOR SYSTEM_TIME ALL" if kind == "SYSTEM VERSIONED" else ""
            values = sorted(
                repr(row) for row in fetch("mariadb", f"SELECT {', '.join(columns)} FROM `{name}`{history}")
            )
            rows[name] = (len(values), hashlib.sha256("\n".join(values).encode()).hexdigest())
    return {"definitions": definitions, "rows": rows}


def django_tables():
    """The row counts of Django's own tables in the test database (empty but for migrations)."""
    known = connections["mariadb"].introspection.django_table_names(include_views=False)
    return {name: fetch("mariadb", f"SELECT COUNT(*) FROM `{name}`")[0][0] for name in [*known, "django_migrations"]}


def load_torture():
    execute("mariadb", *TORTURE)


def changed_state():
    """The database after the changes that a restore must undo; returns its fingerprint."""
    execute("mariadb", *CHANGES)
    return fingerprint()


# -- the torture schema ---------------------------------------------------------------------------


def test_every_kind_of_object_comes_back_exactly_and_what_came_since_is_gone(backup_dir):
    load_torture()
    before = fingerprint()
    assert before["rows"]["ledger"][0] == 6  # one current row, five past versions
    made = backup()
    changed_state()
    restore(made.filename)
    assert fingerprint() == before
    # Not only shown alike: the members are the real 4-byte characters, which take new rows.
    execute("mariadb", "INSERT INTO brew (id, mood, tags) VALUES (9, '😀', '🌶')")
    assert fetch("mariadb", "SELECT name, mood, tags, secret FROM brew WHERE id = 9") == [
        ("🍺 house ✓", "😀", "🌶", "hidden")
    ]
    assert fetch("mariadb", "SELECT COUNT(*) FROM ledger FOR SYSTEM_TIME ALL") == [(6,)]
    assert read_manifest(backup_dir, made.filename)["table_rows"] == {"brew": 3, "ledger": 6, **django_tables()}


def test_more_kinds_of_table_and_value_come_back_exactly(backup_dir):
    execute("mariadb", "SET SESSION sql_mode = ''", *MORE_KINDS)
    before = fingerprint()
    made = backup()
    execute(
        "mariadb",
        "SET SESSION foreign_key_checks = 0",
        "DELETE FROM a",
        "DROP TABLE p",
        "DROP TRIGGER t2",
        "CREATE TABLE later (id int)",
    )
    restore(made.filename)
    assert fingerprint() == before


def test_the_dump_lists_views_after_the_views_they_read_and_the_restore_drill_passes(backup_dir):
    load_torture()
    made = backup()
    sql = gzipped_sql(backup_dir, made.filename)
    created = re.findall(r"^/\*!50001 VIEW `(\w+)`", sql, re.MULTILINE)
    assert created == ["doubled", "strong", "b_stronger", "a_strongest"]  # name order where free
    assert "enum('calm','🍺 cheers','😀') DEFAULT '🍺 cheers'" in sql
    assert "set('hoppy','🌶') DEFAULT '🌶'" in sql and "DEFAULT '🍺 house'" in sql
    result = services.verify_backup(made.filename, actor=COMMAND, level="restore")
    assert result.passed, result.message
    assert result.details["tables_checked"] >= 3


def test_a_drill_fails_a_backup_that_would_restore_inexactly(backup_dir):
    """A dump written as mysqldump alone writes it ('?' for each emoji of the ENUM) loses
    values on restore: the drill's re-dump shows it."""
    load_torture()
    made = backup()
    true, mangled = "'calm','🍺 cheers','😀') DEFAULT '🍺 cheers'", "'calm','? cheers','?') DEFAULT '? cheers'"
    rewrite_backup(backup_dir, made.filename, lambda sql: sql.replace(true, mangled))
    result = services.verify_backup(made.filename, actor=COMMAND, level="restore")
    assert not result.passed
    assert "differs from the backup" in result.message


def gzipped_sql(directory, filename):
    import gzip

    return gzip.decompress((directory / filename).read_bytes()).decode()


# -- failures: refused before the live database is touched ----------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_dump_that_does_not_load_is_refused_and_nothing_is_changed(backup_dir, damage):
    load_torture()
    made = backup()
    DAMAGES[damage](backup_dir, made.filename)
    before = changed_state()
    with pytest.raises(RestoreFailed) as refused:
        restore(made.filename)
    assert not isinstance(refused.value, RestoreIncomplete)
    assert "does not load into a scratch database" in refused.value.message
    assert "was not touched and nothing was changed" in refused.value.message
    assert fingerprint() == before
    # Proven before the pre-restore backup was even taken.
    assert not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()
    assert not scratch_databases_left()


def scratch_databases_left():
    database = connections["mariadb"].settings_dict["NAME"]
    return fetch("mariadb", f"SHOW DATABASES LIKE '{scratch_pattern(database)}'")


def test_the_api_and_the_command_say_nothing_was_changed(api, backup_dir):
    load_torture()
    made = backup()
    rewrite_backup(backup_dir, made.filename, break_near_the_end)
    before = changed_state()
    response = api.post("/backups/restore", {"filename": made.filename}, format="json")
    assert response.status_code == 500
    body = response.json()
    assert "nothing was changed" in body["message"] and "no_such_table" in body["message"]
    assert "undone" not in body and "partly" not in body["message"].lower()
    with pytest.raises(CommandError, match="no_such_table.*nothing was changed"):
        call_command("backups", "restore", made.filename, "--yes")
    assert fingerprint() == before


def test_a_pre_restore_backup_that_would_not_load_stops_the_restore_before_it_starts(settings, extra_alias):
    """The site's user may not recreate a view that root defined (DEFINER needs SUPER): the
    pre-restore backup it takes would not load, so it could not undo anything. Nothing runs."""
    user = f"hoppybrew_undo{settings.SUFFIX}"
    database = connections["mariadb"].settings_dict["NAME"]
    execute("mariadb", "CREATE TABLE brew (id int)", "INSERT INTO brew VALUES (1)")
    grants = [f"ALL PRIVILEGES ON `{database}`.*", f"ALL PRIVILEGES ON `{scratch_pattern(database)}`.*"]
    with mariadb_user(user, *grants):
        extra_alias("site", base="mariadb", USER=user)
        made = services.create_backup(actor=COMMAND, database="site")
        execute("mariadb", "CREATE VIEW root_view AS SELECT id FROM brew", "UPDATE brew SET id = 2")
        before = fingerprint()
        with pytest.raises(RestoreFailed) as refused:
            restore(made.filename)
        undo = Backup.objects.get(trigger=Trigger.PRE_RESTORE)
        assert refused.value.message.startswith(f"{undo.filename} does not load into a scratch database")
        assert "SUPER" in refused.value.message and "nothing was changed" in refused.value.message
        assert fingerprint() == before


def test_without_the_right_to_create_scratch_databases_the_restore_says_what_to_grant(settings, extra_alias):
    user = f"hoppybrew_noscratch{settings.SUFFIX}"
    database = connections["mariadb"].settings_dict["NAME"]
    execute("mariadb", "CREATE TABLE brew (id int)")
    with mariadb_user(user, f"ALL PRIVILEGES ON `{database}`.*"):
        extra_alias("site", base="mariadb", USER=user)
        made = services.create_backup(actor=COMMAND, database="site")
        execute("mariadb", "INSERT INTO brew VALUES (1)")
        with pytest.raises(DatabaseUnavailable) as refused:
            services.restore_backup(made.filename, actor=COMMAND, target="site")
        assert "Nothing was changed" in refused.value.message
        assert f"GRANT ALL ON `{scratch_pattern(database)}`.*" in refused.value.message
        assert fetch("mariadb", "SELECT id FROM brew") == [(1,)]


# -- Sakila ----------------------------------------------------------------------------------------


def load_sakila():
    """Sakila's own files, with its database name rewritten to the test database's (and its
    DROP/CREATE SCHEMA left out: the test database exists and holds Django's tables)."""
    database = connections["mariadb"].settings_dict["NAME"]
    sql = "\n".join((DATASETS / name).read_text() for name in ("sakila-schema.sql", "sakila-data.sql"))
    sql = re.sub(r"^(DROP|CREATE) SCHEMA .*$", "", sql, flags=re.MULTILINE)
    sql = re.sub(r"\bsakila\b", database, sql)
    engine = get_engine("mariadb")
    args, env = engine.command("mysql", ["--default-character-set=utf8mb4"])
    subprocess.run(args, input=sql.encode(), env=env, check=True, capture_output=True)


def change_sakila():
    execute(
        "mariadb",
        "UPDATE film SET rental_rate = rental_rate + 1 WHERE film_id < 100",
        "DELETE FROM payment WHERE payment_id < 50",
        "DROP VIEW actor_info",
        "DROP TABLE film_text",
        "CREATE TABLE hops (id int)",
        "CREATE VIEW hop_view AS SELECT id FROM hops",
        "CREATE PROCEDURE hop_procedure() SELECT 1",
        "CREATE EVENT hop_event ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM hops",
        "CREATE TRIGGER hop_trigger BEFORE INSERT ON hops FOR EACH ROW SET NEW.id = 1",
        "CREATE SEQUENCE hop_sequence",
    )


def test_sakila_comes_back_exactly_through_the_api(api, backup_dir):
    load_sakila()
    before = fingerprint()
    assert before["rows"]["rental"][0] == 16044
    made = backup()
    change_sakila()
    started = time.monotonic()
    response = api.post("/backups/restore", {"filename": made.filename}, format="json")
    print(f"Sakila restore through the API: {time.monotonic() - started:.1f} s")  # for the record, not asserted
    assert response.status_code == 200, response.json()
    assert fingerprint() == before


class Killer(threading.Thread):
    """Kills the ``mysql`` client that replays into the live database, ``times`` times over
    (each one the service starts: the restore, then its undo)."""

    def __init__(self, database, times):
        super().__init__(daemon=True)
        self.database = database.encode()
        self.times = times
        self.killed = 0
        self.stop = threading.Event()

    def run(self):
        seen = set()
        while self.killed < self.times and not self.stop.is_set():
            for pid in self.live_clients():
                if pid not in seen:
                    seen.add(pid)
                    # Just into the replay: well before even a small database has been reloaded
                    # (waiting longer let a quick replay finish first, and nothing was killed).
                    time.sleep(0.05)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed += 1
            time.sleep(0.005)

    def live_clients(self):
        return [pid for pid, argv, _environ in processes_named("mysql") if self.database in argv]


def test_a_killed_restore_is_undone_and_a_second_kill_is_reported(backup_dir):
    load_sakila()
    made = backup()
    change_sakila()
    before = fingerprint()
    database = connections["mariadb"].settings_dict["NAME"]
    killer = Killer(database, times=1)
    killer.start()
    try:
        with pytest.raises(RestoreIncomplete) as stopped:
            restore(made.filename)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed == 1
    assert stopped.value.undone is True and "killed by signal SIGKILL" in stopped.value.message
    assert "was restored automatically: the database is as it was before" in stopped.value.message
    assert fingerprint() == before

    killer = Killer(database, times=2)  # the restore and then its undo
    killer.start()
    try:
        with pytest.raises(RestoreIncomplete) as stopped:
            restore(made.filename)
    finally:
        killer.stop.set()
        killer.join()
    assert stopped.value.undone is False
    undo = stopped.value.pre_restore_backup
    assert "IS LEFT PARTLY RESTORED" in stopped.value.message and f"Restore {undo} now" in stopped.value.message
    restore(undo)  # as the message says
    assert fingerprint() == before


# -- by hand ----------------------------------------------------------------------------------------


def by_hand(command, backup_dir):
    """README's form, run by bash as written (with the test's connection options)."""
    return subprocess.run(["bash", "-c", command], cwd=backup_dir, capture_output=True, text=True)


def test_the_readmes_mariadb_form_loads_into_a_new_database_and_a_cut_file_stops_it(backup_dir):
    load_torture()
    before = fingerprint()
    made = backup()
    new = f"{connections['mariadb'].settings_dict['NAME']}_byhand"
    client = "mysql --protocol=TCP -h 127.0.0.1 -u root"
    try:
        truncated = backup_dir / "cut.sql.gz"
        truncated.write_bytes(first_half(backup_dir / made.filename))
        # README: create the new database, load it, and only then point the site at it.
        form = (
            f"set -o pipefail; {client} -e 'CREATE DATABASE {new} CHARACTER SET utf8mb4' && "
            f"gunzip -c {{file}} | {client} --default-character-set=utf8mb4 {new}"
        )
        result = by_hand(form.format(file="cut.sql.gz"), backup_dir)
        assert result.returncode != 0  # a cut file fails the pipeline: nobody switches to it
        execute("mariadb", f"DROP DATABASE {new}")
        result = by_hand(form.format(file=made.filename), backup_dir)
        assert result.returncode == 0, result.stderr
        copy = fetch("mariadb", f"SELECT mood FROM `{new}`.brew ORDER BY id")
        assert copy == [("😀",), ("calm",), ("🍺 cheers",)]
        assert fetch("mariadb", f"SELECT COUNT(*) FROM `{new}`.ledger FOR SYSTEM_TIME ALL") == [(6,)]
        assert fetch("mariadb", f"SELECT COUNT(*) FROM `{new}`.a_strongest") == [(1,)]
        assert before == fingerprint()
    finally:
        execute("mariadb", f"DROP DATABASE IF EXISTS {new}")
