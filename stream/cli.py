"""``streamgate <command>``: the command-line interface."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from stream import __version__
from stream.commands import ldp as _ldp_commands
from stream.commands import learn as _learn_commands
from stream.commands import ops as _ops_commands
from stream.commands import retention as _retention_commands
from stream.commands import schema as _schema_commands
from stream.commands.common import bench_settings, echo_error, settings
from stream.config import Settings
from stream.errors import StreamgateError, TopicMissingError

__all__ = ["main"]


_settings = settings
_err = echo_error


class _Group(click.Group):
    """Turns streamgate's typed errors into one clear line and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TopicMissingError as exc:
            _err(f"{type(exc).__name__}: {exc}")
            hint = _writer_hint(exc.topic)
            if hint:
                click.echo(hint, err=True)
            sys.exit(1)
        except StreamgateError as exc:
            _err(f"{type(exc).__name__}: {exc}")
            sys.exit(1)


def _writer_hint(topic: str) -> str:
    from stream.apps.registry import writer_of

    try:
        spec = writer_of(Settings(), topic)
    except Exception:  # settings already reported or unreadable: no hint rather than a second error
        return ""
    if spec is None:
        return ""
    return (f"hint: {topic} is created by the {spec.name}, which has not run against this broker yet: "
            f"start it with `streamgate {spec.name}` (and what feeds it), or run `streamgate demo`")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamgate")
@click.option("--log-level", default="warning", show_default=True, help="Python log level for streamgate's loggers.")
def cli(log_level: str) -> None:
    """streamgate: an event-streaming privacy gateway for Kafka clickstreams.

    Without STREAMGATE_KAFKA_BOOTSTRAP / STREAMGATE_REDIS_URL the commands use the
    embedded dev stack (`streamgate dev up`). Settings: docs/settings.md (every STREAMGATE_ variable).
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


# --------------------------------------------------------------------------- dev
@cli.group()
def dev() -> None:
    """The embedded dev stack: a local Kafka-protocol broker and a local Redis."""


@dev.command("up")
@click.option("--kafka-port", type=int, default=None, help="Broker port (default: a free port).")
@click.option("--redis-port", type=int, default=None, help="Redis port (default: a free port).")
def dev_up(kafka_port: int | None, redis_port: int | None) -> None:
    """Start the stack (idempotent) and print the variables to export."""
    from stream.dev.stack import DevStack

    info = DevStack(_settings().state_dir).up(kafka_port=kafka_port, redis_port=redis_port)
    click.echo(f"# broker: {info.kafka_bootstrap}  redis: {info.redis_url}  logs: {info.log_dir}")
    click.echo(info.exports())


@dev.command("down")
def dev_down() -> None:
    """Stop the stack and remove its state."""
    from stream.dev.stack import DevStack

    stopped = DevStack(_settings().state_dir).down()
    click.echo("stopped" if stopped else "not running")


@dev.command("status")
def dev_status() -> None:
    """Show whether the stack runs, and its addresses."""
    from stream.dev.stack import DevStack

    info = DevStack(_settings().state_dir).status()
    if info is None:
        click.echo("not running (start it with: streamgate dev up)")
        sys.exit(3)
    click.echo(f"running: broker {info.kafka_bootstrap} (pid {info.broker_pid}), redis {info.redis_url} (pid {info.redis_pid})")
    click.echo(info.exports())


# --------------------------------------------------------------------------- keys
@cli.group()
def keys() -> None:
    """The master key (KEK keyring) and the role credentials derived from it."""


@keys.command("generate")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Keyring file to write (mode 0600). Default: <state_dir>/keyring.json, where every "
                   "command and worker finds it when no key is configured.")
@click.option("--rotate", is_flag=True, help="Add a new newest key to an existing keyring (old keys still unwrap).")
@click.option("--force", is_flag=True, help="Overwrite an existing keyring file.")
def keys_generate(out: Path | None, rotate: bool, force: bool) -> None:
    """Write a new KEK keyring file, or rotate one."""
    from stream.crypto.keyring import Keyring, default_keyring_path

    settings = _settings()
    default = default_keyring_path(settings)
    path = out or default
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotate:
        ring = Keyring.load(path).rotated()
        ring.save(path, overwrite=True)
    else:
        ring = Keyring.generate()
        ring.save(path, overwrite=force)
    click.echo(f"wrote {path} (key ids: {', '.join(ring.ids)}; newest wraps: {ring.primary_id})")
    if path.resolve() == default.resolve():
        configured = settings.master_key is not None or settings.master_key_file is not None
        if configured:
            click.echo("note: STREAMGATE_MASTER_KEY(_FILE) is set and takes precedence over this file", err=True)
        else:
            click.echo("every streamgate command and worker now finds it (no export needed)")
    else:
        click.echo(f"export STREAMGATE_MASTER_KEY_FILE={path}")


@keys.command("rewrap-pseudonyms")
def keys_rewrap_pseudonyms() -> None:
    """Wrap every clear (2.) tk2 secret by the KEK, then mark the store: gateways refuse clear ones from
    then on. Needs the master key and an operator's Redis user (SCAN); idempotent."""
    import time

    from stream.crypto.keyring import Keyring
    from stream.crypto.kms import LocalKMS
    from stream.crypto.tokens import PseudonymKeys
    from stream.redisdb import operator_client
    from stream.schema import load_schema
    from stream.storage.keys import RedisWrapCounter
    from stream.storage.pseudonyms import rewrap_legacy

    settings = _settings()
    keyring = Keyring.from_settings(settings)
    keys = PseudonymKeys(keyring, load_schema(settings.schema_name).subject_domain, LocalKMS(keyring))
    client = operator_client(settings)
    try:
        counter = RedisWrapCounter(client, settings.redis_key_prefix, warn_at=settings.kek_wrap_warn_at,
                                   refuse_at=settings.kek_wrap_limit)
        stats = rewrap_legacy(client, settings.redis_key_prefix, keys, now=time.time(), wrap_counter=counter)
    finally:
        client.close()
    click.echo(f"{stats.scanned} pseudonym secrets seen, {stats.rewrapped} clear ones wrapped"
               + (f", {stats.changed} changed meanwhile (left as they were)" if stats.changed else "")
               + f"; clear (2.) secrets are refused from now on ({settings.redis_key_prefix}:pseudonyms-wrapped)")


