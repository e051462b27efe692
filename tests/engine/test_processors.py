"""Workers are processors the engine runs: every engine of the registry is a StreamEngine that
supplies hooks only, never the loop (``run``) or the engine's own machinery."""

from __future__ import annotations

import importlib

from stream.apps.registry import ENGINES, WORKERS
from stream.engine import StreamEngine

HOOKS = {"topics", "group", "output_topics", "process", "tick", "start", "assigned_partitions", "revoked",
         "lost", "reset", "finish", "stopped", "result", "events_done", "undeliverable", "batch_limit",
         "client_id", "extra_consumer_config", "extra_producer_config"}


def _engines() -> list[type[StreamEngine]]:
    for spec in WORKERS.values():
        importlib.import_module(spec.module)
    found: list[type[StreamEngine]] = []
    todo = list(StreamEngine.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("stream.apps."):
            found.append(cls)
    return found


def test_every_engine_of_the_registry_supplies_hooks_only():
    engines = _engines()
    assert len(engines) == len(ENGINES) == 6  # each of the registry's engines is a StreamEngine
    machinery = {n for n, v in vars(StreamEngine).items() if callable(v) and n not in HOOKS
                 and not n.startswith("__")} | {"run"}
    for cls in engines:
        overridden = {n for c in cls.__mro__[:cls.__mro__.index(StreamEngine)] for n in vars(c)} & machinery
        assert not overridden, f"{cls.__name__} overrides the engine's {sorted(overridden)}"
