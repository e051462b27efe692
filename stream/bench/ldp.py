"""Accuracy part of ``streamgate bench ldp``: estimator variance, empirical vs closed form.

For every mechanism and cell, a fixed population of ``n`` users is privatized
``trials`` times and the estimator is recomputed each time; the empirical
variance of the estimates across trials is compared with the closed form
(Wang, Blocki, Li, Jha, USENIX Security 2017 for GRR/OUE/OLH; Wang et al.,
ICDE 2019 for PM/HM; Duchi, Jordan, Wainwright, JASA 2018 for Duchi). The
target is a ratio within 0.9-1.1; each row also carries the standard error of
its ratio (measured from the trials themselves), which the default trial
counts keep at about 2.5 % or less.

* Frequencies (:func:`accuracy_table`): a Zipf(1.1) population over ``k``
  values; the per-value variances are pooled over the domain and compared with
  the mean of ``variance(n, f_v)`` at the true frequencies. Each trial is a
  real perturbation of all ``n`` users: ``path`` says how. ``perturb`` is the
  mechanism's own vectorized sampler and support counting (GRR: ``perturb_array``
  + ``bincount``; OUE: ``perturb_bits``; OLH: ``perturb_arrays`` + ``support_arrays``,
  always, since the real hash family's collisions are part of what is measured),
  i.e. :meth:`perturb` / :meth:`support` without the JSON encoding. ``exact-sampler``
  (OUE when ``n k`` is large) draws the support vector from its exact law
  (independent binomials), :meth:`~stream.ldp.oue.OUE.sample_support`, which
  the tests check against the real path.
* Means (:func:`numeric_table`): a log-normal, price-like population clamped to
  ``[0, 500]``; the variance of the mean estimate over trials vs
  ``mean_i Var(x_i) / n``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.ldp.grr import GRR
from stream.ldp.numeric import NumericMechanism, make_numeric, mean_estimate
from stream.ldp.olh import OLH
from stream.ldp.oracle import FrequencyOracle
from stream.ldp.oue import OUE

__all__ = [
    "AccuracyRow",
    "LongitudinalRow",
    "accuracy_table",
    "auto_trials",
    "format_longitudinal",
    "format_table",
    "longitudinal_table",
    "numeric_table",
    "price_population",
    "zipf_counts",
]

#: Real OUE bit matrices up to this many cells per trial; beyond, the exact binomial sampler.
OUE_REAL_CELLS = 2_500_000
NUMERIC_TRIALS = 3000
PRICE_LO, PRICE_HI = 0.0, 500.0


@dataclass(frozen=True)
class AccuracyRow:
    """One cell: empirical vs closed-form variance of the estimator (``k = 0`` for numeric rows)."""

    mechanism: str
    k: int
    epsilon: float
    n: int
    trials: int
    empirical_var: float
    theoretical_var: float
    ratio: float
    ratio_se: float = math.nan
    path: str = "perturb"
    seconds: float = 0.0


def auto_trials(k: int) -> int:
    """Default trials per frequency cell: at least 200, and at least ~4000 pooled (value, trial)
    pairs, so the ratio's sampling error stays near 2 % or below."""
    return max(200, math.ceil(4000 / k))


def zipf_counts(n: int, k: int, s: float = 1.1) -> np.ndarray:
    """Exactly ``n`` users over ``k`` values with Zipf(``s``) frequencies (largest remainder)."""
    w = 1.0 / np.arange(1, k + 1) ** s
    raw = w / w.sum() * n
    counts = np.floor(raw).astype(np.int64)
    short = n - int(counts.sum())
    counts[np.argsort(raw - counts)[::-1][:short]] += 1
    return counts


def _support_sampler(o: FrequencyOracle, counts: np.ndarray) -> tuple[str, Callable[[np.random.Generator],
                                                                                    np.ndarray]]:
    k, n = o.k, int(counts.sum())
    values = np.repeat(np.arange(k, dtype=np.int64), counts)
    if isinstance(o, GRR):
        return "perturb", lambda rng: np.bincount(o.perturb_array(values, rng), minlength=k)
    if isinstance(o, OUE):
        if n * k <= OUE_REAL_CELLS:
            return "perturb", lambda rng: o.perturb_bits(values, rng).sum(axis=0, dtype=np.int64)
        return "exact-sampler", lambda rng: o.sample_support(counts, rng)
    if isinstance(o, OLH):
        return "perturb", lambda rng: o.support_arrays(*o.perturb_arrays(values, rng))
    return "perturb", lambda rng: o.support(o.perturb(values, rng))