@keys.command("roles")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Directory for the credential files <role>.json (mode 0600). Default: <state_dir>/roles")
@click.option("--role", "roles", multiple=True, help="Only these roles (repeatable). Default: every role.")
@click.option("--force", is_flag=True, help="Overwrite existing credential files.")
def keys_roles(out: Path | None, roles: tuple[str, ...], force: bool) -> None:
    """Issue one least-privilege credential per role from the master keyring.

    Each file holds only keys HKDF-derived for that role (never a raw KEK), so it interoperates
    with the master key. Give each process its own file as STREAMGATE_KEY_FILE. Re-issue after a
    KEK rotation (the wrapping keys of new KEKs). Roles: gateway, privatizer, reader, eraser,
    shredder, learner, verifier (see the README, "Key roles").
    """
    from stream.crypto.keyring import ROLES, Keyring
    from stream.errors import KeyringError
    from stream.schema import load_schema

    settings = _settings()
    keyring = Keyring.from_settings(settings)
    if keyring.role is not None:
        raise KeyringError("issuing role credentials needs the master keyring, not a role credential")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise click.BadParameter(f"unknown role {unknown[0]!r} (one of {', '.join(ROLES)})", param_hint="--role")
    schema = load_schema(settings.schema_name)
    domains = sorted({f.token_domain for f in schema.fields.values() if f.token_domain})
    directory = out or (settings.state_dir / "roles")
    for role in roles or tuple(ROLES):
        spec = ROLES[role]
        path = directory / f"{role}.json"
        keyring.for_role(role, token_domains=domains, person_domain=schema.subject_domain).save(path, overwrite=force)
        holds = (["KEK wrapping keys"] if spec.wrap else []) + (["token keys (tk1, tk2)"] if spec.tokens else []) + [
            p for p in spec.purposes] + [f"public:{n}" for n in spec.public]
        click.echo(f"wrote {path}  ({role}: {', '.join(holds)})")
    click.echo(f"# each process gets its own file: export STREAMGATE_KEY_FILE={directory}/<role>.json", err=True)


