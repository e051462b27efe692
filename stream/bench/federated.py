"""``streamgate bench learn --federated``: two federated learners against one learner, same stream.

Per seed, one private synthetic stream is built with the production code path
(:func:`stream.bench.learn.private_stream`: the privatizer, the session labeler, the label's
randomized response) and published once to a 4-partition features topic. Then, each in its own
consumer group and with its own output topics:

* **single**: one :class:`~stream.apps.learner.LearnerEngine` process learns the whole stream (its
  last snapshot at the end is the model);
* **federated**: two :class:`~stream.apps.federated.FederatedLearnerEngine` processes (each
  runs an aggregator; the one holding ``models.updates`` merges) learn it with the default
  update and round settings; the model is the first global version that covers every example.

Both groups start gated (:mod:`stream.bench.procs`: every member holds its final partitions
before the first record is learned). Figures: examples/s over the group's first to last batch,
the CPU the workers used, and ROC-AUC of the final model on a held-out continuation of the stream
(clear LDP values against the clean labels, as ``bench learn``'s "AUC serve"). The target: the
federated model's AUC within 0.01 of the single learner's.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from stream.apps.federated import SnapshotFeed, newest_verified
from stream.apps.learner import read_snapshot_records, snapshot_verify_key
from stream.bench.learn import private_stream, serve_auc, serving_holdout
from stream.bench.procs import CpuMeter, WorkerReport, group_rate, stack_pids, start_workers
from stream.bench.scale import _commit_start
from stream.config import Settings, TopicNames
from stream.errors import StreamgateError
from stream.kafka import ensure_topics, produce, producer_config
from stream.learn.snapshot import ModelSnapshot

__all__ = ["FedPhase", "FedRun", "format_federated", "run_federated_bench"]

PARTITIONS = 4
Holdout = tuple[list[tuple[dict[str, Any], int | None]], list[bool]]
#: A phase that made no progress for this long is stopped (and reported as such).
STALL_SECONDS = 60.0


@dataclass
class FedPhase:
    name: str  # "single" / "federated"
    processes: int
    examples: int  # expected
    reports: list[WorkerReport]
    auc: float = math.nan
    version: int = 0  # the federated model's global version
    settle_seconds: float | None = None  # federated: from the last batch to the global version covering everything
    workers_cpu: float | None = None  # share of all cores while learning
    broker_cpu: float | None = None
    machine_cpu: float | None = None  # everything on the machine (other users' jobs too)
    ncpu: int = 1
    error: str | None = None

    @property
    def per_cpu_second(self) -> float:
        """Examples per CPU-second the learner processes used (what scaling keeps when cores are free)."""
        return self.rate / (self.workers_cpu * self.ncpu) if self.workers_cpu else 0.0

    @property
    def consumed(self) -> int:
        return sum(r.consumed for r in self.reports)

    @property
    def rate(self) -> float:
        """Examples over the group's first to last batch."""
        return group_rate(self.reports)


@dataclass
class FedRun:
    seed: int
    epsilon: float
    examples: int
    phases: dict[str, FedPhase] = field(default_factory=dict)

    @property
    def auc_gap(self) -> float:
        return self.phases["single"].auc - self.phases["federated"].auc

    @property
    def ratio(self) -> float:
        single = self.phases["single"].rate
        return self.phases["federated"].rate / single if single else 0.0


