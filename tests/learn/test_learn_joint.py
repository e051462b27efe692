"""Joint (value, label) reports and the naive Bayes learned from them (issue 22): the privacy of one
report (exact likelihood ratios, and the best distinguishing attack), the unbiased shares, one example
per person and epoch on the ledger, the additive federation, the snapshot, and what is approximate."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream.errors import InvalidExampleError, KeyUnavailableError
from stream.ldp.examples import (
    EXPECTED_PEOPLE,
    ExampleAttribute,
    ExampleReporter,
    ExampleSpec,
    JointExamples,
    attribute_weights,
    joint_mechanism,
)
from stream.ldp.grr import GRR
from stream.ldp.labels import LABEL_NAME, POSITIVE_EVENT_TYPE, POSITIVE_FIELD
from stream.ldp.ledger import MICRO, Charge, MemoryLedgerStore
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import Privatizer, ProtectedRecord
from stream.learn.federated import ModelUpdate, Parameters, fedavg
from stream.learn.joint import THETA_CLIP, JointNaiveBayes, JointReport, _paule_mandel
from stream.learn.snapshot import ModelSnapshot
from stream.schema import load_schema

EPOCH = int(time.time()) // 86400


def small_spec() -> ExampleSpec:
    return ExampleSpec("test", (
        ExampleAttribute("a", ("x", "y", "z"), "categorical", index={"x": 0, "y": 1, "z": 2}),
        ExampleAttribute("b", tuple(f"v{i}" for i in range(12)), "categorical",
                         index={f"v{i}": i for i in range(12)}),
    ))


def population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute a drives the label, b is noise."""
    rng = np.random.default_rng(seed)
    a = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    b = rng.integers(0, 12, size=n)
    y = (rng.random(n) < np.array([0.1, 0.3, 0.7])[a]).astype(np.int64)
    return np.stack([a, b], axis=1), y


def learn(spec: ExampleSpec, idx: np.ndarray, y: np.ndarray, eps: float, seed: int, **kw: object) -> JointNaiveBayes:
    m = JointNaiveBayes(spec, **kw)  # type: ignore[arg-type]
    raws, _ = ExampleReporter(spec, eps, np.random.default_rng(seed)).reports(idx, y)
    for raw in raws:
        m.learn_one(JointReport.from_json(raw))
    return m


# -- privacy of one report ----------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.5, 2.0, 4.0])
def test_one_report_is_eps_ldp_for_every_attribute_and_the_label(eps: float) -> None:
    """Exact: for every attribute draw, every output's probability under any two inputs (value and
    label) differs by at most e^eps; the draw is data-independent, so the mixture keeps the bound."""
    for cells in (4, 6, 14, 24, 62):
        mech = joint_mechanism(cells, eps)
        worst = 0.0
        if isinstance(mech, GRR):
            worst = mech.p / mech.q
        else:  # OUE: product over bits; the worst output differs in the two cells that differ
            p, q = mech.p, mech.q
            worst = (p / q) * ((1 - q) / (1 - p))
        assert worst <= math.exp(eps) * (1 + 1e-9)


def test_the_best_attack_on_the_label_does_no_better_than_eps_allows() -> None:
    """Two people alike but for the label: the Bayes-optimal test on one report (likelihood ratio of
    the report's law under label 1 vs 0) guesses right at most e^eps / (1 + e^eps) of the time."""
    eps = 1.0
    spec = small_spec()
    rep = ExampleReporter(spec, eps, np.random.default_rng(5))
    n = 20_000
    idx = np.tile([[1, 4]], (n, 1))
    y = np.arange(n) % 2
    raws, attr = rep.reports(idx, y)
    right = 0
    for raw, j, label in zip(raws, attr.tolist(), y.tolist(), strict=True):
        r = JointReport.from_json(raw)
        s = r.support()
        v = idx[0, j]
        p, q = r.pq()
        # likelihood of the report under cell 2v+1 vs 2v
        if r.mechanism == "GRR":
            l1 = p if s[2 * v + 1] else q
            l0 = p if s[2 * v] else q
        else:
            l1 = (p if s[2 * v + 1] else 1 - p) * (q if s[2 * v] else 1 - q)
            l0 = (p if s[2 * v] else 1 - p) * (q if s[2 * v + 1] else 1 - q)
        guess = 1 if l1 > l0 else 0 if l0 > l1 else int(np.random.default_rng(len(raws) + right).integers(2))
        right += guess == label
    bound = math.exp(eps) / (1 + math.exp(eps))
    assert right / n <= bound + 4 * math.sqrt(bound * (1 - bound) / n)
    assert right / n > 0.55  # the attack works (it is not vacuous)


