"""One suite for every database engine, against the real servers: round trips, failures that
leave the database as it was, damaged files, locks and concurrency. Each test runs once per
engine: PostgreSQL ("default"), SQLite and MariaDB. Where engines differ (MySQL cannot roll back
a failed restore, the service proves first in a scratch database that the dump loads), the test
says so."""

import gzip
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymysql
import pytest
from django.db import connections, transaction

from backups import services
from backups.engines import get_engine
from backups.exceptions import (
    BackupDamaged,
    DatabaseBusy,
    DumpFailed,
    OperationInProgress,
    RestoreFailed,
    RestoreIncomplete,
)
from backups.models import Backup, BackupStatus, Operation

from .conftest import (
    ALIASES,
    BREW_ROWS,
    as_superuser,
    backup_of,
    brew_rows,
    by_hand_psql,
    create_brew,
    execute,
    fetch,
    flip_byte,
    new_database,
    quick_restore,
    raw_postgres_connection,
    read_manifest,
    resign,
    rewrite_backup,
    table_exists,
    truncate_and_resign,
)

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
COMMAND = services.Actor.command()


def on(alias):
    """A test parameter for ``alias``, with the test databases it needs: its own and the catalog's."""
    return pytest.param(
        alias, id=alias, marks=pytest.mark.django_db(transaction=True, databases=sorted({"default", alias}))
    )


@pytest.fixture(params=[on(alias) for alias in ALIASES])
def alias(request):
    return request.param


@pytest.fixture
def brew(alias):
    """A table with rows the tests change and expect back."""
    create_brew(alias)
    return alias


def test_round_trip_brings_back_rows_and_removes_newer_tables(brew):
    alias = brew
    made = backup_of(alias, description="before changes")
    execute(
        alias,
        "UPDATE brew SET name = 'Porter' WHERE id = 1",
        "DELETE FROM brew WHERE id = 2",
        "INSERT INTO brew VALUES (4, 'Lager', '')",
        "CREATE TABLE hops (id integer)",
    )
    quick_restore(made.filename)
    assert brew_rows(alias) == BREW_ROWS
    assert not table_exists(alias, "hops")


def test_manifest_counts_the_rows_of_each_table(brew, backup_dir):
    made = backup_of(brew)
    counts = read_manifest(backup_dir, made.filename)["table_rows"]
    key = "public.brew" if get_engine(brew).vendor == "postgresql" else "brew"
    assert counts[key] == 3


def test_a_restore_that_fails_midway_leaves_the_database_as_it_was(brew, backup_dir):
    alias = brew
    made = backup_of(alias)
    # A broken statement after the brew table has been recreated and filled.
    rewrite_backup(backup_dir, made.filename, lambda sql: sql + "\nINSERT INTO no_such_table VALUES (1);\n")
    execute(alias, "UPDATE brew SET name = 'changed'", "CREATE TABLE hops (id integer)")
    if get_engine(alias).restore_is_transactional:
        with pytest.raises(RestoreFailed, match="not changed"):
            quick_restore(made.filename)
    else:
        # MySQL cannot roll back: the dump is loaded into a scratch database first, and fails
        # there, before the live database is touched (test_exact_mysql has the undo).
        with pytest.raises(RestoreFailed, match="no_such_table.*nothing was changed") as failure:
            quick_restore(made.filename)
        assert not isinstance(failure.value, RestoreIncomplete)
        assert Operation.objects.get(action="restore", filename=made.filename).status == "failed"
    assert {name for _, name, _ in brew_rows(alias)} == {"changed"}
    assert table_exists(alias, "hops")


def test_a_file_that_does_not_match_its_manifest_is_refused_before_anything_runs(brew, backup_dir):
    alias = brew
    made = backup_of(alias)
    flip_byte(backup_dir / made.filename)
    execute(alias, "UPDATE brew SET name = 'changed'")
    with pytest.raises(BackupDamaged, match="does not match its manifest"):
        quick_restore(made.filename)
    assert {name for _, name, _ in brew_rows(alias)} == {"changed"}


