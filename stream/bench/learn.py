"""``streamgate bench learn``: what local differential privacy costs the purchase-propensity model.

For each dataset, epsilon and seed one private stream is built with the production code
path and several models learn from it side by side (same stream, paired comparison):

* **synthetic** - :class:`stream.synth.ClickstreamGenerator` events go through the pure
  privatizer (:class:`stream.ldp.privatizer.Privatizer`, fresh noise per report, an in-memory ledger),
  the session labeler (:class:`stream.ldp.labels.SessionLabeler`) and the label's randomized
  response; each ``private-example.v1`` record is parsed with
  :meth:`PrivateExample.from_json` exactly as the learner worker does. The clean label of
  every example is the generator's :meth:`~stream.synth.ClickstreamGenerator.session_label`
  (the bench keeps the session id next to the stub, in process; it is never in a record).
  ``epsilon`` is the **person budget** per epoch (``STREAMGATE_LDP_PERSON_EPSILON``): the ledger's
  cap, with each of the 5 attributes and the label priced ``epsilon /`` :data:`PERSON_SHARES` (a report
  pays half of that each), so a person releases their first 2 events of the epoch; events past the cap
  are not released, but still count for their session's label.
* **phishing** - River's bundled Phishing dataset (1,250 labelled pages, 9 features in
  [0, 1]) as a public sanity check: every page is one person, each feature reported with
  the numeric mechanism (HM on [0, 1]) at ``epsilon``, the label by randomized response.

Metrics, all progressive (``predict_proba_one`` before ``learn_one``):

* ``auc_private`` / ``logloss_private``: against the randomized labels - what the learner
  worker can measure on the live stream;
* ``auc_clean`` / ``logloss_clean``: the same predictions against the clean labels;
* ``auc_serve`` / ``logloss_serve`` (synthetic): after training, the model scores a held-out
  continuation of the stream on *clear* LDP values (where they are legitimately clear, e.g. an
  authorized consumer of ``clicks.protected``) against the clean labels - how well the model
  learned the true relationship.

Models: ``corrected`` (noise-corrected loss, debiased features: the worker's default),
``uncorrected`` (raw randomized label, debiased features) and ``raw-features`` (corrected
loss, raw support indicators; cannot be served on clear values). epsilon = inf is run as
epsilon = 20 through the same code (flip probability of the label 2e-9, of a 34-value GRR
report 7e-8), so the non-private baseline uses the identical pipeline.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from stream.ldp.labels import SessionLabeler
from stream.ldp.memo import MemoCache, MemoryMemoStore
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer, ProtectedRecord, hour_of_week
from stream.learn.example import PrivateExample
from stream.learn.model import PropensityModel
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator

__all__ = [
    "EPSILONS",
    "MODELS",
    "NONPRIVATE_EPSILON",
    "LearnRun",
    "SummaryRow",
    "auc",
    "format_table",
    "learn_table",
    "mean_log_loss",
    "phishing_run",
    "private_stream",
    "serve_auc",
    "serving_holdout",
    "summarize",
    "synthetic_run",
]

EPSILONS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
#: synthetic runs: each attribute's and the label's epsilon is the person budget / PERSON_SHARES
PERSON_SHARES = 8
#: epsilon = inf runs through the same pipeline at this epsilon (the settings' maximum)
NONPRIVATE_EPSILON = 20.0
#: model name -> PropensityModel options
MODELS: dict[str, dict[str, Any]] = {
    "corrected": {"correction": True, "debias": True},
    "uncorrected": {"correction": False, "debias": True},
    "raw-features": {"correction": True, "debias": False},
}
SCHEMA = "clickstream-event.v1"
_LDP_FIELDS = ("event_type", "category", "price", "device", "country")


def auc(y: Sequence[bool] | np.ndarray, p: Sequence[float] | np.ndarray) -> float:
    """Exact ROC-AUC (Mann-Whitney, ties count one half); nan if one class is absent."""
    ya = np.asarray(y, dtype=bool)
    pa = np.asarray(p, dtype=np.float64)
    n1 = int(ya.sum())
    n0 = len(ya) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    order = np.argsort(pa, kind="mergesort")
    ranks = np.empty(len(pa), dtype=np.float64)
    sp = pa[order]
    # average ranks of ties
    i = 0
    r = np.arange(1, len(pa) + 1, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(sp)]))
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            r[s:e] = (s + 1 + e) / 2.0
    ranks[order] = r
    del i
    return float((ranks[ya].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def mean_log_loss(y: Sequence[bool] | np.ndarray, p: Sequence[float] | np.ndarray, eps: float = 1e-15) -> float:
    ya = np.asarray(y, dtype=bool)
    pa = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(np.where(ya, np.log(pa), np.log1p(-pa))))


@dataclass(frozen=True)
class LearnRun:
    dataset: str
    epsilon: float
    model: str
    seed: int
    examples: int
    positive_share: float  # clean
    auc_private: float
    logloss_private: float
    auc_clean: float
    logloss_clean: float
    auc_serve: float
    logloss_serve: float
    seconds: float


def _eps(epsilon: float) -> float:
    return NONPRIVATE_EPSILON if math.isinf(epsilon) else float(epsilon)


def _ts_ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


class _Track:
    """Progressive predictions of one model: private label, clean label, probability."""

    def __init__(self, model: PropensityModel) -> None:
        self.model = model
        self.p: list[float] = []
        self.y_private: list[bool] = []
        self.y_clean: list[bool] = []

    def step(self, examples: Sequence[PrivateExample], clean: Sequence[bool]) -> None:
        """Predict every example of a released chunk, then learn them (see :func:`synthetic_run`)."""
        predict = self.model.predict_proba_one
        self.p.extend(predict(ex) for ex in examples)
        self.y_private.extend(ex.label == 1 for ex in examples)
        self.y_clean.extend(clean)
        for ex in examples:
            self.model.learn_one(ex)


def _make_models(policy: LdpPolicy | None, models: Iterable[str], seed: int) -> dict[str, _Track]:
    out = {}
    for name in models:
        opts = MODELS[name]
        m = (PropensityModel.for_policy(policy, seed=seed, **opts) if policy is not None
             else PropensityModel(seed=seed, **opts))
        out[name] = _Track(m)
    return out


def private_stream(
    epsilon: float,
    seed: int,
    *,
    events: int = 60_000,
    n_users: int = 5_000,
    gap_seconds: float = 120.0,
    chunk: int = 500,
    budget: float | None = None,
    label_epsilon: float | None = None,
) -> tuple[ClickstreamGenerator, LdpPolicy, Iterator[tuple[list[bytes], list[bool]]]]:
    """The synthetic private stream at person budget ``epsilon`` (module docstring; ``budget`` overrides the
    cap, ``label_epsilon`` the label's memo price): the generator (to continue it for a holdout once the
    chunks are consumed), the policy, and the released ``private-example.v1`` records in chunks of whole
    sessions (about ``chunk`` examples) with their clean labels."""
    if math.isinf(epsilon):
        eps, cap = NONPRIVATE_EPSILON, 1e9
    else:
        eps, cap = float(epsilon) / PERSON_SHARES, float(epsilon)
    label_eps = eps if label_epsilon is None else _eps(label_epsilon)
    gen = ClickstreamGenerator(seed=seed, n_users=n_users)
    schema = load_schema(SCHEMA)
    policy = LdpPolicy.from_schema(schema, eps)
    start = gen.start.timestamp()
    priv = Privatizer(
        policy, MemoryMemoStore(clock=lambda: start), memo_key=random.Random(seed).randbytes(32),
        subject_field=schema.subject_field, budget_epsilon=budget if budget is not None else cap,
        epoch_seconds=86400, retention_seconds=30 * 86400, rng=np.random.default_rng(seed + 7919),
        cache=MemoCache(max_entries=1_000_000, max_staleness_seconds=1e9), clock=lambda: start,
        shuffle_seed=seed, label_epsilon=label_eps,
    )
    labeler = SessionLabeler(round(gap_seconds * 1000), max_pending=10**7)

    def released(items: list[Any]) -> Iterator[tuple[list[bytes], list[bool]]]:
        res = priv.label_examples(items)
        by_session: dict[str, list[bytes]] = {}
        for stub, raw in zip(res.stubs, res.examples, strict=True):
            by_session.setdefault(stub.session, []).append(raw)
        raws: list[bytes] = []
        clean: list[bool] = []
        for sid, session in by_session.items():
            label = gen.session_label(sid)
            raws += session
            clean += [label] * len(session)
            if len(raws) >= chunk:
                yield raws, clean
                raws, clean = [], []
        if raws:
            yield raws, clean

    def chunks() -> Iterator[tuple[list[bytes], list[bool]]]:
        batch: list[ProtectedRecord] = []
        for ev in gen.events(events):
            rec = {"_schema": policy.schema_name, "user_id": "u" + ev["user_id"], "session_id": ev["session_id"],
                   "ts": ev["ts"]}
            for f in _LDP_FIELDS:
                if f in ev:
                    rec[f] = ev[f]
            batch.append(ProtectedRecord(orjson.dumps(rec), _ts_ms(ev["ts"])))
            if len(batch) == 1000:
                labeler.add(priv.process(batch).examples)
                batch = []
                yield from released(labeler.release())
        if batch:
            labeler.add(priv.process(batch).examples)
        yield from released(labeler.release_all())

    return gen, policy, chunks()


def serving_holdout(gen: ClickstreamGenerator, holdout: int) -> tuple[list[tuple[dict[str, Any], int | None]], list[bool]]:
    """A held-out continuation of ``gen``'s stream: clear LDP values with hour of week, and the clean labels."""
    serve_y: list[bool] = []
    serve_x: list[tuple[dict[str, Any], int | None]] = []
    for ev in gen.events(holdout):
        serve_y.append(gen.session_label(ev["session_id"]))
        serve_x.append(({f: ev.get(f) for f in _LDP_FIELDS}, hour_of_week(ev["ts"])))
    return serve_x, serve_y


