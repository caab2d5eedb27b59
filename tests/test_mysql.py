"""What only MySQL/MariaDB does, against the real MariaDB server: exact row counts from
mysqldump's INSERTs, credentials that never reach the command line, locks from named-lock slots,
restores that remove everything created since, the mandatory pre-restore backup, and a site whose
own database (and so its catalog) is MariaDB. test_exact_mysql.py has the exact and safe restores."""

import gzip
import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from backups import services
from backups.engines import get_engine
from backups.engines.mysql import SHARED_LOCK_SLOTS, InsertRowCounter, history_options, mysql_only_dump_options
from backups.exceptions import DumpFailed, InvalidRequest, OperationInProgress
from backups.models import Backup, BackupStatus, Operation, Trigger

from .conftest import execute, fetch, mariadb_user, read_manifest, rewrite_backup, scratch_pattern, table_exists

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mariadb"])
COMMAND = services.Actor.command()
BROKEN = "\nINSERT INTO no_such_table VALUES (1);\n"
PROJECT = Path(__file__).resolve().parent.parent


def backup(alias="mariadb"):
    return services.create_backup(actor=COMMAND, database=alias)


def restore(filename, **options):
    return services.restore_backup(filename, actor=COMMAND, **options)


@pytest.fixture
def brew():
    execute(
        "mariadb",
        "CREATE TABLE brew (id integer PRIMARY KEY, name varchar(100), notes text)",
        "INSERT INTO brew VALUES (1, 'Pale Ale', 'citra'), (2, 'Stout', 'roasty')",
    )


def names():
    return [name for (name,) in fetch("mariadb", "SELECT name FROM brew ORDER BY id")]


@pytest.fixture
def app_user(settings, extra_alias):
    """A MariaDB user with a password and every privilege on the test database, but not SUPER
    (as a site's own user would be), and the alias "app" that connects as it."""
    user = f"hoppybrew_app{settings.SUFFIX}"
    password = "App-Pass with 'quote' and $ign"
    database = connections["mariadb"].settings_dict["NAME"]
    # The scratch databases too: a restore proves there that its dumps load, as the README says.
    grants = [f"ALL PRIVILEGES ON `{database}`.*", f"ALL PRIVILEGES ON `{scratch_pattern(database)}`.*"]
    with mariadb_user(user, *grants, password=password):
        extra_alias("app", base="mariadb", USER=user, PASSWORD=password)
        yield user, password


# -- row counts ---------------------------------------------------------------------------------


def test_row_counts_are_exact_whatever_the_strings_and_the_chunk_boundaries(backup_dir):
    execute(
        "mariadb",
        "CREATE TABLE tricky (id integer, note text, data blob)",
        "CREATE TABLE empty_one (id integer)",
        # Row separators, quotes, backslashes and newlines inside values.
        "INSERT INTO tricky VALUES (1, 'a),(b', NULL), (2, 'it''s \\\\ back\\'), (x', 0x00FF27),"
        " (3, 'line\nbreak);\n(', ''), (4, '\\\\', 0x28292C28)",
        # Added after DELIMITER ;; below: a routine body is not data.
        "CREATE PROCEDURE add_tricky() BEGIN\nINSERT INTO `tricky` VALUES (9, 'x', NULL);\nEND",
    )
    try:
        made = backup()
        counts = read_manifest(backup_dir, made.filename)["table_rows"]
        assert counts["tricky"] == 4 and counts["empty_one"] == 0
        sql = gzip.decompress((backup_dir / made.filename).read_bytes())
        for size in (1, 2, 3, 5, 64, 4099):
            assert count_in_chunks(sql, size) == counts
        # MySQL's mysqldump writes each statement on one line: the same data in that layout.
        one_line = sql.replace(b" VALUES\n(", b" VALUES (").replace(b"),\n(", b"),(")
        assert b"VALUES (1,'a),(b',NULL),(2," in one_line
        for size in (1, 7, 1 << 20):
            assert count_in_chunks(one_line, size) == counts
    finally:
        execute("mariadb", "DROP PROCEDURE add_tricky")


def test_row_counts_add_up_over_the_statements_of_a_big_table(backup_dir):
    execute("mariadb", "CREATE TABLE big (id integer, filler text)")
    with connections["mariadb"].cursor() as cursor:
        cursor.executemany("INSERT INTO big VALUES (%s, %s)", [(n, "x" * 1000) for n in range(3000)])
    made = backup()
    assert read_manifest(backup_dir, made.filename)["table_rows"]["big"] == 3000
    sql = gzip.decompress((backup_dir / made.filename).read_bytes())
    assert sql.count(b"INSERT INTO `big` VALUES") > 1


def count_in_chunks(sql, size):
    counter = InsertRowCounter()
    for start in range(0, len(sql), size):
        counter.feed(sql[start : start + size])
    return counter.counts


# -- credentials and tools -----------------------------------------------------------------------


