"""``streamgate bench learn``: what local differential privacy costs the purchase-propensity model.

For each dataset, epsilon and seed one private stream is built with the production code
path and several models learn from it side by side (same stream, paired comparison):

* **synthetic** - :class:`stream.synth.ClickstreamGenerator` events go through the pure
  privatizer (:class:`stream.ldp.privatizer.Privatizer`, two rounds, an in-memory memo store),
  the session labeler (:class:`stream.ldp.labels.SessionLabeler`) and the label's two-round
  randomized response; each ``private-example.v1`` record is parsed with
  :meth:`PrivateExample.from_json` exactly as the learner worker does. The clean label of
  every example is the generator's :meth:`~stream.synth.ClickstreamGenerator.session_label`
  (the bench keeps the session id next to the stub, in process; it is never in a record).
  ``epsilon`` is the **person budget** per epoch (``STREAMGATE_LDP_PERSON_EPSILON``): the ledger's
  cap, with every memo (5 attributes and the label) priced ``epsilon /`` :data:`PERSON_SHARES`, so a
  person's first event takes 6 shares and two more new values fit; past the cap, stand-ins.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
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
#: synthetic runs: a memo (of any attribute or the label) costs the person budget / PERSON_SHARES
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


def serve_auc(model: PropensityModel, holdout: tuple[list[tuple[dict[str, Any], int | None]], list[bool]]) -> float:
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
    out: list[LearnRun] = []
    if workers <= 1:
        for i, job in enumerate(jobs):
            runs = _job(job)
            out += runs
            if progress:
                progress(i + 1, len(jobs), runs)
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for i, runs in enumerate(pool.imap_unordered(_job, jobs)):
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
