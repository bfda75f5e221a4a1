"""The tracking schema: sessions, runs, the DAG, events, costs, drops and quarantine.

Names follow CMBAgent's models where the concept is the same. Every table that grows with a run
is keyed by ``(run_id, id)`` so it can later be distributed by run (Citus).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _execute("""
    CREATE TABLE sessions (
        id          uuid PRIMARY KEY,
        name        text,
        status      text NOT NULL DEFAULT 'active',
        created_at  timestamptz NOT NULL DEFAULT now(),
        meta        jsonb NOT NULL DEFAULT '{}'
    );

    CREATE TABLE workflow_runs (
        id                uuid PRIMARY KEY,
        session_id        uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        status            text NOT NULL DEFAULT 'running',
        started_at        timestamptz,
        completed_at      timestamptz,
        task_description  text,
        error_message     text,
        meta              jsonb NOT NULL DEFAULT '{}'
    );
    CREATE INDEX workflow_runs_session ON workflow_runs (session_id, started_at DESC);
    CREATE INDEX workflow_runs_started ON workflow_runs (started_at DESC);

    CREATE TABLE dag_nodes (
        run_id          uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        id              uuid NOT NULL,
        session_id      uuid,
        parent_node_id  uuid,
        depth           integer NOT NULL DEFAULT 0,
        node_type       text NOT NULL DEFAULT 'node',
        name            text,
        agent           text,
        status          text NOT NULL DEFAULT 'pending',
        order_index     integer NOT NULL DEFAULT 0,
        started_at      timestamptz,
        completed_at    timestamptz,
        error_message   text,
        meta            jsonb NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX dag_nodes_tree ON dag_nodes (run_id, parent_node_id, order_index);

    CREATE TABLE dag_edges (
        run_id           uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        from_node_id     uuid NOT NULL,
        to_node_id       uuid NOT NULL,
        dependency_type  text NOT NULL DEFAULT 'sequential',
        condition        text,
        PRIMARY KEY (run_id, from_node_id, to_node_id)
    );

    -- One sequence gives a total order of every run's events, whichever collector stored them.
    CREATE SEQUENCE execution_order_seq;

    CREATE TABLE execution_events (
        run_id           uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        id               uuid NOT NULL,
        session_id       uuid,
        node_id          uuid,
        parent_event_id  uuid,
        event_type       text NOT NULL,
        event_subtype    text,
        agent_name       text,
        status           text NOT NULL DEFAULT 'completed',
        "timestamp"      timestamptz NOT NULL,
        started_at       timestamptz,
        completed_at     timestamptz,
        duration_ms      double precision GENERATED ALWAYS AS
                             (extract(epoch FROM completed_at - started_at) * 1000) STORED,
        inputs           jsonb,
        outputs          jsonb,
        meta             jsonb NOT NULL DEFAULT '{}',
        error_message    text,
        execution_order  bigint NOT NULL DEFAULT nextval('execution_order_seq'),
        depth            integer NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX execution_events_timeline ON execution_events (run_id, execution_order);
    CREATE INDEX execution_events_node ON execution_events (run_id, node_id, execution_order);
    CREATE INDEX execution_events_type ON execution_events (run_id, event_type, execution_order);
    CREATE INDEX execution_events_parent ON execution_events (run_id, parent_event_id);

    CREATE TABLE cost_records (
        run_id             uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        id                 uuid NOT NULL,
        session_id         uuid,
        node_id            uuid,
        event_id           uuid,
        model              text,
        agent_name         text,
        prompt_tokens      bigint,
        completion_tokens  bigint,
        total_tokens       bigint,
        cost_usd           numeric(20, 10),
        "timestamp"        timestamptz NOT NULL,
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX cost_records_node ON cost_records (run_id, node_id);

    -- Events a shim had to drop (queue or spool full), cumulative per sender and reason.
    CREATE TABLE dropped_events (
        run_id      uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        sender      text NOT NULL,
        reason      text NOT NULL,
        count       bigint NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, sender, reason)
    );

    -- Input the collector refused, kept for inspection; a resent copy only bumps times_seen.
    CREATE TABLE quarantine (
        id            bigserial PRIMARY KEY,
        digest        bytea NOT NULL UNIQUE,
        reason        text NOT NULL,
        detail        text,
        sender        text,
        payload       bytea,
        payload_size  integer NOT NULL,
        times_seen    integer NOT NULL DEFAULT 1,
        first_seen    timestamptz NOT NULL DEFAULT now(),
        last_seen     timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX quarantine_reason ON quarantine (reason);
    """)


def downgrade() -> None:
    _execute("""
    DROP TABLE quarantine;
    DROP TABLE dropped_events;
    DROP TABLE cost_records;
    DROP TABLE execution_events;
    DROP SEQUENCE execution_order_seq;
    DROP TABLE dag_edges;
    DROP TABLE dag_nodes;
    DROP TABLE workflow_runs;
    DROP TABLE sessions;
    """)


def _execute(script: str) -> None:
    # asyncpg runs prepared statements, which hold one command each.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)
