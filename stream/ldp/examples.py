"""Labelled examples under the person cap: one joint report per person and epoch (issue 22).

A person's epoch contributes at most one labelled example, and that example leaves as **one**
randomized report: an attribute ``j`` is drawn among the ``d`` example attributes with fixed
probabilities computed from the schema alone (:func:`attribute_weights`; never from data)
(the schema's ldp attributes, numbers in :func:`numeric_edges` bins; optionally the hour of day), and
the pair ``(value_j, label)`` is randomized as one value of the joint domain of ``2 k_j`` cells
at the example's full epsilon (GRR if ``2 k_j < 3 e^eps + 2``, else OUE: Wang et al., USENIX
Security 2017). Whatever ``j`` is, the output's likelihood ratio between any two inputs is at
most ``e^eps``, so the report is ``eps``-LDP for the person's whole epoch (every attribute and the
label, whichever event was picked); it is charged once to the person's one ledger of that epoch
(:func:`example_charge`, through the ledger API :class:`~stream.ldp.ledger.Charge`), at the person's
first event of the epoch and ahead of that batch's feature charges, so feature reports cannot crowd
it out. No stand-in: a person-epoch whose ledger cannot pay gives no example. The record leaves
through the privatizer's release buffer, shuffled across people. No hour of week, no other field:
nothing escapes the cap.

The aggregator side (:mod:`stream.learn.joint`) debiases the reports of each attribute into
unbiased estimates of the joint shares ``f_j(v, y)`` and fits naive Bayes from them.

Record (``schemas/private-example.v2.json``)::

    {"schema": "private-example.v2", "source_schema": S, "attribute": name, "d": d,
     "m": "GRR" | "OUE", "eps": eps, "k": 2 k_j, "r": report}

``r``: GRR the joint index ``2 v + y``; OUE the bitmask of the ``2 k_j`` cells (bit ``2 v + y``),
a JSON integer up to 62 cells, lowercase hex beyond.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.ldp.grr import GRR
from stream.ldp.labels import POSITIVE_EVENT_TYPE, POSITIVE_FIELD
from stream.ldp.ledger import MICRO, Charge
from stream.ldp.oue import OUE
from stream.ldp.policy import LdpPolicy

__all__ = [
    "EXPECTED_PEOPLE",
    "HOUR_ATTRIBUTE",
    "JOINT_SCHEMA",
    "NUMERIC_BINS",
    "OUE_INT_MAX_CELLS",
    "PRIOR_SPREAD",
    "ExampleAttribute",
    "ExampleReporter",
    "ExampleSpec",
    "JointExamples",
    "attribute_weights",
    "cell_variance",
    "encode_many",
    "example_charge",
    "joint_mechanism",
    "numeric_edges",
]

JOINT_SCHEMA = "private-example.v2"
#: the pseudo-attribute of the hour of day (0-23, UTC) of the example's event
HOUR_ATTRIBUTE = "hour_of_day"
#: geometric bins of a numeric attribute (plus the bin of values <= lo, e.g. absent): few, since one report
#: per person must estimate each bin's conditional (10 bins: gap to non-private 0.060 at eps 2 and 50,000
#: people, 4 bins 0.050, the clear model's AUC unchanged; docs/learning.md)
NUMERIC_BINS = 4
#: OUE masks up to this many cells are JSON integers, larger ones lowercase hex
OUE_INT_MAX_CELLS = 62
#: the people per epoch the attribute draw is planned for (:func:`attribute_weights`)
EXPECTED_PEOPLE = 50_000
#: the prior spread (sd) of ``P(label | value)`` across an attribute's values the draw is planned for
PRIOR_SPREAD = 0.05


def numeric_edges(lo: float, hi: float, bins: int = NUMERIC_BINS) -> tuple[float, ...]:
    """Upper edges of the bins of a numeric attribute above ``lo``: geometric up to ``hi`` when
    ``lo >= 0`` (prices), else uniform. Bin 0 holds values ``<= lo`` (an absent value is ``lo``)."""
    if not lo < hi:
        raise ValueError("lo must be < hi")
    if lo >= 0:
        return tuple(hi * 2.0 ** -(bins - 1 - i) for i in range(bins))
    return tuple(lo + (hi - lo) * (i + 1) / bins for i in range(bins))


@dataclass(frozen=True)
class ExampleAttribute:
    """One attribute of the example: its name and the names of its ``k`` values (domain values,
    numeric bins ``"<=edge"``, or hours)."""

    name: str
    values: tuple[str, ...]
    kind: str  # "categorical" | "numeric" | "hour"
    edges: tuple[float, ...] = ()
    lo: float = 0.0
    index: Mapping[str, int] | None = None
    none_index: int | None = None
    ood_index: int | None = None

    @property
    def k(self) -> int:
        return len(self.values)

    def encode(self, value: Any) -> int | None:
        """The value's index (None: cannot be mapped; then the example is not reported)."""
        if self.kind == "hour":
            return value if type(value) is int and 0 <= value < 24 else None
        if self.kind == "numeric":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                return 0
            if value <= self.lo:
                return 0
            return min(self.k - 1, 1 + bisect.bisect_left(self.edges, float(value)))
        assert self.index is not None
        if value is None:
            return self.none_index
        idx = self.index.get(value) if isinstance(value, str) else None
        return self.ood_index if idx is None else idx


