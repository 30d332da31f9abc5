#!/usr/bin/env bash
# Installs the other deployers the benchmarks compare shipit with: pyinfra and Ansible into a
# Python venv, so `bench/run.sh` adds their columns, and rsync (Debian's package, with
# apt-get), which `bench/wan.sh` needs. Idempotent: reruns only fill in what is missing.
# Needs python3 with venv (installs the python3-venv package if it is missing) and PyPI.
#   bash bench/setup-others.sh                        # all; venv in target/bench-venv
#   bash bench/setup-others.sh rsync                  # only rsync (for bench/wan.sh)
#   bash bench/setup-others.sh python                 # only pyinfra and Ansible
#   SHIPIT_BENCH_VENV=/opt/venv bash bench/setup-others.sh
#   PYTHON=/usr/bin/python3.11 bash bench/setup-others.sh
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-all}
case $want in all | rsync | python) ;; *)
  echo "usage: bash bench/setup-others.sh [all|rsync|python]" >&2
  exit 2
  ;;
esac
if [ "$want" != python ]; then
  if ! command -v rsync >/dev/null; then
    apt-get install -y rsync || { apt-get update && apt-get install -y rsync; }
  fi
  rsync --version | head -n 1
  [ "$want" = rsync ] && exit 0
fi
venv=${SHIPIT_BENCH_VENV:-target/bench-venv}
# The system python3 by default (its venv module comes with the python3-venv package).
python=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get install -y python3-venv || { apt-get update && apt-get install -y python3-venv; }
  fi
  "$python" -m venv "$venv"
fi
if [ -x "$venv/bin/pyinfra" ] && [ -x "$venv/bin/ansible-playbook" ]; then
  echo "pyinfra and ansible already in $venv"
else
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet ansible-core pyinfra
fi
"$venv/bin/pyinfra" --version
v=$("$venv/bin/ansible-playbook" --version)
echo "${v%%$'\n'*}"
