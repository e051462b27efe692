"""The privatizer's pure core: protected events in, local-DP feature reports out.

Every reported event yields one feature report: for each ``ldp`` attribute of its schema
(:mod:`stream.ldp.policy`) a *fresh, independent* one-round randomization of its value at the
attribute's per-report epsilon ``eps`` (GRR, OUE or Duchi), plus the hour-of-week bucket. There is
no memo: no random draw is shared between two reports, of one person or of two, so given their
values a person's reports are distributed exactly as strangers' reports of the same values.

Each report charges the sum of its attributes' ``eps`` to the person's one ledger per epoch
(:mod:`stream.ldp.ledger`), capped by ``STREAMGATE_LDP_PERSON_EPSILON``; a report the ledger cannot
pay for is **not released** (no stand-in). So a person releases at most
``floor(cap / cost)`` reports per epoch, and the estimates are unbiased for exactly that
population - *each person's first c events of the epoch* - which every estimate record names
(:func:`estimand`). A replay of a record (at-least-once redelivery) is a new release: it is
charged again, with fresh noise, never repeated for free.

The report (``schemas/private-feature.v1.json``) holds no identifier, no token, no exact
timestamp. Report order within a batch is shuffled (CSPRNG); the worker releases batches across
people (:mod:`stream.ldp.release`). Labelled examples are prepaid: per-event (v1) examples add their
label's epsilon to each report's charge; joint-nb examples (:mod:`stream.ldp.examples`, issue 22)
charge one example per person-epoch at the person's first event, in the same ledger call as the
batch's feature charges and ahead of them. Every noise draw comes from ``rng``:
:class:`~stream.ldp.csprng.ChaChaRandom` in production. Records whose epoch's retention has ended -
or ends within the shredder's lead time - are not reported.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream.ldp.grr import GRR
from stream.ldp.labels import LABEL_NAME, POSITIVE_EVENT_TYPE, ExampleStub
from stream.ldp.ledger import MICRO, Charge, LedgerStore, ledger_expire_at, ledger_id
from stream.ldp.longitudinal import Rng, bernoulli
from stream.ldp.numeric import DuchiMechanism
from stream.ldp.oue import OUE
from stream.ldp.policy import IRR_FRACTION, LdpPolicy

__all__ = [
    "EXAMPLE_SCHEMA",
    "FEATURE_SCHEMA",
    "AttributeReport",
    "LabelResult",
    "PrivatizeResult",
    "Privatizer",
    "ProtectedRecord",
    "SpendHistogram",
    "estimand",
    "hour_of_week",
    "reports_per_person",
]

FEATURE_SCHEMA = "private-feature.v1"
EXAMPLE_SCHEMA = "private-example.v1"
_LEDGER_LABEL = b"streamgate/v1/ldp-ledger"


class ProtectedRecord(NamedTuple):
    """One record of ``clicks.protected``: its value and Kafka timestamp (ms)."""

    value: bytes | None
    timestamp_ms: int


class AttributeReport(NamedTuple):
    """One emitted report of one attribute, for the windowed aggregator. ``person`` is an in-process
    number of the report's ledger (person, epoch), so the aggregator can count distinct people (it
    publishes a window only with enough of them); it never leaves the process."""

    timestamp_ms: int
    attribute: str
    report: Any
    person: int = 0


@dataclass
class PrivatizeResult:
    reports: list[bytes] = field(default_factory=list)  # feature reports (JSON), one per released event
    # AttributeReport-shaped tuples (plain tuples on the hot path)
    attribute_reports: list[tuple[int, str, Any, int]] = field(default_factory=list)
    #: in-process person number of each of ``reports`` (aligned): the release buffer counts people with it
    people: list[int] = field(default_factory=list)
    suppressed: Counter[str] = field(default_factory=Counter)  # kept for callers: always empty (no stand-ins)
    epsilon_spent: dict[str, float] = field(default_factory=dict)  # attribute -> eps charged (per report)
    reported: Counter[str] = field(default_factory=Counter)  # attribute -> reports emitted
    over_budget: int = 0  # events not released: the person's ledger could not pay for them
    memo_hits: int = 0  # kept for callers: always 0 (no memo)
    memo_resolved: int = 0  # ledger charges sent to the store
    fully_suppressed: int = 0  # same as over_budget (older name)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records not reported
    # with labelled examples on: one stub per reported event (its report body, waiting for the label), then one
    # body-less stub per unreleased event with a session (label input only: SessionLabeler never emits it);
    # joint-nb: one stub per event of a paid person-epoch (its two candidate reports)
    examples: list[ExampleStub] = field(default_factory=list)


@dataclass
class LabelResult:
    """Labelled examples (``private-example.v1`` JSON) and, aligned with them, the stubs they came from
    (the stubs are for in-process use - e.g. a benchmark scoring against clean labels - never emitted)."""

    examples: list[bytes] = field(default_factory=list)
    stubs: list[ExampleStub] = field(default_factory=list)
    suppressed: int = 0  # examples not emitted: the person's ledger could not pay for the label
    epsilon_spent: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> examples not emitted


def reports_per_person(policy: LdpPolicy, person_epsilon: float, label_epsilon: float | None = None) -> int:
    """Feature reports one person can release per epoch: cap / (the report's epsilons, plus its example's
    label when examples are on), in the ledger's integer micro-epsilon."""
    cost = sum(round(a.epsilon_1 * MICRO) for a in policy.attributes)
    if label_epsilon is not None:
        cost += round(label_epsilon * IRR_FRACTION * MICRO)
    return round(person_epsilon * MICRO) // max(1, cost)


