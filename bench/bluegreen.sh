#!/usr/bin/env bash
# The traffic-during-deploy benchmark (not a test): what clients see through Nginx while
# shipit redeploys a web app, on a host of the test fixtures that boots real systemd and
# Nginx (systemd-nspawn; needs root, like the test suite). Prints a table; nothing is asserted
# about failures or speed, but after every deploy Nginx must serve the new VERSION.
#   bash bench/bluegreen.sh                      100 requests/s, 5 redeploys, a 2 s boot
#   RATE=200 REDEPLOYS=10 BOOT_SECONDS=5 bash bench/bluegreen.sh
#   ROWS=plain,blue-green bash bench/bluegreen.sh    only these rows (default: all three)
#
# Rows: `plain restart` (the example's app as one plain unit on a fixed port, restarted in
# place), `blue-green` (examples/blue-green/shop.toml as shipped), `compose up -d` (a Docker
# Compose stack redeployed with `docker-compose up -d`, behind the same Nginx; skipped when
# dockerd, docker-compose or busybox-static is missing). Columns: requests sent and failed
# (count, %, and the outage per deploy they amount to at RATE), latency p50/p99/max of every
# request, the mean wall time of one `shipit deploy`; then blue-green / plain restart and
# compose / plain restart for failed requests and p99. The module doc of
# benches/bluegreen.rs says what each row runs exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
SHIPIT_BENCH_RATE=${RATE:-100} SHIPIT_BENCH_REDEPLOYS=${REDEPLOYS:-5} \
  SHIPIT_BENCH_BOOT_SECONDS=${BOOT_SECONDS:-2} \
  SHIPIT_BENCH_ROWS=${ROWS:-plain,blue-green,compose} \
  cargo bench --bench bluegreen
