"""The workers streamgate runs: one registry instead of lists in every module.

Adding a worker is one module with an engine (a :class:`stream.engine.StreamEngine` subclass)
and a ``create_app(settings)``, plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from stream.config import Settings

__all__ = ["WORKERS", "WorkerSpec", "run_worker"]


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    port: int  # default web port (health, metrics)
    module: str  # has create_app(settings) -> faust.App
    uses_redis: bool  # /readyz checks Redis

    def create_app(self, settings: Settings) -> faust.App:
        app: faust.App = importlib.import_module(self.module).create_app(settings)
        return app


WORKERS: dict[str, WorkerSpec] = {
    spec.name: spec
    for spec in (
        WorkerSpec("gateway", 6066, "stream.apps.gateway", uses_redis=True),
        WorkerSpec("privatizer", 6067, "stream.apps.privatizer", uses_redis=True),
        WorkerSpec("shredder", 6068, "stream.apps.shredder", uses_redis=True),
        WorkerSpec("learner", 6069, "stream.apps.learner", uses_redis=False),
    )
}


def run_worker(settings: Settings, name: str, loglevel: str) -> None:
    """Run worker ``name`` as a Faust worker in this process until a signal stops it."""
    from faust.worker import Worker

    from stream.ops.logging import configure_logging

    configure_logging(settings, loglevel)  # allow-listed fields only (STREAMGATE_LOG_FORMAT=text|json)
    # override_logging=False: Faust keeps the allow-listed logging configured above
    Worker(WORKERS[name].create_app(settings), loglevel=loglevel, quiet=True,
           override_logging=False).execute_from_commandline()