def serve_auc(model: Any, holdout: tuple[list[tuple[dict[str, Any], int | None]], list[bool]]) -> float:
    """ROC-AUC of ``model`` on :func:`serving_holdout` (clear values against the clean labels)."""
    xs, ys = holdout
    return auc(ys, [model.predict_proba_event(v, h) for v, h in xs])


def synthetic_run(
    epsilon: float,
    seed: int,
    *,
    events: int = 60_000,
    holdout: int = 10_000,
    n_users: int = 5_000,
    gap_seconds: float = 120.0,
    chunk: int = 500,
    budget: float | None = None,
    models: Sequence[str] = tuple(MODELS),
    label_epsilon: float | None = None,
) -> list[LearnRun]:
    """One private synthetic stream at person budget ``epsilon`` (:func:`private_stream`), several models on
    it: each released chunk predicted, then learned."""
    t0 = time.perf_counter()
    gen, policy, chunks = private_stream(epsilon, seed, events=events, n_users=n_users, gap_seconds=gap_seconds,
                                         chunk=chunk, budget=budget, label_epsilon=label_epsilon)
    tracks = _make_models(policy, models, seed)
    n = 0
    positives = 0
    for raws, clean in chunks:
        examples = [PrivateExample.from_json(raw) for raw in raws]
        positives += sum(clean)
        n += len(examples)
        for tr in tracks.values():
            tr.step(examples, clean)

    # serving: a held-out continuation of the stream, on clear values, against the clean labels
    serve_x, serve_y = serving_holdout(gen, holdout)
    seconds = time.perf_counter() - t0
    out = []
    for name, tr in tracks.items():
        if tr.model.debias:
            sp = [tr.model.predict_proba_event(v, h) for v, h in serve_x]
            a_s, l_s = auc(serve_y, sp), mean_log_loss(serve_y, sp)
        else:
            a_s = l_s = math.nan
        out.append(LearnRun(
            "synthetic", epsilon, name, seed, n, positives / max(n, 1),
            auc(tr.y_private, tr.p), mean_log_loss(tr.y_private, tr.p),
            auc(tr.y_clean, tr.p), mean_log_loss(tr.y_clean, tr.p), a_s, l_s, seconds,
        ))
    return out


