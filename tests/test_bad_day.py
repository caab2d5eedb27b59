"""A bad day: the site's own database down, settings broken where an operation does not look,
storage that refuses writes. Every failure answers as README promises: a JSON 503 (or the
documented code) with a reason, one line on stderr and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import urllib.error
import urllib.request
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from backups import services
from backups.models import Backup

from .conftest import (
    IN_CI,
    POSTGRES_SERVER,
    RunServer,
    as_superuser,
    execute,
    fetch,
    flip_byte,
    manage,
    require_server,
    require_tool,
    superuser_url,
)

SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")


def site_environment(database_url, backup_dir, **extra):
    """The environment of the site's own processes: its settings, not the tests'."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_ENV_FILE": os.devnull,
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": database_url,
        "BACKUP_DIR": str(backup_dir),
        **extra,
    }


def request(url, method="GET", headers=None):
    """(status, parsed JSON body) of an HTTP request, whatever the status."""
    call = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def new_site(name, directory, **extra):
    """A site of its own on a new, migrated PostgreSQL database ``name``, with one backup:
    (environment of its processes, admin's API token, the backup's filename)."""
    require_server("PostgreSQL", POSTGRES_SERVER["host"], POSTGRES_SERVER["port"])
    environment = site_environment(
        superuser_url(name),
        directory / "backups",
        BACKUP_JOB_LOG=str(directory / "jobs.log"),
        **extra,
    )
    as_superuser("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    manage(environment, "migrate", "--noinput", "-v", "0", check=True)
    token = manage(environment, "ensure_admin", check=True).stdout.rsplit("API token:", 1)[1].split()[0]
    backup = manage(environment, "backups", "create", check=True).stdout.split()[1]
    return environment, token, backup


def drop_database(name):
    as_superuser(
        "postgres", f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    )


@pytest.fixture(scope="module")
def site_down(tmp_path_factory):
    """A site with one backup and a running server, whose database is then made unreachable
    for real: connections refused and every session ended."""
    name = f"hoppybrew_down{SUFFIX}"
    directory = tmp_path_factory.mktemp("site-down")
    server = None
    try:
        environment, token, backup = new_site(name, directory, BACKUP_HEALTH_TOKEN="monitor-token")
        server = RunServer(environment, directory / "runserver.log")
        as_superuser(
            "postgres",
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        yield {"environment": environment, "server": server, "token": token, "backup": backup}
    finally:
        if server is not None:
            server.stop()
        drop_database(name)


def assert_one_line_failure(result):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "arguments",
    [["create"], ["list"], ["restore", "{backup}", "--yes"], ["verify", "--latest"], ["sync"], ["cleanup"]],
    ids=lambda arguments: arguments[0],
)
def test_commands_say_in_one_line_that_the_sites_database_is_down(site_down, arguments):
    arguments = [argument.format(backup=site_down["backup"]) for argument in arguments]
    line = assert_one_line_failure(manage(site_down["environment"], "backups", *arguments))
    assert "The site's database, which holds the backup catalog, cannot be reached" in line
    assert "not currently accepting connections" in line  # the database's own words
    assert "DATABASE_URL" in line


def test_a_command_before_migrate_says_to_migrate(tmp_path):
    # SQLite calls a missing table an OperationalError, as it does a file it cannot open.
    environment = site_environment(f"sqlite:///{tmp_path / 'new.sqlite3'}", tmp_path / "backups")
    line = assert_one_line_failure(manage(environment, "backups", "list"))
    assert "(no such table: backups_backup); run 'manage.py migrate' to create its tables" in line
    assert "cannot be reached" not in line


def test_health_command_reports_the_catalog_unreadable(site_down):
    result = manage(site_down["environment"], "backups", "health")
    line = assert_one_line_failure(result)
    assert result.stdout.strip() == "Backups are UNHEALTHY."
    assert "The backup catalog cannot be read" in line


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_api_answers_503_with_the_reason(site_down, method):
    status, body = request(
        f"{site_down['server'].url}/backups", method, {"Authorization": f"Token {site_down['token']}"}
    )
    assert status == 503
    assert body["status"] == "error"
    assert "The site's database, which holds the backup catalog, cannot be reached" in body["message"]


@pytest.mark.parametrize(
    "authorization", ["Bearer monitor-token", "Token {token}"], ids=["monitor token", "staff token"]
)
def test_health_answers_503_unhealthy_with_its_problem(site_down, authorization):
    headers = {"Authorization": authorization.format(token=site_down["token"])}
    status, body = request(f"{site_down['server'].url}/backups/health", headers=headers)
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["problems"] == [
        "The backup catalog cannot be read: the site's database cannot be reached or is not migrated."
    ]
    assert "Traceback" not in site_down["server"].log.read_text()


# -- settings an operation does not use never stand in its way ---------------------------------

BROKEN_UNRELATED_SETTINGS = {
    "BACKUP_SCHEDULE": "0 25 * * *",
    "BACKUP_CLEANUP_SCHEDULE": "every night",
    "BACKUP_RETENTION_DAYS": "forever",
    "BACKUP_KEEP_DAILY": "lots",
    "BACKUP_MAX_AGE_HOURS": "soon",
    "BACKUP_NOTIFY_WEBHOOK_URL": "ftp://hooks.example.com",
    "BACKUP_OFFSITE_STORAGE_URL": "ftp://elsewhere",
}


@pytest.fixture
def break_unrelated_settings(settings, monkeypatch):
    """Call it to break them, here and for the commands run as processes."""

    def breaks():
        for variable, value in BROKEN_UNRELATED_SETTINGS.items():
            setattr(settings, variable, value)
            monkeypatch.setenv(variable, value)

    return breaks


@pytest.mark.django_db(transaction=True)
def test_restore_list_and_download_work_whatever_is_wrong_elsewhere(api, backup_dir, break_unrelated_settings):
    execute("default", "CREATE TABLE brew (id integer)", "INSERT INTO brew VALUES (1)")
    made = api.post("/backups", {}, format="json").json()["filename"]
    execute("default", "INSERT INTO brew VALUES (2)")
    break_unrelated_settings()

    # The command as an operator runs it: a process of its own, through Django's own start-up.
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings"}
    restored = manage(environment, "backups", "restore", made, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "SystemCheckError" not in restored.stderr
    assert fetch("default", "SELECT count(*) FROM brew") == [(1,)]
    listed = manage(environment, "backups", "list")
    assert listed.returncode == 0 and made in listed.stdout

    response = api.get(f"/backups/{made}/download", HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (backup_dir / made).read_bytes()


@pytest.mark.django_db(transaction=True)
def test_what_a_command_needs_is_still_checked_in_one_line(break_unrelated_settings):
    break_unrelated_settings()
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings"}
    line = assert_one_line_failure(manage(environment, "backups", "schedule"))
    assert "BACKUP_SCHEDULE: '0 25 * * *' is not a valid cron expression: hour 25 is out of range 0-23" in line
    assert "BACKUP_RETENTION_DAYS" in line and "(backups.E001)" in line
    line = assert_one_line_failure(manage(environment, "backups", "create"))
    assert "BACKUP_OFFSITE_STORAGE_URL" in line and "BACKUP_SCHEDULE" not in line


# -- storage that refuses writes ----------------------------------------------------------------


def mount_read_only(directory):
    """Make ``directory`` read-only in place (a bind mount of itself, remounted read-only): even
    root cannot write there then, as on a disk the kernel remounted read-only after errors."""
    for command in (["mount", "--bind", directory, directory], ["mount", "-o", "remount,bind,ro", directory]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", directory], capture_output=True)
            message = f"cannot make a read-only mount here ({result.stderr.strip()})"
            if IN_CI:
                pytest.fail(f"{message} (CI=true: tests needing it must run)")
            pytest.skip(message)


@pytest.fixture(scope="module")
def unwritable_storage(tmp_path_factory):
    """A running server whose BACKUP_DIR was writable when it started and no longer is."""
    require_tool("mount")
    name = f"hoppybrew_ro{SUFFIX}"
    directory = tmp_path_factory.mktemp("unwritable")
    backups = directory / "backups"
    server = None
    mounted = False
    try:
        environment, token, backup = new_site(name, directory)
        server = RunServer(environment, directory / "runserver.log")
        mount_read_only(backups)
        mounted = True
        yield {"environment": environment, "server": server, "token": token, "backup": backup, "dir": backups}
    finally:
        if server is not None:
            server.stop()
        if mounted:
            subprocess.run(["umount", backups], check=True)
        drop_database(name)


def post(site, path, body):
    call = urllib.request.Request(
        f"{site['server'].url}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Token {site['token']}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(call, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_backup_into_an_unwritable_directory_names_the_setting_and_writes_nothing(unwritable_storage):
    before = sorted(path.name for path in unwritable_storage["dir"].iterdir())
    status, body = post(unwritable_storage, "/backups", {})
    assert status == 503
    message = body["message"]
    assert f"(BACKUP_DIR: {unwritable_storage['dir']})" in message
    assert "Read-only file system" in message and "Nothing was written." in message
    assert f"write to {unwritable_storage['dir']}" in message and "or point BACKUP_DIR at a directory" in message
    assert sorted(path.name for path in unwritable_storage["dir"].iterdir()) == before


def test_a_restore_that_cannot_store_its_pre_restore_backup_says_the_database_is_unchanged(unwritable_storage):
    status, body = post(unwritable_storage, "/backups/restore", {"filename": unwritable_storage["backup"]})
    assert status == 503
    message = body["message"]
    assert message.startswith("The restore did not start: the pre-restore backup")
    assert f"(BACKUP_DIR: {unwritable_storage['dir']})" in message
    assert message.endswith("The database was not changed.")


def test_a_command_refuses_an_unwritable_directory_in_one_line(unwritable_storage):
    result = manage(unwritable_storage["environment"], "backups", "create")
    line = assert_one_line_failure(result)
    assert f"BACKUP_DIR: {unwritable_storage['dir']} is not writable by this user. (backups.E003)" in line


# -- texts that told less than the truth ---------------------------------------------------------


def run_command(*args):
    out = StringIO()
    call_command("backups", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_health_says_when_the_passed_verification_was_of_an_older_backup():
    older = run_command("create").split()[1]
    run_command("verify", older)
    newest = run_command("create").split()[1]
    out = run_command("health")
    assert f"newest backup {newest}" in out
    assert f"not verified yet (the last verification, of the older {older}, passed)" in out
    assert "its last verification passed" not in out
    run_command("verify", newest)
    assert f"newest backup {newest}, 0.0 hours old; its last verification passed" in run_command("health")


@pytest.mark.django_db(transaction=True)
def test_verifying_a_damaged_file_does_not_speak_of_a_restore(backup_dir):
    made = run_command("create").split()[1]
    flip_byte(backup_dir / made)
    with pytest.raises(CommandError):
        run_command("verify", made)
    message = services.get_backup(made).verification["message"]
    assert "does not match its manifest" in message and "Nothing was changed" in message
    assert "restored" not in message


@pytest.mark.django_db(transaction=True)
def test_an_empty_catalog_beside_a_full_folder_points_to_sync(backup_dir):
    for _ in range(2):
        run_command("create")
    Backup.objects.all().delete()  # as when the site moves to a new database, whose catalog is empty
    out = run_command("list")
    assert out.strip() == (
        f"No backups. But BACKUP_DIR: {backup_dir} holds 2 backup manifests the catalog does not list "
        "(made with another database, say): run 'manage.py backups sync' to add them."
    )
    run_command("sync")
    assert run_command("list").count("hoppybrew_backup_") == 2


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
def test_the_list_shows_the_engine_and_marks_backups_of_another_engine(api, extra_alias):
    from django.db import connections

    alias = extra_alias("moved", base="sqlite")
    made = run_command("create", "--database", alias).split()[1]
    assert "  sqlite  " in run_command("list")
    [row] = api.get("/backups").json()
    assert (row["engine"], row["engine_matches_database"]) == ("sqlite", True)

    # The alias now points at PostgreSQL: its SQLite backups cannot be restored there.
    connections[alias].close()
    del connections[alias]
    connections.settings[alias] = connections.settings["default"]
    listing = run_command("list")
    assert made in listing and "sqlite (not this database's)" in listing
    [row] = api.get("/backups").json()
    assert (row["engine"], row["engine_matches_database"]) == ("sqlite", False)


@pytest.mark.django_db(transaction=True)
def test_a_restore_of_a_file_gunzipped_by_hand_says_what_lies_beside_it(backup_dir):
    made = run_command("create").split()[1]
    subprocess.run(["gunzip", str(backup_dir / made)], check=True)
    with pytest.raises(CommandError) as raised:
        run_command("restore", made, "--yes")
    message = str(raised.value)
    assert f"The file {made} is missing from the backup storage (BACKUP_DIR: {backup_dir})." in message
    assert f"{made.removesuffix('.gz')} lies beside it: the file was decrypted or decompressed by hand" in message
