"""The compose stack's promises, read from docker-compose.yml and docker/ (CI runs no Docker;
../shared/tools/compose-check.sh runs the stack for real, README: "Docker")."""

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(path for path in (ROOT / "docker").iterdir() if path.is_file())
# ${VAR}, ${VAR:-default}, ${VAR:?error}: what compose fills in from the environment and .env.
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def with_defaults(text):
    """``text`` as compose reads it when .env sets nothing (a required variable: its name)."""
    return VARIABLE.sub(lambda m: m[3] if m[2] == "-" else f"<{m[1]}>", str(text))


def test_backend_is_published_on_loopback_by_default(services):
    assert [with_defaults(port) for port in services["backend"]["ports"]] == ["127.0.0.1:8000:8000"]
    assert "${HOPPYBREW_PORT:-8000}" in services["backend"]["ports"][0]
    assert [name for name, service in services.items() if "ports" in service] == ["backend"]


def test_the_image_is_built_once(services):
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["backend"]
    image = services["backend"]["image"]
    for name, service in services.items():
        if service.get("image") == image and name != "backend":
            assert service["pull_policy"] == "never", f"{name} would pull {image} from a registry"


def test_scheduler_waits_for_a_healthy_backend(services):
    assert services["backend"]["healthcheck"]["test"] == ["CMD", "/app/docker/healthcheck"]
    assert services["scheduler"]["depends_on"]["backend"] == {"condition": "service_healthy"}
    for database in ("db", "drill"):
        assert services["backend"]["depends_on"][database] == {"condition": "service_healthy"}
        assert "pg_isready -h 127.0.0.1" in services[database]["healthcheck"]["test"][1]


def test_app_containers_stop_cleanly_and_know_their_predecessors(services):
    hostnames = set()
    for name in ("backend", "scheduler"):
        service = services[name]
        assert service["init"] is True, f"{name}: PID 1 would ignore SIGTERM"
        hostnames.add(service["hostname"])
    assert hostnames == {"backend", "scheduler"}
    assert "exec docker/supervise gunicorn" in (ROOT / "docker/backend").read_text()
    assert "exec docker/supervise cron -f" in (ROOT / "docker/scheduler").read_text()
    assert services["scheduler"]["command"] == ["docker/scheduler"]


def test_env_file_form_needs_no_recent_compose(services):
    # The mapping form (path, required) needs Compose 2.24; Debian 12's 1.29 rejects it.
    for name in ("backend", "scheduler"):
        assert services[name]["env_file"] == ".env"


def test_drills_use_a_throwaway_server_of_the_same_major_version(services):
    drill, db = services["drill"], services["db"]
    assert drill["image"].split(":")[1].split(".")[0] == db["image"].split(":")[1].split(".")[0]
    assert drill["tmpfs"] == ["/var/lib/postgresql/data"]
    assert "volumes" not in drill and "ports" not in drill
    for name in ("backend", "scheduler"):
        url = urlsplit(with_defaults(services[name]["environment"]["BACKUP_VERIFY_DATABASE_URL"]))
        assert (url.scheme, url.hostname, url.port, url.username) == ("postgres", "drill", 5432, "postgres")
        assert url.password == with_defaults(drill["environment"]["POSTGRES_PASSWORD"])
        assert "drill" in services[name]["depends_on"]
    assert with_defaults(services["backend"]["environment"]["DATABASE_URL"]).startswith("postgres://hoppybrew:")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_docker_scripts_parse_and_are_executable(script):
    shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable (git add --chmod=+x)"


def test_supervise_refuses_to_run_outside_a_container():
    # Its kill -1 would end every process of the user who ran it.
    result = subprocess.run([str(ROOT / "docker/supervise"), "true"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "only as a container's main process" in result.stderr


def test_no_env_file_or_local_data_goes_into_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "data/", ".git"} <= set(ignored)
