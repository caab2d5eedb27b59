import subprocess
import pytest
from django.db import connections
from .conftest import DATASETS, as_superuser, assert_same_fingerprint, backup_of, postgres_fingerprint, quick_restore, drop_databases_left_beside, server_connection
from .test_exact_postgresql import FEATURES

pytestmark = pytest.mark.django_db(transaction=True)

@pytest.mark.parametrize("method,jobs", [("in-place", 1), ("switch", 2)])
def test_owner(extra_alias, settings, method, jobs):
    role, database = "hb_owner_x", "hb_owned_x"
    as_superuser("postgres", f"DO $$BEGIN CREATE ROLE {role} LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    drop_databases_left_beside(database)
    as_superuser("postgres", f"CREATE DATABASE {database} OWNER {role}")
    as_superuser(database, f"ALTER SCHEMA public OWNER TO {role}")
    sql = (DATASETS / "pagila-schema.sql").read_text().replace("OWNER TO postgres", f"OWNER TO {role}") + (DATASETS / "pagila-data.sql").read_text()
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", role, "-d", database], input=sql, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr[-2000:]
    feats = "\n".join(l for l in FEATURES.splitlines() if "EVENT TRIGGER" not in l and "FORCE ROW" not in l and "postgres_fdw" not in l and "SERVER loopback" not in l)
    c = server_connection(database, role=role)
    with c.cursor() as cur:
        cur.execute(feats)
    c.commit(); c.close()
    alias = extra_alias("owned", NAME=database, USER=role)
    settings.BACKUP_RESTORE_METHOD, settings.BACKUP_RESTORE_JOBS = method, jobs
    before = postgres_fingerprint(database)
    made = backup_of(alias)
    as_superuser(database, "DELETE FROM payment_p2022_07", "DROP TABLE wide", "UPDATE actor SET first_name='X'")
    try:
        assert quick_restore(made.filename).method == method
        assert_same_fingerprint(postgres_fingerprint(database), before)
    finally:
        connections[alias].close()
        as_superuser("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        drop_databases_left_beside(database)