def test_a_truncated_file_is_stopped_or_refused_even_with_a_matching_manifest(brew, backup_dir):
    alias = brew
    made = backup_of(alias)
    truncate_and_resign(backup_dir, made.filename)
    execute(alias, "UPDATE brew SET name = 'changed'")
    if get_engine(alias).restore_is_transactional:
        with pytest.raises(BackupDamaged, match="cannot be decompressed"):
            quick_restore(made.filename)
    else:  # MySQL: refused by the load into a scratch database, before the live one is touched
        with pytest.raises(RestoreFailed, match="cannot be decompressed.*nothing was changed"):
            quick_restore(made.filename)
    assert {name for _, name, _ in brew_rows(alias)} == {"changed"}


def test_a_dump_that_ends_before_the_size_its_manifest_recorded_is_not_kept(brew, backup_dir):
    """A sound gzip stream (its sha256 matches) that is shorter than the dump that was written:
    what a decompressor stopping early would hand over."""
    alias = brew
    made = backup_of(alias)
    sql = gzip.decompress((backup_dir / made.filename).read_bytes())
    resign(backup_dir, made.filename, gzip.compress(sql[: sql.rindex(b"\n", 0, len(sql) // 2) + 1]))
    execute(alias, "UPDATE brew SET name = 'changed'")
    if get_engine(alias).restore_is_transactional:
        with pytest.raises(BackupDamaged, match="not the .* its manifest recorded"):
            quick_restore(made.filename)
    else:
        with pytest.raises(RestoreFailed, match="its manifest recorded.*nothing was changed"):
            quick_restore(made.filename)
    assert {name for _, name, _ in brew_rows(alias)} == {"changed"}


def test_backups_at_the_same_time_are_each_valid_under_their_own_name(brew, backup_dir):
    alias = brew

    def one(_):
        try:
            return backup_of(alias).filename
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        names = list(pool.map(one, range(4)))
    assert len(set(names)) == 4
    for name in names:
        sql = gzip.decompress((backup_dir / name).read_bytes()).decode()
        assert "Pale Ale" in sql
        assert Backup.objects.get(filename=name).status == BackupStatus.SUCCEEDED


def test_a_restore_never_runs_during_a_backup_of_the_same_database(brew):
    made = backup_of(brew)
    with get_engine(brew).lock(exclusive=False):
        with pytest.raises(OperationInProgress):
            quick_restore(made.filename)
    with get_engine(brew).lock(exclusive=True):
        with pytest.raises(OperationInProgress):
            backup_of(brew)


def test_restore_refuses_to_run_inside_a_transaction(brew):
    made = backup_of(brew)
    with transaction.atomic(using=brew):
        with pytest.raises(RuntimeError, match="atomic"):
            quick_restore(made.filename)


def test_restore_is_not_deadlocked_by_this_process_having_used_the_database(brew):
    made = backup_of(brew)
    assert brew_rows(brew) == BREW_ROWS  # Django's connection has touched the table
    Backup.objects.count()
    quick_restore(made.filename)
    assert brew_rows(brew) == BREW_ROWS


def test_backups_taken_after_the_restored_one_are_still_listed(brew):
    older = backup_of(brew, description="A")
    newer = backup_of(brew, description="B")
    result = quick_restore(older.filename, pre_restore_backup=True)
    listed = {b.filename for b in services.list_backups(actor=COMMAND)}
    assert {older.filename, newer.filename, result.pre_restore_backup.filename} <= listed
    assert Operation.objects.get(action="restore", filename=older.filename).status == "succeeded"


def test_a_busy_database_makes_the_restore_give_up_and_change_nothing(brew, settings):
    settings.BACKUP_RESTORE_LOCK_TIMEOUT = 1
    alias = brew
    made = backup_of(alias)
    execute(alias, "UPDATE brew SET name = 'changed'")
    holder = open_lock_holder(alias)
    try:
        with pytest.raises(DatabaseBusy, match="busy"):
            quick_restore(made.filename)
    finally:
        holder.close()
    assert {name for _, name, _ in brew_rows(alias)} == {"changed"}


def open_lock_holder(alias):
    """Another session, in the middle of a transaction that has read the brew table."""
    vendor = connections[alias].vendor
    if vendor == "postgresql":
        holder = raw_postgres_connection(alias)
        holder.cursor().execute("SELECT * FROM brew")
        return holder
    if vendor == "mysql":
        holder = pymysql.connect(**connections[alias].get_connection_params())
        holder.begin()
        holder.cursor().execute("SELECT * FROM brew")
        return holder
    holder = sqlite3.connect(connections[alias].settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_postgresql_restore_removes_schemas_types_and_views_created_since(request):
    execute(
        "default",
        "CREATE TABLE brew (id integer)",
        "CREATE SCHEMA archive",
        "CREATE TABLE archive.old (id integer)",
    )
    request.addfinalizer(lambda: execute("default", "DROP SCHEMA IF EXISTS archive CASCADE"))
    made = backup_of("default")
    execute(
        "default",
        "CREATE SCHEMA lab",
        "CREATE TABLE lab.trial (id integer)",
        "CREATE TYPE mood AS ENUM ('hoppy', 'malty')",
        "CREATE VIEW brew_view AS SELECT id FROM brew",
        "CREATE TABLE tagged (id integer GENERATED ALWAYS AS IDENTITY, m mood)",
        "CREATE FUNCTION brewed() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    )
    quick_restore(made.filename)
    schemas = {name for (name,) in fetch("default", "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%'")}
    assert schemas == {"public", "information_schema", "archive"}
    assert fetch("default", "SELECT count(*) FROM pg_type WHERE typname = 'mood'") == [(0,)]
    assert fetch("default", "SELECT count(*) FROM pg_proc WHERE proname = 'brewed'") == [(0,)]
    assert not table_exists("default", "brew_view") and not table_exists("default", "tagged")
    assert fetch("default", "SELECT count(*) FROM archive.old") == [(0,)]


# A process that feeds a restore from its own stdin, unbuffered, so that psql gets whatever the
# test writes at once, and waits for more until it is killed. It runs with the environment the
# conftest gives child processes: the site's settings on this test's database.
FEEDER = """
import sys, django
django.setup()
from backups.engines import get_engine
get_engine("default").restore(sys.stdin.buffer.raw, 30)
"""
FED_TO_THE_END = b"SELECT 'fed to the end';"


def restore_session(alias):
    """State and last query of the restore's psql session on this test's database, if any."""
    found = fetch(
        alias,
        "SELECT state, query FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'hoppybrew-backups'",
    )
    return found[0] if found else None


@pytest.mark.parametrize("alias", [on("default")])
def test_postgresql_restore_commits_nothing_when_its_feeder_dies_midway(brew, backup_dir):
    """psql commits at the end of its input unless the restore tells it otherwise: when the
    process feeding it dies (killed, out of memory), what psql has read must be rolled back.
    Here the feeder dies right after the schema, which drops and recreates every table."""
    made = backup_of("default")
    sql = gzip.decompress((backup_dir / made.filename).read_bytes())
    # Comments after the marker: the restore holds back the last few KiB it has read (where the
    # file's COMMIT would be), and the marker must reach psql.
    schema_only = sql[: sql.index(b"\nCOPY ") + 1] + FED_TO_THE_END + b"\n" + b"--\n" * 4096
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER], stdin=subprocess.PIPE, cwd=PROJECT)
    try:
        feeder.stdin.write(schema_only)
        feeder.stdin.flush()
        deadline = time.monotonic() + 60
        while restore_session("default") != ("idle in transaction", FED_TO_THE_END.decode()):
            assert time.monotonic() < deadline and feeder.poll() is None, restore_session("default")
            time.sleep(0.05)
    finally:
        feeder.kill()
        feeder.wait()
    deadline = time.monotonic() + 60
    while restore_session("default") is not None:  # psql reads the end of its input and quits
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert brew_rows("default") == BREW_ROWS


@pytest.mark.parametrize("alias", [on("default")])
def test_postgresql_backup_restores_by_hand_with_gunzip_and_psql(brew, backup_dir, settings):
    made = backup_of("default")
    with new_database(f"hoppybrew_by_hand{settings.SUFFIX}") as scratch:
        pipeline = f"gunzip -c {backup_dir / made.filename} | {by_hand_psql(scratch)}"
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        assert as_superuser(scratch, "SELECT name FROM brew ORDER BY id") == [("Pale Ale",), ("Stout",), ("Saison",)]
        # and once more over the now populated database, as the README says it can
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        # The file is one transaction: a copy cut short anywhere before its COMMIT commits
        # nothing, even through README's plain pipe.
        sql = gzip.decompress((backup_dir / made.filename).read_bytes())
        truncated = backup_dir / "truncated.sql.gz"
        truncated.write_bytes(gzip.compress(sql[: sql.rindex(b"\nCOMMIT;")]))
        as_superuser(scratch, "DELETE FROM brew")
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline.replace(made.filename, truncated.name)], check=True)
        # still the emptied table: nothing of the truncated restore stayed
        assert as_superuser(scratch, "SELECT count(*) FROM brew") == [(0,)]


@pytest.mark.parametrize("alias", [on("sqlite")])
def test_sqlite_backup_restores_by_hand_with_the_sqlite3_shell(brew, backup_dir, tmp_path):
    made = backup_of("sqlite")
    target = tmp_path / "restored.sqlite3"
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"gunzip -c {backup_dir / made.filename} | sqlite3 {target}"], check=True
    )
    out = subprocess.run(
        ["sqlite3", target, "SELECT name FROM brew ORDER BY id"], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:3] == ["Pale Ale", "Stout", "Saison"]


