"""Read commands (``runs``, ``tree``, ``events``): the SQL behind them and their output."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the read commands on ``cmbagent-collector``'s parser."""
