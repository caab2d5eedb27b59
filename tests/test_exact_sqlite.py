"""Exact and atomic SQLite restores, on Chinook and on a torture schema: the database equals the
backup afterwards (user_version and application_id included, objects created since gone), and a
restore that fails anywhere, or is killed, leaves it exactly as it was. Each case compares a
fingerprint: sqlite_master, every row of every table, and the header's numbers."""

import gzip
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connections

from backups import services
from backups.engines import sqlite as sqlite_engine
from backups.engines.sqlite import IterdumpStream, SQLiteDumpStream
from backups.exceptions import BackupDamaged, RestoreFailed, ToolMissing

from .conftest import DAMAGES, DATASETS

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
COMMAND = services.Actor.command()
PROJECT = Path(__file__).resolve().parent.parent

TORTURE = """
CREATE TABLE brew (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, abv REAL, label BLOB,
    strength REAL GENERATED ALWAYS AS (abv * 2) VIRTUAL);
CREATE TABLE "odd ""name"" t" (x, y);
CREATE TABLE tasting (brew_id INTEGER REFERENCES brew (id), note TEXT) STRICT;
CREATE INDEX tasting_brew ON tasting (brew_id);
CREATE UNIQUE INDEX brew_name ON brew (name) WHERE abv > 0;
CREATE VIEW strong AS SELECT id, name FROM brew WHERE abv > 5;
CREATE VIEW stronger AS SELECT id FROM strong WHERE id > 1;
CREATE TRIGGER brew_tick AFTER INSERT ON brew BEGIN INSERT INTO tasting VALUES (NEW.id, 'new'); END;
INSERT INTO brew (name, abv, label) VALUES ('Pale 🍺', 5.2, x'00ff27'), ('Stout', 7.5, NULL), ('IPA', 6.4, x'');
INSERT INTO "odd ""name"" t" VALUES ('line
break', 'it''s');
DELETE FROM brew WHERE name = 'IPA';
PRAGMA user_version = 42;
PRAGMA application_id = 1213415767;
"""
CHANGES = """
UPDATE brew SET abv = abv + 1;
DELETE FROM tasting;
DROP VIEW stronger;
DROP TABLE "odd ""name"" t";
INSERT INTO brew (name, abv) VALUES ('Saison', 6.0);
CREATE TABLE hops (id INTEGER PRIMARY KEY, name TEXT);
CREATE INDEX hops_name ON hops (name);
CREATE VIEW hop_names AS SELECT name FROM hops;
CREATE TRIGGER hop_tick AFTER INSERT ON hops BEGIN DELETE FROM hops WHERE id < 0; END;
PRAGMA user_version = 43;
PRAGMA application_id = 7;
"""

CHINOOK_CHANGES = (
    "UPDATE Track SET UnitPrice = 9.99 WHERE TrackId < 100; DELETE FROM InvoiceLine WHERE InvoiceLineId < 50;"
    "DROP TABLE PlaylistTrack; CREATE TABLE Review (id INTEGER PRIMARY KEY); CREATE INDEX r ON Review (id);"
    "CREATE VIEW Reviews AS SELECT * FROM Review; CREATE TRIGGER t AFTER INSERT ON Review BEGIN SELECT 1; END;"
    "PRAGMA user_version = 4"
)


def database_path():
    return connections["sqlite"].settings_dict["NAME"]


def run_script(script):
    connections["sqlite"].close()
    with sqlite3.connect(database_path(), isolation_level=None) as connection:
        connection.executescript(script)
    connection.close()


@pytest.fixture(autouse=True)
def only_django_tables():
    """Each test starts and ends with Django's tables alone (views and triggers gone too)."""
    drop_all_but_django()
    yield
    drop_all_but_django()


def drop_all_but_django():
    known = set(connections["sqlite"].introspection.django_table_names(include_views=False))
    known.add("django_migrations")
    connections["sqlite"].close()
    with sqlite3.connect(database_path(), isolation_level=None) as connection:
        for kind, name in connection.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger', 'table') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table'"
        ).fetchall():
            if kind != "table" or name not in known:
                quoted = '"' + name.replace('"', '""') + '"'
                connection.execute(f"DROP {kind.upper()} IF EXISTS {quoted}")
        connection.execute("PRAGMA user_version = 0")
        connection.execute("PRAGMA application_id = 0")
    connection.close()


