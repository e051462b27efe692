"""``streamgate`` commands of the ops area: ``streamgate ops watch``."""

from __future__ import annotations

import time

import click

from stream.commands.common import settings as _settings

__all__ = ["register"]


@click.group()
def ops() -> None:
    """Operations: the live monitoring view."""


@ops.command("watch")
@click.option("--once", is_flag=True, help="Read what is there, print one plain snapshot and exit.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Refresh period of the live view (s).")
@click.option("--idle-timeout", type=float, default=2.0, show_default=True,
              help="With --once: read to the end offsets seen at start, then on for this long (s).")
def watch(once: bool, interval: float, idle_timeout: float) -> None:
    """Live view over ops.metrics, ops.audit and clicks.dlq: rates, lag, DLQ reasons, shreds,
    privacy budget, model metrics."""
    from stream.kafka import reachable_bootstrap
    from stream.ops.watch import WatchState, feed, watch_reader

    settings = _settings()
    bootstrap = reachable_bootstrap(settings)
    state = WatchState()
    if once:  # to the end offsets seen at start, then on for idle_timeout
        reader, handlers = watch_reader(bootstrap, settings, mode="end", linger=max(0.0, idle_timeout))
        with reader:
            for msgs in reader.batches():
                feed(state, handlers, msgs)
            click.echo(state.render_plain(), nl=False)
            if reader.missing:
                click.echo(f"(topics not found: {', '.join(reader.missing)})")
        return
    from rich.live import Live

    reader, handlers = watch_reader(bootstrap, settings)  # tail; topics created later are assigned then
    try:
        with reader, Live(state.render_rich(), refresh_per_second=4, screen=False) as live:
            shown = time.monotonic()
            for msgs in reader.batches():
                feed(state, handlers, msgs)
                if time.monotonic() - shown >= max(0.2, interval):
                    live.update(state.render_rich())
                    shown = time.monotonic()
    except KeyboardInterrupt:
        pass


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""
    cli.add_command(ops)
