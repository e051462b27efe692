"""The commit queue: results in flight, in order, and the offsets they free (pure, no Kafka).

A result's offsets may be committed once its outputs and every earlier result's were delivered;
a ``defer`` result also waits for a later delivered ``checkpoint`` (the learner's snapshots).
Freed offsets are committed throttled (:meth:`CommitQueue.due`).

A commit counts as done only once the broker confirmed it (the consumer's ``on_commit`` callback,
or a synchronous commit's answer): until then its offsets are ``sent``. A commit refused, or one
whose call raised, puts its offsets back as pending (:meth:`CommitQueue.refused`) unless a newer
offset of that partition is pending, sent or committed, and the next due commit retries them. A
synchronous commit (a rebalance, the shutdown) also re-commits what was sent and not confirmed.

A partition whose every record read was released may be committed at the consumer's position,
past the commit markers of a transactional producer (control records the consumer never
delivers): otherwise the committed offset stays one short of the log end and external lag
monitors show a lag of 1 for ever.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from stream.engine.produce import Ticket

__all__ = ["TP", "CommitQueue"]

TP = tuple[str, int]


class CommitQueue:
    def __init__(self, now: float | None = None) -> None:
        self.tickets: deque[Ticket] = deque()
        self.committed: dict[TP, int] = {}  # what this member last committed, per partition
        self.pending: dict[TP, int] = {}  # freed, not committed yet (commit throttling)
        self.sent: dict[TP, int] = {}  # committed asynchronously, not confirmed by the broker yet
        self.commit_at = time.monotonic() if now is None else now  # the last commit
        self.committed_records = 0  # released_records at the last commit
        self.released_records = 0  # input records freed by released tickets (ever)
        self.released_checkpoint = False  # the last release freed a checkpoint (commit it at once)
        self.positions: dict[TP, int] = {}  # consumer positions seen, not acted on yet

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

    def free(self) -> bool:
        """:meth:`release` into ``pending``; True when something was freed (progress)."""
        offsets = self.release()
        if offsets is None:
            return False
        self.pending.update(offsets)
        return True

    def reached(self, tp: TP, position: int) -> None:
        """The consumer's position in ``tp`` (past the records it returned and any control record)."""
        self.positions[tp] = position

    def free_positions(self, held: Iterable[TP]) -> None:
        """Into ``pending``: the positions of partitions with no record held (``held``) or in
        flight (every record consumed before the position was released), beyond what was freed
        for them. Between the two lie only records the consumer never delivers (transaction
        markers, aborted records under read_committed). A partition nothing was freed for is left
        alone (its start is the committed offset already)."""
        busy = set(held)
        busy.update(tp for t in self.tickets for tp in t.offsets)
        for tp in [tp for tp in self.positions if tp not in busy]:
            position = self.positions.pop(tp)
            last = self.pending.get(tp, self.sent.get(tp, self.committed.get(tp)))
            if last is not None and position > last:
                self.pending[tp] = position

    def drop_inflight(self) -> None:
        """The clients failed: results in flight are gone, and what was read is read again."""
        self.tickets.clear()
        self.pending.clear()
        self.sent.clear()
        self.positions.clear()

    def reset_positions(self) -> None:
        """The consumer was rewound or closed: nothing is known committed, no position stands."""
        self.committed.clear()
        self.sent.clear()
        self.positions.clear()

    def due(self, now: float, *, sync: bool, interval: float, max_records: int) -> dict[TP, int] | None:
        """The pending offsets to commit now, or None: once ``interval`` seconds passed or
        ``max_records`` records were freed since the last commit, whichever comes first; at once
        when ``sync`` (a rebalance, the shutdown) or a checkpoint was freed (what it covers is
        durable: a crash must not re-learn it). A crash re-delivers at most what was freed since
        the last commit. ``sync`` also returns what was sent and not confirmed yet (a commit in
        flight when the consumer closes, or one whose answer never came)."""
        if not self.pending and not (sync and self.sent):
            return None
        if not (sync or self.released_checkpoint or now - self.commit_at >= interval
                or self.released_records - self.committed_records >= max_records):
            return None
        todo, self.pending = self.pending, {}
        if sync:
            todo = {**self.sent, **todo}
        self.commit_at, self.committed_records = now, self.released_records
        return todo

    def to_commit(self, offsets: dict[TP, int], assigned: Iterable[TP], *, sync: bool = False) -> dict[TP, int]:
        """The offsets worth a commit: of partitions still assigned, not committed already and
        (unless ``sync``: a synchronous commit makes sure) not sent and waiting for its answer."""
        held = set(assigned)
        return {tp: o for tp, o in offsets.items()
                if tp in held and self.committed.get(tp) != o and (sync or self.sent.get(tp) != o)}

    def sending(self, offsets: dict[TP, int]) -> None:
        """An asynchronous commit of ``offsets`` was sent: done once the broker confirms it."""
        self.sent.update(offsets)

    def done(self, offsets: dict[TP, int]) -> None:
        """The broker confirmed the commit of ``offsets``."""
        for tp, o in offsets.items():
            if o > self.committed.get(tp, -1):  # a late answer never takes a newer commit back
                self.committed[tp] = o
            if self.sent.get(tp, o) <= o:
                self.sent.pop(tp, None)

    def refused(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """The commit of ``offsets`` failed: back into ``pending`` (retried by the next due
        commit) unless a newer offset of the partition is pending, sent or committed. Returns
        what was put back."""
        back: dict[TP, int] = {}
        for tp, o in offsets.items():
            if self.sent.get(tp) == o:
                del self.sent[tp]
            newest = max(self.pending.get(tp, -1), self.sent.get(tp, -1), self.committed.get(tp, -1))
            if o > newest:
                self.pending[tp] = back[tp] = o
        return back

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.committed.pop(tp, None)
            self.pending.pop(tp, None)
            self.sent.pop(tp, None)
            self.positions.pop(tp, None)

    def clear(self) -> None:
        self.tickets.clear()
        self.committed.clear()
        self.pending.clear()
        self.sent.clear()
        self.positions.clear()