@pytest.mark.parametrize("alias", [on("mariadb")])
def test_mysql_backup_restores_by_hand_with_gunzip_and_mysql(brew, backup_dir, settings):
    made = backup_of("mariadb")
    scratch = f"hoppybrew_by_hand{settings.SUFFIX}"
    mysql = ["mysql", "--protocol=TCP", "-h", "127.0.0.1", "-u", "root"]
    subprocess.run([*mysql, "-e", f"DROP DATABASE IF EXISTS {scratch}; CREATE DATABASE {scratch}"], check=True)
    try:
        pipeline = f"gunzip -c {backup_dir / made.filename} | {' '.join(mysql)} {scratch}"
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        query = [*mysql, "-N", "-B", scratch, "-e", "SELECT name FROM brew ORDER BY id"]
        out = subprocess.run(query, check=True, capture_output=True, text=True).stdout
        assert out.splitlines() == ["Pale Ale", "Stout", "Saison"]
        # and once more over the now populated database, as the README says it can
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
    finally:
        subprocess.run([*mysql, "-e", f"DROP DATABASE IF EXISTS {scratch}"], check=True)


def test_a_failed_dump_leaves_no_file_and_is_recorded_with_the_tools_message(backup_dir, extra_alias, settings):
    """pg_dump fails for real: the role it runs as may not read one of the tables."""
    role = f"hoppybrew_reader{settings.SUFFIX}"
    execute(
        "default",
        f"DROP ROLE IF EXISTS {role}",
        f"CREATE ROLE {role} LOGIN",
        "CREATE TABLE secret_recipe (id integer)",
        "REVOKE ALL ON secret_recipe FROM PUBLIC",
    )
    try:
        alias = extra_alias("restricted", USER=role)
        with pytest.raises(DumpFailed, match="permission denied for table"):
            backup_of(alias)
    finally:
        connections["restricted"].close()
        execute("default", "DROP TABLE secret_recipe", f"DROP ROLE {role}")
    failed = Backup.objects.get(status=BackupStatus.FAILED)
    assert "pg_dump failed: pg_dump: error: query failed: ERROR:  permission denied for table" in failed.error
    assert [p.name for p in backup_dir.iterdir()] == []
    assert services.list_backups(actor=COMMAND).count() == 0
