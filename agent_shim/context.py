"""Where an event belongs: the run, node and enclosing span, kept in a ``ContextVar``.

A ContextVar is right for both threads and asyncio tasks (each task gets its own copy), unlike
the thread-local stack of the old capture code. Scopes are immutable; entering one is
``CURRENT.set`` and leaving it is ``CURRENT.reset(token)`` in a ``finally``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

# A scope is made for every span (its inner scope): a tuple is made in a third of the time of a
# frozen dataclass, whose fields are each set through ``object.__setattr__``.
_new = tuple.__new__


class Scope(NamedTuple):
    """The place new events go: run, session, DAG node, parent span, nesting depth."""

    run: bytes
    session: bytes | None
    node: bytes | None = None
    span: bytes | None = None
    depth: int = 0

    def child(self, span: bytes) -> Scope:
        """The scope inside a span opened here."""
        return _new(Scope, (self.run, self.session, self.node, span, self.depth + 1))

    def at_node(self, node: bytes | None) -> Scope:
        """The scope of work attributed to a DAG node (spans nested in it keep their parent)."""
        return _new(Scope, (self.run, self.session, node, self.span, self.depth))


CURRENT: ContextVar[Scope | None] = ContextVar("cmbagent_tracking_scope", default=None)