def fingerprint():
    connections["sqlite"].close()
    with sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True) as connection:
        master = sorted(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
        rows = {}
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            quoted = '"' + table.replace('"', '""') + '"'
            values = sorted(repr(row) for row in connection.execute(f"SELECT * FROM {quoted}"))
            rows[table] = (len(values), hashlib.sha256("\n".join(values).encode()).hexdigest())
        header = [connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("user_version", "application_id")]
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    connection.close()
    return {"master": master, "rows": rows, "header": header, "integrity": integrity}


def backup():
    return services.create_backup(actor=COMMAND, database="sqlite")


def restore(filename):
    return services.restore_backup(filename, actor=COMMAND)


def test_the_torture_schema_comes_back_exactly_with_its_header_numbers():
    run_script(TORTURE)
    before = fingerprint()
    assert before["header"] == [42, 1213415767]
    made = backup()
    run_script(CHANGES)
    assert fingerprint() != before
    restore(made.filename)
    assert fingerprint() == before
    run_script("INSERT INTO brew (name, abv) VALUES ('Porter', 5.0)")  # the trigger and the sequence are back
    connections["sqlite"].close()
    with sqlite3.connect(database_path()) as connection:
        assert connection.execute("SELECT id FROM brew WHERE name = 'Porter'").fetchone() == (4,)
        assert connection.execute("SELECT note FROM tasting WHERE brew_id = 4").fetchall() == [("new",)]
    connection.close()


def test_chinook_comes_back_exactly():
    run_script((DATASETS / "Chinook_Sqlite_AutoIncrementPKs.sql").read_text())
    run_script("PRAGMA user_version = 3")
    before = fingerprint()
    assert before["rows"]["Track"][0] == 3503
    made = backup()
    run_script(CHINOOK_CHANGES)
    restore(made.filename)
    assert fingerprint() == before


@pytest.mark.parametrize(
    "damage, error",
    [
        ("bad-sql-at-end", RestoreFailed),
        ("cut-statement", RestoreFailed),
        ("truncated-near-end", BackupDamaged),
        ("truncated-in-middle", BackupDamaged),
    ],
)
def test_a_restore_that_fails_anywhere_changes_nothing(backup_dir, damage, error):
    run_script(TORTURE)
    made = backup()
    DAMAGES[damage](backup_dir, made.filename)
    run_script(CHANGES)
    before = fingerprint()
    with pytest.raises(error) as failed:
        restore(made.filename)
    assert "not changed" in failed.value.message or "restore was stopped" in failed.value.message
    assert fingerprint() == before


def test_a_killed_restore_changes_nothing(backup_dir, settings):
    """The process that restores dies halfway (SIGKILL): SQLite's journal rolls it back."""
    run_script((DATASETS / "Chinook_Sqlite_AutoIncrementPKs.sql").read_text())
    # Enough rows that the replay takes a while: the kill lands inside it.
    run_script(
        "CREATE TABLE filler (id INTEGER PRIMARY KEY, text TEXT);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
        "INSERT INTO filler SELECT i, printf('%0100d', i) FROM n"
    )
    made = backup()
    run_script(CHINOOK_CHANGES)
    before = fingerprint()
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "backups", "restore", made.filename, "--yes"],
        cwd=PROJECT,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (held := restore_holds_the_write_lock()) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert held or worker.poll() is not None, "the restore never began to write"
    time.sleep(0.3)  # into the replay
    if worker.poll() is not None:
        pytest.fail(f"the restore ended before it could be killed: {worker.stderr.read().decode()[-2000:]}")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL, worker.stderr.read()
    assert fingerprint() == before  # opening it rolled the hot journal back


def restore_holds_the_write_lock():
    probe = sqlite3.connect(database_path(), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def by_hand(command, cwd):
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)


README_FORM = (
    "set -o pipefail; rm -f restored.sqlite3; gunzip -c {file} | sqlite3 -bail restored.sqlite3 "
    "&& rm -f {live}-wal {live}-shm && mv restored.sqlite3 {live}"
)


@pytest.mark.parametrize("damage", ["truncated-near-end", "bad-sql-at-end"])
def test_the_readmes_sqlite_form_never_replaces_the_database_with_a_bad_file(backup_dir, damage):
    run_script(TORTURE)
    made = backup()
    DAMAGES[damage](backup_dir, made.filename)
    run_script(CHANGES)
    before = fingerprint()
    result = by_hand(README_FORM.format(file=made.filename, live=database_path()), backup_dir)
    assert result.returncode != 0
    assert fingerprint() == before


def test_the_readmes_sqlite_form_restores_exactly(backup_dir):
    run_script(TORTURE)
    before = fingerprint()
    made = backup()
    run_script(CHANGES)
    connections["sqlite"].close()
    result = by_hand(README_FORM.format(file=made.filename, live=database_path()), backup_dir)
    assert result.returncode == 0, result.stderr
    assert fingerprint() == before
    assert (
        gzip.decompress((backup_dir / made.filename).read_bytes())
        .decode()
        .endswith("PRAGMA user_version = 42;\nPRAGMA application_id = 1213415767;\nCOMMIT;\n")
    )