# --------------------------------------------------------------------------- workers
@cli.command()
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def gateway(loglevel: str) -> None:
    """Run the gateway worker (Faust): clicks.raw -> clicks.protected / clicks.dlq."""
    from stream.apps.registry import run_worker
    from stream.crypto.keyring import Keyring
    from stream.kafka import ensure_topics, reachable_bootstrap
    from stream.ops.logging import configure_logging
    from stream.schema import load_schema

    settings = _settings()
    configure_logging(settings, loglevel)  # allow-listed fields only (STREAMGATE_LOG_FORMAT=text|json)
    Keyring.from_settings(settings)  # fail fast on a missing/bad KEK or schema, before starting anything
    load_schema(settings.schema_name)
    bootstrap = reachable_bootstrap(settings)
    t = settings.topics
    ensure_topics(bootstrap, [t.raw, t.protected, t.dlq], partitions=settings.topic_partitions)
    run_worker(settings, "gateway", loglevel)


# --------------------------------------------------------------------------- produce
@cli.command()
@click.option("--generate", "generate", type=int, default=None, help="Publish N synthetic clickstream events.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic generator.")
@click.option("--invalid-rate", type=float, default=0.0, show_default=True,
              help="With --generate: fraction of events replaced by invalid records (they go to the DLQ).")
@click.option("--file", "file", type=click.File("rb"), default=None, help="Publish the lines of a JSONL file ('-' = stdin).")
@click.option("--topic", default=None, help="Target topic (default: the raw topic).")
@click.option("--allow-invalid", is_flag=True,
              help="With --file/stdin: also send lines that are not valid events (the gateway dead-letters them).")
def produce(generate: int | None, seed: int, invalid_rate: float, file: Any, topic: str | None,
            allow_invalid: bool) -> None:
    """Publish raw events to clicks.raw (synthetic, from a file, or from stdin).

    Lines from a file or stdin are checked against the schema first, as the gateway will: invalid
    ones are counted and not sent (exit code 1), unless --allow-invalid.
    """
    import random

    from rich.progress import Progress

    from stream.apps.produce import LineCheck, publish
    from stream.faults import make_invalid
    from stream.kafka import ensure_topics, reachable_bootstrap
    from stream.schema import load_schema
    from stream.synth import ClickstreamGenerator

    settings = _settings()
    bootstrap = reachable_bootstrap(settings)
    topic = topic or settings.topics.raw
    ensure_topics(bootstrap, [topic], partitions=settings.topic_partitions)
    items: Any
    total: int | None
    check: LineCheck | None = None
    if generate is not None:
        rng = random.Random(seed + 1)

        def gen() -> Any:
            for ev in ClickstreamGenerator(seed=seed).events(generate):
                yield make_invalid(ev, rng)[1] if rng.random() < invalid_rate else ev

        items, total = gen(), generate
    else:
        stream_in = file if file is not None else click.get_binary_stream("stdin")
        lines = (line.rstrip(b"\r\n") for line in stream_in if line.strip())
        if topic == settings.topics.raw:
            check = LineCheck(load_schema(settings.schema_name), max_event_bytes=settings.max_event_bytes)
            items = (line for line in lines if check(line) or allow_invalid)
        else:
            items = lines
        total = None
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"publishing to {topic}", total=total)
        n = publish(bootstrap, topic, items, on_progress=lambda k: progress.update(task, completed=k))
    click.echo(f"published {n:,} records to {topic}")
    if check is not None and check.invalid:
        if allow_invalid:
            click.echo(f"warning: {check.summary()}: sent anyway (--allow-invalid); the gateway dead-letters them",
                       err=True)
        else:
            _err(f"{check.summary()}: not sent. Fix them, or send them anyway with --allow-invalid "
                 "(the gateway dead-letters them)")
            sys.exit(1)