def _phase(settings: Settings, name: str, records: int, holdout: Holdout, say: Callable[[str], None]) -> FedPhase:
    federated = name == "federated"
    n = 2 if federated else 1
    bootstrap = settings.kafka_bootstrap_or_dev()
    t = settings.topics
    key = snapshot_verify_key(settings)
    _commit_start(bootstrap, settings.learner_consumer_group, t.features, PARTITIONS)
    say(f"  {name}: {n} learner process(es), waiting for the group to settle ...")
    group = start_workers("learner-federated" if federated else "learner", settings, n,
                          target=None if federated else records)
    feed = SnapshotFeed(bootstrap, t.snapshots, settings.learn_model_name, key) if federated else None
    phase = FedPhase(name, n, records, [])
    covering: ModelSnapshot | None = None
    try:
        group.wait_assigned(PARTITIONS)
        stack = stack_pids(settings)
        meter = CpuMeter({"broker": [stack["broker"]], "workers": group.pids, "bench": [os.getpid()]})
        meter.start()
        group.open()
        last, moved = -1, time.monotonic()
        while group.done.value < records and time.monotonic() - moved < STALL_SECONDS:
            if not any(p.is_alive() for p in group.procs):
                break
            if group.done.value != last:
                last, moved = group.done.value, time.monotonic()
            time.sleep(0.01)
        learned_at = time.monotonic()
        cpu = meter.stop()
        phase.workers_cpu, phase.broker_cpu, phase.machine_cpu = cpu.get("workers"), cpu.get("broker"), cpu.get("machine")
        phase.ncpu = meter.ncpu
        if group.done.value < records:
            phase.error = f"stopped: {group.done.value:,} of {records:,} examples after no progress"
        elif feed is not None:  # wait for the global version that covers every example
            deadline = time.monotonic() + 120
            version = 0
            while covering is None and time.monotonic() < deadline:
                snap = feed.newest(version)
                if snap is not None:
                    version = snap.version
                    if snap.examples_seen >= records:
                        covering = snap
                        phase.settle_seconds = time.monotonic() - learned_at
                time.sleep(0.05)
            if covering is None:
                phase.error = "no global version covered every example within 120 s"
        phase.reports = group.reports()
    finally:
        group.close()
        if feed is not None:
            feed.close()
    for r in phase.reports:
        if r.error:
            phase.error = f"process {r.index} failed: {r.error}"
    model = covering
    if model is None and not federated:
        model, _ignored = newest_verified(read_snapshot_records(bootstrap, t.snapshots, settings.learn_model_name),
                                          key, settings.learn_model_name)
    if model is not None:
        phase.auc = serve_auc(model.model, holdout)
        phase.version = model.version
    return phase


def publish_round_robin(bootstrap: str, topic: str, records: Sequence[bytes], partitions: int = PARTITIONS) -> None:
    """Record ``i`` to partition ``i % partitions``: every learner gets an even share of the stream, in
    stream order (unkeyed records of one producer flush would land in a few partitions in large blocks)."""
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 20}))
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for i, value in enumerate(records):
        produce(producer, topic, value, partition=i % partitions, on_delivery=report, timeout=120.0)
    if producer.flush(120) or failed:
        raise StreamgateError(f"could not publish the bench stream: {failed[:1] or 'flush timed out'}")


def joint_stream(people: int, epsilon: float, seed: int, *, holdout: int) -> tuple[list[bytes], Holdout]:
    """The ``private-example.v2`` records of ``people`` people (one per person, :func:`people_stream`) at
    ``epsilon`` (inf: 20), and the held-out continuation."""
    import numpy as np

    from stream.bench.learn import NONPRIVATE_EPSILON, people_stream
    from stream.ldp.examples import ExampleReporter, attribute_weights

    st = people_stream(people, seed, holdout=holdout)
    eps = NONPRIVATE_EPSILON if math.isinf(epsilon) else epsilon
    w = attribute_weights(st.spec, eps, people)  # the draw planned for these people, as in bench learn --people
    raws, _attr = ExampleReporter(st.spec, eps, np.random.default_rng(seed + 31), weights=w).reports(st.indices, st.labels)
    return raws, (st.holdout_events, st.holdout[1])