def estimand(per_person: int | None, cost: float, cap: float, epoch_seconds: int) -> str:
    """The population an estimate is unbiased for, in words (every estimate record carries it)."""
    if per_person is None:
        return "every event of the window"
    return (f"events within each person's budget: each person's first {per_person} events of each "
            f"{epoch_seconds} s epoch (cap {cap:g} / {cost:g} per report)")


class SpendHistogram:
    """How much ε this process charged per person (ledger) in the newest epoch it saw, as counts
    per bin of width cap/``BINS``; the last bin holds the people at the cap. Kept in process
    memory by ledger id (never a token). :meth:`as_dict` is exact and stays in process; what is
    published (``ops.metrics``) is :meth:`published`: the histogram of the last *finished* epoch,
    once, with two-sided geometric noise on every bin (ε = :attr:`NOISE_EPSILON` for that one
    publication: one person moves between two bins, sensitivity 2), so no release is exact per person."""

    BINS = 12
    NOISE_EPSILON = 1.0

    def __init__(self, cap_epsilon: float, *, max_people: int = 200_000, noise: Any = None) -> None:
        self.cap_micro = max(1, round(cap_epsilon * MICRO))
        self._noise = noise if noise is not None else random.SystemRandom()
        self._published: dict[str, Any] | None = None
        self.max_people = max_people
        self.epoch: int | None = None
        self.counts = [0] * (self.BINS + 1)
        self.untracked = 0  # people beyond max_people this epoch (not in the counts)
        self._spent: dict[str, int] = {}

    def _bin(self, micro: int) -> int:
        return min(self.BINS, micro * self.BINS // self.cap_micro)

    def charge(self, epoch: int, ledger: str, micro: int) -> None:
        """``micro`` micro-ε charged to ``ledger`` in ``epoch`` (older epochs than the newest are ignored)."""
        if self.epoch is None or epoch > self.epoch:
            if self.epoch is not None:
                self._published = self._noised(self.as_dict())
            self.epoch, self._spent, self.untracked = epoch, {}, 0
            self.counts = [0] * (self.BINS + 1)
        elif epoch < self.epoch:
            return
        old = self._spent.get(ledger)
        if old is None:
            if len(self._spent) >= self.max_people:
                self.untracked += 1
                return
            old_bin = None
            old = 0
        else:
            old_bin = self._bin(old)
        new = old + micro
        self._spent[ledger] = new
        if old_bin is not None:
            self.counts[old_bin] -= 1
        self.counts[self._bin(new)] += 1

    def _geometric(self) -> int:
        """Two-sided geometric noise with P(k) proportional to exp(-eps |k| / 2)."""
        a = math.exp(-self.NOISE_EPSILON / 2.0)
        u1, u2 = self._noise.random(), self._noise.random()
        g1 = int(math.log(1.0 - u1) / math.log(a))
        g2 = int(math.log(1.0 - u2) / math.log(a))
        return g1 - g2

    def _noised(self, exact: dict[str, Any]) -> dict[str, Any]:
        counts = [max(0, c + self._geometric()) for c in exact["counts"]]
        return {**exact, "counts": counts, "people": sum(counts), "untracked": 0,
                "noise": f"two-sided geometric, epsilon {self.NOISE_EPSILON:g} per bin vector"}

    def published(self) -> dict[str, Any] | None:
        """What may be published: the noised histogram of the last finished epoch (None before one finished)."""
        return self._published

    def as_dict(self) -> dict[str, Any]:
        """The exact form (in process only): epoch, cap, bin width, counts per bin, people counted, untracked."""
        return {"epoch": self.epoch, "cap": self.cap_micro / MICRO, "bin_width": self.cap_micro / MICRO / self.BINS,
                "counts": list(self.counts), "people": len(self._spent), "untracked": self.untracked}


_HOW_CACHE: dict[str, int] = {}


def hour_of_week(ts: Any) -> int | None:
    """Hour-of-week bucket (0 = Monday 00:00-00:59 UTC .. 167) of an RFC 3339 timestamp; None if unparsable."""
    if not isinstance(ts, str):
        return None
    prefix = ts[:13]
    if ts.endswith("Z"):
        cached = _HOW_CACHE.get(prefix)
        if cached is not None:
            return cached
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        off = dt.utcoffset()
        if off:
            dt = dt - off
    how = dt.weekday() * 24 + dt.hour
    if ts.endswith("Z") and len(_HOW_CACHE) < 100_000:
        _HOW_CACHE[prefix] = how
    return how


class _LedgerIds:
    """The privatizer's memo of ledger ids (HMACs), bounded; ``invalidate`` is what a shred notification
    or a key-store reset calls (the name of the memo caches it replaced)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.data: dict[tuple[str, int], str] = {}

    def invalidate(self, subject: str | None = None, epoch: int | None = None) -> None:
        if subject is None:
            self.data.clear()
            return
        for key in [k for k in self.data if k[0] == subject and (epoch is None or k[1] == epoch)]:
            del self.data[key]

    def __len__(self) -> int:
        return len(self.data)


class Privatizer:
    """Turns batches of protected events into feature reports (see the module docstring)."""

    def __init__(
        self,
        policy: LdpPolicy,
        store: LedgerStore,
        *,
        memo_key: bytes,
        subject_field: str,
        budget_epsilon: float,
        epoch_seconds: int,
        retention_seconds: int,
        rng: Rng,
        retention_margin_seconds: float = 0.0,
        cache: Any = None,
        clock: Callable[[], float] = time.time,
        shuffle_seed: int | None = None,
        label_epsilon: float | None = None,
        session_field: str = "session_id",
        ledger_key: bytes | None = None,
        examples: Any = None,
    ) -> None:
        if len(memo_key) < 16:
            raise ValueError("memo_key must be at least 16 bytes")
        del cache  # no memo any more: nothing per person is cached but the ledger ids
        # ledger ids (stream.ldp.ledger): the worker passes the keyring's ``ldp-ledger`` key
        self._ledger_key = ledger_key or hmac.digest(memo_key, _LEDGER_LABEL, "sha256")
        self.cache = _LedgerIds()
        self.policy = policy
        self.store = store
        self.subject_field = subject_field
        self.budget_micro = round(budget_epsilon * MICRO)
        self.spend = SpendHistogram(budget_epsilon)  # ε per person this process charged (counts only)
        self.epoch_seconds = epoch_seconds
        self.retention_seconds = retention_seconds
        # The shredder destroys keys up to its lead time before their deadline: records of an epoch it
        # may already have shredded are not reported.
        self.retention_margin_seconds = float(retention_margin_seconds)
        self.rng = rng
        self._clock = clock
        #: epochs up to this one are not reported: their ledgers were lost with the store's data
        self.lost_through_epoch = -1
        # Report order within a batch is shuffled so that it does not mirror the input order.
        self._shuffle: random.Random | Any = (random.Random(shuffle_seed) if shuffle_seed is not None
                                              else random.SystemRandom())
        self._params = {a.name: a.params() for a in policy.attributes}
        self._cost = {a.name: round(a.epsilon_1 * MICRO) for a in policy.attributes}
        #: micro-ε one feature report charges (every attribute at its per-report eps; with labelled examples on,
        #: plus its example's label, prepaid, so the reports a person can release do not depend on their sessions)
        self.report_cost_micro = sum(self._cost.values())
        self._spec_cache = self._specs()
        # Labelled examples (stream.ldp.labels): off unless a label epsilon is given.
        self.session_field = session_field
        self.label_oracle: GRR | None = None
        if label_epsilon is not None:
            if LABEL_NAME in policy.by_name:
                raise ValueError(f"the schema has an ldp attribute named {LABEL_NAME!r}, the label's pseudo-attribute")
            self.label_oracle = GRR(2, label_epsilon * IRR_FRACTION)
            params = {"m": "GRR", "eps": self.label_oracle.epsilon, "k": 2}
            self._params[LABEL_NAME] = params
            self._cost[LABEL_NAME] = round(self.label_oracle.epsilon * MICRO)
            self._label_prefix = (b',"label":{"name":"' + LABEL_NAME.encode() + b'","m":"GRR","eps":'
                                  + orjson.dumps(self.label_oracle.epsilon) + b',"k":2,"r":')
            self.report_cost_micro += self._cost[LABEL_NAME]

        # issue 22: joint labelled examples, one per person and epoch (stream.ldp.examples.JointExamples)
        self.joint = examples

    @property
    def examples_enabled(self) -> bool:
        return self.label_oracle is not None or self.joint is not None

    @property
    def per_person(self) -> int:
        """Feature reports one person can release per epoch (with joint examples: after the example's epsilon,
        which every person-epoch pays at its first event)."""
        budget = self.budget_micro - (self.joint.cost_micro if self.joint is not None else 0)
        return max(0, budget) // max(1, self.report_cost_micro)

    def estimand(self) -> str:
        cap = self.budget_micro - (self.joint.cost_micro if self.joint is not None else 0)
        return estimand(self.per_person, self.report_cost_micro / MICRO, cap / MICRO, self.epoch_seconds)

    def ledgers_lost(self) -> None:
        """The ledger store lost its data (a key-store reset): what people spent so far is unknown, so no
        record of the current or an earlier epoch is reported any more (fail closed: a lost ledger must not
        refund). Later epochs report normally."""
        self.cache.invalidate()
        self.lost_through_epoch = int(self._clock()) // self.epoch_seconds

    # -- helpers ------------------------------------------------------------------------
    def ledger_id(self, subject: str, epoch: int) -> str:
        """The person's ledger id for an epoch (:func:`stream.ldp.ledger.ledger_id`), memoized."""
        ref = (subject, epoch)
        ids = self.cache.data
        lid = ids.get(ref)
        if lid is None:
            if len(ids) > self.cache.max_entries:
                ids.clear()
            lid = ids[ref] = ledger_id(self._ledger_key, subject, epoch)
        return lid

    def _specs(self) -> list[tuple[str, bool, dict[str, int], int | None, int | None, float, float, bytes, Any]]:
        """Per attribute, what the hot loop needs: name, categorical?, index, absent/out-of-domain
        indices, bounds, the JSON prefix of its feature entry, and its one-round mechanism."""
        out = []
        for a in self.policy.attributes:
            prefix = orjson.dumps(a.name) + b":" + orjson.dumps(self._params[a.name])[:-1] + b',"r":'
            cat = a.kind == "categorical"
            index = dict(a._index) if cat else {}
            none_idx = a.index_of(None) if cat else None
            ood_idx = a.index_of(a.out_of_domain) if cat and a.out_of_domain is not None else None
            mech = a.oracle if cat else a.numeric
            out.append((a.name, cat, index, none_idx, ood_idx, a.lo, a.hi, prefix, mech))
        return out

    def _randomize(self, mech: Any, values: list[Any]) -> tuple[list[bytes], list[Any]]:
        """Fresh, independent one-round reports of ``values``: their JSON texts and values."""
        rng = self.rng
        if isinstance(mech, GRR):
            v = np.asarray(values, dtype=np.int64)
            keep = bernoulli(mech.p, v.shape[0], rng)
            other = np.asarray(rng.integers(0, mech.k - 1, size=v.shape[0], dtype=np.int64), dtype=np.int64)
            other += other >= v
            out = np.where(keep, v, other).tolist()
            return [str(i).encode() for i in out], out
        if isinstance(mech, OUE):
            v = np.asarray(values, dtype=np.int64)
            n, k = v.shape[0], mech.k
            if k > 62:
                reps = mech.perturb(v, rng)  # type: ignore[arg-type]
                return [orjson.dumps(r) for r in reps], reps
            bits = bernoulli(mech.q, (n, k), rng)
            bits[np.arange(n), v] = bernoulli(0.5, n, rng)
            packed = bits.astype(np.uint64) @ np.left_shift(np.uint64(1), np.arange(k, dtype=np.uint64))
            ints = packed.astype(np.int64).tolist()
            return [str(i).encode() for i in ints], ints
        assert isinstance(mech, DuchiMechanism)
        t = mech.to_unit(np.asarray(values, dtype=np.float64))
        plus = np.asarray(rng.random(t.shape[0])) < mech.prob_plus(t)
        hv, lv = round(float(mech.from_unit(np.asarray(mech.B))), 6), round(float(mech.from_unit(np.asarray(-mech.B))), 6)
        hi, lo = orjson.dumps(hv), orjson.dumps(lv)
        flags = plus.tolist()
        return [hi if p else lo for p in flags], [hv if p else lv for p in flags]

    # -- the batch ------------------------------------------------------------------------
    def process(self, records: Sequence[ProtectedRecord]) -> PrivatizeResult:
        """Privatize a batch. Raises :class:`~stream.errors.KeyUnavailableError` (nothing returned)
        when the ledger store is unreachable: the caller holds the batch and retries (fail closed)."""
        res = PrivatizeResult()
        now = self._clock() + self.retention_margin_seconds
        specs = self._spec_cache
        schema_name = self.policy.schema_name
        subject_field = self.subject_field
        es, rs = self.epoch_seconds, self.retention_seconds
        loads = orjson.loads
        costs = [self._cost[sp[0]] for sp in specs]
        examples = self.label_oracle is not None
        label_cost = self._cost.get(LABEL_NAME, 0)
        session_field = self.session_field
        joint = self.joint  # issue 22: joint examples (stream.ldp.examples), paid before the features below
        joint_rows: list[Any] = []
        joint_charges: list[Charge] = []
        if joint is not None:
            joint.begin()
        # pass 1: decode, map the values, one ledger charge per event
        rows: list[tuple[int, int | None, list[tuple[int, Any]], tuple[str, str, int, bool] | None, int, int, str]] = []
        charges: list[Charge] = []
        for rec in records:
            try:
                event = loads(rec.value) if rec.value else None
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or event.get("_schema") != schema_name:
                res.skipped["not_protected_event"] += 1
                continue
            subject = event.get(subject_field)
            if not isinstance(subject, str) or not subject:
                res.skipped["no_subject"] += 1
                continue
            epoch = int(rec.timestamp_ms // 1000) // es
            if (epoch + 1) * es + rs <= now:
                res.skipped["retention_ended"] += 1
                continue
            if epoch <= self.lost_through_epoch:
                res.skipped["ledger_lost"] += 1
                continue
            row: list[tuple[int, Any]] = []
            cost = 0
            for si, (name, cat, index, none_idx, ood_idx, lo, hi, _prefix, _mech) in enumerate(specs):
                raw = event.get(name)
                value: Any
                if cat:
                    if raw is None:
                        value = none_idx
                    else:
                        value = index.get(raw) if isinstance(raw, str) else None
                        if value is None:
                            value = ood_idx
                    if value is None:
                        continue
                elif isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
                    value = lo
                else:
                    value = min(hi, max(lo, float(raw)))
                row.append((si, value))
                cost += costs[si]
            if not row:
                res.skipped["no_attribute"] += 1
                continue
            meta = None
            if examples:
                session = event.get(session_field)
                if isinstance(session, str) and session:
                    meta = (session, subject, epoch, event.get("event_type") == POSITIVE_EVENT_TYPE)
            if examples:
                cost += label_cost  # the label of this event's example, prepaid
            lid = self.ledger_id(subject, epoch)
            if joint is not None:  # the person-epoch's example: charged at its first event, ahead of the features
                jc = joint.first_charge(subject, epoch, lid, ledger_expire_at(epoch, es, rs))
                if jc is not None:
                    joint_charges.append(jc)
                jrow = joint.row(event, subject, epoch, rec.timestamp_ms)
                if jrow is not None:
                    joint_rows.append(jrow)
            charges.append(Charge(subject, lid, cost, ledger_expire_at(epoch, es, rs)))
            rows.append((rec.timestamp_ms, hour_of_week(event.get("ts")), row, meta, epoch, cost, lid))
        if not rows:
            return res
        # pass 2: charge every event to its person's ledger (one store round trip for the batch)
        if joint_charges:  # one round trip; a ledger applies its charges in order, so the example comes first
            both = self.store.charge(joint_charges + charges, self.budget_micro)
            nj = len(joint_charges)
            for jc, ok in zip(joint_charges, joint.settle(joint_charges, both[:nj]), strict=True):
                if ok:
                    self.spend.charge(int(jc.expire_at - rs) // es - 1, jc.ledger, jc.cost_micro)
            npaid = sum(both[:nj])
            if npaid:
                res.epsilon_spent[LABEL_NAME] = npaid * joint.cost_micro / MICRO
            paid = both[nj:]
        else:
            paid = self.store.charge(charges, self.budget_micro)
        res.memo_resolved = len(charges) + len(joint_charges)
        kept = [r for r, ok in zip(rows, paid, strict=True) if ok]
        res.over_budget = res.fully_suppressed = len(rows) - len(kept)
        # per-event examples: an unreleased event still belongs to its session, so the labeler must see it
        # (its activity, and whether it is the purchase) - as a body-less stub: no report, no example, no charge
        unreleased: list[ExampleStub] = []
        if examples and res.over_budget:
            unreleased = [ExampleStub(r[3][0], r[3][1], r[3][2], r[3][3], b"", r[0])
                          for r, ok in zip(rows, paid, strict=True) if not ok and r[3] is not None]
        # pass 3: fresh independent noise, vectorized per attribute
        nspec = len(specs)
        cols: list[list[Any]] = [[] for _ in range(nspec)]
        for _ts, _how, row, _meta, _e, _c, _lid in kept:
            for si, value in row:
                cols[si].append(value)
        texts: list[list[bytes]] = []
        values: list[list[Any]] = []
        for si, col in enumerate(cols):
            tx, vx = self._randomize(specs[si][8], col) if col else ([], [])
            texts.append(tx)
            values.append(vx)
        cursor = [0] * nspec
        names = [sp[0] for sp in specs]
        prefixes = [sp[7] for sp in specs]
        attr_reports = res.attribute_reports
        charge = self.spend.charge
        assembled: list[tuple[bytes, tuple[str, str, int, bool] | None, int, int]] = []
        for ts_ms, how, row, meta, epoch, cost, lid in kept:
            person = hash(lid)
            parts = []
            for si, _value in row:
                j = cursor[si]
                cursor[si] = j + 1
                parts.append(prefixes[si] + texts[si][j] + b"}")
                attr_reports.append((ts_ms, names[si], values[si][j], person))
            body = b'"features":{' + b",".join(parts) + (b"}" if how is None else b'},"hour_of_week":' + str(how).encode())
            assembled.append((body, meta, ts_ms, person))
            charge(epoch, lid, cost)
        for si, col in enumerate(cols):
            if col:
                res.reported[names[si]] += len(col)
                res.epsilon_spent[names[si]] = len(col) * costs[si] / MICRO
        if examples and kept:
            res.epsilon_spent[LABEL_NAME] = len(kept) * label_cost / MICRO
        self._shuffle.shuffle(assembled)  # report order does not mirror the input order
        head = b'{"schema":"' + FEATURE_SCHEMA.encode() + b'","source_schema":' + orjson.dumps(schema_name) + b","
        for body, meta, ts_ms, person in assembled:
            res.reports.append(head + body + b"}")
            res.people.append(person)
            if meta is not None:  # labelled examples: the example hook (stream.ldp.labels)
                res.examples.append(ExampleStub(meta[0], meta[1], meta[2], meta[3], body, ts_ms))
        if unreleased:
            res.examples.extend(unreleased)
        if joint is not None:  # issue 22: the joint examples' stubs (of paid person-epochs only)
            res.examples = joint.stubs(joint_rows)
        return res

    # -- labelled examples ------------------------------------------------------------------
    def label_examples(self, items: Sequence[tuple[ExampleStub, bool]]) -> LabelResult:
        """Randomize the labels of released examples (GRR over {0, 1}, fresh per example; its epsilon was
        prepaid with the event's feature report, so nothing is charged here) and assemble the
        ``private-example.v1`` records, in shuffled order. With joint examples (issue 22):
        :meth:`stream.ldp.examples.JointExamples.label` (prepaid too; nothing charged here)."""
        if self.joint is not None:
            now = self._clock() + self.retention_margin_seconds
            return self.joint.label(items, now=now, epoch_seconds=self.epoch_seconds,
                                    retention_seconds=self.retention_seconds, lost_through_epoch=self.lost_through_epoch)
        oracle = self.label_oracle
        if oracle is None:
            raise RuntimeError("labelled examples are off (no label_epsilon)")
        res = LabelResult()
        now = self._clock() + self.retention_margin_seconds
        es, rs = self.epoch_seconds, self.retention_seconds
        kept: list[tuple[ExampleStub, bool]] = []
        for stub, label in items:
            if not stub.body:  # an unreleased event's stub: never paid for, never emitted
                res.skipped["unreleased"] += 1
                continue
            if (stub.epoch + 1) * es + rs <= now:
                res.skipped["retention_ended"] += 1
                continue
            kept.append((stub, label))
        res.epsilon_spent = 0.0
        labels = (oracle.perturb_array(np.asarray([int(y) for _s, y in kept], dtype=np.int64), self.rng).tolist()  # type: ignore[arg-type]
                  if kept else [])
        head = (b'{"schema":"' + EXAMPLE_SCHEMA.encode() + b'","source_schema":'
                + orjson.dumps(self.policy.schema_name) + b",")
        prefix = self._label_prefix
        out = [(stub, b"1" if y else b"0") for (stub, _l), y in zip(kept, labels, strict=True)]
        self._shuffle.shuffle(out)
        for stub, r in out:
            res.examples.append(head + stub.body + prefix + r + b"}}")
            res.stubs.append(stub)
        return res
