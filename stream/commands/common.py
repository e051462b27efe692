"""Helpers shared by the CLI modules."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator

import click
from pydantic import SecretStr

from stream.config import Settings

__all__ = ["bench_settings", "echo_error", "settings"]


def settings() -> Settings:
    """The process's settings; a bad STREAMGATE_ value becomes a clean CLI error naming the variable."""
    try:
        return Settings()
    except Exception as exc:  # pydantic validation errors: name the variable, not the value
        raise click.ClickException(f"invalid STREAMGATE_ settings: {exc}") from exc


def echo_error(msg: str) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + msg, err=True)


@contextlib.contextmanager
def bench_settings(base: Settings) -> Iterator[Settings]:
    """Settings for a benchmark run: a throwaway master key when none is configured, and a fresh
    embedded stack (stopped afterwards) unless a broker and a Redis are configured."""
    if base.master_key is None and base.master_key_file is None:
        click.echo("(no master key configured: using a throwaway key for this run)")
        base = base.model_copy(update={"master_key": SecretStr(base64.b64encode(os.urandom(32)).decode())})
    if base.kafka_bootstrap:
        from stream.kafka import probe_broker

        probe_broker(base.kafka_bootstrap)  # a wrong address: one line, not a hung benchmark
    if base.kafka_bootstrap and base.redis_url:
        yield base
        return
    from stream.dev.stack import ephemeral_stack

    with ephemeral_stack() as info:
        yield base.model_copy(update={"kafka_bootstrap": base.kafka_bootstrap or info.kafka_bootstrap,
                                      "redis_url": base.redis_url or info.redis_url})
