#!/usr/bin/env bash
# What the tests need on this machine: PostgreSQL and Redis answering (started if not), and
# redis-server, redis-sentinel, docker-compose, curl and prometheus (for promtool) installed
# (Debian packages).
# With --install-only: just the packages. With --demo: only what `make demo` needs (redis-server:
# the demo runs a Redis of its own), saying so before it installs.
# With --bench: also nginx (the benchmark's HTTP/2 sink) and h2load.
set -uo pipefail

wait_for() {  # wait_for NAME COMMAND...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "services: $name did not come up" >&2
  return 1
}

if [ "${1:-}" = "--demo" ]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "demo: installing redis-server (Debian's package; once)" >&2
    (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null || exit 1
  fi
  exit 0
fi
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v curl >/dev/null 2>&1 || missing+=(curl)  # the README's API examples are run by the tests
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)  # the failover tests
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # promtool checks the alert rules
if [ "${1:-}" = "--bench" ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]}" >&2
  # the benchmark starts nginx itself, on its own port: the package's service is not started
  (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis on 127.0.0.1:6379" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping || exit 1

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  if ls /etc/postgresql >/dev/null 2>&1; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  else
    echo "services: PostgreSQL is not installed; installing it" >&2
    (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 || exit 1
