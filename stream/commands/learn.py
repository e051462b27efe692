"""``streamgate`` commands of the learning area: ``learner``, ``model show``, ``model predict``."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import click

from stream.commands.common import echo_error
from stream.commands.common import settings as _settings

__all__ = ["model_summary", "register", "render_summary"]


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def model_summary(header: Mapping[str, Any], *, verified: bool, weights: Mapping[str, float] | None = None,
                  intercept: float | None = None, top: int = 10) -> dict[str, Any]:
    """The ``model show`` view of a snapshot: its public header, whether it was verified, and
    (only when verified: the weights live in the pickled model) the ``top`` largest weights."""
    out: dict[str, Any] = {
        "name": header.get("name"),
        "created_at": header.get("created_at"),
        "examples_seen": header.get("examples_seen"),
        "metrics": {k: _finite(v) for k, v in dict(header.get("metrics") or {}).items()},
        "epsilon": header.get("epsilon"),
        "key_id": header.get("key_id"),
        "verified": verified,
    }
    fed = header.get("federation")
    if isinstance(fed, Mapping):  # a federated global model
        out["federation"] = {k: fed.get(k) for k in ("version", "aggregator", "merged_updates", "senders")}
    if weights is not None:
        ranked = sorted(weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
        out["intercept"] = intercept
        out["top_weights"] = [{"feature": k, "weight": round(float(w), 6)} for k, w in ranked]
        out["n_weights"] = len(weights)
    return out


def render_summary(s: Mapping[str, Any]) -> str:
    """The human form of :func:`model_summary`."""
    lines = [f"model          {s['name']}",
             f"created_at     {s['created_at']}",
             f"examples seen  {s['examples_seen']:,}" if isinstance(s.get("examples_seen"), int)
             else f"examples seen  {s.get('examples_seen')}",
             f"verified       {'yes (signature checked, key ' + str(s.get('key_id')) + ')' if s['verified'] else 'NO'}"]
    fed = s.get("federation")
    if fed:
        senders = fed.get("senders") or []
        lines.append(f"global version {fed.get('version')} (federated: the last round merged {fed.get('merged_updates')} "
                     f"updates from {len(senders)} learner(s); aggregated by {fed.get('aggregator')})")
    metrics = s.get("metrics") or {}
    if metrics:
        lines.append("metrics (progressive validation on the private labels):")
        for k in sorted(metrics):
            v = metrics[k]
            lines.append(f"  {k:<12} {'-' if v is None else (f'{v:,.0f}' if k in ('n', 'drifts') else f'{v:.4f}')}")
    eps = s.get("epsilon") or {}
    if eps:
        lines.append("epsilon of the reports learned from:")
        lines.append(f"  label (session_purchase)  {eps.get('label')}")
        for attr, e in dict(eps.get("features") or {}).items():
            lines.append(f"  {attr:<25} {e}")
        if eps.get("budget_per_person_attribute_epoch") is not None:
            lines.append(f"  per-person budget cap     {eps['budget_per_person_attribute_epoch']} "
                         "per attribute per epoch")
        if eps.get("note"):
            lines.append(f"  note: {eps['note']}")
    if "top_weights" in s:
        lines.append(f"top weights ({len(s['top_weights'])} of {s['n_weights']}; intercept "
                     f"{s['intercept']:+.4f}):" if s.get("intercept") is not None else "top weights:")
        for row in s["top_weights"]:
            lines.append(f"  {row['weight']:+.4f}  {row['feature']}")
    return "\n".join(lines)


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""

    @cli.command()
    @click.option("--loglevel", default="info", show_default=True,
                  type=click.Choice(["crit", "error", "warn", "info", "debug"]))
    @click.option("--federated/--single", default=None,
                  help="One of N federated learners (default: STREAMGATE_LEARN_FEDERATED, off).")
    def learner(loglevel: str, federated: bool | None) -> None:
        """Run the learner worker (Faust): features.private -> models.snapshots (+ drift on ops.audit).

        Learns the purchase-propensity model online from the privatizer's labelled examples
        (STREAMGATE_LEARN_MODEL: joint-nb from private-example.v2, the default, or logistic from
        private-example.v1; feature reports are skipped), with progressive validation, ADWIN drift
        detection and signed snapshots every STREAMGATE_LEARN_PUBLISH_EVERY examples / _INTERVAL_SECONDS;
        resumes from its latest snapshot. /healthz, /readyz and /metrics on port 6069.

        --federated: run as many learners as you like in one group; each publishes signed local
        updates to models.updates, the one holding that topic's partition merges them (FedAvg) into
        the global model on models.snapshots, and every learner adopts it (docs/learning.md).
        """

        from stream.apps.learner import snapshot_key
        from stream.kafka import admin_client, ensure_topics, reachable_bootstrap
        from stream.schema import load_schema
        from stream.storage.topics import apply_topics, load_topics_config

        settings = _settings()
        if federated is not None:
            settings = settings.model_copy(update={"learn_federated": federated})
        snapshot_key(settings)  # fail fast: snapshots are signed with the learner's key (credential or master)
        load_schema(settings.schema_name)
        bootstrap = reachable_bootstrap(settings)
        t = settings.topics
        # missing topics are created with their configured policy (models.snapshots is compacted)
        existing = admin_client(bootstrap).list_topics(timeout=30).topics
        wanted = {t.features, t.snapshots, t.audit} | ({t.updates} if settings.learn_federated else set())
        specs = [s for s in load_topics_config(settings, settings.topics_config)
                 if s.name in wanted and s.name not in existing]
        if specs:
            apply_topics(bootstrap, specs)
        ensure_topics(bootstrap, [t.features], partitions=settings.topic_partitions)
        from stream.apps.registry import run_worker

        run_worker(settings, "learner", loglevel)

    @cli.group()
    def model() -> None:
        """Model snapshots on models.snapshots: show the latest, predict with it."""

    @model.command("show")
    @click.option("--name", default=None, help="Model name (default: STREAMGATE_LEARN_MODEL_NAME).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for machines).")
    @click.option("--top", type=int, default=10, show_default=True, help="Weights shown (largest |weight| first).")
    def model_show(name: str | None, as_json: bool, top: int) -> None:
        """Show the latest snapshot of a model: when, examples seen, metrics, epsilon, top weights.

        The snapshot's signature is checked with the snapshot public key (the verifier credential,
        or the master key). Without one only its public header is shown, marked as not verified
        (no weights: the model itself is never unpickled unverified)."""
        import orjson
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from stream.apps.learner import latest_snapshot_bytes, snapshot_verify_key
        from stream.errors import KeyringError, SnapshotError
        from stream.kafka import reachable_bootstrap
        from stream.learn.snapshot import ModelSnapshot

        settings = _settings()
        reachable_bootstrap(settings)  # fail fast with one line on a wrong broker address
        name = name or settings.learn_model_name
        try:
            key: Ed25519PublicKey | None = snapshot_verify_key(settings)
        except KeyringError:
            key = None
        data = latest_snapshot_bytes(settings, name)
        if data is None:
            echo_error(f"no snapshot of model {name!r} on {settings.topics.snapshots} yet "
                       "(is `streamgate learner` running, and has it learned any example?)")
            sys.exit(1)
        header = ModelSnapshot.read_header(data)
        if key is None:
            summary = model_summary(header, verified=False)
        else:
            try:
                snap = ModelSnapshot.from_bytes(data, key)
            except SnapshotError as exc:
                hint = (f" (signed with key {header.get('key_id')}; is this the key of the learner that signed it?)"
                        if header.get("key_id") else "")
                raise SnapshotError(f"{exc}{hint}") from None
            summary = model_summary(header, verified=True, weights=snap.model.weights(),
                                    intercept=snap.model.intercept, top=top)
        if as_json:
            click.echo(orjson.dumps(summary).decode())
        else:
            click.echo(render_summary(summary))
        if key is None:
            click.echo("warning: no snapshot public key configured: the snapshot could not be verified; the header "
                       "above is unauthenticated (set STREAMGATE_KEY_FILE to the verifier credential, or the master "
                       "key)", err=True)

    @model.command("predict")
    @click.option("--name", default=None, help="Model name (default: STREAMGATE_LEARN_MODEL_NAME).")
    @click.argument("file", type=click.File("rb"), default="-")
    def model_predict(name: str | None, file: Any) -> None:
        """Score JSON lines with the latest verified snapshot: P(session purchase) per line.

        A line is either a local-DP report (private-feature.v1 / private-example.v1, as on
        features.private) or an object of clear LDP attribute values (e.g. event_type, category,
        price, device, country, and optionally ts for the hour-of-week bucket) - for serving where
        those values are legitimately clear. Prints one JSON object per line: {"p": ...} or
        {"error": "<reason>"}. Needs the snapshot public key (verifier credential or master key)."""
        import orjson

        from stream.apps.learner import load_latest_snapshot
        from stream.errors import InvalidExampleError
        from stream.kafka import reachable_bootstrap
        from stream.ldp.privatizer import hour_of_week
        from stream.learn.example import EXAMPLE_SCHEMA, FEATURE_SCHEMA, PrivateExample
        from stream.learn.model import PropensityModel

        settings = _settings()
        reachable_bootstrap(settings)  # fail fast with one line on a wrong broker address
        model_ = load_latest_snapshot(settings, name).model
        failed = 0
        for line in file:
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                click.echo('{"error":"not_json"}')
                failed += 1
                continue
            if not isinstance(doc, dict):
                click.echo('{"error":"not_object"}')
                failed += 1
                continue
            try:
                if doc.get("schema") in (FEATURE_SCHEMA, EXAMPLE_SCHEMA):
                    if not isinstance(model_, PropensityModel):  # joint naive Bayes serves clear values only
                        raise ValueError("this model scores clear values only")
                    p = model_.predict_proba_one(PrivateExample.from_dict(doc))
                else:
                    how = doc.get("hour_of_week")
                    if not isinstance(how, int) or isinstance(how, bool):
                        how = hour_of_week(doc.get("ts"))
                    p = model_.predict_proba_event(doc, how)
            except (InvalidExampleError, ValueError, TypeError):
                click.echo('{"error":"invalid_record"}')
                failed += 1
                continue
            click.echo(orjson.dumps({"p": round(p, 6)}).decode())
        if failed:
            click.echo(f"# {failed} lines could not be scored", err=True)

    def _bench_federated(events: int, holdout: int, seeds: int, epsilons: tuple[float, ...], as_json: bool) -> None:
        import dataclasses
        import time

        import orjson

        from stream.bench.federated import format_federated, run_federated_bench
        from stream.commands.common import bench_settings

        t0 = time.monotonic()
        with bench_settings(_settings()) as s:
            for eps in epsilons:
                runs = run_federated_bench(s, events=events, holdout=holdout, epsilon=eps,
                                           seeds=tuple(range(1, seeds + 1)), say=lambda m: click.echo(m, err=True))
                if as_json:
                    for r in runs:
                        click.echo(orjson.dumps({"seed": r.seed, "epsilon": r.epsilon, "examples": r.examples,
                                                 "auc_gap": r.auc_gap, "ratio": r.ratio,
                                                 "phases": {k: {**dataclasses.asdict(p), "rate": p.rate}
                                                            for k, p in r.phases.items()}},
                                                option=orjson.OPT_SERIALIZE_NUMPY).decode())
                    continue
                unit = "people (one joint example each)" if s.learn_model == "joint-nb" else "events"
                click.echo(f"eps {eps:g}: 2 federated learners vs 1 learner, {events:,} {unit} per stream")
                click.echo(format_federated(runs))
        click.echo(f"took {time.monotonic() - t0:.0f} s", err=True)

    bench = cli.commands.get("bench")
    assert isinstance(bench, click.Group)

    def _epsilons(text: str) -> tuple[float, ...]:
        out = []
        for part in text.split(","):
            part = part.strip().lower()
            try:
                eps = math.inf if part in ("inf", "∞") else float(part)
            except ValueError:
                raise click.BadParameter(f"not a number: {part!r}", param_hint="--epsilons") from None
            if not eps > 0:
                raise click.BadParameter("epsilons must be > 0", param_hint="--epsilons")
            out.append(eps)
        return tuple(out)

    @bench.command("learn")
    @click.option("--events", type=click.IntRange(min=2000), default=100_000, show_default=True,
                  help="Synthetic events per stream (each epsilon and seed); with --federated and the joint-nb "
                  "model: people.")
    @click.option("--holdout", type=click.IntRange(min=500), default=10_000, show_default=True,
                  help="Held-out events scored on clear values after training.")
    @click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
                  help="Seeds per cell (mean ± sd over them).")
    @click.option("--epsilons", default=None,
                  help="Comma-separated epsilons (features and label); inf = non-private (run at eps 20). "
                  "[default: 0.5,1,2,4,8,inf; with --federated: inf]")
    @click.option("--datasets", type=click.Choice(["both", "synthetic", "phishing"]), default="both",
                  show_default=True)
    @click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                  help="Processes (one stream each).")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead of the table.")
    @click.option("--federated", is_flag=True,
                  help="Instead: 2 federated learners vs 1 learner on the same stream, on the broker (AUC on a "
                  "held-out continuation, throughput, their ratio; target: AUC within 0.01).")
    @click.option("--people", default=None,
                  help="Instead: the per-person learners (one example per person and epoch, inside the person cap) "
                  "on streams of these many people (comma-separated; e.g. 5000,20000), both candidates side by "
                  "side, served AUC vs person epsilon, plus Phishing (one person per row).")
    @click.option("--full", is_flag=True, help="With --people: the full grid (5k, 20k, 50k, 100k people).")
    @click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
                  help="With --people: epochs per stream (a person contributes once per epoch).")
    def bench_learn(events: int, holdout: int, seeds: int, epsilons: str | None, datasets: str, workers: int,
                    as_json: bool, federated: bool, people: str | None, full: bool, epochs: int) -> None:
        """ROC-AUC and log-loss of the purchase-propensity model vs epsilon, with and without the
        label-noise correction, on the synthetic clickstream (through the real privatizer) and on
        River's Phishing dataset. No broker needed. Prints mean ± sd over the seeds and the
        eps = 2 vs non-private comparison (target: within 0.03).

        --federated: two federated learner processes against one learner process on the same
        private stream, through the broker (STREAMGATE_KAFKA_BOOTSTRAP, else a throwaway embedded
        stack): AUC of each final model on a held-out continuation, examples/s, and the ratio."""
        import dataclasses
        import time

        import orjson

        from stream.bench.learn import format_table, learn_table, summarize, target_check

        if federated:
            _bench_federated(events, holdout, seeds, _epsilons(epsilons or "inf"), as_json)
            return
        if people is not None or full:
            _bench_people(people, full, seeds, _epsilons(epsilons or "1,2,4,8,inf"), datasets, workers, epochs,
                          as_json)
            return
        eps = _epsilons(epsilons or "0.5,1,2,4,8,inf")
        sets = ("synthetic", "phishing") if datasets == "both" else (datasets,)
        t0 = time.monotonic()

        def progress(done: int, total: int, runs: list[Any]) -> None:
            r = runs[0]
            click.echo(f"  [{done}/{total}] {r.dataset} eps={r.epsilon:g} seed={r.seed}: "
                       f"{r.examples:,} examples, {r.seconds:.0f} s", err=True)

        click.echo(f"bench learn: {len(sets)} dataset(s) x {len(eps)} epsilons x {seeds} seeds, "
                   f"{events:,} synthetic events per stream, {workers} workers", err=True)
        runs = learn_table(epsilons=eps, seeds=tuple(range(1, seeds + 1)), datasets=sets, events=events,
                           holdout=holdout, workers=workers, progress=progress)
        if as_json:
            for r in runs:
                click.echo(orjson.dumps(dataclasses.asdict(r)).decode())
            return
        rows = summarize(runs)
        click.echo(format_table(rows))
        click.echo("")
        click.echo("AUC clean / logloss clean: progressive (predict a released batch, then learn it) on the "
                   "private stream, against the clean labels;")
        click.echo("AUC private: the same predictions against the randomized labels (what the learner "
                   "worker reports); AUC serve: the final model")
        click.echo("on a held-out continuation of the stream with clear LDP values, against the clean labels.")
        for metric in ("auc_serve", "auc_clean"):
            got = target_check(rows, metric)
            if got is not None:
                a, b = got
                verdict = "within" if b - a <= 0.03 else "NOT within"
                click.echo(f"{metric} at eps 2 (corrected): {a:.3f} vs non-private {b:.3f}: gap {b - a:+.3f} "
                           f"({verdict} the 0.03 target)")
        click.echo(f"took {time.monotonic() - t0:.0f} s")


def _bench_people(people: str | None, full: bool, seeds: int, eps: tuple[float, ...], datasets: str, workers: int,
                  epochs: int, as_json: bool) -> None:
    """``bench learn --people``: served AUC of both candidates over people x person epsilon."""
    import dataclasses
    import math
    import time

    import orjson

    from stream.bench.learn import format_people, people_table

    try:
        ns = (5_000, 20_000, 50_000, 100_000) if full else tuple(int(x) for x in (people or "5000,20000").split(","))
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--people") from None
    if any(n < 100 for n in ns):
        raise click.BadParameter("at least 100 people", param_hint="--people")
    synth = datasets in ("both", "synthetic")
    t0 = time.monotonic()

    def progress(done: int, total: int, runs: list[Any]) -> None:
        if runs:
            r = runs[0]
            click.echo(f"  [{done}/{total}] {r.dataset} people={r.people} seed={r.seed}: {r.seconds:.0f} s", err=True)

    click.echo(f"bench learn --people: {ns if synth else ()} x eps {eps} x {seeds} seeds, {workers} workers", err=True)
    runs = people_table(people=ns if synth else (), epsilons=eps, seeds=tuple(range(1, seeds + 1)),
                        phishing=datasets in ("both", "phishing"), epochs=epochs, workers=workers, progress=progress)
    if as_json:
        for r in runs:
            click.echo(orjson.dumps({k: (None if isinstance(v, float) and math.isinf(v) else v)
                                     for k, v in dataclasses.asdict(r).items()}).decode())
        return
    click.echo(format_people(runs))
    click.echo("")
    click.echo("served AUC: the final model on a held-out continuation (synthetic: 20,000 events; phishing: 30 % of "
               "the rows) on clear values, against the clean labels; inf = the same learner on the clear examples.")
    click.echo(f"largest ledger after any run: {max((r.charged_max for r in runs), default=0):g} "
               "(each run's cap is its epsilon)")
    click.echo(f"took {time.monotonic() - t0:.0f} s")