# --------------------------------------------------------------------------- decrypt
@cli.command()
@click.option("--user", "user", default=None,
              help="Only this user's events (raw user_id; matched by its tk2 token, looked up, never created, "
              "and its tk1 token). An erased person's tk2 records no longer match.")
@click.option("--max", "max_events", type=int, default=None, help="Stop after printing N events.")
@click.option("--idle-timeout", type=float, default=5.0, show_default=True,
              help="Read to the end of the topic, then on for this many seconds (0 = follow forever).")
@click.option("--on-shredded", type=click.Choice(["null", "mask", "raise"]), default="mask", show_default=True,
              help="What a field whose key was shredded decrypts to.")
def decrypt(user: str | None, max_events: int | None, idle_timeout: float, on_shredded: str) -> None:
    """Authorized consumer: print decrypted events of clicks.protected (needs the master key)."""

    import orjson

    from stream.components import build_dek_provider, person_tokens
    from stream.crypto.keyring import Keyring
    from stream.crypto.tokens import PSEUDONYM_PREFIX
    from stream.errors import DecryptError
    from stream.gateway.framing import unframed
    from stream.gateway.reader import ProtectedEventReader
    from stream.kafka import TopicReader, reachable_bootstrap
    from stream.schema import load_schema

    settings = _settings()
    keyring = Keyring.from_settings(settings)
    schema = load_schema(settings.schema_name)
    reader = ProtectedEventReader(schema, build_dek_provider(settings, keyring, role="reader"), on_shredded=on_shredded)  # type: ignore[arg-type]
    want = None
    if user is not None:  # looked up, never created: an erased person's records no longer match
        tokens = person_tokens(settings, user, keyring)
        want = {t.encode() for t in tokens}
        if settings.pseudonym_tokens and not any(t.startswith(PSEUDONYM_PREFIX) for t in tokens):
            click.echo("# no tk2 pseudonym for this user (never seen, erased or expired): "
                       "only records from before tk2 can match", err=True)
    # to the end of the topic, then on for idle_timeout seconds (0 = follow forever)
    printed, failed = 0, 0
    out = sys.stdout
    with TopicReader(reachable_bootstrap(settings), settings.topics.protected,
                     mode="tail" if not idle_timeout else "end", linger=idle_timeout) as consumer:
        for m in consumer:
            if want is not None and m.key() not in want:
                continue
            try:
                event = reader.decrypt(orjson.loads(unframed(m.value()) or b""))
            except (DecryptError, orjson.JSONDecodeError):
                failed += 1
                continue
            out.write(orjson.dumps(event).decode() + "\n")
            printed += 1
            if max_events is not None and printed >= max_events:
                break
    click.echo(f"# {printed} events decrypted" + (f", {failed} could not be decrypted" if failed else ""), err=True)


# --------------------------------------------------------------------------- dlq
@cli.group()
def dlq() -> None:
    """The dead-letter topic."""


@dlq.command("inspect")
@click.option("--max", "max_records", type=int, default=20, show_default=True)
@click.option("--unseal", is_flag=True, help="Also print the original bytes (needs the master key; contains PII).")
@click.option("--idle-timeout", type=float, default=3.0, show_default=True,
              help="Read to the end of the topic, then on for this many seconds.")
