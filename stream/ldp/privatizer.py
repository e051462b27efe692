"""The privatizer's pure core: protected events in, local-DP feature reports out.

For each protected event (from ``clicks.protected``) and each ``ldp`` attribute of
its schema (:mod:`stream.ldp.policy`) the report carries a *fresh* instantaneous
randomization of the person's memoized permanent response for that value
(:mod:`stream.ldp.longitudinal`, :mod:`stream.ldp.memo`); when the person's ledger
cannot pay for a new memo, a stand-in (the mechanism on a data-independent value),
so every report carries every attribute whatever the person's history. The report
(``schemas/private-feature.v1.json``) holds no identifier, no token, no exact
timestamp - only an hour-of-week bucket, the randomized values and the
mechanism parameters a consumer needs to debias them.

The retention epoch of a report is the one of the protected record's Kafka
timestamp (the gateway's clock when it protected the event), so a replay of the
same records resolves the same memos: at-least-once redelivery spends nothing twice
(its reports carry fresh instantaneous noise, like any other report of those values).
Every noise draw comes from ``rng``: :class:`~stream.ldp.csprng.ChaChaRandom` in production. Records whose epoch's retention
has already ended - or ends within the shredder's lead time - are not reported
(their memos would be born shredded, or outlive the shred).
"""

from __future__ import annotations

import hmac
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream.ldp.labels import LABEL_NAME, POSITIVE_EVENT_TYPE, ExampleStub
from stream.ldp.ledger import MICRO, ledger_id
from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalMechanism, Rng
from stream.ldp.memo import MemoCache, MemoRequest, MemoStore
from stream.ldp.policy import IRR_FRACTION, LdpAttribute, LdpPolicy

__all__ = [
    "EXAMPLE_SCHEMA",
    "FEATURE_SCHEMA",
    "AttributeReport",
    "LabelResult",
    "PrivatizeResult",
    "Privatizer",
    "ProtectedRecord",
    "SpendHistogram",
    "hour_of_week",
]

FEATURE_SCHEMA = "private-feature.v1"
EXAMPLE_SCHEMA = "private-example.v1"
_TAG_LABEL = b"streamgate/v1/ldp-memo"
_LEDGER_LABEL = b"streamgate/v1/ldp-ledger"
_OVER = -1  # cache entry of a value the ledger could not pay for (stand-ins are reported)


class ProtectedRecord(NamedTuple):
    """One record of ``clicks.protected``: its value and Kafka timestamp (ms)."""

    value: bytes | None
    timestamp_ms: int


class AttributeReport(NamedTuple):
    """One emitted report of one attribute, for the windowed aggregator. ``cluster`` identifies, in
    this process only, the memo the report came from (a hash of person, epoch, attribute, value):
    reports of one cluster share their permanent response, and the aggregator counts at most a
    fixed number of them per window so its error bars hold. It never leaves the process."""

    timestamp_ms: int
    attribute: str
    report: Any
    cluster: int = 0


@dataclass
class PrivatizeResult:
    reports: list[bytes] = field(default_factory=list)  # feature reports (JSON), one per reported event
    # AttributeReport-shaped tuples (plain tuples on the hot path)
    attribute_reports: list[tuple[int, str, Any, int]] = field(default_factory=list)
    suppressed: Counter[str] = field(default_factory=Counter)  # attribute -> stand-in reports (ledger at its cap)
    epsilon_spent: dict[str, float] = field(default_factory=dict)  # attribute -> eps_inf spent on new memos
    reported: Counter[str] = field(default_factory=Counter)  # attribute -> reports emitted
    memo_hits: int = 0  # served from the in-process cache
    memo_resolved: int = 0  # resolved against the store
    fully_suppressed: int = 0  # events with every attribute suppressed: no report at all
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records not reported
    # with labelled examples on: one stub per reported event (its report body, waiting for the label)
    examples: list[ExampleStub] = field(default_factory=list)


