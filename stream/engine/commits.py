"""The commit queue: results in flight, in order, and the offsets they free (pure, no Kafka).

A result's offsets may be committed once its outputs and every earlier result's were delivered;
a ``defer`` result also waits for a later delivered ``checkpoint`` (the learner's snapshots).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from stream.engine.produce import Ticket

__all__ = ["TP", "CommitQueue"]

TP = tuple[str, int]


class CommitQueue:
    def __init__(self) -> None:
        self.tickets: deque[Ticket] = deque()
        self.committed: dict[TP, int] = {}  # what this member last committed, per partition
        self.released_records = 0  # input records freed by released tickets (ever)
        self.released_checkpoint = False  # the last release freed a checkpoint (commit it at once)

    def __len__(self) -> int:
        return len(self.tickets)

    def add(self, ticket: Ticket) -> None:
        self.tickets.append(ticket)

    @property
    def inflight(self) -> int:
        """Outputs queued and not acknowledged yet."""
        return sum(t.pending for t in self.tickets)

    def release(self) -> dict[TP, int] | None:
        """Pop the leading finished results (calling their ``on_delivered``) and return the offsets
        they free, or None when the head is not finished (no progress)."""
        tickets = self.tickets
        if not tickets or not tickets[0].done:
            return None
        released = -1
        for i, t in enumerate(tickets):
            if t.checkpoint and t.done:
                released = i
        offsets: dict[TP, int] = {}
        self.released_checkpoint = False
        i = 0
        while tickets and tickets[0].done and (not tickets[0].defer or i <= released):
            t = tickets.popleft()
            i += 1
            if t.on_delivered is not None:
                t.on_delivered()
            offsets.update(t.offsets)
            self.released_records += t.records
            self.released_checkpoint |= t.checkpoint
        return offsets

    def to_commit(self, offsets: dict[TP, int], assigned: Iterable[TP]) -> dict[TP, int]:
        """The offsets worth a commit: of partitions still assigned, and not committed already."""
        held = set(assigned)
        return {tp: o for tp, o in offsets.items() if tp in held and self.committed.get(tp) != o}

    def done(self, offsets: dict[TP, int]) -> None:
        self.committed.update(offsets)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.committed.pop(tp, None)

    def clear(self) -> None:
        self.tickets.clear()
        self.committed.clear()