def phishing_run(epsilon: float, seed: int, *, models: Sequence[str] = tuple(MODELS)) -> list[LearnRun]:
    """River's Phishing dataset, privatized per page (HM on [0, 1] per feature, RR label), shuffled by ``seed``."""
    from river import datasets

    from stream.ldp.grr import GRR
    from stream.ldp.numeric import HybridMechanism

    t0 = time.perf_counter()
    eps = _eps(epsilon)
    rows = list(datasets.Phishing())
    random.Random(seed).shuffle(rows)
    rng = np.random.default_rng(seed + 104729)
    hm = HybridMechanism(eps, 0.0, 1.0)
    rr = GRR(2, eps)
    names = sorted(rows[0][0])
    xs = np.asarray([[float(x[f]) for f in names] for x, _y in rows])
    noisy = hm.perturb(xs.ravel(), rng).reshape(xs.shape)
    ys = np.asarray([bool(y) for _x, y in rows])
    labels = rr.perturb_array(ys.astype(np.int64), rng)
    hm_params = {"m": "HM", "eps": eps, "lo": 0.0, "hi": 1.0}
    tracks = _make_models(None, [m for m in models if m != "raw-features"], seed)
    for i in range(len(rows)):
        doc = {
            "schema": "private-example.v1", "source_schema": "phishing",
            "features": {f: {**hm_params, "r": float(noisy[i, j])} for j, f in enumerate(names)},
            "label": {"name": "session_purchase", "m": "GRR", "eps": eps, "k": 2, "r": int(labels[i])},
        }
        ex = PrivateExample.from_dict(doc)
        for tr in tracks.values():
            tr.step([ex], [bool(ys[i])])
    seconds = time.perf_counter() - t0
    return [
        LearnRun("phishing", epsilon, name, seed, len(rows), float(ys.mean()),
                 auc(tr.y_private, tr.p), mean_log_loss(tr.y_private, tr.p),
                 auc(tr.y_clean, tr.p), mean_log_loss(tr.y_clean, tr.p), math.nan, math.nan, seconds)
        for name, tr in tracks.items()
    ]


