#!/usr/bin/env bash
# Install the time-series servers the store tests run against: Debian's `influxdb` (1.6.7,
# provides influxd) and `victoria-metrics`. Idempotent: returns at once when both binaries are
# on PATH. The tests start their own instances on loopback (tests/store/conftest.py); the
# packages' systemd services are neither needed nor started.
set -euo pipefail

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/servers.sh: missing ${need[*]}; install as root: apt-get install ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101: the packages' maintainer scripts must not start their services here.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
command -v influxd >/dev/null && command -v victoria-metrics >/dev/null
