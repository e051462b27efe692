"""The learning target and its delayed labels: *does this event's session contain a purchase?*

Definition (``session_purchase``): an event is **positive** iff its session - the events
with the same ``session_id`` token - contains an event with ``event_type == "purchase"``
(the purchase events themselves included). A session ends after ``gap`` of inactivity
(ingestion time: the Kafka timestamp the gateway gave the protected record, so a
producer's clock can neither end other people's sessions early nor keep them open).
On the synthetic clickstream this is exactly :meth:`stream.synth.ClickstreamGenerator.session_label`.

Why a session label: "is this event a purchase" would be read straight off the
``event_type`` feature; "will this visit convert" is what a propensity model is for.

The label of an event is known only when its session ends, so the privatizer holds each
event's *already privatized* feature report (never a clear value: the body of its
``private-feature.v1`` report) in a :class:`SessionLabeler` until the session has been idle
for ``gap``; then every example of the session is released with the session's label,
which the privatizer randomizes (binary randomized response, memoized) before emitting.
The label comes from *every* event of the session: an event past the person's cap has no
report and no example, but the labeler still sees it (a body-less stub: activity and whether
it is the purchase), else a session whose purchase fell past the cap - purchases end sessions -
would label its released examples negative.
Every session is released ``gap`` after its last event **whatever its label**, so the
release time of an example says nothing about its label (releasing purchases at once
would: an observer linking an example to the person's earlier feature reports - memoized
reports repeat - would read the label off the delay).

Memory is bounded: at most ``max_pending`` examples are held; beyond that the least
recently active sessions are dropped (counted in :attr:`SessionLabeler.dropped`), never
labelled early - an early "no purchase" would be a wrong label, not a noisy one. A
session with more than ``max_per_session`` events keeps only its first ones. A stop
or crash loses the unlabelled examples of open sessions (never a feature report):
training examples are a sample of the stream, not a ledger. An erased person's held
examples are dropped (:meth:`SessionLabeler.forget`, driven by the shredder's channel).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["LABEL_NAME", "POSITIVE_EVENT_TYPE", "POSITIVE_FIELD", "ExampleStub", "SessionLabeler"]

#: name of the label (the pseudo-attribute its memos and budget are kept under)
LABEL_NAME = "session_purchase"
#: the event field and type that make a session positive
POSITIVE_FIELD = "event_type"
POSITIVE_EVENT_TYPE = "purchase"


class ExampleStub(NamedTuple):
    """One event's privatized features waiting for its session's label. ``session`` and
    ``subject`` are tokens used only inside the privatizer (session grouping, the label's memo
    and budget); they never leave it. ``body``: randomized responses only - for ``private-example.v1``
    the report's ``"features":{...}`` part (plus ``,"hour_of_week":h``), or empty for an event past
    the person's cap (no report, no example: it only feeds its session's label); for joint examples
    (:mod:`stream.ldp.examples`) the two candidate ``private-example.v2`` records (label 0, label 1)
    and whether the person-epoch's example is paid for, newline-separated."""

    session: str
    subject: str
    epoch: int
    purchase: bool
    body: bytes
    ts_ms: int


class _Session:
    __slots__ = ("last_ms", "purchased", "stubs")

    def __init__(self, ts_ms: int) -> None:
        self.stubs: list[ExampleStub] = []
        self.purchased = False
        self.last_ms = ts_ms