def _frequency_cell(cls: type[FrequencyOracle], k: int, eps: float, n: int, trials: int,
                    rng: np.random.Generator) -> AccuracyRow:
    t0 = time.perf_counter()
    o = cls(k, eps)
    counts = zipf_counts(n, k)
    f = counts / n
    path, draw = _support_sampler(o, counts)
    est = np.empty((trials, k))
    for t in range(trials):
        est[t] = o.estimate(draw(rng), n)
    dev2 = (est - est.mean(axis=0)) ** 2 * (trials / (trials - 1))
    per_trial = dev2.mean(axis=1)  # pooled over the domain, per trial: its spread gives the SE
    emp = float(per_trial.mean())
    theo = float(np.mean(o.variance(n, f)))
    se = float(per_trial.std(ddof=1) / math.sqrt(trials)) / theo
    return AccuracyRow(o.name, k, eps, n, trials, emp, theo, emp / theo, se, path, time.perf_counter() - t0)


def accuracy_table(*, n: int = 100_000, epsilons: Sequence[float] = (0.5, 1, 2, 4),
                   ks: Sequence[int] = (4, 20, 250), trials: int | None = None, seed: int = 0,
                   mechanisms: Sequence[str] = ("GRR", "OUE", "OLH"),
                   say: Callable[[str], object] = print) -> list[AccuracyRow]:
    """Empirical vs closed-form variance of the GRR/OUE/OLH frequency estimates (see the module
    docstring). ``trials=None``: :func:`auto_trials` per ``k``."""
    if n < 1 or (trials is not None and trials < 2):
        raise ValueError("need n >= 1 and trials >= 2")
    classes: dict[str, type[FrequencyOracle]] = {"GRR": GRR, "OUE": OUE, "OLH": OLH}
    cells = [(m, k, float(e)) for m in mechanisms for k in ks for e in epsilons]
    seeds = np.random.SeedSequence(seed).spawn(len(cells))
    rows = []
    for (m, k, eps), ss in zip(cells, seeds, strict=True):
        row = _frequency_cell(classes[m], k, eps, n, trials or auto_trials(k), np.random.default_rng(ss))
        say(f"  {m:<5} k={k:<4} eps={eps:<4g} {row.trials:>5} trials  ratio {row.ratio:.3f}"
            f"  ({row.seconds:.1f} s)")
        rows.append(row)
    return rows


def price_population(n: int, rng: np.random.Generator) -> np.ndarray:
    """A skewed, price-like population: log-normal (median ~55), a tail beyond 500."""
    return rng.lognormal(mean=4.0, sigma=0.9, size=n)


def _numeric_cell(mech: NumericMechanism, x: np.ndarray, trials: int, rng: np.random.Generator) -> AccuracyRow:
    t0 = time.perf_counter()
    n = x.shape[0]
    means = np.array([mean_estimate(mech.perturb(x, rng)) for _ in range(trials)])
    emp = float(means.var(ddof=1))
    theo = float(np.mean(mech.variance(x))) / n
    m4 = float(np.mean((means - means.mean()) ** 4))
    se = math.sqrt(max(m4 - emp**2, 0.0) / trials) / theo
    return AccuracyRow(mech.name, 0, mech.epsilon, n, trials, emp, theo, emp / theo, se, "perturb",
                       time.perf_counter() - t0)


def numeric_table(*, n: int = 100_000, epsilons: Sequence[float] = (0.5, 1, 2, 4),
                  trials: int | None = None, seed: int = 0, mechanisms: Sequence[str] = ("PM", "HM", "Duchi"),
                  say: Callable[[str], object] = print) -> list[AccuracyRow]:
    """Empirical vs closed-form variance of the mean estimate for PM/HM (and Duchi) on a price-like
    population in ``[0, 500]``. ``trials=None``: :data:`NUMERIC_TRIALS`."""
    if n < 1 or (trials is not None and trials < 2):
        raise ValueError("need n >= 1 and trials >= 2")
    x = price_population(n, np.random.default_rng(seed))
    cells = [(m, float(e)) for m in mechanisms for e in epsilons]
    seeds = np.random.SeedSequence([seed, 1]).spawn(len(cells))
    rows = []
    for (m, eps), ss in zip(cells, seeds, strict=True):
        mech = make_numeric(eps, PRICE_LO, PRICE_HI, m)
        row = _numeric_cell(mech, x, trials or NUMERIC_TRIALS, np.random.default_rng(ss))
        say(f"  {m:<5} eps={eps:<4g} {row.trials:>5} trials  ratio {row.ratio:.3f}  ({row.seconds:.1f} s)")
        rows.append(row)
    return rows