def _job(args: tuple[str, float, int, dict[str, Any]]) -> list[LearnRun]:
    dataset, epsilon, seed, kw = args
    if dataset == "synthetic":
        return synthetic_run(epsilon, seed, **kw)
    return phishing_run(epsilon, seed)


def learn_table(
    *,
    epsilons: Sequence[float] = EPSILONS,
    seeds: Sequence[int] = (1, 2, 3),
    datasets: Sequence[str] = ("synthetic", "phishing"),
    events: int = 60_000,
    holdout: int = 10_000,
    n_users: int = 5_000,
    workers: int = 2,
    progress: Callable[[int, int, list[LearnRun]], None] | None = None,
) -> list[LearnRun]:
    """Every (dataset, epsilon, seed) stream, ``workers`` processes in parallel."""
    kw = {"events": events, "holdout": holdout, "n_users": n_users}
    jobs = [(d, e, s, kw) for d in datasets for e in epsilons for s in seeds]
    return _run_jobs(_job, jobs, workers, progress)


def _run_jobs(fn: Callable[[Any], list[Any]], jobs: list[Any], workers: int,
              progress: Callable[[int, int, list[Any]], None] | None) -> list[Any]:
    """``fn`` over ``jobs``, in this process or in ``workers`` spawned processes, reporting progress."""
    out: list[Any] = []
    if workers <= 1:
        done: Any = map(fn, jobs)
        for i, runs in enumerate(done):
            out += runs
            if progress:
                progress(i + 1, len(jobs), runs)
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for i, runs in enumerate(pool.imap_unordered(fn, jobs)):
            out += runs
            if progress:
                progress(i + 1, len(jobs), runs)
    return out


@dataclass(frozen=True)
class SummaryRow:
    dataset: str
    epsilon: float
    model: str
    seeds: int
    examples: float
    metrics: dict[str, tuple[float, float]]  # name -> (mean, sd)


_METRICS = ("auc_private", "logloss_private", "auc_clean", "logloss_clean", "auc_serve", "logloss_serve")


def summarize(runs: Iterable[LearnRun]) -> list[SummaryRow]:
    groups: dict[tuple[str, float, str], list[LearnRun]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.epsilon, r.model), []).append(r)
    rows = []
    model_order = list(MODELS)
    for (d, e, m), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], model_order.index(kv[0][2]))):
        metrics = {}
        for name in _METRICS:
            vals = [getattr(r, name) for r in rs if not math.isnan(getattr(r, name))]
            if vals:
                metrics[name] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append(SummaryRow(d, e, m, len(rs), statistics.fmean(r.examples for r in rs), metrics))
    return rows


def _ms(row: SummaryRow, name: str) -> str:
    if name not in row.metrics:
        return "-"
    m, s = row.metrics[name]
    return f"{m:.3f}±{s:.3f}"


