"""``streamgate`` commands of the retention area: ``shredder``, ``erase``, ``audit``, ``topics apply``."""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from stream.commands.common import settings as _settings

__all__ = ["parse_when", "register"]


def parse_when(text: str) -> float:
    """An RFC 3339 / ISO 8601 time (``2026-11-27T03:00:00Z``; no zone = UTC), or a relative age
    like ``15m``, ``2h``, ``7d`` (that long ago), as unix seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(t[:-1]) * units[t[-1]]
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not a time: {text!r} (use e.g. 2026-11-27T03:00:00Z or 2h / 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _receipt_time(r: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(r.get("at", "")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _subjects_of(user: str | None, subject: str | None, *, legacy: bool = True) -> list[str] | None:
    """The person tokens to match: ``subject``, or those of ``user`` (looked up, never created:
    :func:`stream.components.person_tokens`)."""
    if user is None:
        return None if subject is None else [subject]
    from stream.components import person_tokens

    return person_tokens(_settings(), user, legacy=legacy)


def _format(r: dict[str, Any], verified: bool | None = None) -> str:
    kind = r.get("kind")
    if kind == "key_shredded":
        extra = f"epoch={r.get('epoch')} key={r.get('key_id') or '(expired)'}"
    elif kind in ("erasure", "erasure_rejected"):
        extra = f"{r.get('status')} keys={r.get('keys_shredded')}" + (f" error={r['error']}" if r.get("error") else "")
    else:
        extra = ""
    req = f" request={r['request_id']}" if r.get("request_id") else ""
    mark = "" if verified is None else ("verified   " if verified else "UNVERIFIED ")
    return f"{mark}{r.get('at', '?'):<24} {kind!s:<12} {r.get('reason')!s:<9} {r.get('subject') or '-'} {extra}{req}"


def read_receipts(bootstrap: str, topic: str, *, idle_timeout: float, stop: Any = None) -> Any:
    """Yield audit receipts (dicts) from the beginning of ``topic`` to its end, then on for
    ``idle_timeout`` seconds (or until ``stop(r)`` is true)."""
    import orjson

    from stream.kafka import TopicReader

    with TopicReader(bootstrap, topic, linger=idle_timeout) as reader:
        for m in reader:
            try:
                r = orjson.loads(m.value() or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(r, dict):
                yield r
                if stop is not None and stop(r):
                    return


def _produce_one(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    from confluent_kafka import Producer

    from stream.errors import StreamgateError
    from stream.kafka import produce, producer_config

    errors: list[str] = []
    producer = Producer(producer_config(bootstrap, **{"client.id": "streamgate-erase"}))
    produce(producer, topic, value, key,
            on_delivery=lambda err, _m: errors.append(err.str()) if err is not None else None)
    if producer.flush(30) or errors:
        raise StreamgateError(f"the erasure request was not delivered to {topic}"
                              + (f": {errors[0]}" if errors else ""))


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""

    @cli.command()
    @click.option("--loglevel", default="info", show_default=True,
                  type=click.Choice(["crit", "error", "warn", "info", "debug"]))
    def shredder(loglevel: str) -> None:
        """Run the shredder worker (Faust): retention from the deadline index, erasure requests.

        Every STREAMGATE_SHREDDER_INTERVAL_SECONDS it destroys the data keys (and LDP memos and
        budgets) whose retention ended and writes one signed receipt per key to ops.audit; it
        executes requests from privacy.erasure as they come, if signed by the eraser key. /healthz, /readyz and /metrics on port 6068.
        """

        from stream.crypto.keyring import Keyring
        from stream.crypto.signing import signing_key, verify_key
        from stream.errors import ConfigError
        from stream.kafka import admin_client, ensure_topics, reachable_bootstrap
        from stream.schema import load_schema
        from stream.storage.topics import load_topics_config, tombstone_topics

        settings = _settings()
        # fail fast on the shredder's keys: token keys, the eraser's public key, the receipt signing key
        keyring = Keyring.from_settings(settings)
        verify_key(keyring, "erasure")
        signing_key(keyring, "receipt")
        load_schema(settings.schema_name)
        compacted = tombstone_topics(load_topics_config(settings, settings.topics_config))
        bootstrap = reachable_bootstrap(settings)
        ensure_topics(bootstrap, [settings.topics.erasure, settings.topics.audit], partitions=1)
        if compacted:
            existing = admin_client(bootstrap).list_topics(timeout=30).topics
            missing = [t for t in compacted if t not in existing]
            if missing:
                raise ConfigError(f"compacted topics keyed by person token are missing: {', '.join(missing)} "
                                  "(create them with `streamgate topics apply`)")
        from stream.apps.registry import run_worker

        run_worker(settings, "shredder", loglevel)

    @cli.command()
    @click.option("--user", "user", default=None, help="The person's raw user_id (sent to privacy.erasure).")
    @click.option("--subject", default=None, help="The person's token instead of a user_id.")
    @click.option("--request-id", default=None, help="Idempotency key of the request (default: a new UUID).")
    @click.option("--wait", is_flag=True, help="Wait for the shredder's receipt and print it.")
    @click.option("--timeout", type=float, default=120.0, show_default=True, help="With --wait: give up after S seconds.")
    def erase(user: str | None, subject: str | None, request_id: str | None, wait: bool, timeout: float) -> None:
        """Ask for a person's erasure: publish a signed request to privacy.erasure.

        The request (request id, user id or token, time) is signed with the eraser key (the eraser
        credential, or the master key); the shredder executes only requests that verify. It destroys every data key, LDP memo and budget entry of the person, tombstones
        their records in compacted topics keyed by their token, and writes a receipt to ops.audit.
        A request id names one signed request: the shredder executes a redelivered copy of it once,
        and refuses a new request under a used id (request_id_conflict).
        """
        import orjson

        from stream.crypto.keyring import Keyring
        from stream.crypto.signing import signing_key
        from stream.errors import ConfigError, KeyUnavailableError
        from stream.kafka import ensure_topics, reachable_bootstrap
        from stream.retention.core import check_request_id, sign_erasure_request
        from stream.retention.receipts import rfc3339

        if (user is None) == (subject is None):
            raise click.UsageError("give exactly one of --user, --subject")
        settings = _settings()
        rid = check_request_id(request_id or str(uuid.uuid4()))
        key = signing_key(Keyring.from_settings(settings), "erasure")  # the eraser's authority
        try:  # the shredder tokenizes the user id; showing the token here needs the token key too
            tokens = _subjects_of(user, subject, legacy=False) or ["(none: no tk2 pseudonym; never seen, erased or expired)"]
            token = tokens[0]
        except ConfigError:
            token = "(token not shown: no token key here)"
        except KeyUnavailableError:
            token = "(token not shown: key store unavailable)"
        bootstrap = reachable_bootstrap(settings)
        ensure_topics(bootstrap, [settings.topics.erasure], partitions=1)
        body = sign_erasure_request(key, rid, user_id=user, subject=subject, requested_at=rfc3339(time.time()),
                                    audience=settings.deployment_id)
        _produce_one(bootstrap, settings.topics.erasure, (user if user is not None else subject or "").encode(),
                     orjson.dumps(body))
        click.echo(f"erasure requested: request_id={rid} subject={token}")
        from stream.apps.registry import WORKERS
        from stream.kafka import group_active

        if group_active(bootstrap, WORKERS["shredder"].group(settings)) is False:
            click.echo(f"warning: no shredder is running (its consumer group "
                       f"{WORKERS['shredder'].group(settings)!r} has no members): the request waits in "
                       f"{settings.topics.erasure} until `streamgate shredder` runs", err=True)
        if not wait:
            return
        click.echo("waiting for the shredder's receipt ...", err=True)
        deadline = time.monotonic() + timeout
        ensure_topics(bootstrap, [settings.topics.audit], partitions=1)
        while time.monotonic() < deadline:
            for r in read_receipts(bootstrap, settings.topics.audit, idle_timeout=2.0,
                                   stop=lambda r: r.get("kind") == "erasure" and r.get("request_id") == rid):
                if r.get("kind") == "erasure" and r.get("request_id") == rid:
                    click.echo(_format(r))
                    if r.get("status") != "completed":  # (waiting trusts the broker; `audit` verifies)
                        sys.exit(1)
                    return
            time.sleep(0.5)
        click.echo(f"error: no receipt for request {rid} within {timeout:.0f} s (is `streamgate shredder` running?)",
                   err=True)
        sys.exit(2)

    @cli.command()
    @click.option("--user", "user", default=None,
                  help="Only receipts of this raw user_id (matched by its tokens; after an erasure its tk2 token is "
                  "unlinked: find those receipts by --request-id).")
    @click.option("--subject", default=None, help="Only receipts of this person token.")
    @click.option("--reason", type=click.Choice(["retention", "erasure"]), default=None, help="Only this reason.")
    @click.option("--request-id", default=None, help="Only receipts of this erasure request.")
    @click.option("--since", default=None, help="Only receipts at or after this time (RFC 3339, or 2h / 7d ago).")
    @click.option("--until", default=None, help="Only receipts before this time (RFC 3339, or 2h / 7d ago).")
    @click.option("--max", "max_receipts", type=int, default=None, help="Print at most N receipts.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON receipt per line.")
    @click.option("--all", "show_all", is_flag=True,
                  help="Also show unsigned or forged records, marked UNVERIFIED (JSON: a \"verified\" field is added).")
    @click.option("--idle-timeout", type=float, default=3.0, show_default=True,
                  help="Read to the end of ops.audit, then on for this many seconds.")
    def audit(user: str | None, subject: str | None, reason: str | None, request_id: str | None,
              since: str | None, until: str | None, max_receipts: int | None, as_json: bool,
              show_all: bool, idle_timeout: float) -> None:
        """Print shredder receipts from ops.audit, verified and deduplicated by receipt_id.

        Each receipt says which person token's key of which epoch died, when, why (retention or
        erasure, with the request id), and which worker destroyed it. Every receipt's Ed25519
        signature is checked with the shredder's public receipt key (the verifier credential, or the
        master key): unsigned or forged records are left out (counted), or shown marked with --all.
        """
        import orjson

        from stream.crypto.keyring import Keyring
        from stream.crypto.signing import verify_key
        from stream.kafka import reachable_bootstrap
        from stream.retention.receipts import verify_receipt

        if user is not None and subject is not None:
            raise click.UsageError("give at most one of --user, --subject")
        settings = _settings()
        public = verify_key(Keyring.from_settings(settings), "receipt")
        want = _subjects_of(user, subject)
        t_since = parse_when(since) if since else None
        t_until = parse_when(until) if until else None
        seen: set[str] = set()
        shown = dupes = unverified = 0
        for r in read_receipts(reachable_bootstrap(settings), settings.topics.audit, idle_timeout=idle_timeout):
            if r.get("kind") not in ("key_shredded", "erasure", "erasure_rejected"):
                continue
            ok = verify_receipt(r, public)
            if not ok:
                unverified += 1  # never deduped against: a forged copy cannot hide a real receipt
                if not show_all:
                    continue
            rid = r.get("receipt_id")
            if ok and isinstance(rid, str):
                if rid in seen:
                    dupes += 1
                    continue
                seen.add(rid)
            if want is not None and r.get("subject") not in want:
                continue
            if reason is not None and r.get("reason") != reason:
                continue
            if request_id is not None and r.get("request_id") != request_id:
                continue
            at = _receipt_time(r)
            if (t_since is not None and (at is None or at < t_since)) or (
                    t_until is not None and (at is None or at >= t_until)):
                continue
            if as_json:
                click.echo(orjson.dumps(dict(r, verified=ok) if show_all else r).decode())
            else:
                click.echo(_format(r, ok if show_all else None))
            shown += 1
            if max_receipts is not None and shown >= max_receipts:
                break
        notes = [f"{dupes} re-delivered duplicates skipped"] if dupes else []
        if unverified:
            notes.append(f"{unverified} UNVERIFIED (unsigned or forged) "
                         + ("shown, marked" if show_all else "left out; --all shows them"))
        click.echo(f"# {shown} receipts" + (f" ({'; '.join(notes)})" if notes else ""), err=True)

    @cli.group()
    def topics() -> None:
        """Kafka topics: partitions and retention from the ops topics config."""

    @topics.command("apply")
    @click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="Topics config file (default: STREAMGATE_TOPICS_CONFIG, else the packaged ops/topics.yaml).")
    @click.option("--dry-run", is_flag=True, help="Only print what would change.")
    def topics_apply(config: Path | None, dry_run: bool) -> None:
        """Create missing topics and update retention.ms / segment.ms / cleanup.policy of existing ones.

        Records can outlive retention.ms until their log segment rolls (segment.ms): Kafka deletes
        whole closed segments only. The config keeps segment.ms below retention.ms for that reason.
        """
        from stream.kafka import reachable_bootstrap
        from stream.storage.topics import apply_topics, load_topics_config

        settings = _settings()
        specs = load_topics_config(settings, config or settings.topics_config)
        changes = apply_topics(reachable_bootstrap(settings), specs, dry_run=dry_run)
        for c in changes:
            click.echo(c.describe())
        n = sum(1 for c in changes if c.action != "unchanged")
        verb = "would change" if dry_run else "changed"
        click.echo(f"# {len(changes)} topics, {n} {verb}", err=True)
