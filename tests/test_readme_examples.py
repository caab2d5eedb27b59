"""README's walkthrough, run as written: every bash block marked ``<!-- readme-test -->``, in
order, in one shell, against a live server started as ``make run`` starts it (on SQLite, on a
port of its own). An answer must look like the block README shows after it: a ``json`` block
has the same fields, with the same words, flags and nulls (names, times, sizes and ids vary);
a ``text`` block is the output exactly."""

import json
import os
import re
import shutil
import subprocess

import pytest

from .conftest import IN_CI, PROJECT, RunServer, manage

README = PROJECT / "README.md"
MARKER = "<!-- readme-test -->"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
SEPARATOR = "@@readme-block@@"


def marked_blocks(text):
    """[(code, (kind, expected) or None)] for each bash block right after a marker."""
    blocks = []
    for part in text.split(MARKER)[1:]:
        fences = list(FENCE.finditer(part.lstrip("\n")))
        if not fences or fences[0].start() != 0 or fences[0].group(1) != "bash":
            raise AssertionError(f"{MARKER} must be followed by a bash block: {part[:80]!r}")
        code, rest = fences[0].group(2), part.lstrip("\n")[fences[0].end() :]
        following = FENCE.match(rest.lstrip("\n"))
        expected = None
        if following and following.group(1) in ("json", "text"):
            expected = (following.group(1), following.group(2))
        blocks.append((code, expected))
    return blocks


def same_shape(shown, answered, path="answer"):
    """README's ``shown`` against the ``answered`` value: the same keys; words, flags and nulls
    alike; values with digits in them (names, times, sizes, ids) only of the same type."""
    if isinstance(shown, dict):
        assert isinstance(answered, dict), f"{path}: expected an object, got {answered!r}"
        assert sorted(answered) == sorted(shown), f"{path}: fields {sorted(answered)}, README shows {sorted(shown)}"
        for key, value in shown.items():
            same_shape(value, answered[key], f"{path}.{key}")
    elif isinstance(shown, list):
        assert isinstance(answered, list), f"{path}: expected a list, got {answered!r}"
        assert bool(answered) == bool(shown), f"{path}: {answered!r}, README shows {shown!r}"
        if shown:
            same_shape(shown[0], answered[0], f"{path}[0]")
    elif isinstance(shown, bool) or shown is None or (isinstance(shown, str) and not re.search(r"\d", shown)):
        assert answered == shown, f"{path}: {answered!r}, README shows {shown!r}"
    else:
        kinds = (int, float) if isinstance(shown, (int, float)) else type(shown)
        assert isinstance(answered, kinds) and not isinstance(answered, bool), f"{path}: {answered!r}"


def test_marked_blocks_are_found_with_what_they_should_answer():
    blocks = marked_blocks(README.read_text())
    assert len(blocks) >= 7
    assert sum(expected is not None for _code, expected in blocks) >= 5
    assert "FILE=$(" in "".join(code for code, _expected in blocks)


def test_same_shape_tells_a_different_answer():
    shown = {"status": "success", "filename": "hoppybrew_backup_20241108_120000.sql.gz", "warnings": []}
    same_shape(shown, {"status": "success", "filename": "hoppybrew_backup_20261201_101010.sql.gz", "warnings": []})
    for wrong in (
        {"status": "error", "filename": "x1", "warnings": []},
        {"status": "success", "filename": "x1"},
        {"status": "success", "filename": "x1", "warnings": ["off-site copy failed"]},
        {"status": "success", "filename": 3, "warnings": []},
    ):
        with pytest.raises(AssertionError):
            same_shape(shown, wrong)


def test_the_walkthrough_runs_as_written(tmp_path):
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            message = f"{tool} is not installed (apt-get install {tool})"
            pytest.fail(message) if IN_CI else pytest.skip(message)
    if not (PROJECT / ".venv" / "bin" / "python").exists():
        pytest.fail("README's commands run .venv/bin/python: create it with 'make .venv/.installed-dev'")
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("BACKUP_")},
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_ENV_FILE": os.devnull,
        "DJANGO_SECRET_KEY": "readme",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hoppybrew.sqlite3'}",
        "BACKUP_DIR": str(tmp_path / "backups"),
        "BACKUP_JOB_LOG": str(tmp_path / "jobs.log"),
    }
    # What make run does before it serves (collectstatic aside: the test's admin needs no CSS).
    manage(environment, "migrate", "--noinput", "-v", "0", check=True)
    manage(environment, "ensure_admin", check=True)
    server = RunServer(environment, tmp_path / "runserver.log")
    blocks = marked_blocks(README.read_text())
    script = "set -euo pipefail\n" + "".join(f"{code}\necho {SEPARATOR}\n" for code, _expected in blocks)
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=PROJECT,
            env={**environment, "PORT": str(server.port)},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    outputs = result.stdout.split(f"{SEPARATOR}\n")
    ran = len(outputs) - 1
    assert result.returncode == 0, (
        f"README block {ran + 1} failed:\n{blocks[min(ran, len(blocks) - 1)][0]}\n{result.stderr}"
    )
    for number, ((code, expected), output) in enumerate(zip(blocks, outputs, strict=False), start=1):
        if expected is None:
            continue
        kind, shown = expected
        if kind == "text":
            assert output.strip() == shown.strip(), f"README block {number}:\n{code}\nanswered {output!r}"
            continue
        try:
            answered = json.loads(output)
        except ValueError:
            pytest.fail(f"README block {number} answered no JSON:\n{code}\n{output}")
        same_shape(json.loads(shown), answered, f"block {number}")
    assert "Traceback" not in (tmp_path / "runserver.log").read_text()
