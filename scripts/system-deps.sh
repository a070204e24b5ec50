#!/usr/bin/env bash
# What the tests need from Debian, installed once if missing: Chromium, to check the pages
# people read (approval status pages, the access review) in a real browser, and the
# PostgreSQL 15 server the replica tests start clusters of their own with.
# `--bench` also brings HAProxy, which only the replicas benchmark (scripts/bench.py
# --scenario replicas) puts in front of two gateways: `make test` never needs it.
set -euo pipefail
need=()
if [ "${1:-}" = "--bench" ]; then
  command -v haproxy >/dev/null || need+=(haproxy)
fi
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v runuser >/dev/null || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "scripts/system-deps.sh: the tests need ${need[*]} from Debian; install them as root" \
      "(apt-get install ${need[*]}) or give this user sudo" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing from Debian: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