# -- estimation ---------------------------------------------------------------------------------


def test_debiased_shares_are_unbiased_and_their_stated_error_is_right() -> None:
    spec = small_spec()
    idx, y = population(3000, 1)
    truth = {j: np.bincount(2 * idx[:, j] + y, minlength=2 * spec.attributes[j].k) / len(y) for j in range(2)}
    est: dict[int, list[np.ndarray]] = {0: [], 1: []}
    ses: dict[int, list[float]] = {0: [], 1: []}
    reps = 150
    for seed in range(reps):
        m = learn(spec, idx, y, 2.0, 100 + seed)
        for j, a in enumerate(spec.attributes):
            est[j].append(m.shares(a.name).ravel())
            ses[j].append(math.sqrt(m.var[a.name]) / m.n[a.name])
    for j in range(2):
        e = np.asarray(est[j])
        mean_err = np.abs(e.mean(axis=0) - truth[j])
        # the subsample of people who report j varies too: its share adds a binomial term to the spread
        assert np.all(mean_err < 4 * e.std(axis=0) / math.sqrt(reps) + 1e-12), (mean_err, e.std(axis=0))
        ratio = float(np.median(e.std(axis=0) / np.mean(ses[j])))
        assert 0.8 < ratio < 1.25, ratio


def test_private_naive_bayes_approaches_the_clear_one_as_people_grow() -> None:
    """The conditional log-odds (weight + intercept) of the informative attribute converge to the clear
    model's (consistency): 100 times the people, about a tenth of the error (mean over three runs)."""
    spec = small_spec()
    gaps = []
    for n in (2_000, 200_000):
        idx, y = population(n, 7)
        clear = JointNaiveBayes(spec)
        clear.learn_many_clear(idx, y)
        wc, bc = clear.weights(named=False), clear.intercept
        err = []
        for seed in (8, 9, 10):
            m = learn(spec, idx, y, 2.0, seed)
            wp, bp = m.weights(named=False), m.intercept
            err.append(max(abs(wc[f"a={v}"] + bc - wp[f"a={v}"] - bp) for v in range(3)))
        gaps.append(float(np.mean(err)))
    assert gaps[1] < gaps[0] / 3 and gaps[1] < 0.1, gaps


def test_naive_bayes_on_clear_counts_matches_the_closed_form() -> None:
    spec = small_spec()
    idx, y = population(5000, 3)
    m = JointNaiveBayes(spec, smoothing=0.0, shrink=False)
    m.learn_many_clear(idx, y)
    w, b = m.log_odds()
    a = idx[:, 0]
    p1 = np.mean(a[y == 1] == 2)
    p0 = np.mean(a[y == 0] == 2)
    assert w["a=2"] == pytest.approx(math.log(p1 / p0))
    assert b == pytest.approx(math.log(y.mean() / (1 - y.mean())))


def test_a_value_never_seen_without_a_pseudo_count_gets_a_finite_weight() -> None:
    spec = small_spec()
    idx, y = population(2000, 5)
    idx[:, 1] = np.minimum(idx[:, 1], 10)  # value 11 of b never occurs
    m = JointNaiveBayes(spec, smoothing=0.0)
    m.learn_many_clear(idx, y)
    w, _b = m.log_odds()
    assert all(math.isfinite(v) for v in w.values()) and "b=11" in w


def test_shrinkage_damps_a_pure_noise_attribute() -> None:
    spec = small_spec()
    idx, y = population(6000, 4)
    on = learn(spec, idx, y, 1.0, 9, shrink=True).weights(named=False)
    off = learn(spec, idx, y, 1.0, 9, shrink=False).weights(named=False)
    spread = lambda w: np.ptp([w[f"b={i}"] for i in range(12)])  # noqa: E731
    assert spread(on) < spread(off) / 2


