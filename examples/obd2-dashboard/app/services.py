"""PostgreSQL and Redis for the OBD2 dashboard, through the `psql` and `redis-cli` clients.

Connection settings come from the environment (`DATABASE_URL`, `REDIS_URL`, loaded by systemd
from /etc/obd2-dashboard.env, or by shipit for migrations and hooks). They are handed to the
clients as environment variables (PG*, REDISCLI_AUTH), never as arguments: a password in
argv would show in every `ps` on the host.
"""

import os
import subprocess
from urllib.parse import parse_qs, unquote, urlsplit

TIMEOUT = 10  # seconds a client may take for one health probe or query


class ServiceError(Exception):
    """A client failed: the message is its stderr, never the connection string."""


def pg_env():
    url = urlsplit(os.environ["DATABASE_URL"])
    if url.scheme not in ("postgres", "postgresql"):
        raise ServiceError("DATABASE_URL is not a postgres:// URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGHOST"] = url.hostname or "localhost"
    env["PGPORT"] = str(url.port or 5432)
    if url.username:
        env["PGUSER"] = unquote(url.username)
    if url.password:
        env["PGPASSWORD"] = unquote(url.password)
    env["PGDATABASE"] = unquote(url.path.lstrip("/")) or env.get("PGUSER", "")
    sslmode = parse_qs(url.query).get("sslmode")
    if sslmode:
        env["PGSSLMODE"] = sslmode[0]
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def psql(sql, variables=None, timeout=TIMEOUT):
    """Runs `sql` (fed on stdin; `:'name'` interpolates `variables`, quoted) and returns the
    unaligned, tuples-only output lines."""
    cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for name, value in (variables or {}).items():
        cmd += ["-v", f"{name}={value}"]
    try:
        out = subprocess.run(
            cmd, input=sql, env=pg_env(), capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServiceError(f"psql: {e.__class__.__name__}") from None
    if out.returncode != 0:
        raise ServiceError(out.stderr.strip() or f"psql exited {out.returncode}")
    return [line for line in out.stdout.splitlines() if line]


def redis_args():
    url = urlsplit(os.environ["REDIS_URL"])
    if url.scheme not in ("redis", "rediss"):
        raise ServiceError("REDIS_URL is not a redis:// URL")
    args = ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    db = url.path.lstrip("/")
    if db:
        args += ["-n", db]
    if url.scheme == "rediss":
        args.append("--tls")
    if url.username and url.password:
        args += ["--user", unquote(url.username)]
    env = dict(os.environ)
    if url.password:
        env["REDISCLI_AUTH"] = unquote(url.password)
    return args, env


def redis(*command, timeout=TIMEOUT):
    """One Redis command; returns its reply lines (`--raw`). An error reply raises."""
    args, env = redis_args()
    try:
        out = subprocess.run(
            # -e: an error reply (e.g. "BUSYGROUP ...") goes to stderr with exit status 1;
            # without it redis-cli prints it like any reply and exits 0.
            ["redis-cli", "-e", "--raw", *args, *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServiceError(f"redis-cli: {e.__class__.__name__}") from None
    if out.returncode != 0:
        reason = out.stderr.strip().split("\n", 1)[0]
        raise ServiceError(reason or f"redis-cli exited {out.returncode}")
    lines = out.stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def db_ok():
    try:
        return psql("SELECT 1") == ["1"], None
    except (ServiceError, KeyError) as e:
        return False, str(e)


def redis_ok():
    try:
        return redis("PING") == ["PONG"], None
    except (ServiceError, KeyError) as e:
        return False, str(e)
