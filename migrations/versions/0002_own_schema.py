"""Our tables move out of ``public`` into the schema of their own (default ``cmbagent_tracking``).

Databases created from now on get the tables there directly (the migrations run with that schema
as their ``search_path``); this moves the tables of a database migrated before, so that
CMBAgent's own tables of the same names (``sessions``, ``workflow_runs``, ``dag_nodes``, ...) can
live in ``public`` beside them. A table moves only when the schema has none of that name yet: in a
database where ours were made in the schema, the ``public`` ones belong to another application.

Downgrading leaves the tables where they are: moving them back could collide with those others.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("sessions", "workflow_runs", "dag_nodes", "dag_edges", "execution_events",
          "cost_records", "dropped_events", "quarantine")
SEQUENCES = ("execution_order_seq",)  # standalone: ALTER TABLE moves only the owned ones


def upgrade() -> None:
    connection = op.get_bind()
    schema = connection.execute(text("SELECT current_schema()")).scalar()
    if schema in (None, "public"):
        return
    for kind, names in (("TABLE", TABLES), ("SEQUENCE", SEQUENCES)):
        for name in names:
            legacy = connection.execute(text("SELECT to_regclass(:n)"),
                                        {"n": f"public.{name}"}).scalar()
            present = connection.execute(text("SELECT to_regclass(:n)"),
                                         {"n": f'"{schema}".{name}'}).scalar()
            if legacy and not present:
                op.execute(f'ALTER {kind} public.{name} SET SCHEMA "{schema}"')


def downgrade() -> None:
    pass