def dlq_inspect(max_records: int, unseal: bool, idle_timeout: float) -> None:
    """Print DLQ records (reason, source, size), optionally unsealing the original bytes.

    A record of the topic that is no dead letter prints "malformed record at PARTITION@OFFSET: why";
    with --unseal, a dead letter whose key was shredded (retention or erasure) prints
    "original: (shredded)". Both count towards --max; the listing goes on.
    """
    from stream.components import build_dek_provider
    from stream.errors import DecryptError, KeyShreddedError
    from stream.gateway.core import unseal_dead_letter
    from stream.kafka import TopicReader, reachable_bootstrap

    settings = _settings()
    deks = build_dek_provider(settings, role="reader") if unseal else None
    shown = 0
    with TopicReader(reachable_bootstrap(settings), settings.topics.dlq, linger=idle_timeout) as consumer:
        for m in consumer:
            rec, line = _dead_letter_line(m.value())
            click.echo(line if rec is not None else f"malformed record at {m.partition()}@{m.offset()}: {line}")
            if deks is not None and rec is not None:
                try:
                    original = repr(unseal_dead_letter(rec, deks))
                except KeyShreddedError:
                    original = "(shredded)"
                except DecryptError:
                    original = "(could not be decrypted)"
                click.echo(f"    original: {original}")
            shown += 1
            if shown >= max_records:
                break