def test_random_effects_find_no_spread_in_noise_and_the_spread_that_is_there() -> None:
    """Paule-Mandel: estimates that differ only by their stated noise get tau^2 = 0 (one constant weight:
    the attribute is dropped); a real spread is recovered (2,000 values, tau^2 = 0.04, within 15 %)."""
    rng = np.random.default_rng(3)
    v = rng.uniform(0.01, 0.05, size=2000)
    tau2, fit = _paule_mandel(0.2 + rng.normal(0, np.sqrt(v)) * 0.5, v)  # less spread than the noise allows
    assert tau2 == 0.0 and np.ptp(fit) == 0.0
    tau2, _ = _paule_mandel(0.2 + rng.normal(0, np.sqrt(v + 0.04)), v)
    assert tau2 == pytest.approx(0.04, rel=0.15)


def test_the_value_that_defines_the_label_is_known_not_estimated() -> None:
    """A purchase event's session contains a purchase (the label's definition, stream.ldp.labels): the
    clickstream spec names that value, the model serves P(1 | purchase) = 1 whatever the reports say, and
    the known value enters the random effects (the other values are shrunk less than without it)."""
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    spec = ExampleSpec.from_policy(policy)
    et = spec.by_name[POSITIVE_FIELD]
    assert spec.positive == (POSITIVE_FIELD, et.values.index(POSITIVE_EVENT_TYPE))
    j = spec.attributes.index(et)
    rng = np.random.default_rng(5)
    n = 4_000
    idx = np.stack([rng.integers(0, a.k, size=n) for a in spec.attributes], axis=1)
    y = (rng.random(n) < 0.2).astype(np.int64)  # purchase rows labelled like any other: the data contradict it
    weights = np.zeros(spec.d)
    weights[j] = 1.0
    m = JointNaiveBayes(spec)
    raws, _ = ExampleReporter(spec, 2.0, np.random.default_rng(6), weights=weights).reports(idx, y)
    for raw in raws:
        m.learn_one(JointReport.from_json(raw))
    w, base = m.log_odds()
    top = math.log((1 - THETA_CLIP) / THETA_CLIP) - base
    assert w[f"{et.name}={spec.positive[1]}"] == pytest.approx(top)
    assert max(v for k, v in w.items() if k.startswith(f"{et.name}=") and k != f"{et.name}={spec.positive[1]}") < top / 2
    unknown = JointNaiveBayes(dataclasses.replace(spec, positive=None))
    unknown.set_parameters(*m.parameters())
    spread = lambda ws: np.ptp([ws[f"{et.name}={v}"] for v in range(et.k) if v != spec.positive[1]])  # noqa: E731
    assert spread(w) >= spread(unknown.log_odds()[0])
    assert ExampleSpec.from_policy(policy).positive is not None and small_spec().positive is None


def test_the_attribute_draw_is_planned_from_the_schema_alone() -> None:
    """The draw's probabilities depend only on the domain sizes, epsilon and the planned people (never on
    data): few people or a small epsilon spend the one report on the small domains, many on all of them."""
    spec = ExampleSpec.from_policy(LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0))
    ks = [a.k for a in spec.attributes]
    renamed = ExampleSpec("other", tuple(ExampleAttribute(f"x{j}", tuple(f"v{i}" for i in range(k)), "categorical",
                                                          index={f"v{i}": i for i in range(k)})
                                         for j, k in enumerate(ks)))
    for eps, people in ((1.0, 5_000), (2.0, 50_000), (8.0, 5_000)):
        w = attribute_weights(spec, eps, people)
        assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
        assert np.array_equal(w, attribute_weights(renamed, eps, people))  # names and values play no part
    small = attribute_weights(spec, 1.0, 5_000)
    smallest = np.asarray(ks) == min(ks)
    assert small[smallest].sum() == pytest.approx(1.0)  # little signal per report: the smallest domains only
    wide = attribute_weights(spec, 8.0, 100_000)
    assert np.all(wide > 0) and wide[int(np.argmax(ks))] > wide[int(np.argmin(ks))]
    joint, _spec = _joint(2.0, 1)  # the privatizer's draw is the plan for its expected people
    assert np.allclose(joint.reporter.probs, attribute_weights(spec, 2.0, EXPECTED_PEOPLE))