def format_table(rows: Sequence[SummaryRow]) -> str:
    head = (f"{'dataset':<10} {'eps':>4} {'model':<13} {'AUC clean':>12} {'logloss clean':>14} "
            f"{'AUC private':>12} {'AUC serve':>12} {'logloss serve':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        eps = "inf" if math.isinf(r.epsilon) else f"{r.epsilon:g}"
        lines.append(f"{r.dataset:<10} {eps:>4} {r.model:<13} {_ms(r, 'auc_clean'):>12} "
                     f"{_ms(r, 'logloss_clean'):>14} {_ms(r, 'auc_private'):>12} {_ms(r, 'auc_serve'):>12} "
                     f"{_ms(r, 'logloss_serve'):>14}")
    return "\n".join(lines)


def target_check(rows: Sequence[SummaryRow], metric: str = "auc_clean", epsilon: float = 2.0,
                 model: str = "corrected", dataset: str = "synthetic") -> tuple[float, float] | None:
    """(AUC at ``epsilon``, AUC non-private) of ``model`` on ``dataset``, or None if not in the table."""
    by = {(r.dataset, r.epsilon, r.model): r for r in rows}
    a, b = by.get((dataset, epsilon, model)), by.get((dataset, math.inf, model))
    if a is None or b is None or metric not in a.metrics or metric not in b.metrics:
        return None
    return a.metrics[metric][0], b.metrics[metric][0]


# ---------------------------------------------------------------------------------------------
# bench learn --people N (issue 22): one example per person and epoch, inside the person cap
# ---------------------------------------------------------------------------------------------

#: the learners measured side by side (``bench learn --people``; ``split-lr`` on request: slow, and far behind)
CANDIDATES = ("joint-nb", "joint-uniform", "split-lr")
DEFAULT_CANDIDATES = ("joint-nb", "joint-uniform")
PEOPLE_EPSILONS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, math.inf)


@dataclass
class PeopleStream:
    """One clear stream of ``people`` people: per person-epoch, one example (a uniformly drawn event
    of the person's first session of the epoch) with its clean label, and a held-out event-level
    continuation to serve on."""

    spec: Any
    policy: LdpPolicy
    subjects: list[tuple[str, int]]  # (person, epoch) per example
    events: list[dict[str, Any]]  # the chosen events (clear LDP values)
    hours: list[int | None]  # their hour of week
    indices: np.ndarray  # (n, d) example-attribute indices
    labels: np.ndarray  # clean labels, 0/1
    holdout: tuple[np.ndarray, list[bool]]  # (indices, clean labels) of the held-out events
    holdout_events: list[tuple[dict[str, Any], int | None]]
    n_events: int


def people_stream(people: int, seed: int, *, epochs: int = 1, holdout: int = 20_000,
                  events: int | None = None, n_users: int | None = None) -> PeopleStream:
    """Run the synthetic clickstream until ``people`` distinct people were seen (a population of
    ``2 * people``), ``epochs`` times as long in total, each epoch the same number of events; a
    person's example of an epoch is a uniform draw among the events of its first session there.
    ``events``: instead, exactly this many events in one epoch (``n_users`` people; the demo's scale)."""
    from stream.ldp.examples import ExampleSpec, encode_many

    gen = ClickstreamGenerator(seed=seed, n_users=n_users or 2 * people)
    policy = LdpPolicy.from_schema(load_schema(SCHEMA), 1.0)
    spec = ExampleSpec.from_policy(policy)
    pick = random.Random(f"bench-people/{seed}")
    chosen: dict[tuple[str, int], tuple[str, dict[str, Any], int]] = {}  # (person, epoch) -> (session, event, count)
    seen: set[str] = set()
    n_events = 0
    per_epoch = 0
    epoch = 0
    it = gen.events(10**12)
    while True:
        ev = next(it)
        n_events += 1
        uid = ev["user_id"]
        if epoch == 0:
            seen.add(uid)
        ref = (uid, epoch)
        cur = chosen.get(ref)
        if cur is None:
            chosen[ref] = (ev["session_id"], ev, 1)
        elif cur[0] == ev["session_id"]:
            c = cur[2] + 1
            chosen[ref] = (cur[0], ev if pick.random() * c < 1.0 else cur[1], c)
        if events is not None:
            if n_events >= events:
                break
            continue
        if epoch == 0 and len(seen) >= people:
            per_epoch = n_events
            epoch = 1
        elif epoch > 0 and n_events >= per_epoch * (epoch + 1):
            epoch += 1
        if epoch >= epochs:
            break
    subjects = list(chosen)
    evs = [chosen[r][1] for r in subjects]
    labels = np.asarray([gen.session_label(chosen[r][0]) for r in subjects], dtype=np.int64)
    hows = [hour_of_week(e["ts"]) for e in evs]
    rows = [({f: e.get(f) for f in _LDP_FIELDS}, None if h is None else h % 24) for e, h in zip(evs, hows, strict=True)]
    idx = encode_many(spec, rows)
    hx, hy = serving_holdout(gen, holdout)
    hidx = encode_many(spec, [(v, None if h is None else h % 24) for v, h in hx])
    return PeopleStream(spec, policy, subjects, [r[0] for r in rows], hows, idx, labels, (hidx, hy), hx, n_events)


@dataclass(frozen=True)
class PeopleRun:
    dataset: str
    people: int
    epsilon: float
    model: str
    seed: int
    examples: int
    auc_serve: float
    seconds: float
    charged_max: float = 0.0  # the largest ledger (epsilon) after the run: <= the cap


