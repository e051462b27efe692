"""``streamgate`` commands of the local-DP area: ``privatizer``, ``estimates``, ``bench ldp``."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from stream.commands.common import bench_settings
from stream.commands.common import settings as _settings

__all__ = ["explain_lines", "register", "render_estimates", "skipped_lines"]


def explain_lines(settings: Any, policy: Any) -> list[str]:
    """What ``privatizer --explain`` prints: each attribute's mechanism and per-report epsilon, then the
    privacy account of the policy under the person cap (:func:`stream.ldp.policy.privacy_account`), the
    estimand, and what an observer of each published topic can and cannot group, link and count."""
    from stream.apps.privatizer import LEARN_MAX_PENDING
    from stream.ldp.policy import privacy_account
    from stream.ldp.privatizer import reports_per_person

    joint = settings.learn_examples and settings.learn_model == "joint-nb"  # issue 22: one example per person-epoch
    joint_eps = settings.learn_label_epsilon if joint else 0.0
    label_eps = settings.learn_label_epsilon if settings.learn_examples and not joint else None
    acc = privacy_account(policy, person_epsilon=settings.ldp_person_epsilon, epoch_seconds=settings.epoch_seconds,
                          retention_seconds=settings.retention_seconds, label_epsilon=label_eps)
    per_person = reports_per_person(policy, max(0.0, settings.ldp_person_epsilon - joint_eps), label_eps)
    cost = acc.per_example if acc.per_example is not None else acc.per_event
    rows = []
    for row in policy.describe():
        shown = {"attribute": row["attribute"], "kind": row["kind"], "mechanism": row["report_as"], "eps": row["eps_1"],
                 **{k: v for k, v in row.items() if k in ("k", "lo", "hi")}}
        rows.append("  ".join(f"{k}={v}" for k, v in shown.items()))
    reps = ", ".join(f"{k} {v:g}" for k, v in acc.per_report.items())
    people, delay = settings.ldp_release_min_people, settings.ldp_release_max_delay_seconds
    out = [
        *rows,
        f"privacy (one round: fresh, independent noise on every report; no memo; epoch of {settings.epoch_seconds} s):",
        f"  per report: epsilon {reps} - what one report reveals about its value",
        f"  per event: epsilon {acc.per_event:g} (a feature report: its {len(policy.attributes)} attributes)"
        + (f"; {acc.per_example:g} with its labelled example's label, prepaid with the report"
           if acc.per_example is not None else ""),
        f"  per person per epoch: at most epsilon {acc.person_epoch:g} (STREAMGATE_LDP_PERSON_EPSILON: one ledger, every "
        f"report and label charged): "
        + (f"first the person-epoch's joint-nb example ({joint_eps:g}, at their first event), then " if joint else "")
        + f"at most {per_person} reports per person per epoch at {cost:g} each; past the cap "
        "an event is not reported (no stand-in)",
        f"  over the retention window: at most epsilon {acc.retention_bound:g} = {acc.person_epoch:g} x "
        f"{acc.epochs_held} epochs whose reports may be held",
        "  erasure never refunds a ledger: what an epoch spent stays spent until its retention ends; a replayed "
        "record is charged again",
        f"estimates (analytics.frequencies) are unbiased for each person's first {per_person} events of an epoch "
        "(every record names this estimand), not for every event; their 95% intervals cover that truth "
        "(streamgate bench ldp --coverage)",
        "an observer of features.private cannot: group reports into persons by their contents (given their values, "
        "a person's reports are distributed as strangers' reports of the same values; no identifier, token or exact "
        "time); learn more than the per-report epsilon from one report, or than the per-person cap from all of a "
        "person's reports together",
        f"an observer of features.private can: see the hour of week; count reports per release (releases hold the "
        f"reports of at least {people} people, shuffled, unless fewer arrive within {delay:g} s); "
        + ("see that a release holds joint-nb examples (private-example.v2: one attribute's value and the label, "
           "randomized together, no hour, no features of the event, so it cannot be tied to a feature report by "
           "content); count them: about one per person active in the epoch; "
           if joint else "tie a labelled example to the feature report of the same event (same features); ")
        + "estimate population frequencies",
        f"analytics.frequencies and analytics.partials: windows and partial-window records are published only with "
        f"at least {people} people; ops.metrics: report counts per release, and the per-person epsilon histogram "
        "of a finished epoch only, with two-sided geometric noise on every bin, P(k) proportional to "
        "exp(-|k|/2) (epsilon 1 for the whole histogram: one person moves between two bins, sensitivity 2)",
    ]
    if joint:
        out.append(f"labelled examples: joint-nb (STREAMGATE_LEARN_MODEL); one private-example.v2 per person and epoch "
                   f"(one per paid charge: a restart or rebalance makes the person pay again): one attribute drawn at random, its value and the label session_purchase randomized "
                   f"together at epsilon {joint_eps:g}, prepaid on the person's ledger at their first event of the "
                   f"epoch (before that batch's feature reports; an unpaid person-epoch gives none), released through "
                   f"the same buffer, shuffled across people; which person-epochs paid or sent is kept in this process "
                   f"only, never in a store; a session ends after {settings.learn_session_gap_seconds:g} s of quiet (its "
                   f"events past the cap count too: an example's release time can show activity past the cap); at most "
                   f"{LEARN_MAX_PENDING:,} examples held")
    elif settings.learn_examples:
        out.append(f"labelled examples: on (logistic, per event); label session_purchase by randomized response (epsilon "
                   f"{acc.per_report['session_purchase']:g} per example, prepaid with its feature report from the same "
                   f"person ledger); a session ends after {settings.learn_session_gap_seconds:g} s of quiet (its events "
                   f"past the cap count too: an example's release time can show activity past the cap); at most "
                   f"{LEARN_MAX_PENDING:,} examples held")
    else:
        out.append("labelled examples: off (STREAMGATE_LEARN_EXAMPLES=false)")
    out.append(f"window {settings.ldp_window_seconds:g} s")
    return out


ESTIMATES_NOTE = ("estimate: the frequency to read (the unbiased estimate projected onto the simplex: each in "
                  "[0, 1], summing to 1). unbiased: the raw estimator behind it, whose noise can push it below 0 "
                  "or above 1, with its ± std err (95% intervals cover the estimand's truth about 95% of the time). "
                  "numeric means read the same way: clipped first. Both estimate the estimand: each person's first "
                  "events within the person cap, not every event.")


def render_estimates(records: Sequence[Mapping[str, Any]], *, top: int = 10, truth: Mapping[str, Mapping[str, float]] | None = None) -> Any:
    """A rich renderable: one table per attribute (top values by projected frequency), the value to
    read first, the unbiased estimator labelled as such, and one line on why they differ."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tables: list[Any] = []
    for rec in records:
        n = rec.get("n", 0)
        title = (f"{rec['attribute']}  ({rec['mechanism']}, eps={rec.get('eps')}, n={n:,}, "
                 f"window {rec['window']['start']} .. {rec['window']['end']})"
                 + (f"\n  estimand: {rec['estimand']}" if rec.get("estimand") else ""))
        table = Table(title=title, title_justify="left")
        if rec.get("kind") == "numeric":
            table.add_column("mean", justify="right")
            table.add_column("unbiased mean", justify="right")
            table.add_column("± std err", justify="right")
            table.add_column("95% interval (unbiased)", justify="right")
            if "mean" in rec:
                lo, hi = rec["ci95"]
                shown = rec.get("clipped_mean", rec["mean"])
                table.add_row(f"{shown:,.2f}", f"{rec['mean']:,.2f}", f"{rec['std_error']:,.2f}",
                              f"[{lo:,.1f}, {hi:,.1f}]")
            tables.append(table)
            continue
        attr_truth = (truth or {}).get(str(rec["attribute"]))
        table.add_column("value")
        table.add_column("estimate", justify="right")
        if attr_truth is not None:
            table.add_column("true", justify="right")
        table.add_column("unbiased", justify="right")
        table.add_column("± std err", justify="right")
        values = sorted(rec.get("values", []), key=lambda v: -v["projected"])[:top]
        for v in values:
            row = [str(v["value"]), f"{v['projected']:.4f}"]
            if attr_truth is not None:
                row.append(f"{attr_truth.get(v['value'], 0.0):.4f}")
            row += [f"{v['estimate']:.4f}", f"{v['std_error']:.4f}"]
            table.add_row(*row)
        tables.append(table)
    if tables:
        tables.append(Text(ESTIMATES_NOTE, style="dim"))
    return Group(*tables)


