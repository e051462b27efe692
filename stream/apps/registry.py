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

__all__ = ["ENGINES", "WORKERS", "WorkerSpec", "run_worker", "web_listen", "web_port", "writer_of"]


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    port: int  # default web port (health, metrics)
    module: str  # has create_app(settings) -> faust.App
    uses_redis: bool  # /readyz checks Redis
    writes: tuple[str, ...] = ()  # TopicNames fields of the topics this worker creates and writes
    group_setting: str = ""  # the Settings field naming its consumer group
    inputs: tuple[str, ...] = ()  # TopicNames fields its consumer group reads
    reads: tuple[str, ...] = ()  # TopicNames fields it reads without its group (stream.kafka.TopicReader)
    also_writes: tuple[str, ...] = ("metrics",)  # TopicNames fields it writes but another worker creates
    # group ids beside its own: ``{group}`` is its consumer group; literals are TopicReader client ids
    groups: tuple[str, ...] = ()
    transactional: bool = False  # exactly_once: transactional ids start with its group
    engines: tuple[str, ...] = ()  # the engines this worker runs (default: one, named as the worker)

    @property
    def engine_names(self) -> tuple[str, ...]:
        return self.engines or (self.name,)

    def group(self, settings: Settings) -> str:
        return str(getattr(settings, self.group_setting))

    def all_groups(self, settings: Settings) -> list[str]:
        """Every consumer group id this worker uses: its group first."""
        group = self.group(settings)
        return [group, *(g.format(group=group) for g in self.groups)]

    def topics_read(self, settings: Settings) -> list[str]:
        return [getattr(settings.topics, f) for f in (*self.inputs, *self.reads)]

    def topics_written(self, settings: Settings) -> list[str]:
        return [getattr(settings.topics, f) for f in (*self.writes, *self.also_writes)]

    def create_app(self, settings: Settings) -> faust.App:
        app: faust.App = importlib.import_module(self.module).create_app(settings)
        return app


WORKERS: dict[str, WorkerSpec] = {
    spec.name: spec
    for spec in (
        WorkerSpec("gateway", 6066, "stream.apps.gateway", uses_redis=True,
                   writes=("protected", "dlq"), group_setting="consumer_group",
                   inputs=("raw",), transactional=True),
        # reads its open windows back from analytics.partials at start (read_partials)
        WorkerSpec("privatizer", 6067, "stream.apps.privatizer", uses_redis=True,
                   writes=("features", "frequencies", "partials"), group_setting="privatizer_consumer_group",
                   inputs=("protected",), reads=("partials",), groups=("streamgate-reader",)),
        WorkerSpec("shredder", 6068, "stream.apps.shredder", uses_redis=True,
                   writes=("audit",), group_setting="shredder_consumer_group", inputs=("erasure",)),
        # resumes from models.snapshots; drift records on ops.audit; federated: local updates on
        # models.updates, merged by the aggregators' group
        WorkerSpec("learner", 6069, "stream.apps.learner_worker", uses_redis=False,
                   writes=("snapshots",), group_setting="learner_consumer_group",
                   inputs=("features", "updates"), reads=("snapshots",), also_writes=("metrics", "audit", "updates"),
                   groups=("{group}-aggregator", "streamgate-snapshot-reader"),
                   # STREAMGATE_LEARN_FEDERATED=true: a federated learner, with an aggregator inside
                   engines=("learner", "federated learner", "aggregator")),
    )
}


def web_port(settings: Settings, worker: str) -> int:
    """The web port of ``worker`` (``gateway``, ``privatizer``, ``shredder``, ``learner``); 0 = disabled."""
    _, port = web_listen(settings, worker)
    return port


def web_listen(settings: Settings, worker: str) -> tuple[str, int]:
    """(Address, port) of ``worker``'s web server (``STREAMGATE_WEB_PORT``: PORT, HOST:PORT or HOST:)."""
    host, _, port = str(settings.web_port if settings.web_port is not None else "").rpartition(":")
    if port:
        return host.strip("[]") or "127.0.0.1", int(port)
    return host.strip("[]") or "127.0.0.1", WORKERS[worker].port if worker in WORKERS else 6070


#: Every engine of every worker (what the conformance suite drives).
ENGINES: tuple[str, ...] = tuple(e for spec in WORKERS.values() for e in spec.engine_names)


def writer_of(settings: Settings, topic: str) -> WorkerSpec | None:
    """The worker that creates and writes ``topic`` (by its configured name), if any."""
    for spec in WORKERS.values():
        if any(getattr(settings.topics, field) == topic for field in spec.writes):
            return spec
    return None


def run_worker(settings: Settings, name: str, loglevel: str) -> None:
    """Run worker ``name`` as a Faust worker in this process until a signal stops it."""
    from faust.worker import Worker

    from stream.ops.logging import configure_logging

    configure_logging(settings, loglevel)  # allow-listed fields only (STREAMGATE_LOG_FORMAT=text|json)
    # override_logging=False: Faust keeps the allow-listed logging configured above
    worker = Worker(WORKERS[name].create_app(settings), loglevel=loglevel, quiet=True, override_logging=False)
    if not (worker.stdout.isatty() if hasattr(worker.stdout, "isatty") else False):
        worker.spinner = None  # its finish() writes cursor escapes even into a log file
    worker.execute_from_commandline()
