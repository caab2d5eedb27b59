"""``manage.py backups``: output, confirmations that default to No, exit codes, one-line errors."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from backups.formatting import human_size
from backups.models import Backup, BackupStatus

from .conftest import execute, fetch

pytestmark = pytest.mark.django_db(transaction=True)
PROJECT = Path(__file__).resolve().parent.parent


def run(*args):
    out = StringIO()
    call_command("backups", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def created_name(output):
    return output.split()[1]


def test_create_list_show(backup_dir):
    name = created_name(run("create", "--description", "nightly"))
    assert (backup_dir / name).exists()
    listing = run("list")
    assert name in listing and "nightly" in listing
    data = json.loads(run("list", "--json"))
    assert data[0]["filename"] == name and data[0]["size_bytes"] > 0
    assert human_size(data[0]["size_bytes"]) in listing  # human-readable sizes, not bytes
    shown = json.loads(run("show", name))
    assert shown["description"] == "nightly" and shown["status"] == "succeeded"


def test_restore_and_delete_refuse_without_yes_when_nobody_can_answer(backup_dir):
    execute("default", "CREATE TABLE brew (id integer)", "INSERT INTO brew VALUES (1)")
    name = created_name(run("create"))
    execute("default", "INSERT INTO brew VALUES (2)")
    with pytest.raises(CommandError, match="--yes"):
        run("restore", name)
    with pytest.raises(CommandError, match="--yes"):
        run("delete", name)
    assert fetch("default", "SELECT count(*) FROM brew") == [(2,)]
    assert (backup_dir / name).exists()
    run("restore", name, "--yes", "--no-pre-restore-backup")
    assert fetch("default", "SELECT count(*) FROM brew") == [(1,)]
    run("delete", name, "--yes")
    assert not (backup_dir / name).exists()


def test_cleanup_dry_run_deletes_nothing(backup_dir, settings):
    settings.BACKUP_RETENTION_MIN_COUNT = 1
    name = created_name(run("create"))
    Backup.objects.filter(filename=name).update(created_at="2020-01-01T00:00:00Z")
    run("create")  # the newest, which is always kept
    output = run("cleanup", "--dry-run")
    assert f"Would delete {name}" in output
    assert (backup_dir / name).exists()
    output = run("cleanup")
    assert f"Deleted {name}" in output
    assert not (backup_dir / name).exists()


def test_sync_rebuilds_the_catalog_from_manifests(backup_dir):
    name = created_name(run("create"))
    Backup.objects.all().delete()
    assert "1 added" in run("sync")
    assert Backup.objects.get(filename=name).status == BackupStatus.SUCCEEDED
    (backup_dir / name).unlink()
    assert "1 missing" in run("sync")
    assert Backup.objects.get(filename=name).status == BackupStatus.MISSING


def test_unknown_backup_is_a_command_error():
    with pytest.raises(CommandError, match="No backup named"):
        run("show", "hoppybrew_backup_19990101_000000.sql.gz")
    with pytest.raises(CommandError, match="not a backup filename"):
        run("show", "../etc/passwd")


# -- as a real process: exit status, stderr, the terminal prompt ------------------------------


def manage(*args, env=None, **kwargs):
    """manage.py with the site's own settings on a scratch SQLite database."""
    kwargs.setdefault("timeout", 300)  # a command that hangs fails the test instead
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True, text=True, **kwargs
    )


@pytest.fixture
def site_env(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'site.sqlite3'}",
        "BACKUP_DIR": str(tmp_path / "backups"),
    }
    assert manage("migrate", "-v0", env=env).returncode == 0
    return env


def test_failure_exits_non_zero_with_one_line_on_stderr(site_env):
    result = manage("backups", "restore", "hoppybrew_backup_19990101_000000.sql.gz", "--yes", env=site_env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "CommandError: No backup named hoppybrew_backup_19990101_000000.sql.gz."
    ]


