#!/usr/bin/env bash
# Machine-level prerequisites of the test suite (the servers themselves are started by
# pytest fixtures): the local PostgreSQL and MariaDB servers, and Debian's Chromium for
# the browser tests. Idempotent; prints what it did.
set -euo pipefail

if command -v pg_ctlcluster >/dev/null && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  for v in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
  done
fi
if [ -x /usr/sbin/mariadbd ] && ! (echo > /dev/tcp/127.0.0.1/3306) 2>/dev/null; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
# Debian packages: chromium (browser tests), docker-compose (static `docker-compose config`;
# no engine is needed or used).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# prometheus (with promtool) and prometheus-pushgateway: the live Prometheus tests
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "WARNING: could not install ${missing[*]}; the tests that need them will be skipped"
  else
    echo "WARNING: ${missing[*]} missing and not root; the tests that need them will be skipped"
  fi
fi
