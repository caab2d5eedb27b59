# `make run`: set up and serve on the embedded SQLite database.
# `make test`: set up and run every test (needs the PostgreSQL and MariaDB servers; see README).
# `make bench`: compare backups and restores with their peers; writes bench/RESULTS.md (see there).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := bench/.venv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test bench bench-big lint check clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall whenever a requirements file changes.
$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

# The project's bytecode, written ahead: where PYTHONDONTWRITEBYTECODE is set (this machine, our
# image), every command would otherwise compile the app again, 0.1-0.15 s of its start-up.
BYTECODE = -m compileall -q backups hoppybrew_site

run: $(VENV)/.installed
	$(PY) $(BYTECODE)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_admin
	$(PY) manage.py runserver $(HOST):$(PORT)

# axe-core, which the browser tests inject into the admin's pages, from npm into node_modules/.
node_modules/.installed: package.json package-lock.json
	scripts/system-packages npm=npm
	npm ci --no-audit --no-fund
	touch $@

test: $(VENV)/.installed-dev node_modules/.installed
	scripts/system-packages
	$(PY) -m pytest

# The benchmark's own venv: the site's requirements plus the peers it is measured against.
$(BENCH_VENV)/.installed: requirements.txt bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r requirements.txt -r bench/requirements.txt
	touch $@

# BENCH_SCALE, BENCH_RUNS, BENCH_LARGE_SCALE, BENCH_PG_URL and BENCH_RESULTS come from the
# environment (see bench/run.py).
bench: $(BENCH_VENV)/.installed
	scripts/system-packages /usr/bin/time=time zstd=zstd pg_dump=postgresql-client
	$(BENCH_VENV)/bin/python $(BYTECODE)
	$(BENCH_VENV)/bin/python bench/run.py

# Big databases (issue 19): both data shapes, parallel backups, restores beside and switched, the
# site's longest gap during a restore; replaces its section of bench/RESULTS.md.
bench-big: $(BENCH_VENV)/.installed
	scripts/system-packages /usr/bin/time=time pg_dump=postgresql-client
	$(BENCH_VENV)/bin/python $(BYTECODE)
	$(BENCH_VENV)/bin/python bench/big.py

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

check: $(VENV)/.installed
	$(PY) manage.py check

clean:
	rm -rf $(VENV) data/static $(BENCH_VENV) bench/data node_modules