def _is_estimate(rec: Any) -> bool:
    """A record :func:`stream.ldp.aggregate.merge_records` can read: attribute, window bounds, n."""
    if not isinstance(rec, dict):
        return False
    win = rec.get("window")
    return (isinstance(rec.get("attribute"), str) and isinstance(win, dict)
            and all(type(win.get(k)) is int for k in ("start_ms", "end_ms")) and type(rec.get("n")) is int)


def skipped_lines(settings: Any, schema: Any, policy: Any, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per attribute and cause for the records :func:`stream.ldp.aggregate.merge_records` skips
    under ``policy``: how many, their parameters and the policy's, and the STREAMGATE_LDP_EPSILON that
    reads them when one does."""
    from stream.errors import SchemaPolicyError
    from stream.ldp.aggregate import param_mismatch
    from stream.ldp.policy import IRR_FRACTION, LdpPolicy

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in records:
        name = str(rec.get("attribute"))
        attr = policy.by_name.get(name)
        why = (f"schema {policy.schema_name} (STREAMGATE_SCHEMA_NAME) has no ldp attribute {name}" if attr is None
               else param_mismatch(attr, rec))
        if why is not None:
            groups.setdefault((name, why), []).append(rec)
    out = []
    for (name, why), recs in groups.items():
        line = f"skipped {len(recs):,} record(s) of attribute {name}: "
        if name not in policy.by_name:
            out.append(line + why)
            continue
        line += f"written with {why}"
        opts = schema.fields[name].options
        if "epsilon" not in opts and "epsilon_1" not in opts:
            line += f" (STREAMGATE_LDP_EPSILON={settings.ldp_epsilon:g})"
        eps = recs[0].get("eps")
        fix = None
        if isinstance(eps, int | float) and not isinstance(eps, bool) and eps > 0:
            try:
                cand = LdpPolicy.from_schema(schema, eps / IRR_FRACTION)
            except SchemaPolicyError:
                cand = None
            if cand is not None and param_mismatch(cand.by_name[name], recs[0]) is None:
                fix = eps / IRR_FRACTION
        out.append(line + (f"; set STREAMGATE_LDP_EPSILON={fix:g} to read them" if fix is not None else
                           "; no STREAMGATE_LDP_EPSILON reads them (another schema version or x-privacy wrote them)"))
    return out


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""

    @cli.command()
    @click.option("--loglevel", default="info", show_default=True,
                  type=click.Choice(["crit", "error", "warn", "info", "debug"]))
    @click.option("--explain", is_flag=True, help="Print each attribute's mechanism, epsilon and domain size, then exit.")
    def privatizer(loglevel: str, explain: bool) -> None:
        """Run the privatizer worker (Faust): clicks.protected -> features.private + analytics.frequencies."""
        from stream.crypto.keyring import Keyring
        from stream.ldp.policy import LdpPolicy
        from stream.schema import load_schema

        settings = _settings()
        policy = LdpPolicy.from_schema(load_schema(settings.schema_name), settings.ldp_epsilon)
        if explain:
            for line in explain_lines(settings, policy):
                click.echo(line)
            return

        from stream.kafka import ensure_topics, reachable_bootstrap

        Keyring.from_settings(settings)  # fail fast on a missing/bad KEK (the memo key derives from it)
        bootstrap = reachable_bootstrap(settings)
        t = settings.topics
        ensure_topics(bootstrap, [t.protected, t.features, t.frequencies], partitions=settings.topic_partitions)
        from stream.apps.registry import run_worker

        run_worker(settings, "privatizer", loglevel)

    @cli.command()
    @click.option("--follow/--no-follow", default=False, show_default=True,
                  help="Keep the table live as new windows are published.")
    @click.option("--total", is_flag=True, help="Merge every window read into one estimate per attribute.")
    @click.option("--top", type=int, default=10, show_default=True, help="Values shown per attribute.")
    @click.option("--json", "as_json", is_flag=True, help="Print the (merged) estimate records as JSON lines.")
    @click.option("--idle-timeout", type=float, default=3.0, show_default=True,
                  help="Without --follow: read to the end, then on for this many seconds.")
    def estimates(follow: bool, total: bool, top: int, as_json: bool, idle_timeout: float) -> None:
        """Tail analytics.frequencies as a readable table: per attribute, the latest window
        (merged over privatizer instances) or, with --total, everything read so far.

        Records written under other mechanism parameters than this policy's (another
        STREAMGATE_LDP_EPSILON, e.g. `streamgate demo`'s 4) cannot be merged: they are skipped and
        counted on stderr, per attribute, with why and the setting that reads them (with --json too:
        stdout holds estimate records only).

        Exit 0: estimates shown. Exit 3: nothing to show (no estimate record read, or every record
        read was skipped). Exit 1: an error (e.g. the topic does not exist yet).
        """
        import orjson
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        from stream.kafka import TopicReader, reachable_bootstrap
        from stream.ldp.aggregate import latest_per_source, merge_records
        from stream.ldp.policy import LdpPolicy
        from stream.schema import load_schema

        settings = _settings()
        schema = load_schema(settings.schema_name)
        policy = LdpPolicy.from_schema(schema, settings.ldp_epsilon)
        seen: list[Mapping[str, Any]] = []
        malformed = 0

        def view() -> tuple[list[dict[str, Any]], list[str]]:
            seen[:] = latest_per_source(seen)  # (bounded by sources x attributes x windows)
            recs = list(seen)
            if not total and recs:
                latest = max(int(r["window"]["start_ms"]) for r in recs)
                recs = [r for r in recs if int(r["window"]["start_ms"]) == latest]
            return merge_records(policy, recs), skipped_lines(settings, schema, policy, recs)

        def shown(merged: list[dict[str, Any]], notes: list[str]) -> Any:
            return Group(render_estimates(merged, top=top), *(Text(n, style="yellow") for n in notes))

        console = Console()
        live = Live(render_estimates([], top=top), console=console, auto_refresh=False) if follow and not as_json else None
        # without --follow: to the end of the topic, then on for idle_timeout
        reader = TopicReader(reachable_bootstrap(settings), settings.topics.frequencies,
                             mode="tail" if follow else "end", linger=idle_timeout)
        try:
            if live is not None:
                live.start()
            for msgs in reader.batches():
                got = False
                for m in msgs:
                    try:
                        rec = orjson.loads(m.value() or b"")
                    except orjson.JSONDecodeError:
                        rec = None
                    if not _is_estimate(rec):
                        malformed += 1
                        continue
                    seen.append(rec)
                    got = True
                if got and live is not None:
                    live.update(shown(*view()), refresh=True)
        except KeyboardInterrupt:
            pass
        finally:
            if live is not None:
                live.stop()
            reader.close()
        if malformed:
            click.echo(f"skipped {malformed:,} record(s) of {settings.topics.frequencies}: not an estimate record "
                       "(not a JSON object with attribute, window start_ms/end_ms and n)", err=True)
        if not seen:
            click.echo("no estimates yet (is the privatizer running? windows close "
                       f"{settings.ldp_window_seconds:g} s + grace after their start)", err=True)
            sys.exit(3)
        merged, notes = view()
        if as_json:
            for rec in merged:
                click.echo(orjson.dumps(rec).decode())
        elif not follow:
            console.print(render_estimates(merged, top=top))
        for note in notes:
            click.echo(note, err=True)
        if not merged:
            click.echo("no estimate shown: every estimate record read was skipped (above)", err=True)
            sys.exit(3)

    bench = cli.commands.get("bench")
    assert isinstance(bench, click.Group)

    @bench.command("ldp")
    @click.option("--n", "n", type=int, default=100_000, show_default=True, help="Users per trial.")
    @click.option("--trials", type=int, default=None, help="Trials per cell (default: the accuracy table's).")
    @click.option("--events", type=int, default=50_000, show_default=True, help="Events for the throughput part.")
    @click.option("--skip-accuracy", is_flag=True, help="Only the throughput part.")
    @click.option("--skip-throughput", is_flag=True, help="Only the accuracy tables (no broker needed).")
    @click.option("--n-longitudinal", type=int, default=20_000, show_default=True,
                  help="Reports per trial for the two-round mechanisms.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--coverage", is_flag=True, help="Only the coverage table: synthetic streams with light and heavy "
                  "repeaters through the production privatizer and aggregator; how often the 95% intervals cover "
                  "the truth of their estimand (no broker needed).")
    @click.option("--windows", type=int, default=500, show_default=True, help="Windows per profile (--coverage).")
    @click.option("--events-per-window", type=int, default=2000, show_default=True, help="Events per window (--coverage).")
    @click.option("--merge-windows", type=click.IntRange(min=1), default=1, show_default=True,
                  help="With --coverage: the intervals of every N consecutive windows merged as `estimates --total` "
                  "and the console merge them, against the truth of their union.")
    @click.option("--epoch-windows", type=click.IntRange(min=1), default=1, show_default=True,
                  help="With --coverage: windows per epoch (the person cap's period); 1: each window its own epoch.")
    @click.option("--pool", type=click.IntRange(min=1), default=None,
                  help="With --coverage: draw every window's people from this many, so they come back in later "
                  "windows (default: new people in each window).")
    def bench_ldp(n: int, trials: int | None, events: int, skip_accuracy: bool, skip_throughput: bool,
                  n_longitudinal: int, seed: int, coverage: bool, windows: int, events_per_window: int,
                  merge_windows: int, epoch_windows: int, pool: int | None) -> None:
        """Estimator variance (empirical vs closed form) for GRR/OUE/OLH, PM/HM and the two-round
        L-GRR/L-OSUE/L-Duchi, privatizer events/s vs a plain JSON passthrough on the same broker, and
        (--coverage) the coverage of the published intervals."""
        if coverage:
            from stream.bench.ldp import (
                coverage_table,
                format_coverage,
                production_pair,
                production_per_person,
            )

            epochs = f"{epoch_windows} windows per epoch" if epoch_windows > 1 else "each window its own epoch"
            click.echo(f"coverage: {windows} windows x {events_per_window:,} events per profile, default schema and "
                       f"cap, {epochs}; truth = each person's first c events of the epoch, from the clear stream"
                       + (f"; every {merge_windows} windows merged" if merge_windows > 1 else "")
                       + (f"; people drawn from {pool:,}" if pool else ""))
            cov_rows = coverage_table(production_pair, windows=windows, events_per_window=events_per_window,
                                      per_person=production_per_person, seed=seed, merge_windows=merge_windows,
                                      epoch_windows=epoch_windows, pool=pool, say=click.echo)
            click.echo(format_coverage(cov_rows))
            return
        if not skip_accuracy:
            from stream.bench.ldp import accuracy_table, format_table, numeric_table

            kwargs: dict[str, Any] = {"n": n, "seed": seed, "say": click.echo}
            if trials is not None:
                kwargs["trials"] = trials
            rows = accuracy_table(**kwargs)
            click.echo(format_table(rows))
            nrows = numeric_table(**kwargs)
            click.echo(format_table(nrows))
            from stream.bench.ldp import format_longitudinal, longitudinal_table

            click.echo("two-round mechanisms (what the privatizer runs; eps_1 = eps_inf / 2, m reports per memo):")
            lkw: dict[str, Any] = {"n": n_longitudinal, "seed": seed, "say": click.echo}
            if trials is not None:
                lkw["trials"] = trials
            click.echo(format_longitudinal(longitudinal_table(**lkw)))
        if not skip_throughput:
            from stream.bench.privatizer import run_privatizer_bench

            with bench_settings(_settings()) as s:
                r = run_privatizer_bench(s, events=events, seed=seed, say=click.echo)
            click.echo("")
            click.echo(f"events                   {r.events:>10,}  (reports {r.reports:,}, "
                       f"suppressed attributes {r.suppressed:,})")
            click.echo(f"passthrough, json        {r.passthrough_rate:>10,.0f} events/s   (baseline)")
            click.echo(f"privatizer               {r.privatizer_rate:>10,.0f} events/s")
            click.echo(f"ratio privatizer / passthrough(json)   {r.ratio:.2f}   (target >= 0.39)")
            click.echo(f"pure core alone (Redis, no Kafka): {r.core_rate:,.0f} events/s")
