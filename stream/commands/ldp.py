"""``streamgate`` commands of the ldp area."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""