def _ledger_charges(subjects: Sequence[tuple[str, int]], epsilon: float, seed: int) -> tuple[np.ndarray, float]:
    """Charge one example per person-epoch to the real ledger semantics (an in-memory ledger store at the
    person cap ``epsilon``, :func:`stream.ldp.examples.example_charge`, each person-epoch once as the
    privatizer does): which examples may be emitted, and the largest ledger afterwards."""
    from stream.ldp.examples import example_charge
    from stream.ldp.ledger import MICRO, MemoryLedgerStore, ledger_id

    store = MemoryLedgerStore(clock=lambda: 0.0)
    key = random.Random(seed).randbytes(32)
    first: dict[tuple[str, int], int] = {}
    charges = []
    for i, (s, e) in enumerate(subjects):
        if (s, e) not in first:
            first[(s, e)] = i
            charges.append(example_charge(subject=s, ledger=ledger_id(key, s, e), expire_at=10**12, epsilon=epsilon))
    paid = dict(zip(first, store.charge(charges, round(epsilon * MICRO)), strict=True))
    ok = np.asarray([first[ref] == i and paid[ref] for i, ref in enumerate(subjects)], dtype=bool)
    return ok, max(store.ledgers.values(), default=0) / MICRO


def joint_nb_run(stream: PeopleStream, epsilon: float, seed: int, *, people: int, smoothing: float = 0.5,
                 uniform: bool = False, plan_people: int | None = None) -> PeopleRun:
    """Joint reports at the person budget, naive Bayes; the attribute draw planned from the schema for
    ``plan_people`` (default ``people``; :func:`stream.ldp.examples.attribute_weights`, as the privatizer
    does for its expected people; ``uniform``: the candidate with a uniform draw). eps = inf: the same
    learner on the clear examples (every attribute)."""
    from stream.ldp.examples import ExampleReporter, attribute_weights
    from stream.learn.joint import JointNaiveBayes, JointReport

    t0 = time.perf_counter()
    model = JointNaiveBayes(stream.spec, smoothing=smoothing, seed=seed)
    cmax = 0.0
    if math.isinf(epsilon):
        model.learn_many_clear(stream.indices, stream.labels)
        n = len(stream.labels)
    else:
        ok, cmax = _ledger_charges(stream.subjects, epsilon, seed)
        w = None if uniform else attribute_weights(stream.spec, epsilon, max(plan_people or people, 1))
        rep = ExampleReporter(stream.spec, epsilon, np.random.default_rng(seed * 1000 + round(epsilon * 10)), weights=w)
        raws, _attr = rep.reports(stream.indices[ok], stream.labels[ok])
        for raw in raws:
            model.learn_one(JointReport.from_json(raw))
        n = len(raws)
    p = model.predict_many_indices(stream.holdout[0])
    return PeopleRun("synthetic", people, epsilon, "joint-uniform" if uniform else "joint-nb", seed, n,
                     auc(stream.holdout[1], p), time.perf_counter() - t0, cmax)


def _split_records(policy: LdpPolicy, events: Sequence[Mapping[str, Any]], labels: np.ndarray, epsilon: float,
                   rng: np.random.Generator, source: str) -> list[dict[str, Any]]:
    """Candidate (b)'s records: every attribute and the label at ``epsilon / (attributes + 1)``,
    one-shot (``private-example.v1``; no hour of week: it would escape the cap)."""
    from stream.ldp.grr import GRR

    attrs = list(policy.attributes)
    share = epsilon / (len(attrs) + 1)
    sub = LdpPolicy.from_schema(load_schema(SCHEMA), share) if source == SCHEMA else policy
    cols: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    for a in sub.attributes:
        if a.kind == "categorical":
            vals = np.asarray([a.index_of(e.get(a.name)) if a.index_of(e.get(a.name)) is not None else 0 for e in events],
                              dtype=np.int64)
            assert a.oracle is not None
            cols[a.name] = (a.params(), list(a.oracle.perturb(vals, rng)))
        else:
            assert a.numeric is not None
            vals_f = np.asarray([a.clamp(e.get(a.name)) for e in events], dtype=np.float64)
            cols[a.name] = (a.params(), [float(x) for x in a.numeric.perturb(vals_f, rng)])
    lab = GRR(2, share).perturb_array(np.asarray(labels, dtype=np.int64), rng).tolist()
    out = []
    for i in range(len(events)):
        feats = {}
        for name, (params, reps) in cols.items():
            r = reps[i]
            if params.get("m") == "OUE" and int(params["k"]) > 62:
                r = format(int(r), "x") if not isinstance(r, str) else r
            feats[name] = {**params, "r": r}
        out.append({"schema": "private-example.v1", "source_schema": source, "features": feats,
                    "label": {"name": "session_purchase", "m": "GRR", "eps": share, "k": 2, "r": int(lab[i])}})
    return out