def test_the_draw_does_not_depend_on_the_data_and_follows_its_probabilities() -> None:
    spec = small_spec()
    w = [0.8, 0.2]
    a_idx, a_y = population(20_000, 1)
    b_idx, b_y = np.zeros_like(a_idx), np.ones_like(a_y)
    _, attr_a = ExampleReporter(spec, 2.0, np.random.default_rng(4), weights=w).reports(a_idx, a_y)
    _, attr_b = ExampleReporter(spec, 2.0, np.random.default_rng(4), weights=w).reports(b_idx, b_y)
    assert np.array_equal(attr_a, attr_b)  # other values, other labels: the same draws
    assert abs(float(np.mean(attr_a == 0)) - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 20_000)


def test_an_attribute_never_drawn_is_not_learned_and_not_served() -> None:
    spec = small_spec()
    idx, y = population(5000, 2)
    m = JointNaiveBayes(spec)
    raws, _ = ExampleReporter(spec, 2.0, np.random.default_rng(6), weights=[1.0, 0.0]).reports(idx, y)
    for raw in raws:
        m.learn_one(JointReport.from_json(raw))
    assert m.n["b"] == 0 and not [k for k in m.weights(named=False) if k.startswith("b=")]
    assert m.predict_proba_indices([2, 0]) == m.predict_proba_indices([2, 11])


# -- parsing ------------------------------------------------------------------------------------


def test_the_parser_is_strict() -> None:
    good = {"schema": "private-example.v2", "source_schema": "test", "attribute": "a", "d": 2, "m": "GRR",
            "eps": 2.0, "k": 6, "r": 5}
    assert JointReport.from_dict(good).label == 1
    bad = [{**good, "r": 6}, {**good, "r": True}, {**good, "k": 5}, {**good, "m": "OLH"}, {**good, "eps": 0},
           {**good, "extra": 1}, {**good, "schema": "private-example.v1"}, {**good, "m": "OUE", "r": 64},
           {**good, "m": "OUE", "r": "XYZ"}, {**good, "d": 2.0}]
    for doc in bad:
        with pytest.raises(InvalidExampleError):
            JointReport.from_dict(doc)
    with pytest.raises(TypeError):
        JointNaiveBayes(small_spec()).learn_one(good)  # type: ignore[arg-type]
    with pytest.raises(InvalidExampleError):  # a domain the model does not have
        JointNaiveBayes(small_spec()).learn_one(JointReport.from_dict({**good, "k": 8, "r": 1}))


# -- the privatizer's side: one example per person and epoch, on the ledger ----------------------


def _joint(eps: float, seed: int) -> tuple[JointExamples, ExampleSpec]:
    policy = LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0)
    spec = ExampleSpec.from_policy(policy)
    return JointExamples(spec, eps, np.random.default_rng(seed), subject_field="user_id"), spec


def _privatizer(eps: float, cap: float, seed: int, store: MemoryLedgerStore | None = None) -> Privatizer:
    """The real privatizer core with joint examples on, over an in-memory ledger store."""
    schema = load_schema("clickstream-event.v1")
    policy = LdpPolicy.from_schema(schema, 1.0)
    rng = np.random.default_rng(seed)
    return Privatizer(policy, store if store is not None else MemoryLedgerStore(), memo_key=os.urandom(32),
                      subject_field=schema.subject_field, budget_epsilon=cap, epoch_seconds=86400,
                      retention_seconds=30 * 86400, rng=rng, shuffle_seed=seed,
                      examples=JointExamples(ExampleSpec.from_policy(policy), eps, rng, subject_field="user_id"))


def _records(n_people: int, per_person: int) -> list[ProtectedRecord]:
    ts_ms = EPOCH * 86400 * 1000 + 3_600_000
    out = []
    for p in range(n_people):
        for i in range(per_person):
            ev = {"_schema": "clickstream-event.v1", "user_id": f"tk1_p{p}", "session_id": f"tk1_s{p}_{i % 3}",
                  "event_type": "purchase" if i == 0 else "page_view", "device": "mobile", "country": "DE",
                  "ts": "2026-12-06T01:02:03.000Z"}
            out.append(ProtectedRecord(orjson.dumps(ev), ts_ms + i))
    return out


