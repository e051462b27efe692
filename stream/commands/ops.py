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
              help="With --once: stop reading when nothing arrived for this long, or this long after "
                   "reaching the end offsets seen at start (s).")
def watch(once: bool, interval: float, idle_timeout: float) -> None:
    """Live view over ops.metrics, ops.audit and clicks.dlq: rates, lag, DLQ reasons, shreds,
    privacy budget, model metrics."""
    from stream.kafka import reachable_bootstrap
    from stream.ops.watch import WatchState, assign_new, end_offsets, read_until_idle, watch_consumer

    settings = _settings()
    consumer, handlers, missing = watch_consumer(reachable_bootstrap(settings), settings)
    state = WatchState()
    try:
        if once:
            read_until_idle(consumer, handlers, state, idle=max(0.1, idle_timeout),
                            deadline=time.monotonic() + 300, ends=end_offsets(consumer))
            click.echo(state.render_plain(), nl=False)
            if missing:
                click.echo(f"(topics not found: {', '.join(missing)})")
            return
        from rich.live import Live

        checked = time.monotonic()
        with Live(state.render_rich(), refresh_per_second=4, screen=False) as live:
            while True:
                read_until_idle(consumer, handlers, state, idle=0.2, deadline=time.monotonic() + max(0.2, interval))
                live.update(state.render_rich())
                if missing and time.monotonic() - checked > 10:  # topics created after the start
                    missing, checked = assign_new(consumer, missing), time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""
    cli.add_command(ops)
