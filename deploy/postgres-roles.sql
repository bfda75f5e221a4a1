-- Least-privilege PostgreSQL roles for cmbagent-tracking (docs/operations.md explains them).
--
--   cmbagent_owner      owns the database and its schema; runs `cmbagent-collector migrate`.
--   cmbagent_collector  runs `cmbagent-collector serve --no-migrate`: reads and writes rows,
--                       creates its per-connection TEMP staging tables, nothing else (it cannot
--                       create, alter or drop tables).
--
-- Run once, as a superuser (or a role with CREATEROLE and CREATEDB), before the first migration:
--   psql -v ON_ERROR_STOP=1 -d postgres -f deploy/postgres-roles.sql
-- then give both roles passwords without putting them in the shell history:
--   psql -d postgres -c '\password cmbagent_owner'
--   psql -d postgres -c '\password cmbagent_collector'
-- Re-running the part after \connect (without its CREATE SCHEMA) (re)grants on tables that
-- exist already.

CREATE ROLE cmbagent_owner LOGIN;
CREATE ROLE cmbagent_collector LOGIN;
CREATE DATABASE cmbagent_tracking OWNER cmbagent_owner;
-- By default every role may connect and create temporary tables; only the collector may here.
REVOKE ALL ON DATABASE cmbagent_tracking FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmbagent_tracking TO cmbagent_collector;

\connect cmbagent_tracking

-- The migrations create their tables (and alembic_version) in the schema cmbagent_tracking (the
-- collector's --schema default; keep both names equal). The owner owns it, the collector may use
-- it, and nobody else may create objects in public (PostgreSQL before 15 lets every role do so).
CREATE SCHEMA cmbagent_tracking AUTHORIZATION cmbagent_owner;
GRANT USAGE ON SCHEMA cmbagent_tracking TO cmbagent_collector;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Rows: what exists now, and whatever the owner's later migrations create. Sequences: nextval
-- for execution_order and the quarantine ids (USAGE, not UPDATE: no setval).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA cmbagent_tracking TO cmbagent_collector;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA cmbagent_tracking TO cmbagent_collector;
ALTER DEFAULT PRIVILEGES FOR ROLE cmbagent_owner IN SCHEMA cmbagent_tracking
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cmbagent_collector;
ALTER DEFAULT PRIVILEGES FOR ROLE cmbagent_owner IN SCHEMA cmbagent_tracking
    GRANT USAGE ON SEQUENCES TO cmbagent_collector;
