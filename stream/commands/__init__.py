"""Subcommands of ``streamgate``, one module per area. Each module exposes ``register(cli)``,
which :mod:`stream.cli` calls; shared helpers are in :mod:`stream.commands.common`."""

from __future__ import annotations

__all__: list[str] = []
