"""Helpers of the retention tests: an injected clock, protected events of chosen people at chosen
times (the real gateway core), the privatizer's memo/budget entries, readers."""

from __future__ import annotations

from typing import Any

import orjson

from stream.components import build_dek_provider, build_gateway
from stream.config import Settings
from stream.crypto.keyring import Keyring
from stream.crypto.tokens import Tokenizer
from stream.gateway.core import RawRecord
from stream.gateway.reader import ProtectedEventReader
from stream.redisdb import RedisClient, deadline_shard, deadlines_key, person_tag
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator
from tests.support.clock import Clock

__all__ = [
    "Clock",
    "add_ldp_entries",
    "audit_receipts",
    "key_name",
    "produce",
    "protect",
    "reader",
    "redis_keys_of",
    "running_shredder",
    "signed_request",
    "token_of",
]




def token_of(settings: Settings, user_id: str) -> str:
    """The person token of ``user_id``: tk2 (the default) - their current one, or one created as if the
    gateway had just seen them (expiring far ahead) - or tk1 with ``pseudonym_tokens`` off."""
    if settings.pseudonym_tokens:
        from stream.components import build_pseudonyms

        pseud = build_pseudonyms(settings)
        return pseud.lookup(user_id) or pseud.tokens([user_id], 2**33)[0]
    return Tokenizer(Keyring.from_settings(settings)).token(load_schema(settings.schema_name).subject_domain, user_id)


def signed_request(settings: Settings, request_id: str, *, user_id: str | None = None, subject: str | None = None,
                   requested_at: str = "2030-03-17T17:46:40.000Z", audience: str | None = None) -> bytes:
    """A ``privacy.erasure`` record signed with the eraser key of ``settings``' keyring (what ``streamgate erase`` sends)."""
    from stream.crypto.signing import signing_key
    from stream.retention.core import sign_erasure_request

    key = signing_key(Keyring.from_settings(settings), "erasure")
    return orjson.dumps(sign_erasure_request(key, request_id, user_id=user_id, subject=subject,
                                             requested_at=requested_at,
                                             audience=audience or settings.deployment_id))


def protect(settings: Settings, clock: Clock, users: list[str], per_user: int = 2, *, seed: int = 0,
            gateway: Any = None) -> list[dict[str, Any]]:
    """Protected events (dicts) of ``users``, ``per_user`` each, encrypted at ``clock``'s epoch."""
    gw = gateway or build_gateway(settings, clock=clock)
    raws = []
    gen = ClickstreamGenerator(seed=seed).events(len(users) * per_user * 3)
    for i, ev in enumerate(gen):
        if len(raws) >= len(users) * per_user:
            break
        ev = dict(ev, user_id=users[i % len(users)], email=f"person{i}@example.org")
        raws.append(RawRecord("clicks.raw", 0, i, orjson.dumps(ev), None))
    result = gw.process(raws)
    assert not result.dead_letters
    return [orjson.loads(v) for _, v in result.protected]


def add_ldp_entries(client: RedisClient, prefix: str, subject: str, epoch: int, expire_at: int,
                    shards: int = 16) -> None:
    """What the privatizer writes for (subject, epoch): memo and budget hashes expiring with the DEK."""
    tag = person_tag(subject)
    memo, budget = f"{prefix}:memo:{tag}:{epoch}", f"{prefix}:budget:{tag}:{epoch}"
    pipe = client.pipeline(transaction=False)
    pipe.hset(memo, "country:abc", '{"v": 1}')
    pipe.hset(budget, "country", 1000000)
    pipe.expireat(memo, expire_at)
    pipe.expireat(budget, expire_at)
    pipe.zadd(deadlines_key(prefix, deadline_shard(subject, shards)), {f"{subject}:{epoch}": expire_at}, nx=True)
    pipe.execute()


def key_name(prefix: str, kind: str, subject: str, epoch: int | str) -> str:
    """``<prefix>:<kind>:{<subject>}:<epoch>`` (kind: dek, memo, budget)."""
    return f"{prefix}:{kind}:{person_tag(subject)}:{epoch}"


def redis_keys_of(client: RedisClient, prefix: str, subject: str) -> list[str]:
    return sorted(k.decode() for kind in ("dek", "memo", "budget")
                  for k in client.scan_iter(match=key_name(prefix, kind, subject, "*")))


def reader(settings: Settings, clock: Clock, **kw: Any) -> ProtectedEventReader:
    return ProtectedEventReader(load_schema(settings.schema_name), build_dek_provider(settings, clock=clock), **kw)


# --------------------------------------------------------------------------- Kafka-side helpers
def running_shredder(settings: Settings, clock: Any = None, **kw: Any) -> Any:
    """Context manager: the shredder engine in a background thread (injected clock)."""
    import time as _time

    from stream.apps.shredder import ShredderEngine
    from tests.support.kafka import running_in_thread

    return running_in_thread(ShredderEngine(settings, clock=clock or _time.time, **kw), "shredder")


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failed: list[Any] = []
    for k, v in items:
        p.produce(topic, key=k, value=v, on_delivery=lambda err, _m: failed.append(err) if err else None)
    assert p.flush(30) == 0 and not failed


def audit_receipts(bootstrap: str, topic: str, *, expect: int | None = None, idle: float = 3.0) -> list[dict[str, Any]]:

    from tests.support.kafka import read_topic

    return [orjson.loads(r.value) for r in read_topic(bootstrap, topic, expect=expect, idle=idle) if r.value]
