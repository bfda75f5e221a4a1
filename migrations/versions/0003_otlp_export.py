"""Continuous OTLP export: per endpoint, which runs were sent, up to which event.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # exported_order: the run's highest execution_order sent; events stored later (a spool
    # delivered after the run ended) have higher ones, and the run is sent again.
    op.execute("""
    CREATE TABLE otlp_exports (
        endpoint        text NOT NULL,
        run_id          uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
        exported_order  bigint NOT NULL,
        exported_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (endpoint, run_id)
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE otlp_exports")