def test_the_tools_get_the_password_in_their_environment_and_ignore_option_files(app_user, brew, tmp_path, monkeypatch):
    user, password = app_user
    # Settings a developer's shell might carry, which would otherwise win over Django's.
    (tmp_path / ".my.cnf").write_text("[client]\npassword=wrong\nhost=nowhere.invalid\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MYSQL_PWD", "wrong")
    monkeypatch.setenv("MYSQL_HOST", "nowhere.invalid")
    engine = get_engine("app")
    args, env = engine.command("mysqldump", ["--version"])
    assert not any(password in arg for arg in args)
    assert env["MYSQL_PWD"] == password and "MYSQL_HOST" not in env
    made = backup("app")
    assert made.manifest["table_rows"]["brew"] == 2
    execute("mariadb", "UPDATE brew SET name = 'changed'")
    restore(made.filename)
    assert names() == ["Pale Ale", "Stout"]


def test_a_failed_dump_leaves_no_file_and_is_recorded_with_the_tools_message(backup_dir, settings, extra_alias):
    """mysqldump fails for real: the user it runs as may read one table and nothing else."""
    user = f"hoppybrew_reader{settings.SUFFIX}"
    database = connections["mariadb"].settings_dict["NAME"]
    execute("mariadb", "CREATE TABLE brew (id integer)")
    with mariadb_user(user, f"SELECT ON `{database}`.brew"):
        with pytest.raises(DumpFailed, match="mysqldump failed: .*denied"):
            backup(extra_alias("reader", base="mariadb", USER=user))
    failed = Backup.objects.get(status=BackupStatus.FAILED)
    assert failed.error.startswith("mysqldump failed: ")
    assert list(backup_dir.iterdir()) == []


def test_versions_name_the_server_and_the_dump_tool():
    versions = get_engine("mariadb").versions()
    assert versions["server"].startswith("MariaDB 10.")
    assert "mysqldump" in versions["dump_tool"] and "MariaDB" in versions["dump_tool"]


def test_gtid_purged_off_is_added_only_for_mysqls_own_mysqldump():
    mariadb = "mysqldump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)"
    mysql = "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)"
    assert mysql_only_dump_options(mariadb) == []
    assert mysql_only_dump_options(mysql) == ["--set-gtid-purged=OFF"]


def test_history_is_dumped_where_mysqldump_can():
    assert history_options("mysqldump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)") == [
        "--dump-history"
    ]
    assert history_options("mysqldump from 11.4.2-MariaDB, client 10.19 for debian-linux-gnu (x86_64)") == [
        "--dump-history"
    ]
    assert history_options("mysqldump  Ver 10.19 Distrib 10.6.18-MariaDB, for debian-linux-gnu (x86_64)") == []
    assert history_options("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)") == []


def test_size_is_read_from_information_schema(brew):
    assert get_engine("mariadb").size_bytes() > 0


# -- locks ----------------------------------------------------------------------------------------


def test_backups_share_the_lock_up_to_the_number_of_slots_and_a_restore_takes_them_all():
    engine = get_engine("mariadb")
    with ExitStack() as held:
        for _ in range(SHARED_LOCK_SLOTS):
            held.enter_context(engine.lock(exclusive=False))
        with pytest.raises(OperationInProgress):
            held.enter_context(engine.lock(exclusive=False))
    with engine.lock(exclusive=False):
        with pytest.raises(OperationInProgress):
            with engine.lock(exclusive=True):
                pass
    with engine.lock(exclusive=True):
        pass  # all released when their connections closed


def test_locks_are_per_database_and_their_names_fit_mysqls_limit(extra_alias):
    long_name = get_engine(extra_alias("long", base="mariadb", NAME="x" * 64))
    assert all(len(long_name.lock_name(purpose, 15)) <= 64 for purpose in ("operations", "schedule"))
    other = get_engine(extra_alias("other", base="mariadb", NAME="information_schema"))
    with get_engine("mariadb").lock(exclusive=True):
        with other.lock(exclusive=True):
            pass


# -- exact restores -------------------------------------------------------------------------------


def test_a_restore_removes_views_routines_events_and_sequences_created_since_and_brings_back_its_own(brew):
    execute(
        "mariadb",
        "CREATE VIEW old_view AS SELECT name FROM brew",
        "CREATE FUNCTION old_function() RETURNS integer DETERMINISTIC RETURN 1",
        "CREATE TRIGGER old_trigger BEFORE INSERT ON brew FOR EACH ROW SET NEW.notes = COALESCE(NEW.notes, '-')",
        "CREATE EVENT old_event ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM brew WHERE id < 0",
        "CREATE SEQUENCE old_sequence",
    )
    try:
        before = schema_objects()
        made = backup()
        execute(
            "mariadb",
            "DROP FUNCTION old_function",
            "CREATE TABLE hops (id integer)",
            "CREATE VIEW new_view AS SELECT id FROM hops",
            "CREATE PROCEDURE new_procedure() SELECT 1",
            "CREATE EVENT new_event ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM hops",
            "CREATE SEQUENCE new_sequence",
            "UPDATE brew SET name = 'changed'",
        )
        restore(made.filename)
        assert schema_objects() == before
        assert not table_exists("mariadb", "hops")
        assert names() == ["Pale Ale", "Stout"]
        execute("mariadb", "INSERT INTO brew (id, name) VALUES (3, 'Saison')")
        assert fetch("mariadb", "SELECT notes FROM brew WHERE id = 3") == [("-",)]  # the trigger is back
    finally:
        execute(
            "mariadb",
            "DROP VIEW IF EXISTS old_view",
            "DROP FUNCTION IF EXISTS old_function",
            "DROP EVENT IF EXISTS old_event",
            "DROP SEQUENCE IF EXISTS old_sequence",
        )


