"""Helpers shared by the CLI modules."""

from __future__ import annotations

import click

from stream.config import Settings

__all__ = ["echo_error", "settings"]


def settings() -> Settings:
    """The process's settings; a bad STREAMGATE_ value becomes a clean CLI error naming the variable."""
    try:
        return Settings()
    except Exception as exc:  # pydantic validation errors: name the variable, not the value
        raise click.ClickException(f"invalid STREAMGATE_ settings: {exc}") from exc


def echo_error(msg: str) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + msg, err=True)