@dataclass
class LabelResult:
    """Labelled examples (``private-example.v1`` JSON) and, aligned with them, the stubs they came from
    (the stubs are for in-process use - e.g. a benchmark scoring against clean labels - never emitted)."""

    examples: list[bytes] = field(default_factory=list)
    stubs: list[ExampleStub] = field(default_factory=list)
    suppressed: int = 0  # examples whose label is a stand-in: the person's ledger is at its cap
    epsilon_spent: float = 0.0  # on new label memos
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> examples not emitted


class SpendHistogram:
    """How much ε this process charged per person (ledger) in the newest epoch it saw, as counts
    per bin of width cap/``BINS``; the last bin holds the people at the cap. Kept in process
    memory by ledger id (never a token); only the counts are published (``ops.metrics``). A
    person charged by another process, or before a restart, is missing or counted low here."""

    BINS = 12

    def __init__(self, cap_epsilon: float, *, max_people: int = 200_000) -> None:
        self.cap_micro = max(1, round(cap_epsilon * MICRO))
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

    def as_dict(self) -> dict[str, Any]:
        """The published form: epoch, cap, bin width, counts per bin, people counted, untracked."""
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


class Privatizer:
    """Turns batches of protected events into feature reports (see the module docstring)."""

    def __init__(
        self,
        policy: LdpPolicy,
        store: MemoStore,
        *,
        memo_key: bytes,
        subject_field: str,
        budget_epsilon: float,
        epoch_seconds: int,
        retention_seconds: int,
        rng: Rng,
        retention_margin_seconds: float = 0.0,
        cache: MemoCache | None = None,
        clock: Callable[[], float] = time.time,
        shuffle_seed: int | None = None,
        label_epsilon: float | None = None,
        session_field: str = "session_id",
        ledger_key: bytes | None = None,
        examples: Any = None,
    ) -> None:
        if len(memo_key) < 16:
            raise ValueError("memo_key must be at least 16 bytes")
        # ledger ids (stream.ldp.ledger): the worker passes the keyring's ``ldp-ledger`` key
        self._ledger_key = ledger_key or hmac.digest(memo_key, _LEDGER_LABEL, "sha256")
        self._ledger_ids: dict[tuple[str, int], str] = {}
        self._alphas: dict[tuple[str, int, str, int], float] = {}  # alpha-point rounding, per cell
        self.policy = policy
        self.store = store
        self._memo_key = memo_key
        self.subject_field = subject_field
        self.budget_micro = round(budget_epsilon * MICRO)
        self.spend = SpendHistogram(budget_epsilon)  # ε per person this process charged (counts only)
        self.epoch_seconds = epoch_seconds
        self.retention_seconds = retention_seconds
        # The shredder destroys keys up to its lead time before their deadline; memos (and their
        # deadline entries) must not be re-created for an epoch it may already have shredded.
        self.retention_margin_seconds = float(retention_margin_seconds)
        self.rng = rng
        self.cache = cache or MemoCache(max_entries=500_000, max_staleness_seconds=30.0)
        self._clock = clock
        # Report order within a batch is shuffled so that it does not mirror the input order.
        self._shuffle = random.Random(shuffle_seed) if shuffle_seed is not None else random.SystemRandom()
        self._params = {a.name: a.params() for a in policy.attributes}
        self._cost = {a.name: round(a.epsilon * MICRO) for a in policy.attributes}
        self._sig = {a.name: orjson.dumps(a.params(), option=orjson.OPT_SORT_KEYS) for a in policy.attributes}
        self._mechs: dict[str, LongitudinalMechanism] = {}
        for a in policy.attributes:
            assert a.longitudinal is not None
            self._mechs[a.name] = a.longitudinal
        self._spec_cache = self._specs()
        self._encoder_cache = self._encoders()
        self._standins = 0
        # Labelled examples (stream.learn.labels): off unless a label epsilon is given.
        self.session_field = session_field
        self.label_oracle: LongitudinalGRR | None = None
        if label_epsilon is not None:
            if LABEL_NAME in policy.by_name:
                raise ValueError(f"the schema has an ldp attribute named {LABEL_NAME!r}, the label's pseudo-attribute")
            self.label_oracle = LongitudinalGRR(2, label_epsilon, label_epsilon * IRR_FRACTION)
            params = {"m": "L-GRR", "eps_inf": self.label_oracle.eps_inf, "eps": self.label_oracle.eps_1, "k": 2}
            self._params[LABEL_NAME] = params
            self._cost[LABEL_NAME] = round(self.label_oracle.eps_inf * MICRO)
            self._sig[LABEL_NAME] = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
            self._label_prefix = (b',"label":{"name":"' + LABEL_NAME.encode() + b'","m":"GRR","eps":'
                                  + orjson.dumps(self.label_oracle.eps_1) + b',"k":2,"r":')

        # issue 22: joint labelled examples, one per person and epoch (stream.ldp.examples.JointExamples)
        self.joint = examples

    @property
    def examples_enabled(self) -> bool:
        return self.label_oracle is not None or self.joint is not None

    # -- helpers ------------------------------------------------------------------------
    def _tag(self, attribute: str, value: object) -> str:
        """Memo field: HMAC of (attribute, mechanism parameters, true value); never the value itself."""
        msg = _TAG_LABEL + b"\x00" + attribute.encode() + b"\x00" + self._sig[attribute] + b"\x00" + repr(value).encode()
        return attribute + ":" + hmac.digest(self._memo_key, msg, "sha256")[:16].hex()

    def ledger_id(self, subject: str, epoch: int) -> str:
        """The person's ledger id for an epoch (:func:`stream.ldp.ledger.ledger_id`), memoized."""
        ref = (subject, epoch)
        lid = self._ledger_ids.get(ref)
        if lid is None:
            if len(self._ledger_ids) > 200_000:
                self._ledger_ids.clear()
            lid = self._ledger_ids[ref] = ledger_id(self._ledger_key, subject, epoch)
        return lid

    def _grid_point(self, subject: str, epoch: int, name: str, value: float) -> int:
        """Alpha-point rounding of a number to its attribute's grid (:class:`LongitudinalDuchi`):
        alpha is uniform, from an HMAC of (person, epoch, attribute, cell), so a replay rounds alike."""
        mech = self._mechs[name]
        assert isinstance(mech, LongitudinalDuchi)
        j, frac = mech.cell_of(value)
        if frac <= 0.0:
            return j
        ref = (subject, epoch, name, j)
        alpha = self._alphas.get(ref)
        if alpha is None:
            if len(self._alphas) > 200_000:
                self._alphas.clear()
            msg = b"alpha\x00" + subject.encode() + b"\x00" + str(epoch).encode() + b"\x00" + name.encode() + b"\x00" + str(j).encode()
            alpha = self._alphas[ref] = int.from_bytes(hmac.digest(self._memo_key, msg, "sha256")[:8], "big") / 2.0**64
        return j + 1 if frac > alpha else j

    def _candidates(self, attr: LdpAttribute, values: list[object]) -> list[str]:
        """Fresh permanent responses (int64 as text) for values not memoized yet."""
        mech = self._mechs[attr.name]
        if isinstance(mech, LongitudinalDuchi):  # values are grid indices
            return [str(int(x)) for x in mech.permanent(mech.grid_value(np.asarray(values, dtype=np.int64)), self.rng)]
        return [str(int(x)) for x in mech.permanent(np.asarray(values, dtype=np.int64), self.rng)]

    def _encoders(self) -> list[tuple[LongitudinalMechanism, list[bytes] | None, list[Any] | None]]:
        """Per attribute: its mechanism and, for GRR/Duchi, the JSON text and value of every possible report."""
        out: list[tuple[LongitudinalMechanism, list[bytes] | None, list[Any] | None]] = []
        for a in self.policy.attributes:
            mech = self._mechs[a.name]
            if isinstance(mech, LongitudinalDuchi):
                vals: list[Any] = [round(mech.low_report, 6), round(mech.high_report, 6)]
                out.append((mech, [orjson.dumps(v) for v in vals], vals))
            elif isinstance(mech, LongitudinalGRR):
                out.append((mech, [str(i).encode() for i in range(mech.k)], list(range(mech.k))))
            else:
                out.append((mech, None, None))
        return out

    # -- the batch ------------------------------------------------------------------------
    def _specs(self) -> list[tuple[str, bool, dict[str, int], int | None, int | None, float, float, bytes]]:
        """Per attribute, what the hot loop needs: name, categorical?, index, absent/out-of-domain
        indices, bounds, and the JSON prefix of its feature entry (mechanism parameters)."""
        out = []
        for a in self.policy.attributes:
            prefix = orjson.dumps(a.name) + b":" + orjson.dumps(self._params[a.name])[:-1] + b',"r":'
            cat = a.kind == "categorical"
            index = dict(a._index) if cat else {}
            none_idx = a.index_of(None) if cat else None
            ood_idx = a.index_of(a.out_of_domain) if cat and a.out_of_domain is not None else None
            out.append((a.name, cat, index, none_idx, ood_idx, a.lo, a.hi, prefix))
        return out

    def process(self, records: Sequence[ProtectedRecord]) -> PrivatizeResult:
        """Privatize a batch. Raises :class:`~stream.errors.KeyUnavailableError` (nothing returned)
        when the memo store is unreachable: the caller holds the batch and retries (fail closed)."""
        res = PrivatizeResult()
        now = self._clock() + self.retention_margin_seconds
        mono = self.cache.now()
        specs = self._spec_cache
        schema_name = self.policy.schema_name
        subject_field = self.subject_field
        es, rs = self.epoch_seconds, self.retention_seconds
        cache_data = self.cache.data
        stale = self.cache.max_staleness_seconds
        loads = orjson.loads
        # pass 1: decode, look up the cache, collect what must be resolved
        # rows: (ts_ms, hour_of_week, [(spec index, memo, cluster)], example meta)
        rows: list[tuple[int, int | None, list[tuple[int, int, int]], tuple[str, str, int, bool] | None]] = []
        examples = self.label_oracle is not None
        session_field = self.session_field
        # issue 22: joint example stubs (stream.ldp.examples), paid for before the feature memos below
        joint_stubs = None if self.joint is None else self.joint.stubs(
            records, now=now, epoch_seconds=es, retention_seconds=rs, store=self.store,
            budget_micro=self.budget_micro, ledger_id=self.ledger_id)
        pending: dict[tuple[str, int, str, int | float], list[tuple[int, int]]] = {}
        hits = 0
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
            row: list[tuple[int, int, int]] = []
            row_idx = len(rows)
            meta = None
            if examples:
                session = event.get(session_field)
                if isinstance(session, str) and session:
                    meta = (session, subject, epoch, event.get("event_type") == POSITIVE_EVENT_TYPE)
            rows.append((rec.timestamp_ms, hour_of_week(event.get("ts")), row, meta))
            for si, (name, cat, index, none_idx, ood_idx, lo, hi, _prefix) in enumerate(specs):
                raw = event.get(name)
                value: int | float | None
                if cat:
                    if raw is None:
                        value = none_idx
                    else:
                        value = index.get(raw) if isinstance(raw, str) else None
                        if value is None:
                            value = ood_idx
                    if value is None:
                        continue
                else:
                    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
                        value = lo
                    else:
                        value = min(hi, max(lo, float(raw)))
                    value = self._grid_point(subject, epoch, name, value)
                key = (subject, epoch, name, value)
                hit = cache_data.get(key)
                if hit is not None and 0 <= mono - hit[1] < stale:
                    row.append((si, hit[0], hash(key)))
                    hits += 1
                else:
                    pending.setdefault(key, []).append((row_idx, si))
        res.memo_hits = hits
        # pass 2: fresh permanent candidates (vectorized per attribute), one store round trip for the batch
        if pending:
            keys = list(pending)
            by_attr: dict[str, list[int]] = {}
            for i, (_s, _e, name, _v) in enumerate(keys):
                by_attr.setdefault(name, []).append(i)
            candidates: list[str] = [""] * len(keys)
            for name, idxs in by_attr.items():
                attr = self.policy.by_name[name]
                for i, cand in zip(idxs, self._candidates(attr, [keys[i][3] for i in idxs]), strict=True):
                    candidates[i] = cand
            ledger_id = self.ledger_id
            requests = [
                MemoRequest(s, e, (e + 1) * es + rs, self._tag(name, v), name, self._cost[name], candidates[i],
                            ledger_id(s, e))
                for i, (s, e, name, v) in enumerate(keys)
            ]
            results = self.store.resolve(requests, self.budget_micro)
            res.memo_resolved += len(keys)
            cache_put = self.cache.put
            charge = self.spend.charge
            for pkey, result, request in zip(keys, results, requests, strict=True):
                name = pkey[2]
                if result.status == "suppressed" or result.report is None:
                    memo = _OVER
                else:
                    if result.status == "new":
                        res.epsilon_spent[name] = res.epsilon_spent.get(name, 0.0) + self._cost[name] / MICRO
                        charge(request.epoch, request.ledger, request.cost_micro)
                    memo = int(result.report)
                cache_put(pkey, memo, mono)
                cluster = hash(pkey)
                for row_idx, si in pending[pkey]:
                    rows[row_idx][2].append((si, memo, cluster))
        # pass 3: fresh instantaneous reports, vectorized per attribute (stand-ins where over the cap)
        nspec = len(specs)
        occ: list[list[int]] = [[] for _ in range(nspec)]  # per attribute: memos, in row order
        for _ts, _how, row, _meta in rows:
            for si, memo, _c in row:
                occ[si].append(memo)
        texts: list[list[bytes]] = []
        values: list[list[Any]] = []
        for si, memos in enumerate(occ):
            mech, table_b, table_v = self._encoder_cache[si]
            if not memos:
                texts.append([])
                values.append([])
                continue
            m = np.asarray(memos, dtype=np.int64)
            over = m == _OVER
            n_over = int(np.count_nonzero(over))
            if n_over:
                m[over] = mech.dummy_permanent(n_over, self.rng)
                res.suppressed[specs[si][0]] += n_over
            out = mech.instantaneous(m, self.rng)
            if table_b is not None and table_v is not None:
                idx = out.tolist()
                texts.append([table_b[i] for i in idx])
                values.append([table_v[i] for i in idx])
            else:
                ints = out.tolist()
                texts.append([str(i).encode() for i in ints])
                values.append(ints)
        cursor = [0] * nspec
        head = b'{"schema":"' + FEATURE_SCHEMA.encode() + b'","source_schema":' + orjson.dumps(schema_name)
        reported = [0] * nspec
        out_reports = res.reports
        attr_reports = res.attribute_reports
        names = [sp[0] for sp in specs]
        prefixes = [sp[7] for sp in specs]
        stubs = res.examples
        assembled: list[tuple[bytes, tuple[str, str, int, bool] | None, int]] = []
        for ts_ms, how, row, meta in rows:
            if not row:
                res.fully_suppressed += 1
                continue
            parts = []
            for si, memo, cluster in sorted(row, key=_first):
                j = cursor[si]
                cursor[si] = j + 1
                parts.append(prefixes[si] + texts[si][j] + b"}")
                # a stand-in is its own draw: a cluster of its own
                if memo == _OVER:
                    self._standins += 1
                    cluster = -self._standins
                attr_reports.append((ts_ms, names[si], values[si][j], cluster))
                reported[si] += 1
            body = b'"features":{' + b",".join(parts) + (b"}" if how is None else b'},"hour_of_week":' + str(how).encode())
            assembled.append((body, meta, ts_ms))
        self._shuffle.shuffle(assembled)  # report order does not mirror the input order
        for body, meta, ts_ms in assembled:
            out_reports.append(head + b"," + body + b"}")
            if meta is not None:
                stubs.append(ExampleStub(meta[0], meta[1], meta[2], meta[3], body, ts_ms))
        for si, n in enumerate(reported):
            if n:
                res.reported[names[si]] += n
        if joint_stubs is not None:  # issue 22 (see above)
            res.examples = joint_stubs
        return res

    # -- labelled examples ------------------------------------------------------------------
    def label_examples(self, items: Sequence[tuple[ExampleStub, bool]]) -> LabelResult:
        """Randomize the labels of released examples (L-GRR over {0, 1}: a permanent response at the
        label's epsilon memoized per person, epoch and true label - at most two memos per epoch,
        charged to the person's ledger - then fresh per example at half of it; a stand-in when the
        ledger is at its cap) and assemble the ``private-example.v1`` records, in shuffled order. Raises
        :class:`~stream.errors.KeyUnavailableError` (nothing returned, nothing spent twice on a
        retry) when the memo store is unreachable: the caller keeps the items and retries."""
        if self.joint is not None:  # issue 22: one joint example per person and epoch (stream.ldp.examples)
            return self.joint.label(items, store=self.store, budget_micro=self.budget_micro, ledger_id=self.ledger_id,
                                    now=self._clock() + self.retention_margin_seconds,
                                    epoch_seconds=self.epoch_seconds, retention_seconds=self.retention_seconds)
        oracle = self.label_oracle
        if oracle is None:
            raise RuntimeError("labelled examples are off (no label_epsilon)")
        res = LabelResult()
        now = self._clock() + self.retention_margin_seconds
        mono = self.cache.now()
        es, rs = self.epoch_seconds, self.retention_seconds
        cache_data = self.cache.data
        stale = self.cache.max_staleness_seconds
        resolved: list[tuple[ExampleStub, int | None]] = []
        pending: dict[tuple[str, int, str, int], list[int]] = {}
        for stub, label in items:
            if (stub.epoch + 1) * es + rs <= now:
                res.skipped["retention_ended"] += 1
                continue
            key = (stub.subject, stub.epoch, LABEL_NAME, int(label))
            hit = cache_data.get(key)
            idx = len(resolved)
            if hit is not None and 0 <= mono - hit[1] < stale:
                resolved.append((stub, int(hit[0])))
            else:
                resolved.append((stub, None))
                pending.setdefault(key, []).append(idx)
        memo_of: list[int] = [_OVER] * len(resolved)
        for idx, (_stub, hit_memo) in enumerate(resolved):
            if hit_memo is not None:
                memo_of[idx] = hit_memo
        if pending:
            keys = list(pending)
            fresh = oracle.permanent(np.asarray([k[3] for k in keys], dtype=np.int64), self.rng)
            cost = self._cost[LABEL_NAME]
            requests = [
                MemoRequest(s, e, (e + 1) * es + rs, self._tag(LABEL_NAME, v), LABEL_NAME, cost, str(int(c)),
                            self.ledger_id(s, e))
                for (s, e, _n, v), c in zip(keys, fresh, strict=True)
            ]
            results = self.store.resolve(requests, self.budget_micro)
            for key, result, request in zip(keys, results, requests, strict=True):
                if result.status == "suppressed" or result.report is None:
                    memo = _OVER
                else:
                    if result.status == "new":
                        res.epsilon_spent += cost / MICRO
                        self.spend.charge(request.epoch, request.ledger, cost)
                    memo = int(result.report)
                self.cache.put(key, memo, mono)
                for idx in pending[key]:
                    memo_of[idx] = memo
        m = np.asarray(memo_of, dtype=np.int64)
        over = m == _OVER
        res.suppressed = int(np.count_nonzero(over))
        if res.suppressed:
            m[over] = oracle.dummy_permanent(res.suppressed, self.rng)
        labels = oracle.instantaneous(m, self.rng).tolist() if len(m) else []
        head = (b'{"schema":"' + EXAMPLE_SCHEMA.encode() + b'","source_schema":'
                + orjson.dumps(self.policy.schema_name) + b",")
        prefix = self._label_prefix
        out = [(stub, b"1" if y else b"0") for (stub, _m), y in zip(resolved, labels, strict=True)]
        self._shuffle.shuffle(out)
        for stub, r in out:
            res.examples.append(head + stub.body + prefix + r + b"}}")
            res.stubs.append(stub)
        return res


def _first(item: tuple[int, Any, int]) -> int:
    return item[0]