# Rowids that differ from the rows' order (a table without an INTEGER PRIMARY KEY, after a
# delete), an FTS5 index of that table's rows by rowid, an FTS5 table of its own, an R*Tree (both
# virtual tables, their data in shadow tables) and a table WITHOUT ROWID.
VIRTUAL_TABLES = """
CREATE TABLE notes (title TEXT, body TEXT);
INSERT INTO notes VALUES ('a', 'hops and malt'), ('b', 'yeast'), ('c', 'water and hops');
DELETE FROM notes WHERE title = 'a';
CREATE VIRTUAL TABLE notes_fts USING fts5(title, body, content='notes', content_rowid='rowid');
INSERT INTO notes_fts(notes_fts) VALUES ('rebuild');
CREATE VIRTUAL TABLE own_fts USING fts5(word);
INSERT INTO own_fts VALUES ('bitter'), ('sweet');
CREATE VIRTUAL TABLE boxes USING rtree(id, minx, maxx);
INSERT INTO boxes VALUES (1, 0, 5), (2, 3, 9);
CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
INSERT INTO kv VALUES ('x', 1), ('y', zeroblob(3));
"""


def rowids_and_searches():
    connections["sqlite"].close()
    with sqlite3.connect(database_path()) as connection:
        found = [
            connection.execute(query).fetchall()
            for query in (
                "SELECT rowid, title FROM notes ORDER BY rowid",
                "SELECT rowid, title FROM notes_fts WHERE notes_fts MATCH 'hops' ORDER BY rowid",
                "SELECT word FROM own_fts WHERE own_fts MATCH 'bitter'",
                "SELECT id FROM boxes WHERE minx <= 4 AND maxx >= 4 ORDER BY id",
            )
        ]
    connection.close()
    return found


def test_rowids_and_virtual_tables_come_back_exactly():
    run_script(VIRTUAL_TABLES)
    before, found = fingerprint(), rowids_and_searches()
    assert found == [[(2, "b"), (3, "c")], [(3, "c")], [("bitter",)], [(1,), (2,)]]
    made = backup()
    run_script("DELETE FROM notes; INSERT INTO notes VALUES ('d', 'hops'); DROP TABLE own_fts; DELETE FROM boxes;")
    restore(made.filename)
    assert rowids_and_searches() == found
    assert fingerprint() == before
    assert services.verify_backup(made.filename, actor=COMMAND, level="restore").passed


def test_where_iterdump_was_right_the_dump_is_what_it_wrote():
    """Backups made before the dump was our own were written by Python's iterdump; a drill of
    one compares it with a dump of the restored database, so on a database iterdump dumped
    exactly (here Django's tables, rows and sequences, a view, a trigger, statistics) the two
    must be the same text."""
    run_script(
        "INSERT INTO auth_group (name) VALUES ('brewers'), ('it''s');"
        "CREATE VIEW groups AS SELECT name FROM auth_group;"
        "CREATE TRIGGER tidy AFTER DELETE ON auth_group BEGIN SELECT 1; END; ANALYZE;"
    )
    with sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True, isolation_level=None) as connection:
        connection.execute("BEGIN")
        ours = b"".join(SQLiteDumpStream(connection)).decode()
        theirs = "".join(f"{line}\n" for line in connection.iterdump())
    connection.close()
    assert 'INSERT INTO "sqlite_stat1"' in ours and "INSERT INTO \"auth_group\" VALUES(2,'it''s');" in ours
    assert ours == theirs


def test_a_generated_column_called_rowid_leaves_the_rowid_to_another_name():
    run_script(
        "CREATE TABLE reading (value, rowid GENERATED ALWAYS AS (value + 100));"
        "INSERT INTO reading (value) VALUES (1), (2), (3); DELETE FROM reading WHERE value = 1;"
    )
    before, made = fingerprint(), backup()
    run_script("DELETE FROM reading")
    restore(made.filename)
    assert fingerprint() == before
    connections["sqlite"].close()
    with sqlite3.connect(database_path()) as connection:
        assert connection.execute("SELECT _rowid_, rowid, value FROM reading").fetchall() == [(2, 102, 2), (3, 103, 3)]
    connection.close()


def test_a_backup_made_by_iterdump_still_passes_its_drill(backup_dir, monkeypatch):
    """Backups made before the dump was our own were written by Python's iterdump, without
    rowids; a drill compares one with a dump in that form, not ours."""
    run_script(TORTURE + "INSERT INTO django_session VALUES ('key', 'data', '2030-01-01');")
    dump = sqlite_engine.SQLiteEngine.dump
    monkeypatch.setattr(sqlite_engine, "DUMP_TOOL", sqlite_engine.ITERDUMP)
    monkeypatch.setattr(
        sqlite_engine.SQLiteEngine, "dump", lambda self, stream=None: dump(self, stream or IterdumpStream)
    )
    made = backup()
    monkeypatch.undo()
    assert made.manifest["dump_tool_version"] == "Python sqlite3 iterdump"
    sql = gzip.decompress((backup_dir / made.filename).read_bytes()).decode()
    assert "INSERT INTO \"django_session\" VALUES('key'," in sql  # no rowid: not what we write now
    result = services.verify_backup(made.filename, actor=COMMAND, level="restore")
    assert result.passed, result.message


def test_without_sqlite_3_37_a_backup_says_what_it_needs(monkeypatch):
    """PRAGMA table_list came with SQLite 3.37; this machine's is newer, so an older one is
    pretended here."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ToolMissing, match="need SQLite 3.37 or later .* this one has SQLite 3.31.1"):
        backup()