def split_lr_run(stream: PeopleStream, epsilon: float, seed: int, *, people: int) -> PeopleRun:
    """Candidate (b): the River logistic regression (noise-corrected label, debiased features) on one
    example per person-epoch, every attribute and the label at an equal share of the person budget;
    eps = inf runs at 20 per share through the same code."""
    t0 = time.perf_counter()
    eps = NONPRIVATE_EPSILON * (len(stream.policy.attributes) + 1) if math.isinf(epsilon) else epsilon
    ok, cmax = ((np.ones(len(stream.labels), dtype=bool), 0.0) if math.isinf(epsilon)
                else _ledger_charges(stream.subjects, epsilon, seed))
    rng = np.random.default_rng(seed * 1000 + 7 + round(min(eps, 1e3) * 10))
    evs = [e for e, k in zip(stream.events, ok.tolist(), strict=True) if k]
    recs = _split_records(stream.policy, evs, stream.labels[ok], eps, rng, SCHEMA)
    model = PropensityModel.for_policy(stream.policy, seed=seed)
    order = list(range(len(recs)))
    random.Random(seed).shuffle(order)
    for i in order:
        model.learn_one(PrivateExample.from_dict(recs[i]))
    p = [model.predict_proba_event(v, None) for v, _h in stream.holdout_events]
    return PeopleRun("synthetic", people, epsilon, "split-lr", seed, len(recs), auc(stream.holdout[1], p),
                     time.perf_counter() - t0, cmax)


def phishing_people_run(epsilon: float, seed: int, *, models: Sequence[str] = DEFAULT_CANDIDATES,
                        test_share: float = 0.3) -> list[PeopleRun]:
    """River's Phishing, one person per row: the features in 10 equal bins of [0, 1] plus the label
    under the same accounting (one joint report at ``epsilon`` per row for ``joint-nb``; every feature
    by HM and the label at ``epsilon / 10`` for ``split-lr``); AUC on a held-out ``test_share`` of the
    rows, on clear values."""
    from river import datasets

    from stream.ldp.examples import ExampleAttribute, ExampleReporter, ExampleSpec, attribute_weights
    from stream.ldp.grr import GRR
    from stream.ldp.numeric import HybridMechanism
    from stream.learn.joint import JointNaiveBayes, JointReport

    rows = list(datasets.Phishing())
    random.Random(seed).shuffle(rows)
    names = sorted(rows[0][0])
    xs = np.asarray([[float(x[f]) for f in names] for x, _y in rows])
    ys = np.asarray([int(bool(y)) for _x, y in rows], dtype=np.int64)
    cut = int(len(rows) * (1 - test_share))
    edges = tuple((i + 1) / 10 for i in range(10))
    spec = ExampleSpec("phishing", tuple(
        ExampleAttribute(f, tuple(f"<={e:g}" for e in edges), "numeric", edges=edges[:-1], lo=-1.0) for f in names))
    idx = np.minimum((xs * 10).astype(np.int64), 9)
    out = []
    rng = np.random.default_rng(seed + 104729 + round(min(epsilon, 1e3) * 10))
    for name in ("joint-nb", "joint-uniform"):
        if name not in models:
            continue
        t0 = time.perf_counter()
        nb = JointNaiveBayes(spec, seed=seed)
        if math.isinf(epsilon):
            nb.learn_many_clear(idx[:cut], ys[:cut])
        else:
            # nine attributes of ten bins each: the planned draw is uniform too
            w = None if name == "joint-uniform" else attribute_weights(spec, epsilon, cut)
            jr = np.random.default_rng(seed + 104729 + round(min(epsilon, 1e3) * 10))
            raws, _ = ExampleReporter(spec, epsilon, jr, weights=w).reports(idx[:cut], ys[:cut])
            for raw in raws:
                nb.learn_one(JointReport.from_json(raw))
        out.append(PeopleRun("phishing", cut, epsilon, name, seed, cut,
                             auc(ys[cut:].astype(bool), nb.predict_many_indices(idx[cut:])), time.perf_counter() - t0))
    if "split-lr" in models:
        t0 = time.perf_counter()
        share = (NONPRIVATE_EPSILON if math.isinf(epsilon) else epsilon / (len(names) + 1))
        hm = HybridMechanism(share, 0.0, 1.0)
        noisy = hm.perturb(xs[:cut].ravel(), rng).reshape(xs[:cut].shape)
        lab = GRR(2, share).perturb_array(ys[:cut], rng)
        lr = PropensityModel(seed=seed)
        hm_params = {"m": "HM", "eps": share, "lo": 0.0, "hi": 1.0}
        for i in range(cut):
            lr.learn_one(PrivateExample.from_dict({
                "schema": "private-example.v1", "source_schema": "phishing",
                "features": {f: {**hm_params, "r": float(noisy[i, j])} for j, f in enumerate(names)},
                "label": {"name": "session_purchase", "m": "GRR", "eps": share, "k": 2, "r": int(lab[i])}}))
        p = [lr._proba({f: 2.0 * float(xs[i, j]) - 1.0 for j, f in enumerate(names)}) for i in range(cut, len(rows))]
        out.append(PeopleRun("phishing", cut, epsilon, "split-lr", seed, cut, auc(ys[cut:].astype(bool), p),
                             time.perf_counter() - t0))
    return out