def format_table(rows: Sequence[AccuracyRow]) -> str:
    """A fixed-width table, plus how many cells are within the 0.9-1.1 target."""
    head = (f"{'mechanism':<9} {'k':>4} {'eps':>4} {'n':>8} {'trials':>6} {'path':<13} "
            f"{'empirical var':>13} {'closed form':>12} {'ratio':>6} {'± se':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        k = str(r.k) if r.k else "-"
        lines.append(f"{r.mechanism:<9} {k:>4} {r.epsilon:>4g} {r.n:>8,} {r.trials:>6} {r.path:<13} "
                     f"{r.empirical_var:>13.4e} {r.theoretical_var:>12.4e} {r.ratio:>6.3f} {r.ratio_se:>6.3f}")
    ok = sum(1 for r in rows if 0.9 <= r.ratio <= 1.1)
    lines.append(f"{ok}/{len(rows)} cells with ratio in [0.9, 1.1]; total {sum(r.seconds for r in rows):.0f} s")
    return "\n".join(lines)


# -- two-round (longitudinal) mechanisms: what the privatizer runs --------------------------------------------

LONGITUDINAL_N = 20_000


@dataclass(frozen=True)
class LongitudinalRow(AccuracyRow):
    """A two-round cell: ``eps_inf`` (the memo) besides ``epsilon`` (eps_1, per report) and ``m`` reports
    per permanent response."""

    eps_inf: float = 0.0
    m: int = 1


def _longitudinal_cell(mech_name: str, k: int, eps_inf: float, eps_1: float, n: int, m: int, trials: int,
                       rng: np.random.Generator) -> LongitudinalRow:
    from stream.ldp.longitudinal import LongitudinalGRR, LongitudinalOUE

    t0 = time.perf_counter()
    mech = LongitudinalGRR(k, eps_inf, eps_1) if mech_name == "L-GRR" else LongitudinalOUE(k, eps_inf, eps_1)
    users = n // m
    counts = zipf_counts(users, k)
    values = np.repeat(np.arange(k, dtype=np.int64), counts)
    f = counts / users
    est = np.empty((trials, k))
    shifts = np.arange(k, dtype=np.int64)
    for t in range(trials):
        reps = mech.instantaneous(np.repeat(mech.permanent(values, rng), m), rng)
        if isinstance(mech, LongitudinalGRR):
            sup = np.bincount(reps, minlength=k)
        else:
            sup = ((reps[:, None] >> shifts) & 1).sum(axis=0)
        est[t] = mech.marginal.estimate(sup, users * m)
    dev2 = (est - est.mean(axis=0)) ** 2 * (trials / (trials - 1))
    per_trial = dev2.mean(axis=1)
    emp = float(per_trial.mean())
    theo = float(np.mean(mech.frequency_variance(users * m, f, m)))
    se = float(per_trial.std(ddof=1) / math.sqrt(trials)) / theo
    return LongitudinalRow(mech.name, k, eps_1, users * m, trials, emp, theo, emp / theo, se, "perturb",
                           time.perf_counter() - t0, eps_inf, m)


def _longitudinal_numeric_cell(eps_inf: float, eps_1: float, n: int, trials: int, seed: int,
                               rng: np.random.Generator) -> LongitudinalRow:
    """L-Duchi with alpha-point rounding (a fresh alpha per user and trial), one report per user."""
    from stream.ldp.longitudinal import LongitudinalDuchi

    t0 = time.perf_counter()
    mech = LongitudinalDuchi(eps_inf, eps_1, PRICE_LO, PRICE_HI)
    x = np.clip(price_population(n, np.random.default_rng(seed)), PRICE_LO, PRICE_HI)
    means = np.empty(trials)
    for t in range(trials):
        grid = mech.grid_value(mech.round_alpha(x, rng.random(n)))
        means[t] = mech.to_report(mech.instantaneous(mech.permanent(grid, rng), rng)).mean()
    emp = float(means.var(ddof=1))
    theo = float(np.mean(mech.marginal.variance(x))) / n  # rounding leaves one report's variance unchanged
    m4 = float(np.mean((means - means.mean()) ** 4))
    se = math.sqrt(max(m4 - emp**2, 0.0) / trials) / theo
    return LongitudinalRow(mech.name, 0, eps_1, n, trials, emp, theo, emp / theo, se, "perturb",
                           time.perf_counter() - t0, eps_inf, 1)


def longitudinal_table(*, n: int = LONGITUDINAL_N, eps_infs: Sequence[float] = (1, 2, 4),
                       ks: Sequence[int] = (4, 20, 50), ms: Sequence[int] = (1, 4), trials: int | None = None,
                       seed: int = 0, mechanisms: Sequence[str] = ("L-GRR", "L-OSUE", "L-Duchi"),
                       say: Callable[[str], object] = print) -> list[LongitudinalRow]:
    """Empirical vs closed-form variance of the two-round mechanisms (eps_1 = eps_inf / 2): ``n`` reports
    per trial, ``m`` of them per permanent response (the frequency estimate's closed form with ``m``
    is exact when every memo contributes ``m``; ``m = 1`` is the one-report variance)."""
    if n < 4 or (trials is not None and trials < 2):
        raise ValueError("need n >= 4 and trials >= 2")
    cells: list[tuple[str, int, float, int]] = []
    for mech in mechanisms:
        for e in eps_infs:
            if mech == "L-Duchi":
                cells.append((mech, 0, float(e), 1))
            else:
                cells += [(mech, k, float(e), m) for k in ks for m in ms]
    seeds = np.random.SeedSequence([seed, 2]).spawn(len(cells))
    rows = []
    for (mech, k, e, m), ss in zip(cells, seeds, strict=True):
        rng = np.random.default_rng(ss)
        if mech == "L-Duchi":
            row = _longitudinal_numeric_cell(e, e / 2, n, trials or NUMERIC_TRIALS, seed, rng)
        else:
            row = _longitudinal_cell(mech, k, e, e / 2, n, m, trials or auto_trials(k), rng)
        say(f"  {mech:<7} k={k:<3} eps_inf={e:<3g} eps_1={e / 2:<4g} m={m} {row.trials:>5} trials  "
            f"ratio {row.ratio:.3f}  ({row.seconds:.1f} s)")
        rows.append(row)
    return rows


def format_longitudinal(rows: Sequence[LongitudinalRow]) -> str:
    head = (f"{'mechanism':<9} {'k':>3} {'eps_inf':>7} {'eps_1':>5} {'m':>2} {'reports':>8} {'trials':>6} "
            f"{'empirical var':>13} {'closed form':>12} {'ratio':>6} {'± se':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        k = str(r.k) if r.k else "-"
        lines.append(f"{r.mechanism:<9} {k:>3} {r.eps_inf:>7g} {r.epsilon:>5g} {r.m:>2} {r.n:>8,} {r.trials:>6} "
                     f"{r.empirical_var:>13.4e} {r.theoretical_var:>12.4e} {r.ratio:>6.3f} {r.ratio_se:>6.3f}")
    ok = sum(1 for r in rows if 0.9 <= r.ratio <= 1.1)
    lines.append(f"{ok}/{len(rows)} cells with ratio in [0.9, 1.1]; total {sum(r.seconds for r in rows):.0f} s")
    return "\n".join(lines)


# -- coverage: do the published 95 % intervals cover the truth they name? ----------------------------------------

COVERAGE_WINDOW_SECONDS = 60
#: repeater profiles: (share of people, min events, max events) per window
PROFILES: dict[str, tuple[tuple[float, int, int], ...]] = {
    "light": ((1.0, 1, 2),),
    "heavy": ((0.4, 1, 2), (0.4, 5, 10), (0.2, 25, 40)),
}
_DEVICES = ("desktop", "mobile", "tablet", "other")  # the schema's enum: the gateway passes no other
_COUNTRIES = ("US", "DE", "GB", "FR", "IN", "BR", "JP", "ES", "IT", "NL")
_CATEGORIES = ("electronics", "books", "fashion", "home", "toys", "sports", "beauty", "garden")
_TYPES = ("page_view", "product_view", "add_to_cart", "purchase", "search")


@dataclass(frozen=True)
class CoverageRow:
    """Coverage of one mechanism (attributes pooled) under one repeater profile."""

    mechanism: str
    profile: str
    truth: str
    windows: int
    intervals: int
    covered: int
    mean_n: float
    mean_z2: float  # mean squared z-score (1.0 when the std errors are exact)
    mean_z: float = 0.0  # mean signed z-score (0 when unbiased)
    top_coverage: float = math.nan  # coverage of each window's most frequent value only (where bias shows)
    top_mean_z: float = math.nan  # mean signed z-score of each window's most frequent value

    @property
    def coverage(self) -> float:
        return self.covered / self.intervals if self.intervals else math.nan


def _persona(rng: np.random.Generator, uid: str, lo: int, hi: int) -> dict[str, Any]:
    heavy = hi >= 25
    return {"uid": uid, "lo": lo, "hi": hi,
            "device": _DEVICES[int(rng.choice(4, p=[0.5, 0.3, 0.15, 0.05] if not heavy else [0.1, 0.2, 0.3, 0.4]))],
            "country": _COUNTRIES[int(rng.integers(0, 10 if not heavy else 3))],
            "fav": _CATEGORIES[int(rng.integers(0, 8 if not heavy else 2))],
            "level": float(rng.lognormal(3.5 if not heavy else 5.0, 0.6)),
            "tp": [0.3, 0.35, 0.15, 0.1, 0.1] if not heavy else [0.75, 0.15, 0.05, 0.02, 0.03]}


def coverage_stream(profile: str, windows: int, events_per_window: int, seed: int, t0_s: int,
                    window_seconds: int = COVERAGE_WINDOW_SECONDS, pool: int | None = None) -> list[tuple[int, dict]]:
    """(timestamp ms, clear event) of a synthetic stream whose people repeat per ``profile``: each person has
    a fixed device and country, a favourite category and a price level; heavy repeaters browse more (their
    events are mostly page views), so capping a person changes the frequencies. ``pool``: the people of every
    window are drawn from that many (so they come back in later windows, and a cap over several windows
    binds); else each window has people of its own."""
    rng = np.random.default_rng([seed, 7])
    shares = PROFILES[profile]
    classes = [s[0] for s in shares]
    people: list[dict[str, Any]] = []
    if pool is not None:
        for i in range(pool):
            _share, lo, hi = shares[int(rng.choice(len(shares), p=classes))]
            people.append(_persona(rng, f"cov-{seed}-{i + 1}", lo, hi))
    out: list[tuple[int, dict]] = []
    pid = 0
    for w in range(windows):
        n = 0
        evs: list[tuple[int, dict]] = []
        while n < events_per_window:
            if pool is None:  # (the draws in the order of the documented runs)
                _share, lo, hi = shares[int(rng.choice(len(shares), p=classes))]
                k = int(rng.integers(lo, hi + 1))
                pid += 1
                who = _persona(rng, f"cov-{seed}-{pid}", lo, hi)
            else:
                who = people[int(rng.integers(0, pool))]
                k = int(rng.integers(who["lo"], who["hi"] + 1))
            for _ in range(k):
                et = _TYPES[int(rng.choice(5, p=who["tp"]))]
                ev: dict = {"user_id": who["uid"], "event_type": et, "device": who["device"], "country": who["country"]}
                if et in ("product_view", "add_to_cart", "purchase"):
                    ev["category"] = who["fav"] if rng.random() < 0.7 else _CATEGORIES[int(rng.integers(0, 8))]
                    ev["price"] = round(who["level"] * float(rng.lognormal(0.0, 0.3)), 2)
                ts = (t0_s + w * window_seconds) * 1000 + int(rng.integers(0, window_seconds * 1000 - 1))
                evs.append((ts, ev))
            n += k
        out += evs  # a person's events in order; people one after the other
    return out


def capped_population(stream: Sequence[tuple[int, dict]], per_person: int | None,
                      epoch_seconds: int) -> list[tuple[int, dict]]:
    """The events the estimand names, computed from the clear stream alone: with ``per_person`` None every
    event; else each person's first ``per_person`` events of each epoch (in stream order)."""
    if per_person is None:
        return list(stream)
    seen: dict[tuple[str, int], int] = {}
    out = []
    for ts, ev in stream:
        key = (ev["user_id"], ts // 1000 // epoch_seconds)
        c = seen.get(key, 0)
        if c < per_person:
            out.append((ts, ev))
        seen[key] = c + 1
    return out


def _truth_by_window(policy: object, events: Sequence[tuple[int, dict]], window_ms: int) -> dict[int, dict[str, object]]:
    from stream.ldp.policy import LdpPolicy

    assert isinstance(policy, LdpPolicy)
    acc: dict[int, dict[str, object]] = {}
    for ts, ev in events:
        w = (ts // window_ms) * window_ms
        slot = acc.setdefault(w, {"_n": 0})
        slot["_n"] = int(slot["_n"]) + 1  # type: ignore[call-overload]
        for a in policy.attributes:
            if a.kind == "categorical":
                idx = a.index_of(ev.get(a.name))
                if idx is None:  # the privatizer would not report it, and the event would cost less
                    raise ValueError(f"{a.name}={ev.get(a.name)!r} is outside the schema: no gateway passes it")
                c = slot.setdefault(a.name, np.zeros(a.k))
                c[idx] += 1  # type: ignore[index]
            else:
                slot[a.name] = float(slot.get(a.name, 0.0)) + a.clamp(ev.get(a.name))  # type: ignore[arg-type]
    return acc


def _sum_truths(slots: Sequence[dict[str, object]]) -> dict[str, object]:
    """The truth of several windows' union: counts and sums added."""
    out: dict[str, object] = {}
    for slot in slots:
        for k, v in slot.items():
            out[k] = v if k not in out else out[k] + v  # type: ignore[operator]
    return out


def coverage_table(make: Callable[..., tuple[object, object]], *, windows: int = 500,
                   events_per_window: int = 2000, profiles: Sequence[str] = ("light", "heavy"),
                   per_person: Callable[[object], int | None] = lambda priv: None, truth: str = "budget",
                   seed: int = 0, batch: int = 500, merge_windows: int = 1, epoch_windows: int = 1,
                   pool: int | None = None, say: Callable[[str], object] = print) -> list[CoverageRow]:
    """Run synthetic streams through a production privatizer and window aggregator (``make(epoch_seconds)``
    returns both; each window is its own epoch) and count how often the published 95 % intervals cover the
    truth they name, computed independently from the clear stream (:func:`capped_population` with
    ``per_person(privatizer)`` events per person and epoch). ``merge_windows`` > 1: the intervals are those
    of every ``merge_windows`` consecutive windows' records merged as ``streamgate estimates --total`` and the
    console merge them (:func:`stream.ldp.aggregate.merge_records`), against the truth of their union.
    ``epoch_windows`` > 1: an epoch (the cap's period) spans that many windows, and with ``pool`` people come
    back in later windows of their epoch, so the cap set by earlier windows decides later windows' truth."""
    from stream.ldp.aggregate import WindowAggregator, merge_records

    rows: list[CoverageRow] = []
    es = COVERAGE_WINDOW_SECONDS
    for pi, profile in enumerate(profiles):
        t_start = time.perf_counter()
        epoch = es * epoch_windows
        t0_s = (int(time.time()) // epoch - -(-windows // epoch_windows) - 2) * epoch  # epochs whole
        stream = coverage_stream(profile, windows, events_per_window, seed + pi, t0_s, es, pool=pool)
        priv, agg = make(epoch) if epoch_windows == 1 else make(epoch, window_seconds=es)
        assert isinstance(agg, WindowAggregator)
        policy = agg.policy
        records = [(ts, orjson.dumps({"_schema": policy.schema_name, **ev})) for ts, ev in stream]
        from stream.ldp.privatizer import ProtectedRecord

        for i in range(0, len(records), batch):
            res = priv.process([ProtectedRecord(v, ts) for ts, v in records[i : i + batch]])  # type: ignore[attr-defined]
            agg.add(res.attribute_reports)
        wins = agg.drain()
        cap = per_person(priv)
        truth_events = capped_population(stream, cap if truth == "budget" else None, epoch)
        tw = _truth_by_window(policy, truth_events, es * 1000)
        units: list[tuple[list[dict[str, Any]], dict[str, object]]] = []  # (records, their truth)
        for j in range(0, len(wins) - merge_windows + 1, merge_windows):
            block = [w for w in wins[j : j + merge_windows] if w.start_ms in tw]
            if len(block) < merge_windows:
                continue
            recs = [r for w in block for r in agg.records(w)]
            units.append((recs if merge_windows == 1 else merge_records(policy, recs),
                          _sum_truths([tw[w.start_ms] for w in block])))
        stats: dict[str, list[float]] = {}
        tops: dict[str, list[float]] = {}
        ns: dict[str, list[int]] = {}
        for unit_records, t in units:
            for rec in unit_records:
                a = policy.by_name[rec["attribute"]]
                mech = rec["mechanism"]
                z2 = stats.setdefault(mech, [])
                ns.setdefault(mech, []).append(int(rec["n"]))
                n_true = int(t["_n"])  # type: ignore[call-overload]
                if a.kind == "categorical":
                    counts = t.get(a.name)
                    f = (np.zeros(a.k) if counts is None else np.asarray(counts)) / max(1, n_true)
                    top = int(np.argmax(f))
                    for i, (v, fv) in enumerate(zip(rec.get("values", []), f, strict=False)):
                        se = max(float(v["std_error"]), 1e-12)
                        z2.append((float(v["estimate"]) - float(fv)) / se)
                        if i == top:
                            tops.setdefault(mech, []).append(z2[-1])
                elif "mean" in rec:
                    mu = float(t.get(a.name, 0.0)) / max(1, n_true)  # type: ignore[arg-type]
                    se = max(float(rec["std_error"]), 1e-12)
                    z2.append((float(rec["mean"]) - mu) / se)
                    tops.setdefault(mech, []).append(z2[-1])
        for mech, z in stats.items():
            zs = np.asarray(z)
            arr = zs**2
            top_z = np.asarray(tops.get(mech, [np.nan]))
            row = CoverageRow(mech, profile, truth, len(units), len(arr), int(np.sum(arr <= 1.96**2)),
                              float(np.mean(ns[mech])), float(np.mean(arr)), float(np.mean(zs)),
                              float(np.mean(np.abs(top_z) <= 1.96)), float(np.mean(top_z)))
            rows.append(row)
            say(f"  {profile:<6} {mech:<6} windows {row.windows:>4}  intervals {row.intervals:>6}  "
                f"coverage {row.coverage:.3f} (top value {row.top_coverage:.3f})  mean z^2 {row.mean_z2:.2f}  mean z {row.mean_z:+.3f} "
                f"(top value {row.top_mean_z:+.3f})  mean n {row.mean_n:,.0f}  "
                f"({time.perf_counter() - t_start:.0f} s)")
    return rows


def format_coverage(rows: Sequence[CoverageRow]) -> str:
    head = (f"{'mechanism':<9} {'profile':<7} {'truth':<7} {'windows':>7} {'intervals':>9} {'mean n':>8} {'mean z':>7} "
            f"{'mean z^2':>8} {'coverage':>8} {'top value':>9} {'top z':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.mechanism:<9} {r.profile:<7} {r.truth:<7} {r.windows:>7} {r.intervals:>9} {r.mean_n:>8,.0f} "
                     f"{r.mean_z:>+7.3f} {r.mean_z2:>8.2f} {r.coverage:>8.3f} {r.top_coverage:>9.3f} {r.top_mean_z:>+7.3f}")
    ok = sum(1 for r in rows if 0.93 <= r.coverage <= 0.97 and 0.93 <= r.top_coverage <= 0.97)
    lines.append(f"{ok}/{len(rows)} rows with coverage (all values and the top value) in [0.93, 0.97]")
    return "\n".join(lines)


# -- grouping: can one person's reports be told apart from strangers' with the same values? ----------------------

def attribute_similarity(a: dict, b: dict) -> dict[str, float]:
    """The grouping attack's score of two feature reports, per attribute they both carry: an equal GRR /
    Duchi output scores 1, an OUE bitmask its number of equal bits (the issue's plain similarity;
    higher = more alike)."""
    out: dict[str, float] = {}
    fa, fb = a.get("features", {}), b.get("features", {})
    for name, x in fa.items():
        y = fb.get(name)
        if y is None:
            continue
        if x.get("m") == "OUE" and isinstance(x.get("r"), int) and isinstance(y.get("r"), int):
            out[name] = float(int(x["k"]) - bin(int(x["r"]) ^ int(y["r"])).count("1"))
        else:
            out[name] = 1.0 if x.get("r") == y.get("r") else 0.0
    return out


def report_similarity(a: dict, b: dict) -> float:
    """The summed score of :func:`attribute_similarity` over the attributes of two reports."""
    return sum(attribute_similarity(a, b).values())


def pair_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random positive pair > that of a random negative pair), ties counting half."""
    pos = np.sort(np.asarray(positives, dtype=np.float64))
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    if not len(pos) or not len(neg):
        return math.nan
    below = np.searchsorted(neg, pos, side="left")
    upto = np.searchsorted(neg, pos, side="right")
    return float(np.sum(below + 0.5 * (upto - below)) / (len(pos) * len(neg)))


def grouping_aucs(groups_same: Sequence[Sequence[dict]],
                  groups_strangers: Sequence[Sequence[dict]]) -> tuple[float, dict[str, float]]:
    """Pair AUCs of the grouping attack: pairs within one person's reports (``groups_same[i]``) against the
    same pairs of strangers' reports with the same values (``groups_strangers[i]``, aligned event for event).
    Returns the AUC of the summed score (:func:`report_similarity`) and, per attribute, that of the
    attribute's own score, so one linkable attribute is not drowned by the others' noise (a memoized
    ``device`` scores about 0.9 alone but 0.55 summed). 0.5: the score cannot tell them apart."""
    pos_all: list[float] = []
    neg_all: list[float] = []
    pos: dict[str, list[float]] = defaultdict(list)
    neg: dict[str, list[float]] = defaultdict(list)
    for same, strangers in zip(groups_same, groups_strangers, strict=True):
        m = min(len(same), len(strangers))
        for i in range(m):
            for j in range(i + 1, m):
                sp, sn = attribute_similarity(same[i], same[j]), attribute_similarity(strangers[i], strangers[j])
                pos_all.append(sum(sp.values()))
                neg_all.append(sum(sn.values()))
                for name in sp.keys() | sn.keys():  # an attribute one report lacks scores 0
                    pos[name].append(sp.get(name, 0.0))
                    neg[name].append(sn.get(name, 0.0))
    return pair_auc(pos_all, neg_all), {name: pair_auc(pos[name], neg[name]) for name in sorted(pos)}


def grouping_auc(groups_same: Sequence[Sequence[dict]], groups_strangers: Sequence[Sequence[dict]]) -> float:
    """Pair AUC of the summed score (:func:`report_similarity`): the first of :func:`grouping_aucs`."""
    return grouping_aucs(groups_same, groups_strangers)[0]


def production_pair(epoch_seconds: int, *, person_epsilon: float = 12.0, epsilon: float = 1.0, seed: int = 0,
                    min_people: int = 1, window_seconds: int | None = None) -> tuple[object, object]:
    """The production privatizer (in-memory ledger store, seeded ChaCha20) and window aggregator on the
    shipped schema, by default each window its own epoch (what :func:`coverage_table` runs)."""
    import os

    from stream.ldp.aggregate import WindowAggregator
    from stream.ldp.csprng import ChaChaRandom
    from stream.ldp.ledger import MemoryLedgerStore
    from stream.ldp.policy import LdpPolicy
    from stream.ldp.privatizer import Privatizer
    from stream.schema import load_schema

    schema = load_schema("clickstream-event.v1")
    policy = LdpPolicy.from_schema(schema, epsilon)
    priv = Privatizer(policy, MemoryLedgerStore(), memo_key=os.urandom(32), subject_field=schema.subject_field,
                      budget_epsilon=person_epsilon, epoch_seconds=epoch_seconds, retention_seconds=10**9,
                      rng=ChaChaRandom(seed), shuffle_seed=seed)
    agg = WindowAggregator(policy, window_seconds=window_seconds or epoch_seconds, min_people=min_people,
                           estimand=priv.estimand())
    return priv, agg


def production_per_person(priv: object) -> int | None:
    from stream.ldp.privatizer import Privatizer

    assert isinstance(priv, Privatizer)
    return priv.per_person
