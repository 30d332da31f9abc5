#!/usr/bin/env bash
# The deploy benchmark (not a test): shipit against plain OpenSSH on a loopback fleet of real
# sshd hosts, as ratios measured in one run on this machine. Needs root and openssh-server,
# like the test suite. Prints a table; nothing is asserted about speed, but every run must
# leave each host's `current` on a release holding the artifact.
#   bench/run.sh                  1, 10 and 50 hosts (20 MB), redeploys, 300 MB on 1 host,
#                                 then the 300 MB delta redeploy on 10 hosts
#   HOSTS=1,10 MB=20 bench/run.sh
#   HOSTS=1,3 MB=5 BIG_MB=10 DELTA_HOSTS=3 DELTA_MB=20 bench/run.sh    a quick smoke run
#   GROWTH=10,50,100,200 bench/run.sh    only the growth curve (none of the above): for each
#                                 fleet size, a 5 MB artifact (GROWTH_MB) deployed fresh and
#                                 redeployed unchanged by shipit, the OpenSSH baseline, ssh
#                                 true and `shipit check`, best of 3 (GROWTH_RUNS) each;
#                                 prints a Markdown table with per-host time and RSS
#
# Rows `N MB .tar.gz to N hosts`: the floor, the artifact as a prebuilt tar.gz streamed into
# `tar -xz` on each host (no compression timed), against shipit deploying that same file.
# Columns: openssh (the baseline: tar | ssh into a new release, renamed-symlink switch),
# shipit, shipit/openssh, shipit's peak RSS, then pyinfra and Ansible doing the same job on
# the same fleet, each with its ratio to the same openssh time. The pyinfra and ansible
# columns show `-` unless they are installed in the venv $SHIPIT_BENCH_VENV (default
# target/bench-venv): run `bash bench/setup-others.sh` once first. They show `-` on the
# redeploy rows too (only shipit skips an unchanged artifact).
# The `check N hosts` rows: `shipit check` against one `ssh -o BatchMode=yes host true` per
# host in parallel (pyinfra: `exec -- true`, Ansible: `-m ping`).
# The delta redeploy (shipit only): DELTA_MB (default 300) of files shaped like a dependency
# tree, one 10 KB file changed per redeploy, DELTA_HOSTS (default 10) hosts, app.user =
# "nobody" (so the hosts hard-link unchanged files). Prints fresh deploy vs delta redeploy
# time as a ratio (target <= 0.1), the same redeploy with `artifact.delta = false`, and per
# host the bytes sent against the whole artifact's; panics unless every host reports
# `source = "delta"` and holds the new content.
# The module doc of benches/deploy.rs says what each tool runs exactly.
# The hosts' filesystems (and the packed artifacts) live on a tmpfs mounted for the run
# (BENCH_TMPFS, default 16G; BENCH_TMPFS=0 keeps them on the machine's disk): this machine's
# ext4 disk uses online discard, which makes writeback and `rm -rf` timings noisy, and a
# run would pay for the writeback of the run before it.
# WAN=1 bench/run.sh runs the WAN benchmark instead (bench/wan.sh: shaped links, rsync).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${WAN:-0}" = 1 ]; then exec bash bench/wan.sh; fi
cargo bench --bench deploy --no-run
if [ "${BENCH_TMPFS:-16G}" != 0 ]; then
  tmp=$(mktemp -d /tmp/shipit-bench-XXXXXX)
  mount -t tmpfs -o "size=${BENCH_TMPFS:-16G},mode=1777" shipit-bench "$tmp"
  trap 'umount -l "$tmp"; rmdir "$tmp"' EXIT
  export TMPDIR=$tmp
fi
if [ -n "${GROWTH:-}" ]; then
  SHIPIT_BENCH_GROWTH=$GROWTH SHIPIT_BENCH_GROWTH_MB=${GROWTH_MB:-5} \
    SHIPIT_BENCH_GROWTH_RUNS=${GROWTH_RUNS:-3} cargo bench --bench deploy
  exit
fi
SHIPIT_BENCH_HOSTS=${HOSTS:-1,10,50} SHIPIT_BENCH_MB=${MB:-20} SHIPIT_BENCH_BIG_MB=${BIG_MB:-300} \
  SHIPIT_BENCH_DELTA_HOSTS=${DELTA_HOSTS:-10} SHIPIT_BENCH_DELTA_MB=${DELTA_MB:-300} \
  cargo bench --bench deploy