def _people_job(args: tuple[int, int, Sequence[float], Sequence[str], int]) -> list[PeopleRun]:
    people, seed, epsilons, models, epochs = args
    if people == 0:
        return [r for e in epsilons for r in phishing_people_run(e, seed, models=models)]
    stream = people_stream(people, seed, epochs=epochs)
    out = []
    for e in epsilons:
        if "joint-nb" in models:
            out.append(joint_nb_run(stream, e, seed, people=people))
        if "joint-uniform" in models and not math.isinf(e):  # the clear learner is the same
            out.append(joint_nb_run(stream, e, seed, people=people, uniform=True))
        if "split-lr" in models:
            out.append(split_lr_run(stream, e, seed, people=people))
    return out


def people_table(*, people: Sequence[int], epsilons: Sequence[float] = PEOPLE_EPSILONS, seeds: Sequence[int] = (1, 2, 3),
                 models: Sequence[str] = DEFAULT_CANDIDATES, phishing: bool = True, epochs: int = 1, workers: int = 2,
                 progress: Callable[[int, int, list[PeopleRun]], None] | None = None) -> list[PeopleRun]:
    """Every (people, seed) stream (all epsilons and models on the same stream), plus Phishing per seed."""
    jobs = [(n, s, tuple(epsilons), tuple(models), epochs) for n in sorted(people, reverse=True) for s in seeds]
    if phishing:
        jobs += [(0, s, tuple(epsilons), tuple(models), 1) for s in seeds]
    return _run_jobs(_people_job, jobs, workers, progress)


def format_people(runs: Sequence[PeopleRun]) -> str:
    """Served AUC, mean ± sd over seeds: one row per (dataset, model, people), one column per epsilon,
    and the gap to non-private at eps = 2."""
    groups: dict[tuple[str, str, int], dict[float, list[float]]] = {}
    eps_all: set[float] = set()
    for r in runs:
        groups.setdefault((r.dataset, r.model, r.people), {}).setdefault(r.epsilon, []).append(r.auc_serve)
        eps_all.add(r.epsilon)
    eps_sorted = sorted(eps_all)
    cols = ["inf" if math.isinf(e) else f"eps {e:g}" for e in eps_sorted]
    head = f"{'dataset':<10} {'model':<13} {'people':>7} " + " ".join(f"{c:>13}" for c in cols) + f" {'gap eps 2':>9}"
    lines = [head, "-" * len(head)]
    for (d, m, n), by in sorted(groups.items(), key=lambda kv: (kv[0][0] != "synthetic", kv[0][0], kv[0][1], kv[0][2])):
        cells = []
        for e in eps_sorted:
            v = [x for x in by.get(e, []) if not math.isnan(x)]
            cells.append(f"{statistics.fmean(v):.3f}±{statistics.stdev(v) if len(v) > 1 else 0.0:.3f}" if v else "-")
        gap = "-"
        ref = by.get(math.inf) or groups.get((d, "joint-nb", n), {}).get(math.inf)  # the same clear learner
        if 2.0 in by and ref:
            gap = f"{statistics.fmean(ref) - statistics.fmean(by[2.0]):.3f}"
        lines.append(f"{d:<10} {m:<13} {n:>7} " + " ".join(f"{c:>13}" for c in cells) + f" {gap:>9}")
    return "\n".join(lines)
