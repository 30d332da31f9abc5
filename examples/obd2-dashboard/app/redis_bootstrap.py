#!/usr/bin/env python3
"""Prepares Redis for the API: safe to run any number of times, never deletes anything.

- the telemetry stream `obd2:telemetry` with its consumer group `api` (XGROUP CREATE ...
  MKSTREAM; an existing group, BUSYGROUP, is left exactly as it is: same last-delivered id);
- `obd2:schema_version`: set when missing, raised when older than SCHEMA_VERSION, never
  lowered (an older release deployed after a newer one leaves it alone).

It first waits for Redis to answer PING, so it can run right after Redis was (re)started.
shipit runs it once per deploy, on the migrate host, before the API is switched and restarted.
"""

import sys
import time

import services

STREAM = "obd2:telemetry"
GROUP = "api"
VERSION_KEY = "obd2:schema_version"
SCHEMA_VERSION = 1
WAIT_SECONDS = 60


def wait_for_redis():
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        ok, error = services.redis_ok()
        if ok:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"redis-bootstrap: Redis did not answer in {WAIT_SECONDS}s: {error}")
        time.sleep(1)


def ensure_group():
    try:
        services.redis("XGROUP", "CREATE", STREAM, GROUP, "$", "MKSTREAM")
        print(f"redis-bootstrap: created stream {STREAM} with group {GROUP}")
    except services.ServiceError as e:
        if "BUSYGROUP" not in str(e):
            raise
        print(f"redis-bootstrap: stream {STREAM} with group {GROUP}: already there")


def ensure_schema_version():
    created = services.redis("SET", VERSION_KEY, str(SCHEMA_VERSION), "NX")
    if created == ["OK"]:
        print(f"redis-bootstrap: {VERSION_KEY} set to {SCHEMA_VERSION}")
        return
    current = services.redis("GET", VERSION_KEY)[0]
    if current.isdigit() and int(current) < SCHEMA_VERSION:
        # Upgrade steps from `current` to SCHEMA_VERSION would go here, each additive.
        services.redis("SET", VERSION_KEY, str(SCHEMA_VERSION))
        print(f"redis-bootstrap: {VERSION_KEY} raised from {current} to {SCHEMA_VERSION}")
    else:
        print(f"redis-bootstrap: {VERSION_KEY} is {current}: unchanged")


def main():
    wait_for_redis()
    try:
        ensure_group()
        ensure_schema_version()
    except services.ServiceError as e:
        sys.exit(f"redis-bootstrap: {e}")


if __name__ == "__main__":
    main()
