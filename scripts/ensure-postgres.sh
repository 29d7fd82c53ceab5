#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the audit-store tests when they are missing.
# The tests start their own throw-away server on 127.0.0.1 (tests/pg_server.py); no cluster
# is created or started here.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL is missing and this user cannot install it: PostgreSQL tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Only the binaries: no default cluster on port 5432.
mkdir -p /etc/postgresql-common
if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl"