def test_one_example_per_person_and_epoch_paid_once_at_the_first_event_before_the_features() -> None:
    store = MemoryLedgerStore()
    priv = _privatizer(2.0, 12.0, 1, store)
    cost = priv.report_cost_micro
    per_person = (12 * MICRO - 2 * MICRO) // cost
    assert 6 * cost > 12 * MICRO - 2 * MICRO  # six events would not fit after the example: the order matters
    res = priv.process(_records(50, 6))
    assert len(res.examples) == 300 and len(res.reports) == 50 * per_person == 50 * priv.per_person
    # the example was paid first, then the features up to the cap
    assert set(store.ledgers.values()) == {2 * MICRO + per_person * cost}
    assert res.epsilon_spent[LABEL_NAME] == pytest.approx(100.0)
    for st in res.examples:  # the held body: the two randomized candidates; no clear value, no token
        assert st.body.count(b"\n") == 1
        assert b"tk1_" not in st.body and b"DE" not in st.body
    stubs = res.examples
    first = priv.label_examples([(st, True) for st in stubs[:150]])
    second = priv.label_examples([(st, False) for st in stubs[150:]])
    assert first.epsilon_spent == 0 and second.epsilon_spent == 0  # prepaid
    assert len({st.subject for st in first.stubs + second.stubs}) == len(first.examples) + len(second.examples) == 50
    again = priv.label_examples([(st, True) for st in stubs])
    assert again.examples == [] and again.skipped["one_per_person_epoch"] == 300
    more = priv.process(_records(50, 6))  # the same person-epochs again: nothing more for the example
    assert more.examples == [] and more.reports == [] and LABEL_NAME not in more.epsilon_spent
    assert set(store.ledgers.values()) == {2 * MICRO + per_person * cost}
    for raw in first.examples + second.examples:
        assert orjson.loads(raw)["schema"] == "private-example.v2"
        JointReport.from_json(raw)


def test_at_the_cap_no_example_no_stand_in_and_nothing_charged() -> None:
    store = MemoryLedgerStore()
    priv = _privatizer(2.0, 12.0, 2, store)
    full = [Charge(f"tk1_p{p}", priv.ledger_id(f"tk1_p{p}", EPOCH), 11 * MICRO, 10**12) for p in range(20)]
    assert all(store.charge(full, 12 * MICRO))  # 1 left: less than the example's 2
    res = priv.process(_records(20, 1))
    assert res.examples == [] and LABEL_NAME not in res.epsilon_spent
    assert priv.label_examples([]).examples == []
    assert all(v <= 12 * MICRO for v in store.ledgers.values())


def test_a_failed_store_round_trip_asks_for_the_example_again() -> None:
    class Flaky(MemoryLedgerStore):
        fail = True

        def charge(self, charges, budget_micro):  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail = False
                raise KeyUnavailableError("down")
            return super().charge(charges, budget_micro)

    store = Flaky()
    priv = _privatizer(2.0, 12.0, 4, store)
    with pytest.raises(KeyUnavailableError):
        priv.process(_records(5, 2))
    res = priv.process(_records(5, 2))
    assert len(res.examples) == 10 and res.epsilon_spent[LABEL_NAME] == pytest.approx(10.0)


def test_the_emitted_report_is_the_one_of_the_true_label() -> None:
    """At a large epsilon the GRR report is almost surely the true cell: the label picks the candidate."""
    _joint_unused, spec = _joint(20.0, 3)
    priv = _privatizer(20.0, 100.0, 3)
    stubs = priv.process(_records(40, 1)).examples
    res = priv.label_examples([(st, i % 2 == 0) for i, st in enumerate(stubs)])
    want = {st.subject: int(i % 2 == 0) for i, st in enumerate(stubs)}
    got = [(want[st.subject], JointReport.from_json(raw)) for st, raw in zip(res.stubs, res.examples, strict=True)]
    grr = [(w, r) for w, r in got if r.mechanism == "GRR"]
    assert len(got) == 40 and grr and all(r.label == w for w, r in grr)
    assert spec.d == 5 and ExampleSpec.from_policy(LdpPolicy.from_schema(load_schema("clickstream-event.v1"), 1.0), hour=True).d == 6


# -- federation and snapshots -------------------------------------------------------------------