@dataclass(frozen=True)
class ExampleSpec:
    """The example attributes of a schema, in order (the learner builds the same one). ``positive``: the
    (attribute, value index) whose events are positive by the label's definition (:mod:`stream.ldp.labels`:
    a purchase event's session contains a purchase), so ``P(1 | v) = 1`` is known, not estimated."""

    source_schema: str
    attributes: tuple[ExampleAttribute, ...]
    positive: tuple[str, int] | None = None

    @classmethod
    def from_policy(cls, policy: LdpPolicy, *, hour: bool = False) -> ExampleSpec:
        """The schema's ldp attributes (numbers binned); ``hour``: also the UTC hour of day (off by
        default: not an ldp attribute of the schema, and on a stream that covers part of a day its
        weights describe a time trend, not a preference)."""
        out: list[ExampleAttribute] = []
        positive = None
        for a in policy.attributes:
            if a.kind == "categorical":
                index = {v: i for i, v in enumerate(a.domain)}
                if a.name == POSITIVE_FIELD and POSITIVE_EVENT_TYPE in index:
                    positive = (a.name, index[POSITIVE_EVENT_TYPE])
                ood = index.get(a.out_of_domain) if a.out_of_domain is not None else None
                out.append(ExampleAttribute(a.name, tuple(a.domain), "categorical", index=index,
                                            none_index=a.index_of(None), ood_index=ood))
            else:
                lo, hi = float(a.lo), float(a.hi)
                edges = numeric_edges(lo, hi)
                names = (f"<={lo:g}", *tuple(f"<={e:.4g}" for e in edges))
                out.append(ExampleAttribute(a.name, names, "numeric", edges=edges, lo=lo))
        if hour:
            out.append(ExampleAttribute(HOUR_ATTRIBUTE, tuple(str(h) for h in range(24)), "hour"))
        return cls(policy.schema_name, tuple(out), positive)

    @property
    def d(self) -> int:
        return len(self.attributes)

    @property
    def by_name(self) -> dict[str, ExampleAttribute]:
        return {a.name: a for a in self.attributes}

    def encode(self, event: Mapping[str, Any], hour_of_day: int | None) -> list[int] | None:
        """Indices of every attribute of a clear event (None if one cannot be mapped)."""
        out: list[int] = []
        for a in self.attributes:
            i = a.encode(hour_of_day if a.kind == "hour" else event.get(a.name))
            if i is None:
                return None
            out.append(i)
        return out


def joint_mechanism(cells: int, epsilon: float) -> GRR | OUE:
    """GRR when it has the lower variance on ``cells`` values (``cells < 3 e^eps + 2``), else OUE."""
    return GRR(cells, epsilon) if cells < 3.0 * math.exp(epsilon) + 2.0 else OUE(cells, epsilon)


def cell_variance(cells: int, epsilon: float) -> float:
    """Variance, per report, of one cell's debiased support ``(s - q) / (p - q)`` at a zero share."""
    m = joint_mechanism(cells, epsilon)
    return m.q * (1.0 - m.q) / (m.p - m.q) ** 2


