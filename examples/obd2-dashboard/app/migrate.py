#!/usr/bin/env python3
"""Applies the pending SQL migrations of this release, oldest first; never anything else.

`migrations/NNNN_name.sql` files are applied in name order, each in its own transaction
together with the row that records it in `schema_migrations`, so a migration is applied
completely and exactly once, or not at all. There is no "down", no reset and no schema push:
the runner only moves forward, and a deploy that runs it twice changes nothing the second
time. shipit runs it once per deploy, on the migrate host, after a verified pg_dump backup.

Usage: python3 migrate.py [--status]   (with DATABASE_URL in the environment)
"""

import os
import re
import sys

import services

NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# One runner at a time, even if two deploys raced past shipit's lock.
LOCK_KEY = 7242021

TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def migration_files(directory):
    files = sorted(f for f in os.listdir(directory) if f.endswith(".sql"))
    for f in files:
        if not NAME.match(f):
            raise SystemExit(f"migrate: {f}: expected NNNN_lowercase_name.sql")
    return files


def applied_versions():
    rows = services.psql(
        "SELECT to_regclass('schema_migrations') IS NOT NULL;"
    )
    if rows != ["t"]:
        return set()
    return set(services.psql("SELECT version FROM schema_migrations ORDER BY version;"))


def pending_migrations(directory):
    """The migration files of `directory` not yet recorded as applied."""
    applied = applied_versions()
    return [f for f in migration_files(directory) if NAME.match(f).group(1) not in applied]


def apply(directory, name):
    version = NAME.match(name).group(1)
    with open(os.path.join(directory, name)) as f:
        body = f.read()
    # The lock, the migration and its record share one transaction: a failure leaves no
    # trace (ON_ERROR_STOP ends psql, the open transaction is rolled back), and a migration
    # recorded by a concurrent runner while we waited for the lock makes the primary key
    # refuse ours instead of applying it twice.
    script = (
        "BEGIN;\n"
        f"SELECT pg_advisory_xact_lock({LOCK_KEY});\n"
        f"{body}\n;\n"
        "INSERT INTO schema_migrations (version, name) VALUES (:'version', :'name');\n"
        "COMMIT;\n"
    )
    services.psql(script, {"version": version, "name": name}, timeout=3600)


def main():
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
    services.psql(TABLE)
    pending = pending_migrations(directory)
    if "--status" in sys.argv[1:]:
        print(f"{len(pending)} pending: {' '.join(pending)}" if pending else "up to date")
        return
    if not pending:
        print("migrate: up to date")
        return
    for name in pending:
        print(f"migrate: applying {name}", flush=True)
        try:
            apply(directory, name)
        except services.ServiceError as e:
            raise SystemExit(f"migrate: {name} failed, nothing of it was applied: {e}")
    print(f"migrate: applied {len(pending)} migration(s)")


if __name__ == "__main__":
    main()