class SessionLabeler:
    """Groups example stubs by session and labels them when the session has been idle for ``gap_ms``."""

    def __init__(self, gap_ms: int, *, max_pending: int = 200_000, max_per_session: int = 1_000) -> None:
        if gap_ms <= 0:
            raise ValueError("gap_ms must be > 0")
        if max_pending < 1 or max_per_session < 1:
            raise ValueError("max_pending and max_per_session must be >= 1")
        self.gap_ms = int(gap_ms)
        self.max_pending = max_pending
        self.max_per_session = max_per_session
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self.pending = 0
        self.watermark_ms = 0
        #: examples dropped unlabelled, by reason (capacity, session_cap, shutdown)
        self.dropped: Counter[str] = Counter()

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def add(self, stubs: Iterable[ExampleStub]) -> None:
        """Hold the stubs of a batch (any order within the batch). Advances the watermark to the
        newest timestamp seen; call :meth:`release` to get the sessions that ended. A stub without a
        ``body`` (an event the person's ledger could not pay for) is never held or released: it only
        keeps its session open and makes it positive if it is a purchase (if the session is held)."""
        sessions = self._sessions
        cap = self.max_per_session
        unheld: list[ExampleStub] = []  # body-less stubs of sessions not held (yet: any order in the batch)
        for stub in stubs:
            s = sessions.get(stub.session)
            if s is None:
                if not stub.body:
                    unheld.append(stub)
                    continue
                s = sessions[stub.session] = _Session(stub.ts_ms)
            else:
                sessions.move_to_end(stub.session)
            self._touch(s, stub)
            if not stub.body:
                continue
            if len(s.stubs) >= cap:
                self.dropped["session_cap"] += 1
                continue
            s.stubs.append(stub)
            self.pending += 1
        for stub in unheld:
            self._touch(sessions.get(stub.session), stub)
        while self.pending > self.max_pending and sessions:
            _sid, old = sessions.popitem(last=False)
            self.pending -= len(old.stubs)
            self.dropped["capacity"] += len(old.stubs)

    def _touch(self, s: _Session | None, stub: ExampleStub) -> None:
        """The stub's activity: the watermark, and its session's last event and purchase (if held)."""
        if stub.ts_ms > self.watermark_ms:
            self.watermark_ms = stub.ts_ms
        if s is not None:
            if stub.ts_ms > s.last_ms:
                s.last_ms = stub.ts_ms
            if stub.purchase:
                s.purchased = True

    def advance(self, watermark_ms: int) -> None:
        """Move the watermark forward (e.g. by the wall-clock time the stream has been idle)."""
        if watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms

    def release(self) -> list[tuple[ExampleStub, bool]]:
        """The examples of every session idle for at least ``gap_ms`` at the watermark, with their label."""
        out: list[tuple[ExampleStub, bool]] = []
        cutoff = self.watermark_ms - self.gap_ms
        sessions = self._sessions
        while sessions:
            sid = next(iter(sessions))
            s = sessions[sid]
            if s.last_ms > cutoff:
                break
            del sessions[sid]
            self.pending -= len(s.stubs)
            label = s.purchased
            out.extend((stub, label) for stub in s.stubs)
        return out

    def release_all(self) -> list[tuple[ExampleStub, bool]]:
        """Every held session as if it had ended now (end of a finite stream, e.g. a benchmark)."""
        out: list[tuple[ExampleStub, bool]] = []
        for s in self._sessions.values():
            out.extend((stub, s.purchased) for stub in s.stubs)
        self._sessions.clear()
        self.pending = 0
        return out

    def forget(self, subject: str, reason: str = "erased") -> int:
        """Drop every held example of one person (an erasure: their pending examples are never
        emitted); returns how many. Linear in the open sessions - erasures are rare."""
        n = 0
        for sid in list(self._sessions):
            s = self._sessions[sid]
            kept = [st for st in s.stubs if st.subject != subject]
            if len(kept) != len(s.stubs):
                n += len(s.stubs) - len(kept)
                if kept:
                    s.stubs = kept
                else:
                    del self._sessions[sid]
        if n:
            self.pending -= n
            self.dropped[reason] += n
        return n

    def discard(self, reason: str = "shutdown") -> int:
        """Drop every held example unlabelled (a stop or a rebalance); returns how many."""
        n = self.pending
        if n:
            self.dropped[reason] += n
        self._sessions.clear()
        self.pending = 0
        return n