def attribute_weights(spec: ExampleSpec, epsilon: float, people: int = EXPECTED_PEOPLE,
                      spread: float = PRIOR_SPREAD) -> np.ndarray:
    """The attribute draw's probabilities, from public quantities only: each attribute's domain size
    ``k_j``, the mechanism's cell variance ``sigma_j^2`` at ``epsilon``, the planned ``people`` and a prior
    ``spread`` of the conditionals. Model: ``k_j`` equally frequent values whose ``P(1 | v)`` spread by
    ``spread``; ``n_j`` reports estimate each to a variance of about ``c_j / n_j`` with
    ``c_j = sigma_j^2 k_j^2 / spread^2``, so shrinkage keeps the share ``n_j / (n_j + c_j)`` of its signal.
    Maximizing the sum of these shares under ``sum n_j = people`` gives ``n_j = max(0, sqrt(c_j / l) - c_j)``
    (reverse water-filling): few people or a small epsilon spend the report on the small domains, many
    people or a large epsilon spread it over all (about ``n_j ~ k_j``). Never computed from data."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a finite number > 0")
    if people < 1 or not spread > 0:
        raise ValueError("people must be >= 1 and spread > 0")
    c = np.asarray([cell_variance(2 * a.k, epsilon) * a.k**2 / spread**2 for a in spec.attributes])
    order = np.argsort(c, kind="stable")
    n = np.zeros(len(c))
    for r in range(1, len(c) + 1):
        act = order[:r]
        sq = np.sqrt(c[act])
        cand = sq * (people + c[act].sum()) / sq.sum() - c[act]
        if r > 1 and not np.all(cand > 0):
            break
        n[:] = 0.0
        n[act] = np.maximum(cand, 0.0)
    if not n.sum() > 0:
        n[order[0]] = 1.0
    return np.asarray(n / n.sum())


class ExampleReporter:
    """Randomizes examples into joint reports at ``epsilon`` each (module docstring). ``rng``: the
    CSPRNG in production (:class:`~stream.ldp.csprng.ChaChaRandom`), used for the attribute draw
    and the mechanism alike."""

    def __init__(self, spec: ExampleSpec, epsilon: float, rng: Any, *,
                 weights: Sequence[float] | np.ndarray | None = None) -> None:
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError("epsilon must be a finite number > 0")
        w = np.ones(spec.d) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (spec.d,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights: one finite number >= 0 per attribute, not all 0")
        #: the attribute draw's probabilities (fixed, data-independent)
        self.probs = w / w.sum()
        self._cum = np.cumsum(self.probs)
        self._cum[-1] = 1.0 + 1e-12
        self.spec = spec
        self.epsilon = float(epsilon)
        self.rng = rng
        self.mechs = [joint_mechanism(2 * a.k, self.epsilon) for a in spec.attributes]
        src = orjson.dumps(spec.source_schema)
        self._heads = [
            (b'{"schema":"' + JOINT_SCHEMA.encode() + b'","source_schema":' + src + b',"attribute":'
             + orjson.dumps(a.name) + b',"d":' + str(spec.d).encode() + b',"m":"' + m.name.encode()
             + b'","eps":' + orjson.dumps(self.epsilon) + b',"k":' + str(m.k).encode() + b',"r":')
            for a, m in zip(spec.attributes, self.mechs, strict=True)
        ]

    def draw(self, n: int) -> np.ndarray:
        """``n`` attribute draws (indices into the spec), independent of any data."""
        u = np.asarray(self.rng.random(n), dtype=np.float64)
        return np.searchsorted(self._cum, u, side="right").astype(np.int64)

    def reports(self, indices: np.ndarray, labels: np.ndarray, standin: np.ndarray | None = None,
                attributes: np.ndarray | None = None) -> tuple[list[bytes], np.ndarray]:
        """Joint reports of ``n`` examples (``indices``: shape ``(n, d)``, ``labels``: 0/1), in input
        order, and the attribute each one reports (in process only, e.g. for a benchmark).
        ``standin``: rows whose person's ledger could not pay; they report the mechanism on a
        uniformly drawn cell (data-independent: the same law as a genuine report of some value)."""
        idx = np.asarray(indices, dtype=np.int64)
        y = np.asarray(labels, dtype=np.int64)
        n = idx.shape[0]
        if n == 0:
            return [], np.zeros(0, dtype=np.int64)
        attr = self.draw(n) if attributes is None else np.asarray(attributes, dtype=np.int64)
        fake = np.zeros(n, dtype=bool) if standin is None else np.asarray(standin, dtype=bool)
        out: list[bytes] = [b""] * n
        for j, mech in enumerate(self.mechs):
            rows = np.flatnonzero(attr == j)
            if not rows.size:
                continue
            cells = 2 * idx[rows, j] + y[rows]
            fk = fake[rows]
            if fk.any():
                cells[fk] = np.asarray(self.rng.integers(0, mech.k, size=int(fk.sum())), dtype=np.int64)
            head = self._heads[j]
            if isinstance(mech, GRR):
                texts = [str(int(r)).encode() for r in mech.perturb_array(cells, self.rng)]
            else:
                packed = np.packbits(mech.perturb_bits(cells, self.rng), axis=1, bitorder="little")
                masks = [int.from_bytes(row.tobytes(), "little") for row in packed]
                texts = [str(m).encode() if mech.k <= OUE_INT_MAX_CELLS else b'"' + format(m, "x").encode() + b'"'
                         for m in masks]
            for i, t in zip(rows.tolist(), texts, strict=True):
                out[i] = head + t + b"}"
        return out, attr


def example_charge(*, subject: str, ledger: str, expire_at: int, epsilon: float) -> Charge:
    """The ledger charge of a person-epoch's example (:class:`~stream.ldp.ledger.Charge`: ``epsilon`` on the
    person's one ledger of that epoch), made at the person's first event of the epoch, before that batch's
    feature charges (a ledger applies its charges in order)."""
    return Charge(subject, ledger, round(epsilon * MICRO), expire_at)


def encode_many(spec: ExampleSpec, rows: Sequence[tuple[Mapping[str, Any], int | None]]) -> np.ndarray:
    """:meth:`ExampleSpec.encode` of many (event, hour of day) pairs as an ``(n, d)`` array (-1: unmappable)."""
    out = np.full((len(rows), spec.d), -1, dtype=np.int64)
    for i, (ev, h) in enumerate(rows):
        enc = spec.encode(ev, h)
        if enc is not None:
            out[i] = enc
    return out


class JointExamples:
    """The privatizer's side of joint examples (hooked into :class:`stream.ldp.privatizer.Privatizer`).

    Paying: at the first event of a person-epoch this process sees, :meth:`first_charge` gives the
    example's :func:`example_charge`, which the privatizer sends in the same ``LedgerStore.charge`` call
    as the batch's feature charges, ahead of them; :meth:`settle` records whether the ledger paid. Every
    person-epoch pays, with a session or not, so the feature reports a person can release do not depend
    on their sessions (the privatizer's estimand subtracts it). No stand-in: an unpaid person-epoch
    gives no example.

    :meth:`row` / :meth:`stubs`: per protected event of a paid person-epoch with a session and mappable
    values, the attribute draw and **both** candidate reports - of ``(v_j, 0)`` and of ``(v_j, 1)`` -
    randomized at once, so the labeler holds no clear value; once the session's label is known exactly
    one of them is emitted (it has the law of the mechanism on the true cell; the other is discarded).
    :meth:`label`: per person-epoch, one held example drawn uniformly among those labelled together,
    emitted once per paid charge. The worker puts the records into its release buffer (shuffled across
    people, never one session at a time).

    State per person-epoch (paid, unpaid, sent) is kept **in process memory only** (no per-value store
    state); at most ``max_people`` entries (older epochs are dropped first). Losing it (a restart, a
    rebalance, the bound) makes the person's next event pay again: a second example of that epoch can
    then leave, and it is paid for - each emitted example is one charge, the cap always holds."""

    _UNPAID, _PAID, _SENT = 0, 1, 2

    def __init__(self, spec: ExampleSpec, epsilon: float, rng: Any, *, subject_field: str,
                 session_field: str = "session_id", max_people: int = 200_000,
                 expected_people: int = EXPECTED_PEOPLE) -> None:
        self.reporter = ExampleReporter(spec, epsilon, rng, weights=attribute_weights(spec, epsilon, expected_people))
        self.spec = spec
        self.epsilon = float(epsilon)
        self.cost_micro = round(self.epsilon * MICRO)
        self.rng = rng
        self.subject_field = subject_field
        self.session_field = session_field
        self.max_people = max_people
        self._state: dict[tuple[str, int], int] = {}  # person-epoch -> _UNPAID / _PAID / _SENT (in process only)
        #: person-epochs with a charge in the current batch, in charge order (a failed batch is retried: reset)
        self._pending: dict[tuple[str, int], None] = {}

    def begin(self) -> None:
        """A new batch (also after a failed one: charges that were not settled are asked again)."""
        self._pending.clear()

    def first_charge(self, subject: str, epoch: int, ledger: str, expire_at: int) -> Charge | None:
        """The example's charge if this is the first event of ``(subject, epoch)`` this process sees, else None."""
        ref = (subject, epoch)
        if ref in self._state or ref in self._pending:
            return None
        self._pending[ref] = None
        return example_charge(subject=subject, ledger=ledger, expire_at=expire_at, epsilon=self.epsilon)

    def settle(self, charges: Sequence[Charge], paid: Sequence[bool]) -> list[bool]:
        """Record the outcome of :meth:`first_charge`'s charges (``paid``: the store's answers, aligned)."""
        refs = list(self._pending)
        self._pending.clear()
        state = self._state
        if len(state) + len(charges) > self.max_people:
            newest = max(e for _s, e in state) if state else 0
            for ref in [r for r in state if r[1] < newest]:
                del state[ref]
            if len(state) + len(charges) > self.max_people:
                state.clear()
        for ref, ok in zip(refs, paid, strict=True):
            state[ref] = self._PAID if ok else self._UNPAID
        return list(paid)

    def row(self, event: Mapping[str, Any], subject: str, epoch: int, timestamp_ms: int) -> Any:
        """What :meth:`stubs` needs of one protected event (None: no session, or a value cannot be mapped)."""
        session = event.get(self.session_field)
        if not (isinstance(session, str) and session):
            return None
        e = self.spec.encode(event, _hour_of_day(event.get("ts")))
        if e is None:
            return None
        return (session, subject, epoch, event.get(POSITIVE_FIELD) == POSITIVE_EVENT_TYPE, timestamp_ms, e)

    def stubs(self, rows: Sequence[Any]) -> list[Any]:
        """:class:`~stream.ldp.labels.ExampleStub` of each :meth:`row` whose person-epoch's example is paid and
        not yet sent; ``body`` holds the two candidate records separated by a newline (no clear value)."""
        from stream.ldp.labels import ExampleStub

        state = self._state
        rows = [r for r in rows if state.get((r[1], r[2])) == self._PAID]
        if not rows:
            return []
        idx = np.asarray([r[5] for r in rows], dtype=np.int64)
        n = len(rows)
        # one attribute draw per event, both labels randomized with it
        both = np.concatenate([idx, idx])
        labels = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
        attr = self.reporter.draw(n)
        texts, _ = self.reporter.reports(both, labels, attributes=np.concatenate([attr, attr]))
        return [ExampleStub(s, sub, ep, buy, texts[i] + b"\n" + texts[n + i], ts)
                for i, (s, sub, ep, buy, ts, _e) in enumerate(rows)]

    def label(self, items: Sequence[tuple[Any, bool]], *, now: float, epoch_seconds: int, retention_seconds: int,
              lost_through_epoch: int = -1) -> Any:
        """The joint examples of released ``(stub, label)`` items, as a
        :class:`~stream.ldp.privatizer.LabelResult` (records in shuffled order). Nothing is charged here
        (prepaid) and no store is called."""
        from stream.ldp.privatizer import LabelResult

        res = LabelResult()
        groups: dict[tuple[str, int], list[tuple[Any, bool]]] = {}
        for stub, lab in items:
            if (stub.epoch + 1) * epoch_seconds + retention_seconds <= now:
                res.skipped["retention_ended"] += 1
                continue
            if stub.epoch <= lost_through_epoch:
                res.skipped["ledger_lost"] += 1
                continue
            groups.setdefault((stub.subject, stub.epoch), []).append((stub, lab))
        out: list[tuple[Any, bytes]] = []
        state = self._state
        for ref, group in groups.items():
            if state.get(ref) != self._PAID:  # sent already (or its paid state was lost: never emit unpaid)
                res.skipped["one_per_person_epoch"] += len(group)
                continue
            pick = int(self.rng.integers(0, len(group))) if len(group) > 1 else 0
            res.skipped["one_per_person_epoch"] += len(group) - 1
            stub, lab = group[pick]
            state[ref] = self._SENT
            out.append((stub, stub.body.split(b"\n")[1 if lab else 0]))
        if not res.skipped["one_per_person_epoch"]:
            del res.skipped["one_per_person_epoch"]
        self.rng.shuffle(out)
        for stub, raw in out:
            res.examples.append(raw)
            res.stubs.append(stub)
        return res


def _hour_of_day(ts: Any) -> int | None:
    """The UTC hour of an RFC 3339 timestamp ``...THH:...Z`` (None if it is not one)."""
    if isinstance(ts, str) and len(ts) >= 13 and ts[10] == "T" and ts[11:13].isdigit() and ts.endswith("Z"):
        h = int(ts[11:13])
        return h if h < 24 else None
    return None
