"""``streamgate dlq replay``: dead letters back to the raw topic once their cause is fixed.

Reads ``clicks.dlq`` from the beginning, keeps the records that match the filters (reason,
rejection time, source partition), unseals each (any credential that can unwrap data keys: the
``reader`` role or the master key) and re-publishes the original bytes to the raw topic with
their original key and headers (``sealed_meta``). Records without one (``too_large``: only a
digest was kept; a person erased since) are counted, never guessed.

Idempotent by ``event_id``: a Redis ledger (``<prefix>:replayed:<hmac(event_id)>``, kept for the
retention period; a keyed digest, never the id) records when each event was replayed, claimed
atomically (``SET NX``) before it is produced, so concurrent runs publish it once. A dead
letter rejected before that time was already replayed and is skipped; one rejected after it is
the replayed copy refused again, and is eligible once more, in a later run: a run skips the dead
letters rejected after it started (``during_run``; it reads on while the gateway refuses its
copies). A record without a readable ``event_id`` is keyed by the digest of its bytes.

A ``policy_missing`` dead letter names a version that will never pass (a registered version is
immutable): it is re-framed under the latest version of its subject (:meth:`SchemaResolver.reframe`)
once that one has a policy for every property, and counted as ``still_refused`` (not replayed)
while it has none.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from stream.crypto.deks import DekProvider
from stream.errors import DecryptError, KeyShreddedError, ProduceTimeoutError, StreamgateError
from stream.gateway.core import is_envelope, lenient_json, unseal_dead_letter, unseal_dead_letter_meta
from stream.redisdb import replayed_key

__all__ = ["ReplayIncompleteError", "ReplayStats", "event_id_of", "replay_dead_letters"]

Headers = list[tuple[str, bytes | None]]
#: ``produce(value, key, headers, on_delivery)``: ``on_delivery(error)`` once the broker answered (None: stored)
Produce = Callable[[bytes, bytes | None, Headers, Callable[[str | None], None]], None]
Reframe = Callable[[bytes, Headers], tuple[bytes, Headers] | None]

log = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    already: int = 0  # replayed by an earlier run
    not_sealed: int = 0  # too_large / empty: nothing to replay
    erased: int = 0  # the person's key was shredded
    undecryptable: int = 0
    reframed: int = 0  # policy_missing: re-framed under the subject's latest version
    still_refused: int = 0  # policy_missing with no newer version that applies: not replayed
    undecodable: int = 0  # a dead letter whose fields or payload do not parse: skipped, the run goes on
    during_run: int = 0  # rejected after this run started (its own replayed copies refused again): next run
    unsent: int = 0  # produce raised or the broker did not acknowledge it: claim released, replayed next run
    reasons: Counter[str] = field(default_factory=Counter)


class ReplayIncompleteError(StreamgateError):
    """Some claimed dead letters were not sent or not acknowledged: their claims were released
    (the next run replays them); ``stats`` counts them as ``unsent``."""

    def __init__(self, message: str, stats: ReplayStats) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass
class _Sent:
    claim: _Claim
    reason: str
    error: str | None = None
    acked: bool = False

    def on_delivery(self, error: str | None) -> None:
        self.error, self.acked = error, error is None


def event_id_of(value: bytes) -> str | None:
    """The ``event_id`` of a raw record as far as it parses (plain JSON, a Schema Registry frame
    around JSON, a Connect envelope, a BOM)."""
    doc: Any = None
    if value[:1] == b"\x00":
        doc = lenient_json(value[5:])
    elif value[:1] == b"\x01":
        doc = lenient_json(value[17:])
    if doc is None:
        doc = lenient_json(value)
    if is_envelope(doc):
        doc = doc["payload"]
    eid = doc.get("event_id") if isinstance(doc, dict) else None
    return eid if type(eid) is str and 0 < len(eid) <= 256 else None


# what a malformed dead letter raises (a missing field, a payload that does not decode); the
# registry's and Redis's errors are none of these and end the run
_UNDECODABLE = (KeyError, TypeError, ValueError, IndexError, AttributeError, EOFError, UnicodeError)


def _undecodable(st: ReplayStats, rec: dict[str, Any], exc: BaseException) -> None:
    st.undecodable += 1
    log.warning("dlq replay: dead letter skipped, it does not decode (%s: %s)", type(exc).__name__, str(exc)[:200],
                extra={"reason": str(rec.get("reason"))[:64]})


def _replayed_since(done: bytes | str | None, at: float | None) -> bool:
    """Whether a ledger value ``done`` (when the event was last replayed) covers a dead letter
    rejected at ``at``: rejected before it (or at an unknown time, never replayed twice)."""
    return done is not None and (at is None or at <= float(done))


@dataclass(frozen=True)
class _Claim:
    ledger: str
    key: str  # the key this run set with NX: the ledger, or the re-claim of its earlier value
    previous: bytes | str | None  # the ledger's value before a re-claim


def _claim(redis: Any, ledger: str, done: bytes | str | None, at: float | None, now: str, ttl: int) -> _Claim | None:
    """Claim ``ledger`` for this run atomically (``SET NX``; no script: the reader role has only
    GET/SET/DEL), or None when another run holds it. A replayed copy refused again (``done`` before
    ``at``) is re-claimed by ``SET NX`` on ``<ledger>.<done>``: one run per earlier claim wins."""
    for _ in range(2):
        if done is None:
            if redis.set(ledger, now, ex=ttl, nx=True):
                return _Claim(ledger, ledger, None)
        else:
            text = done.decode() if isinstance(done, bytes) else done
            gen = f"{ledger}.{text}"
            if redis.set(gen, now, ex=ttl, nx=True):
                redis.set(ledger, now, ex=ttl)
                return _Claim(ledger, gen, done)
        done = redis.get(ledger)  # lost the race: claimed for this dead letter, or moved on before it
        if _replayed_since(done, at):
            return None
    return None


def _release(redis: Any, claim: _Claim, ttl: int) -> None:
    """Undo :func:`_claim` (the record was not delivered): the next run replays it."""
    if claim.previous is None:
        redis.delete(claim.ledger)
    else:
        redis.set(claim.ledger, claim.previous, ex=ttl)
        redis.delete(claim.key)


def _rejected_at(rec: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(rec.get("rejected_at")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def replay_dead_letters(
    *,
    dlq_records: Callable[[], Any],
    deks: DekProvider,
    redis: Any,
    ledger_prefix: str,
    ledger_key: bytes,
    produce: Produce,
    flush: Callable[[], int],
    reasons: Collection[str] = (),
    since: float | None = None,
    until: float | None = None,
    partitions: Collection[int] = (),
    ttl_seconds: int = 30 * 86400,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
    reframe: Reframe | None = None,
) -> ReplayStats:
    """Replay the matching dead letters of ``dlq_records()`` (an iterable of DLQ record values)
    through ``produce`` (:data:`Produce`); ``flush()`` waits for the broker's answers. A record
    that ``produce`` raised for, or the broker did not acknowledge, has its claim released and is
    counted ``unsent``; then :class:`ReplayIncompleteError` says so (after the whole run, unless
    produce timed out on a full queue or was interrupted: that ends the run at once).
    ``reframe``: how a ``policy_missing`` record is framed anew (None: replayed as it came)."""
    st = ReplayStats()
    sent: list[_Sent] = []
    started = clock()
    try:
        for raw in dlq_records():
            st.scanned += 1
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or rec.get("_schema") != "dlq-record.v1":
                continue
            src = rec.get("source")
            src = src if isinstance(src, dict) else {}
            at = _rejected_at(rec)
            if reasons and rec.get("reason") not in reasons:
                continue
            if partitions and src.get("partition") not in partitions:
                continue
            if (since is not None or until is not None) and at is None:
                continue
            if (since is not None and at is not None and at < since) or (until is not None and at is not None and at > until):
                continue
            if at is not None and at >= started:  # never replay this run's own copies refused again
                st.during_run += 1
                continue
            st.matched += 1
            if rec.get("sealed") is None:
                st.not_sealed += 1
                continue
            try:
                value = unseal_dead_letter(rec, deks)
                key, headers = unseal_dead_letter_meta(rec, deks)
            except KeyShreddedError:
                st.erased += 1
                continue
            except DecryptError:
                st.undecryptable += 1
                continue
            except _UNDECODABLE as exc:  # no `source`, a sealed field of the wrong type, bad base64
                _undecodable(st, rec, exc)
                continue
            assert value is not None
            eid = event_id_of(value)
            # surrogatepass: an id with a lone surrogate still has a digest (valid ids: the same bytes)
            ident = eid.encode("utf-8", "surrogatepass") if eid is not None else b"bytes:" + value
            digest = base64.urlsafe_b64encode(hmac.digest(ledger_key, ident, "sha256")[:18]).decode()
            ledger = replayed_key(ledger_prefix, digest)
            done = redis.get(ledger)
            if _replayed_since(done, at):
                st.already += 1
                continue
            if reframe is not None and rec.get("reason") == "policy_missing":
                try:
                    fresh = reframe(value, list(headers))
                except _UNDECODABLE as exc:  # a payload that does not decode under its version
                    _undecodable(st, rec, exc)
                    continue
                if fresh is None:
                    st.still_refused += 1
                    continue
                value, headers = fresh
                st.reframed += 1
            if dry_run:
                st.replayed += 1
                st.reasons[str(rec.get("reason"))] += 1
                continue
            # claim before producing: a second run (or a crash and re-run) never sends it twice
            claim = _claim(redis, ledger, done, at, repr(started), ttl_seconds)
            if claim is None:  # a concurrent run claimed it between the GET and here
                st.already += 1
                continue
            one = _Sent(claim, str(rec.get("reason")))
            try:
                produce(value, key, headers, one.on_delivery)
            except BaseException as exc:  # too large, queue full for too long, Ctrl-C: not sent
                _release(redis, claim, ttl_seconds)
                st.unsent += 1
                log.warning("dlq replay: a dead letter could not be sent (%s: %s); its claim was released",
                            type(exc).__name__, str(exc)[:200])
                if not isinstance(exc, Exception) or isinstance(exc, ProduceTimeoutError):
                    raise
                continue
            sent.append(one)
            st.replayed += 1
            st.reasons[one.reason] += 1
    except BaseException:  # interrupted, or the registry or Redis failed: what was sent is delivered, or unclaimed
        if sent:
            _settle(sent, flush, redis, st, ttl_seconds)
        raise
    if sent:
        _settle(sent, flush, redis, st, ttl_seconds)
    if st.unsent:
        raise ReplayIncompleteError(f"{st.unsent} dead letters were not sent or not acknowledged; their claims "
                                    f"were released: run the replay again ({st})", st)
    log.info("dlq replay: %s", st)
    return st


def _settle(sent: list[_Sent], flush: Callable[[], int], redis: Any, st: ReplayStats, ttl: int) -> None:
    """Wait for the broker's answers; release the claim of every record it did not acknowledge."""
    try:
        flush()
    finally:
        for one in sent:
            if not one.acked:
                _release(redis, one.claim, ttl)
                st.unsent += 1
                st.replayed -= 1
                st.reasons[one.reason] -= 1
                log.warning("dlq replay: a dead letter was not acknowledged (%s); its claim was released",
                            one.error or "no answer")
        st.reasons += Counter()  # drop the zero counts
        sent.clear()


