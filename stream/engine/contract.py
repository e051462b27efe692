"""What a worker gives the engine and gets back: records in, :class:`Result` out.

A worker is a :class:`stream.engine.core.StreamEngine` subclass that overrides
``process`` (and, where it needs them, the other hooks); the engine runs it. Everything
about Kafka stays in the engine; the records and results here are plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from stream.errors import StreamgateError

__all__ = ["EngineFatalError", "NotDeliveredError", "Out", "Record", "Result"]


class EngineFatalError(StreamgateError):
    """The worker cannot go on (its message is the one line a supervisor's log shows)."""


class NotDeliveredError(StreamgateError):
    """:meth:`stream.engine.core.StreamEngine.deliver_now` could not deliver every record in time."""


class Record(NamedTuple):
    """One consumed record (a tuple: cheap to build per record)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None = None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] | None = None


class Out(NamedTuple):
    """One record to produce. ``timestamp_ms`` None = the producer's clock."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes | None]] | None = None


@dataclass(slots=True)
class Result:
    """What one ``process`` (or ``tick``, or revoke) call produced, and how its input may be committed.

    * ``outputs`` are produced in order; the batch's offsets are committed once all of them
      (and every earlier batch's) were delivered.
    * ``defer``: the offsets also wait for a later ``checkpoint`` result (the learner's
      snapshots: learned examples are durable only once a snapshot covers them).
    * ``checkpoint``: once delivered, every earlier deferred batch may be committed.
    * ``on_delivered``: called once every output was delivered (accounting).
    """

    outputs: list[Out] = field(default_factory=list)
    defer: bool = False
    checkpoint: bool = False
    on_delivered: Callable[[], None] | None = None