def _dead_letter_line(value: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """(the dead letter, its listing line), or (None, why the record is no dead letter)."""
    import orjson

    try:
        rec = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    src = rec.get("source")
    if not isinstance(src, dict) or not {"topic", "partition", "offset"} <= src.keys():
        return None, "no source (topic, partition, offset)"
    if not isinstance(rec.get("reason"), str):
        return None, "no reason"
    line = f"{rec['reason']:<17} {src['topic']}[{src['partition']}]@{src['offset']} size={rec.get('size')}"
    if rec.get("path"):
        line += f" path={rec['path']} rule={rec.get('rule')}"
    return rec, line


@dlq.command("replay")
@click.option("--reason", "reasons", multiple=True, help="Only dead letters of this reason (repeatable).")
@click.option("--since", default=None, help="Rejected at or after (RFC 3339, or an age like 2h / 7d).")
@click.option("--until", "until_", default=None, help="Rejected at or before (same forms).")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only this source partition (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; publish nothing.")
@click.option("--idle-timeout", type=float, default=3.0, show_default=True)
def dlq_replay(reasons: tuple[str, ...], since: str | None, until_: str | None, partitions: tuple[int, ...],
               dry_run: bool, idle_timeout: float) -> None:
    """Re-publish dead letters to the raw topic with their original key (idempotent by event_id).
    policy_missing ones are re-framed under their subject's latest version once it has a policy."""
    from stream.commands.dlq_replay import run_replay
    from stream.commands.retention import parse_when

    st = run_replay(_settings(), reasons=reasons, since=parse_when(since) if since else None,
                    until=parse_when(until_) if until_ else None, partitions=partitions, dry_run=dry_run,
                    idle_timeout=idle_timeout)
    click.echo(f"{'would replay' if dry_run else 'replayed'} {st.replayed} of {st.matched} matching dead letters "
               f"({st.scanned} scanned); already replayed {st.already}, not sealed {st.not_sealed}, "
               f"erased {st.erased}, undecryptable {st.undecryptable}")
    if st.undecodable or st.during_run:
        click.echo(f"{st.undecodable} not readable as dead letters (skipped); {st.during_run} rejected again during "
                   "this run (the next run replays them)")
    if st.reframed or st.still_refused:
        click.echo(f"policy_missing: {st.reframed} re-framed under the subject's latest version, "
                   f"{st.still_refused} not replayed (no newer version with a policy for every property)")
    for reason, n in sorted(st.reasons.items()):
        click.echo(f"    {reason:<20} {n}")


# --------------------------------------------------------------------------- console
@cli.command("console")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; anything else needs a token).")
@click.option("--port", type=int, default=6070, show_default=True, help="Port to serve on (0: any free port).")
@click.option("--token", envvar="STREAMGATE_CONSOLE_TOKEN", default=None,
              help="Access token: every request needs it (?token= once, then a cookie for 12 h). "
                   "Default: a fresh one, printed in the URL. Env: STREAMGATE_CONSOLE_TOKEN.")
@click.option("--no-token", is_flag=True, help="Serve without a token (loopback addresses only).")
@click.option("--since", default=None, help="Ignore records older than this (RFC 3339, or 2h / 7d ago).")
def console_command(host: str, port: int, token: str | None, no_token: bool, since: str | None) -> None:
    """Live privacy console in the browser: pipeline, estimates, privacy budget and erasures, model.

    Reads only ops.metrics, analytics.frequencies, ops.audit and models.snapshots (never a raw or
    protected event); receipts and snapshots are verified with the keyring's public keys (the
    verifier credential is enough). Serves until Ctrl-C.
    """
    from stream.commands.retention import parse_when
    from stream.console import ConsoleService
    from stream.console.service import LOOPBACK, hold_until_interrupted
    from stream.kafka import reachable_bootstrap

    settings = _settings()
    since_ms = int(parse_when(since) * 1000) if since else 0
    if no_token and token:
        raise click.UsageError("give at most one of --token, --no-token")
    if no_token and host not in LOOPBACK:
        raise click.UsageError(f"--no-token serves on a loopback address only, not {host}: "
                               "anyone who reaches it could read it")
    service = ConsoleService(settings, host=host, port=port, token="" if no_token else token, since_ms=since_ms,
                             bootstrap=reachable_bootstrap(settings))
    try:
        service.start()
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
    click.echo(f"streamgate console: {service.login_url}  (Ctrl-C stops it)")
    try:
        hold_until_interrupted()
    finally:
        service.stop()


# --------------------------------------------------------------------------- demo / bench
@cli.command()
@click.option("--events", "events", type=int, default=20_000, show_default=True, help="Synthetic events to publish.")
@click.option("--invalid-rate", type=float, default=0.02, show_default=True, help="Fraction of invalid records.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epsilon", type=click.FloatRange(min=0.01, max=20), default=None,
              help="Epsilon per report in the demo (default 4, weaker than the workers' default 1, so that "
                   "the demo's few events visibly teach the model).")
@click.option("--console-port", type=int, default=0, show_default=True,
              help="Port of the live console (0: any free port); its URL is printed.")
@click.option("--no-console", is_flag=True, help="Do not serve the live console.")
@click.option("--hold", is_flag=True, help="Keep the console serving after the summary, until Ctrl-C.")
def demo(events: int, invalid_rate: float, seed: int, epsilon: float | None, console_port: int, no_console: bool,
         hold: bool) -> None:
    """Live demo on the embedded stack: gateway, privatizer, learner and shredder on a synthetic clickstream.

    It serves the live console (`streamgate console`) while it runs and prints its URL
    (a token from STREAMGATE_CONSOLE_TOKEN is honoured)."""
    import os

    from stream.console.service import hold_until_interrupted
    from stream.demo import run_demo
    from stream.kafka import probe_broker

    settings = _settings()
    if settings.kafka_bootstrap:  # else the embedded stack, started by the demo
        probe_broker(settings.kafka_bootstrap)
    from stream.demo import DEMO_EPSILON

    run_demo(settings, events=events, invalid_rate=invalid_rate, seed=seed,
             epsilon=DEMO_EPSILON if epsilon is None else epsilon,
             console_port=None if no_console else console_port,
             console_token=os.environ.get("STREAMGATE_CONSOLE_TOKEN") or None,
             hold=hold_until_interrupted if hold and not no_console else None)


@cli.group()
def bench() -> None:
    """Benchmarks (figures are ratios against a same-run baseline)."""


@bench.command("gateway")
@click.option("--events", "events", type=int, default=100_000, show_default=True)
@click.option("--invalid-rate", type=float, default=0.01, show_default=True)
@click.option("--framed", is_flag=True, help="Instead: the gateway on Schema Registry-framed input (JSON Schema, "
              "Avro) against the same events as plain JSON.")
@click.option("--rounds", type=int, default=None, help="Rounds of the legs (default 1; with --framed 3); the "
              "figures are the median round's.")
@click.option("--engine-floor", is_flag=True, help="Also run the engine around a core that passes records through: "
              "what the engine itself costs, as a ratio to the passthroughs.")
def bench_gateway(events: int, invalid_rate: float, framed: bool, rounds: int | None, engine_floor: bool) -> None:
    """Gateway events/s vs a plain confluent-kafka JSON passthrough on the same broker and events."""
    from stream.bench.gateway import run_framing_bench, run_gateway_bench
    from stream.bench.procs import sizing_lines

    if framed:
        with bench_settings(_settings()) as s:
            fr = run_framing_bench(s, events=events, rounds=rounds or 3, say=click.echo)
        click.echo("")
        click.echo("medians over rounds; ratios to plain JSON of the same round (target >= 0.90); CPU: this process's")
        for leg in fr.rates:
            click.echo(f"{leg:<6} engine {fr.rate(leg):>9,.0f} events/s (ratio {fr.ratio(leg):.3f}), "
                       f"{fr.cpu_rate(leg):>9,.0f} events/CPU-s (ratio {fr.cpu_ratio(leg):.3f}); core alone "
                       f"{fr.core_rates[leg]:>9,.0f} events/CPU-s (ratio {fr.core_rates[leg] / fr.core_rates['plain']:.3f})")
        return
    with bench_settings(_settings()) as s:
        r = run_gateway_bench(s, events=events, invalid_rate=invalid_rate, engine_floor=engine_floor,
                              rounds=rounds or 1, say=click.echo)
    click.echo("")
    click.echo(f"person tokens          {'tk2' if s.pseudonym_tokens else 'tk1'} (STREAMGATE_PSEUDONYM_TOKENS); "
               f"padding as the schema says")
    click.echo(f"events                 {r.events:>12,}  (protected {r.protected:,}, dead-lettered {r.dead_lettered:,})")
    click.echo(f"passthrough, json      {r.passthrough_rate:>12,.0f} events/s   (baseline)")
    click.echo(f"passthrough, orjson    {r.passthrough_orjson_rate:>12,.0f} events/s")
    click.echo(f"gateway                {r.gateway_rate:>12,.0f} events/s")
    click.echo(f"ratio gateway / passthrough(json)    {r.ratio:.2f}   (target >= 0.45)")
    click.echo(f"ratio gateway / passthrough(orjson)  {r.ratio_orjson:.2f}   (target >= 0.30)")
    click.echo(f"CPU ratio (events per CPU-second of this process): {r.cpu_ratio('json'):.2f} (json), "
               f"{r.cpu_ratio('orjson'):.2f} (orjson)")
    if "engine alone" in r.sizing:
        click.echo(f"CPU ratio of the engine alone (a pass-through core): {r.cpu_ratio('json', 'engine alone'):.2f} "
                   f"(json), {r.cpu_ratio('orjson', 'engine alone'):.2f} (orjson)")
    if len(r.rounds) > 1:
        click.echo(f"CPU ratios of the {len(r.rounds)} rounds (orjson): "
                   + ", ".join(f"{o:.2f}" for _, o in r.rounds) + "; the figures above are the median round's")
    click.echo(f"pure core alone (no Kafka): {r.core_rate:,.0f} events/s")
    click.echo(sizing_lines(*r.sizing.values()))


@bench.command("scale")
@click.option("--events", "events", type=int, default=100_000, show_default=True, help="Events per worker.")
@click.option("--partitions", type=int, default=4, show_default=True, help="Partitions of the input topics.")
@click.option("--worker", "workers", type=click.Choice(["gateway", "privatizer"]), multiple=True,
              help="Worker(s) to measure (default: both).")
def bench_scale(events: int, partitions: int, workers: tuple[str, ...]) -> None:
    """Gateway and privatizer with 1, then 2 processes in one consumer group: events/s and 2-vs-1 ratio."""
    from stream.bench.scale import format_scale, run_scale_bench

    with bench_settings(_settings()) as s:
        r = run_scale_bench(s, events=events, partitions=partitions, workers=workers or ("gateway", "privatizer"),
                            say=click.echo)
    click.echo("")
    click.echo(format_scale(r))


@bench.command("latency")
@click.option("--rates", default="1000,5000,20000", show_default=True, help="Offered events/s, comma-separated; each rate on a fresh embedded stack (when none is configured).")
@click.option("--seconds", type=float, default=4.0, show_default=True, help="Measured seconds per rate.")
@click.option("--warmup", type=float, default=1.0, show_default=True, help="Seconds per rate not counted.")
@click.option("--partitions", type=int, default=1, show_default=True,
              help="Partitions per topic (1: features.private is matched exactly).")
@click.option("--linger-ms", type=int, default=None, help="Override the producers' linger.ms.")
@click.option("--fetch-wait-ms", type=int, default=None, help="Override the consumers' fetch.wait.max.ms.")
@click.option("--batch-wait", type=float, default=None, help="Override STREAMGATE_BATCH_MAX_WAIT_SECONDS.")
@click.option("--gateway-only", is_flag=True, help="No privatizer: the gateway alone on the cores.")
def bench_latency(rates: str, seconds: float, warmup: float, partitions: int, linger_ms: int | None,
                  fetch_wait_ms: int | None, batch_wait: float | None, gateway_only: bool) -> None:
    """End-to-end latency (p50/p99/max) at fixed offered rates: produce -> clicks.protected / features.private."""
    from stream.bench.latency import format_latency, run_latency_bench

    try:
        offered = [int(x) for x in rates.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 1000,5000", param_hint="--rates") from None
    if not offered or min(offered) <= 0:
        raise click.BadParameter("at least one rate, each > 0", param_hint="--rates")
    producer = {} if linger_ms is None else {"linger.ms": linger_ms}
    consumer = {} if fetch_wait_ms is None else {"fetch.wait.max.ms": fetch_wait_ms}
    base = _settings()
    if batch_wait is not None:
        base = base.model_copy(update={"batch_max_wait_seconds": batch_wait})
    # one run per rate, each on a fresh embedded stack: the embedded broker keeps everything in memory
    # and slows as it fills (docs/benchmarks.md, "Quiet machine"), which would charge one rate for another
    runs = []
    for rate in offered:
        with bench_settings(base) as s:
            runs.append(run_latency_bench(s, rates=[rate], seconds=seconds, warmup=warmup, partitions=partitions,
                                          producer=producer, consumer=consumer, pipeline=not gateway_only,
                                          say=click.echo))
    r = runs[0]
    for more in runs[1:]:
        r.rows.extend(more.rows)
        r.cpu.update(more.cpu)
    click.echo("")
    click.echo(format_latency(r))
    for path, target in (("gateway", 50), ("pipeline", 100)):
        five, alone = r.row(5000, path), r.row(5000, "kafka")
        if five is not None:
            kafka = f"; Kafka alone, same run: {alone.p99_ms:.1f} ms" if alone is not None else ""
            click.echo(f"{path:<8} p99 at 5,000 events/s: {five.p99_ms:6.1f} ms   (target < {target}{kafka})")
    click.echo("load average (1, 5, 15 min) at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


for _area in (_ldp_commands, _retention_commands, _ops_commands, _learn_commands, _schema_commands):
    _area.register(cli)


def main() -> None:
    cli(prog_name="streamgate")


if __name__ == "__main__":
    main()
