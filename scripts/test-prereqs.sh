#!/usr/bin/env bash
# Machine-level prerequisites of the test suite (the servers themselves are started by
# pytest fixtures): the local PostgreSQL and MariaDB servers, and the Debian packages the
# tests call. Idempotent; prints what it did. With CI=true, a package still missing after
# the attempt is an error (exit 1), since a test skipped in CI is a test that did not run.
set -euo pipefail

if command -v pg_ctlcluster >/dev/null && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  for v in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
  done
fi
if [ -x /usr/sbin/mariadbd ] && ! (echo > /dev/tcp/127.0.0.1/3306) 2>/dev/null; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
# checkov (the policy scanner the suite runs on the rendered manifests and the Dockerfile)
# lives in its own venv: its pins (termcolor<2.4) cannot share the project's. Rebuilt when
# deploy/checkov/requirements.txt changes.
checkov_venv="${CHECKOV_VENV:-.venv-checkov}"
checkov_reqs=deploy/checkov/requirements.txt
if ! cmp -s "$checkov_reqs" "$checkov_venv/.requirements.txt" 2>/dev/null; then
  echo "installing checkov into $checkov_venv"
  python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  rm -rf "$checkov_venv"
  if "$python" -m venv "$checkov_venv" \
    && "$checkov_venv/bin/python" -m pip install --quiet --no-deps -r "$checkov_reqs"; then
    cp "$checkov_reqs" "$checkov_venv/.requirements.txt"
  else
    echo "could not install checkov into $checkov_venv"
  fi
fi

# Debian packages, by the command each provides: chromium + chromium-driver (browser
# tests over WebDriver), docker-compose (static `docker-compose config`; no engine is
# needed or used), prometheus (with promtool) and prometheus-pushgateway (the live
# Prometheus tests). apt-get runs only when one is missing.
declare -A provides=(
  [chromium]=chromium [chromedriver]=chromium-driver [docker-compose]=docker-compose
  [promtool]=prometheus [prometheus-pushgateway]=prometheus-pushgateway
)
absent() {
  local cmd
  for cmd in chromium chromedriver docker-compose promtool prometheus-pushgateway; do
    command -v "$cmd" >/dev/null || echo "${provides[$cmd]}"
  done
}
mapfile -t missing < <(absent)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "could not install ${missing[*]}"
  else
    echo "${missing[*]} missing and not root: cannot install them"
  fi
  mapfile -t missing < <(absent)
fi
if [ ${#missing[@]} -gt 0 ]; then
  case "${CI:-}" in
    1|true|TRUE|True|yes)
      echo "ERROR: test prerequisites missing (Debian packages): ${missing[*]}" >&2
      exit 1 ;;
  esac
  echo "WARNING: ${missing[*]} missing; the tests that need them will be skipped"
fi
