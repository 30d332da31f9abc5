#!/usr/bin/env bash
# The WAN deploy benchmark (not a test): shipit against the plain-OpenSSH floor and rsync on a
# fleet of real sshd hosts, each in its own network namespace behind a 50 Mbit/s link, all
# behind one shared 100 Mbit/s uplink (`tc tbf`; no added latency unless the kernel has
# netem), as ratios measured in one run. Needs root, openssh-server, iproute2 and rsync
# (`bash bench/setup-others.sh rsync`). Prints tables; nothing is asserted about speed, but
# every run must leave each host's `current` on a release holding the artifact.
#   bench/wan.sh                              20 and 300 MB to 1, 10 and 50 hosts, skipping
#                                             rows over WAN_MAX (MB × hosts, default 3000)
#   WAN_HOSTS=1,3 WAN_MB=5 bench/wan.sh       a quick smoke run
#   WAN_HOSTS=50 WAN_MB=300 WAN_MAX=0 bench/wan.sh    the 300 MB to 50 hosts rows alone
#
# Rows: a fresh deploy, a one-file redeploy and an unchanged redeploy of each size to each
# host count. The module doc of benches/wan.rs says what each tool runs exactly.
# The hosts' filesystems live on a tmpfs mounted for the run (BENCH_TMPFS, default 20G;
# BENCH_TMPFS=0 keeps them on the machine's disk), like bench/run.sh's. Each tool's releases
# are deleted before the next tool runs: 50 hosts × 300 MB is 15 GB.
# Links and namespaces are deleted when the benchmark ends, panics included; a run killed
# outright leaves `shipit-wan-*` namespaces that the next run (or test) deletes first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench wan --no-run
if [ "${BENCH_TMPFS:-20G}" != 0 ]; then
  tmp=$(mktemp -d /tmp/shipit-bench-XXXXXX)
  mount -t tmpfs -o "size=${BENCH_TMPFS:-20G},mode=1777" shipit-bench "$tmp"
  trap 'umount -l "$tmp"; rmdir "$tmp"' EXIT
  export TMPDIR=$tmp
fi
SHIPIT_WAN_HOSTS=${WAN_HOSTS:-1,10,50} SHIPIT_WAN_MB=${WAN_MB:-20,300} \
  SHIPIT_WAN_MAX=${WAN_MAX:-3000} cargo bench --bench wan