def schema_objects():
    return set(
        fetch(
            "mariadb",
            "SELECT TABLE_TYPE, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "UNION ALL SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = DATABASE() "
            "UNION ALL SELECT 'EVENT', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE() "
            "UNION ALL SELECT 'TRIGGER', TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE()",
        )
    )


# -- the mandatory pre-restore backup -------------------------------------


def test_the_pre_restore_backup_cannot_be_skipped(api, brew, backup_dir, settings):
    made = backup()
    response = api.post("/backups/restore", {"filename": made.filename, "pre_restore_backup": False}, format="json")
    assert response.status_code == 400
    assert "cannot be skipped" in response.json()["message"]
    with pytest.raises(CommandError, match="cannot be skipped"):
        call_command("backups", "restore", made.filename, "--yes", "--no-pre-restore-backup")
    # Refused before they started: recorded for the audit trail, as failed, and nothing else.
    assert set(Operation.objects.filter(action="restore").values_list("status", flat=True)) == {"failed"}
    assert not Backup.objects.filter(trigger="pre-restore").exists()
    # The setting turns it off for the engines that can roll back, not for this one.
    settings.BACKUP_PRE_RESTORE_BACKUP = False
    result = restore(made.filename)
    assert result.pre_restore_backup.trigger == Trigger.PRE_RESTORE


def test_restoring_into_another_alias_needs_the_same_engine(brew):
    made = backup()
    with pytest.raises(InvalidRequest, match="mysql backup and cannot be restored into the postgresql"):
        restore(made.filename, target="default")


# -- a site whose own database is MariaDB ----------------------------------------------------------


def manage(*args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True, text=True)


@pytest.fixture
def mysql_site(tmp_path, settings):
    """manage.py with the site's own settings on a scratch MariaDB database, which therefore also
    holds the backup catalog and the journal."""
    database = f"hoppybrew_site{settings.SUFFIX}"
    mysql = ["mysql", "--protocol=TCP", "-h", "127.0.0.1", "-u", "root", "-e"]
    subprocess.run([*mysql, f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}"], check=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": f"mysql://root@127.0.0.1:3306/{database}",
        "BACKUP_DIR": str(tmp_path / "backups"),
    }
    assert manage("migrate", "-v0", env=env).returncode == 0
    yield env, [*mysql[:-1], database, "-N", "-B", "-e"]
    subprocess.run([*mysql, f"DROP DATABASE IF EXISTS {database}"], check=True)


def test_a_mariadb_site_keeps_its_catalog_across_restores_and_refusals(mysql_site):
    env, sql = mysql_site
    subprocess.run([*sql, "CREATE TABLE brew (name text); INSERT INTO brew VALUES ('Pale Ale')"], check=True)
    first = manage("backups", "create", "--description", "A", env=env).stdout.split()[1]
    subprocess.run([*sql, "UPDATE brew SET name = 'Stout'; CREATE TABLE hops (id int)"], check=True)
    second = manage("backups", "create", "--description", "B", env=env).stdout.split()[1]

    result = manage("backups", "restore", first, "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([*sql, "SELECT name FROM brew"], capture_output=True, text=True).stdout == "Pale Ale\n"
    assert "hops" not in subprocess.run([*sql, "SHOW TABLES"], capture_output=True, text=True).stdout.split()
    listed = {item["filename"] for item in json.loads(manage("backups", "list", "--json", env=env).stdout)}
    assert {first, second} <= listed and len(listed) == 3  # and the pre-restore backup

    rewrite_backup(Path(env["BACKUP_DIR"]), second, lambda dump: dump + BROKEN)
    result = manage("backups", "restore", second, "--yes", env=env)
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert subprocess.run([*sql, "SELECT name FROM brew"], capture_output=True, text=True).stdout == "Pale Ale\n"
    after = {item["filename"] for item in json.loads(manage("backups", "list", "--json", env=env).stdout)}
    assert after == listed  # refused before a pre-restore backup was taken
    journal = subprocess.run(
        [*sql, "SELECT status, details FROM backups_operation WHERE action = 'restore' ORDER BY started_at"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert [line.split("\t")[0] for line in journal] == ["succeeded", "failed"]
    assert '"undone"' not in journal[1]