def run_federated_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    holdout: int = 10_000,
    epsilon: float = math.inf,
    seeds: Sequence[int] = (1,),
    n_users: int = 5_000,
    say: Callable[[str], None] = print,
) -> list[FedRun]:
    """Per seed: one stream, the single learner, then two federated learners (module docstring)."""
    bootstrap = settings.kafka_bootstrap_or_dev()
    runs: list[FedRun] = []
    for seed in seeds:
        tag = uuid.uuid4().hex[:8]
        if settings.learn_model == "joint-nb":  # issue 22: one joint report per person (events = people)
            say(f"seed {seed}: building the joint-example stream ({events:,} people, eps {epsilon:g}) ...")
            records, hold = joint_stream(events, epsilon, seed, holdout=holdout)
        else:
            say(f"seed {seed}: building the private stream ({events:,} events, eps {epsilon:g}) ...")
            gen, _policy, chunks = private_stream(epsilon, seed, events=events, n_users=n_users)
            records = [raw for raws, _clean in chunks for raw in raws]
            hold = serving_holdout(gen, holdout)
        features = f"bench.fed.features.{tag}"
        ensure_topics(bootstrap, [features], partitions=PARTITIONS)
        publish_round_robin(bootstrap, features, records)
        run = FedRun(seed, epsilon, len(records))
        for name in ("single", "federated"):
            phase_tag = f"{tag}-{name[0]}"
            topics = TopicNames(features=features, snapshots=f"bench.fed.snapshots.{phase_tag}",
                                updates=f"bench.fed.updates.{phase_tag}", audit=f"bench.fed.audit.{phase_tag}")
            ensure_topics(bootstrap, [topics.snapshots, topics.updates, topics.audit], partitions=1)
            s = settings.model_copy(update={
                "topics": topics, "kafka_bootstrap": bootstrap, "group_prefix": f"bench-fed-{phase_tag}",
                "learn_federated": name == "federated"})
            phase = _phase(s, name, len(records), hold, say)
            if phase.error:
                say(f"    {phase.error}")
            say(f"    {phase.consumed:,} examples, {phase.rate:,.0f}/s, AUC {phase.auc:.4f}"
                + (f", global version {phase.version}" if phase.version else ""))
            run.phases[name] = phase
        runs.append(run)
    return runs


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _pair(a: float | None, b: float | None) -> str:
    return f"{_share(a)}/{_share(b)}"


def format_federated(runs: Sequence[FedRun]) -> str:
    """The table printed by ``streamgate bench learn --federated``."""
    head = (f"{'seed':>4} {'examples':>9} {'AUC single':>11} {'AUC fed x2':>11} {'gap':>8} {'single ex/s':>12} "
            f"{'fed x2 ex/s':>12} {'ratio':>6} {'cpu 1/2':>9} {'broker 1/2':>11} {'machine 1/2':>12} {'versions':>9} "
            f"{'settle s':>9} {'ex/cpu-s 1/2':>14}")
    lines = [head, "-" * len(head)]
    for r in runs:
        s, f = r.phases["single"], r.phases["federated"]
        settle = "-" if f.settle_seconds is None else f"{f.settle_seconds:.1f}"
        lines.append(f"{r.seed:>4} {r.examples:>9,} {s.auc:>11.4f} {f.auc:>11.4f} {r.auc_gap:>+8.4f} {s.rate:>12,.0f} "
                     f"{f.rate:>12,.0f} {r.ratio:>6.2f} {_pair(s.workers_cpu, f.workers_cpu):>9} "
                     f"{_pair(s.broker_cpu, f.broker_cpu):>11} {_pair(s.machine_cpu, f.machine_cpu):>12} "
                     f"{f.version:>9} {settle:>9} {f'{s.per_cpu_second:,.0f}/{f.per_cpu_second:,.0f}':>14}")
    if len(runs) > 1:
        gaps = [r.auc_gap for r in runs]
        ratios = [r.ratio for r in runs]
        lines.append(f"mean gap {statistics.fmean(gaps):+.4f} ± {statistics.stdev(gaps):.4f}, max |gap| "
                     f"{max(abs(g) for g in gaps):.4f}; throughput ratio {statistics.fmean(ratios):.2f} "
                     f"({min(ratios):.2f}-{max(ratios):.2f})")
    worst = max((abs(r.auc_gap) for r in runs), default=math.nan)
    verdict = "within" if worst <= 0.01 else "NOT within"
    lines.append(f"AUC: held-out continuation on clear values vs clean labels. |gap| <= {worst:.4f}: {verdict} the "
                 "0.01 target. cpu / broker / machine: share of all cores while learning, single/federated (machine: "
                 "everything, other users' jobs too); settle: seconds from the last batch to the global version "
                 "covering every example; ex/cpu-s: examples per CPU-second of the learner processes.")
    return "\n".join(lines)