def test_additive_federation_equals_one_learner_on_the_union() -> None:
    spec = small_spec()
    idx, y = population(4000, 5)
    raws, _ = ExampleReporter(spec, 2.0, np.random.default_rng(3)).reports(idx, y)
    reports = [JointReport.from_json(r) for r in raws]
    single = JointNaiveBayes(spec)
    for r in reports:
        single.learn_one(r)
    base = JointNaiveBayes(spec)
    g = Parameters(*base.parameters())
    updates = []
    for sender, part in (("a", reports[::2]), ("b", reports[1::2])):
        m = JointNaiveBayes(spec)
        for r in part:
            m.learn_one(r)
        delta = Parameters(*m.parameters()).minus(g)
        updates.append(ModelUpdate(model="m", sender=sender, seq=1, base_version=0, examples=len(part), delta=delta,
                                   created_at="x", epsilon={}, metrics={}))
    merged, n = fedavg(g, updates, additive=True)
    fed = JointNaiveBayes(spec)
    fed.set_parameters(merged.weights, merged.intercept)
    assert n == len(reports)
    assert fed.predict_many_indices(idx[:200]) == pytest.approx(single.predict_many_indices(idx[:200]), abs=1e-9)


def test_snapshot_round_trip_is_signed_and_loads_only_allowed_classes() -> None:
    spec = small_spec()
    idx, y = population(2000, 6)
    m = learn(spec, idx, y, 2.0, 4)
    key = Ed25519PrivateKey.generate()
    data = ModelSnapshot(name=m.name, created_at="2026-12-06T00:00:00.000Z", examples_seen=m.examples_seen,
                         metrics={}, epsilon={}, model=m).to_bytes(key)
    back = ModelSnapshot.from_bytes(data, key.public_key()).model
    assert isinstance(back, JointNaiveBayes)
    assert back.predict_many_indices(idx[:50]) == pytest.approx(m.predict_many_indices(idx[:50]))
    with pytest.raises(Exception):  # noqa: B017 - another key: refused before unpickling
        ModelSnapshot.from_bytes(data, Ed25519PrivateKey.generate().public_key())


def test_the_privatizer_hook_end_to_end_through_the_gateway_and_the_labeler() -> None:
    """Real gateway output (protected events) through the real privatizer with joint examples on, the
    session labeler, then label_examples: private-example.v2 records only, at most one per person, each
    valid against its schema and parsed by the learner's parser; the ledger charged once per person."""
    from stream.crypto.keyring import Keyring
    from stream.ldp.labels import SessionLabeler
    from stream.schema import output_validator
    from stream.synth import ClickstreamGenerator
    from tests.support.ldp import protected_records

    keyring = Keyring.generate()
    store = MemoryLedgerStore()
    priv = _privatizer(2.0, 12.0, 7, store)
    assert priv.examples_enabled and priv.label_oracle is None
    events = list(ClickstreamGenerator(seed=3, n_users=300).events(3000))
    res = priv.process(protected_records(events, keyring))
    assert len(res.examples) == len(events)  # one held stub per event (every person-epoch paid, all have sessions)
    lab = SessionLabeler(gap_ms=1000)
    lab.add(res.examples)
    out = priv.label_examples(lab.release_all())
    people = {e["user_id"] for e in events}
    assert 0 < len(out.examples) <= len(people)
    assert len({st.subject for st in out.stubs}) == len(out.examples)
    check = output_validator("private-example.v2")
    for raw in out.examples:
        doc = orjson.loads(raw)
        assert check(doc) == [] and set(doc) == {"schema", "source_schema", "attribute", "d", "m", "eps", "k", "r"}
        JointReport.from_dict(doc)
    blob = b"\n".join(out.examples)
    for e in events[:300]:
        assert e["user_id"].encode() not in blob and e["session_id"].encode() not in blob
    # every person was paid for at the first event (the example 2, then features within the cap of 12):
    # no stand-in, one example per person whose session ended, nothing over the cap
    assert out.suppressed == 0 and len(out.examples) == len(people)
    assert res.epsilon_spent[LABEL_NAME] == pytest.approx(2.0 * len(people)) and out.epsilon_spent == 0
    assert all(v <= 12 * MICRO for v in store.ledgers.values())


def test_the_worker_wires_joint_examples_by_default_and_v1_labels_on_request(settings_factory) -> None:
    from stream.apps.privatizer import build_privatizer

    joint = build_privatizer(settings_factory())
    assert joint.joint is not None and joint.label_oracle is None and joint.examples_enabled
    assert joint.joint.epsilon == 1.0 and joint.joint.spec.d == 5
    v1 = build_privatizer(settings_factory(learn_model="logistic"))
    assert v1.joint is None and v1.label_oracle is not None
    off = build_privatizer(settings_factory(learn_examples=False))
    assert off.joint is None and not off.examples_enabled
