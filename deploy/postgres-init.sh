#!/usr/bin/env bash
# Runs once, in the postgres container, when its data volume is empty
# (/docker-entrypoint-initdb.d): creates the least-privilege roles and their database
# (postgres-roles.sql) and sets the passwords from the environment.
set -euo pipefail
: "${CMBAGENT_OWNER_PASSWORD:?}" "${CMBAGENT_COLLECTOR_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -f /cmbagent/postgres-roles.sql
# psql variables (:'name') quote the values, so any password is safe here.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v owner="$CMBAGENT_OWNER_PASSWORD" -v collector="$CMBAGENT_COLLECTOR_PASSWORD" <<'SQL'
ALTER ROLE cmbagent_owner PASSWORD :'owner';
ALTER ROLE cmbagent_collector PASSWORD :'collector';
SQL