def test_the_confirmation_defaults_to_no(site_env):
    name = manage("backups", "create", env=site_env).stdout.split()[1]
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "backups", "delete", name],
        cwd=PROJECT,
        env=site_env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    transcript = read_terminal(controller, until=b"[y/N]")
    os.write(controller, b"\n")  # just Enter
    assert process.wait(timeout=30) != 0
    transcript += read_terminal(controller)
    os.close(controller)
    assert b"Cancelled" in transcript
    assert (Path(site_env["BACKUP_DIR"]) / name).exists()


def test_sqlite_site_round_trip_keeps_later_backups_listed(site_env, tmp_path):
    """The embedded default: the catalog lives in the very database being restored."""
    database = tmp_path / "site.sqlite3"
    subprocess.run(
        ["sqlite3", database, "CREATE TABLE brew (name text); INSERT INTO brew VALUES ('Pale Ale');"], check=True
    )
    first = manage("backups", "create", "--description", "A", env=site_env).stdout.split()[1]
    subprocess.run(["sqlite3", database, "UPDATE brew SET name = 'Stout'; CREATE TABLE hops (id int);"], check=True)
    second = manage("backups", "create", "--description", "B", env=site_env).stdout.split()[1]
    result = manage("backups", "restore", first, "--yes", env=site_env)
    assert result.returncode == 0, result.stderr
    tables = subprocess.run(["sqlite3", database, ".tables"], capture_output=True, text=True).stdout.split()
    assert "hops" not in tables
    names = subprocess.run(["sqlite3", database, "SELECT name FROM brew"], capture_output=True, text=True).stdout
    assert names.strip() == "Pale Ale"
    listed = {item["filename"] for item in json.loads(manage("backups", "list", "--json", env=site_env).stdout)}
    assert {first, second} <= listed
    assert len(listed) == 3  # and the pre-restore backup


# -- progress: a bar on a terminal, nothing in cron jobs and pipes -------------------------------


def read_terminal(controller, until=None, timeout=120):
    """What a pseudo-terminal shows, until ``until`` appears or the process closes it; a
    process that neither does within ``timeout`` seconds fails the test instead of hanging it."""
    shown = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in shown:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the terminal showed only {shown!r}"
        if not select.select([controller], [], [], remaining)[0]:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    return shown


def on_terminal(*args, env):
    """manage.py with stderr on a pseudo-terminal and stdout in a pipe: (status, stdout, what
    the terminal showed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    shown = read_terminal(controller)
    os.close(controller)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=60), stdout, shown.decode().replace("\r\n", "\n")  # the terminal's own CRs


def last_state(shown):
    """The progress line as it stands at the end: what follows the last carriage return."""
    assert shown.endswith("\n")
    return shown.rsplit("\r", 1)[-1].replace("\x1b[K", "").strip()


def test_create_and_restore_show_a_progress_bar_on_a_terminal(site_env):
    status, stdout, shown = on_terminal("backups", "create", env=site_env)
    assert status == 0 and stdout.startswith("Created ")
    line = last_state(shown)
    assert line.startswith("Backing up") and " dumped, " in line and " written" in line
    assert re.search(r"\d+(\.\d)? (bytes|KB|MB)/s", line)

    name = stdout.split()[1]
    status, stdout, shown = on_terminal("backups", "restore", name, "--yes", env=site_env)
    assert status == 0 and stdout.startswith("Restored ")
    line = last_state(shown)
    assert line.startswith("Restoring  [########################] 100%")
    size = human_size((Path(site_env["BACKUP_DIR"]) / name).stat().st_size)
    assert f"{size} of {size}" in line and "/s" in line


def test_no_progress_in_pipes_and_cron_jobs(site_env):
    created = manage("backups", "create", env=site_env)
    assert created.returncode == 0 and created.stderr == ""
    name = created.stdout.split()[1]
    restored = manage("backups", "restore", name, "--yes", env=site_env)
    assert restored.returncode == 0
    # Only the warning that the backup was never verified; no progress line.
    assert restored.stderr.strip().splitlines() == [
        f"Warning: {name} has never been verified; consider 'manage.py backups verify --level restore' first."
    ]