def run_replay(settings: Any, *, reasons: Collection[str] = (), since: float | None = None,
               until: float | None = None, partitions: Collection[int] = (), dry_run: bool = False,
               idle_timeout: float = 3.0, resolver: Any = None) -> ReplayStats:
    """:func:`replay_dead_letters` against the configured broker, Redis, key and schema registry
    (``streamgate dlq replay``; ``resolver``: a :class:`~stream.registry.SchemaResolver` to use instead)."""
    from confluent_kafka import Producer

    from stream.components import build_dek_provider, redis_client
    from stream.crypto.keyring import Keyring, derive_key
    from stream.kafka import TopicReader, producer_config, reachable_bootstrap
    from stream.kafka import produce as produce_one

    keyring = Keyring.from_settings(settings)
    bootstrap = reachable_bootstrap(settings)
    deks = build_dek_provider(settings, keyring, role="reader")
    redis = redis_client(settings, "reader")
    producer = Producer(producer_config(bootstrap))
    if resolver is None and settings.schema_registry_url:
        from stream.registry import SchemaResolver
        from stream.schema import load_schema

        resolver = SchemaResolver.from_url(settings.schema_registry_url, load_schema(settings.schema_name))

    def produce(value: bytes, key: bytes | None, headers: Headers, done: Callable[[str | None], None]) -> None:
        produce_one(producer, settings.topics.raw, value, key, headers=list(headers) or None,
                    on_delivery=lambda err, _msg: done(None if err is None else str(err)), logger=log)

    def flush() -> int:
        return int(producer.flush(60))

    def records() -> Any:
        with TopicReader(bootstrap, settings.topics.dlq, linger=idle_timeout) as reader:
            for m in reader:
                yield m.value() or b""

    return replay_dead_letters(
        dlq_records=records, deks=deks, redis=redis, ledger_prefix=settings.redis_key_prefix,
        # a sub-key of the reader's "dek-id" purpose key: the reader role can replay
        ledger_key=derive_key(keyring.derive("dek-id"), "dlq-replay"),
        produce=produce, flush=flush, reasons=reasons, since=since, until=until, partitions=partitions,
        ttl_seconds=settings.retention_seconds, dry_run=dry_run,
        reframe=resolver.reframe if resolver is not None else None)
