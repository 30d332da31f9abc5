#!/usr/bin/env bash
# The deploy benchmark (not a test): shipit against plain OpenSSH on a loopback fleet of real
# sshd hosts, as ratios measured in one run on this machine. Needs root and openssh-server,
# like the test suite. Prints a table; nothing is asserted.
#   bench/run.sh                  1, 10 and 50 hosts (20 MB), redeploys, 300 MB on 1 host
#   HOSTS=1,10 MB=20 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHIPIT_BENCH_HOSTS=${HOSTS:-1,10,50} SHIPIT_BENCH_MB=${MB:-20} SHIPIT_BENCH_BIG_MB=${BIG_MB:-300} \
  cargo bench --bench deploy
