"""An erasure adversary for the tests: dump everything a storage-level attacker can read (every key
of every type on every Redis node, DUMP included, and every record of every Kafka topic), look for
captured secret bytes in every encoding, and try to decrypt ciphertexts with raw AES-GCM under
every key the dump and the keyring yield. Independent of the project's readers: the associated data
is rebuilt from the documented formats (stream.crypto.fields, stream.crypto.deks)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.cluster import RedisCluster

__all__ = ["Dump", "DumpItem", "dek_value_parts", "dump_kafka", "dump_redis", "field_aad", "find", "raw_decrypt",
           "secret_forms", "unwrap_all", "wrap_aad"]


@dataclass(frozen=True)
class DumpItem:
    where: str  # e.g. "redis 127.0.0.1:7001 hash sg:x field" / "kafka clicks.protected/0@3 value"
    data: bytes


@dataclass
class Dump:
    items: list[DumpItem] = field(default_factory=list)
    keys: int = 0  # Redis keys seen
    types: set[str] = field(default_factory=set)
    nodes: int = 0
    records: int = 0  # Kafka records seen
    topics: set[str] = field(default_factory=set)

    def add(self, where: str, data: Any) -> None:
        if data is None:
            return
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        elif isinstance(data, (int, float)):
            data = repr(data).encode()
        self.items.append(DumpItem(where, bytes(data)))


def _nodes(client: Any) -> list[tuple[str, redis.Redis]]:
    if isinstance(client, RedisCluster):
        return [(n.name, client.get_redis_connection(n)) for n in client.get_nodes()]
    kw = client.connection_pool.connection_kwargs
    return [(f"{kw.get('host')}:{kw.get('port')}", client)]


def dump_redis(client: Any, dump: Dump | None = None) -> Dump:
    """Every key of every database of every node (a cluster's replicas too, if any): its name, its
    value read by type (string, hash, set, zset, list, stream) and its DUMP serialization."""
    dump = dump or Dump()
    for name, node in _nodes(client):
        dump.nodes += 1
        dbs = [int(k[2:]) for k in node.info("keyspace")] or [0]
        for db in dbs:
            conn = node if db == 0 else redis.Redis(**{**node.connection_pool.connection_kwargs, "db": db})
            for key in conn.scan_iter(count=1000):
                where = f"redis {name} db{db} {key!r}"
                kind = conn.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                dump.keys += 1
                dump.types.add(kind)
                dump.add(f"{where} name", key)
                dump.add(f"{where} DUMP", conn.dump(key))
                if kind == "string":
                    dump.add(f"{where} value", conn.get(key))
                elif kind == "hash":
                    for f, v in conn.hgetall(key).items():
                        dump.add(f"{where} field", f)
                        dump.add(f"{where} value of {f!r}", v)
                elif kind == "set":
                    for m in conn.smembers(key):
                        dump.add(f"{where} member", m)
                elif kind == "zset":
                    scored: Any = conn.zrange(key, 0, -1, withscores=True)
                    for member, score in scored:
                        dump.add(f"{where} member", member)
                        dump.add(f"{where} score", score)
                elif kind == "list":
                    for v in conn.lrange(key, 0, -1):
                        dump.add(f"{where} item", v)
                elif kind == "stream":
                    entries: Any = conn.xrange(key, "-", "+")
                    for entry_id, fields in entries:
                        dump.add(f"{where} id", entry_id)
                        for f, v in fields.items():
                            dump.add(f"{where} {entry_id!r} field", f)
                            dump.add(f"{where} {entry_id!r} value", v)
                elif kind != "none":  # a key that expired between SCAN and TYPE is "none"
                    raise AssertionError(f"the adversary cannot read Redis type {kind!r}")
            if conn is not node:
                conn.close()
    return dump


def dump_kafka(bootstrap: str, dump: Dump | None = None, *, idle: float = 3.0, timeout: float = 300.0) -> Dump:
    """Every record (key, value, every header) of every partition of every topic on the broker. Fails
    (rather than reporting a partial dump as clean) unless every partition was read at least to the
    high watermark the broker reports."""
    import time

    dump = dump or Dump()
    # read_uncommitted: aborted transactions' records are on the broker too, and the adversary reads them
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-adversary-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
    try:
        md = c.list_topics(timeout=10)
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t, tm in md.topics.items() for p in tm.partitions]
        dump.topics |= set(md.topics)
        c.assign(parts)
        ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        reached: dict[Any, int] = {}
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle:
            for m in c.consume(num_messages=1000, timeout=0.2):
                if m.error() is not None:
                    continue
                last = time.monotonic()
                dump.records += 1
                reached[(m.topic(), m.partition())] = int(m.offset() or 0) + 1
                where = f"kafka {m.topic()}/{m.partition()}@{m.offset()}"
                dump.add(f"{where} key", m.key())
                dump.add(f"{where} value", m.value())
                headers: Any = m.headers() or []
                for h, v in headers:
                    dump.add(f"{where} header name", h)
                    dump.add(f"{where} header {h}", v)
        # the consumer's position passes transaction markers, which are never delivered as records
        position = {(tp.topic, tp.partition): tp.offset for tp in c.position(parts)}
        short = [tp for tp, end in ends.items() if end > 0 and max(reached.get(tp, 0), position.get(tp, 0)) < end]
        assert not short, f"the Kafka dump is incomplete (partitions not read to their end: {short[:5]})"
    finally:
        c.close()
    return dump


def secret_forms(secret: bytes) -> list[bytes]:
    """Encodings a copy of ``secret`` could take inside a larger value: raw, hex (both cases), and
    base64 (standard and url-safe) at each of the three byte alignments - only the characters that
    depend on ``secret`` alone, so a copy embedded in a longer base64 string is found too."""
    assert len(secret) >= 12, "too short to search for without false positives"
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for k in range(3):
        enc = base64.b64encode(b"\x00" * k + secret)
        start = 4 if k else 0  # the first group mixes in the alignment bytes
        tail = (k + len(secret)) % 3
        end = len(enc) - (4 if tail else 0)  # the last partial group would mix with what follows
        core = enc[start:end]
        forms |= {core, core.translate(bytes.maketrans(b"+/", b"-_"))}
    return sorted(forms)


def find(dump: Dump, secret: bytes) -> list[str]:
    """Where any form of ``secret`` occurs in ``dump`` (empty: nowhere)."""
    forms = secret_forms(secret)
    return [item.where for item in dump.items if any(f in item.data for f in forms)]


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def wrap_aad(subject: str, epoch: int, key_id: str) -> bytes:
    """The DEK wrap's associated data (stream.crypto.deks docstring)."""
    return _lp(b"streamgate/v1/dek", subject.encode(), str(epoch).encode(), key_id.encode())


def field_aad(schema_id: str, field_path: str, subject: str, epoch: int, key_id: str) -> bytes:
    """A field ciphertext's associated data (stream.crypto.fields docstring)."""
    return _lp(b"sg1", schema_id.encode(), field_path.encode(), subject.encode(), str(epoch).encode(),
               key_id.encode())


def dek_value_parts(value: bytes) -> tuple[str, bytes] | None:
    """``(key_id, KMS blob)`` of a stored DEK value ``b"1." + key_id + b"." + blob``, else None."""
    if len(value) > 19 and value[:2] == b"1." and value[18:19] == b".":
        try:
            return value[2:18].decode("ascii"), value[19:]
        except UnicodeDecodeError:
            return None
    return None


def unwrap_all(dump: Dump, kms: Any, refs: Iterable[tuple[str, int]]) -> list[bytes]:
    """Every data key the keyring's KMS unwraps from any value in ``dump``, trying the binding of
    every ``(subject, epoch)`` in ``refs`` (the adversary knows whose keys it wants)."""
    refs = list(refs)
    keys: list[bytes] = []
    for item in dump.items:
        parts = dek_value_parts(item.data)
        if parts is None:
            continue
        key_id, blob = parts
        for subject, epoch in refs:
            try:
                keys.append(kms.unwrap(blob, wrap_aad(subject, epoch, key_id)))
            except Exception:  # any failure is "not this binding"
                continue
    return keys


def raw_decrypt(ciphertext: str, *, schema_id: str, field_path: str, subject: str, keys: Iterable[bytes]) -> bytes | None:
    """Open an ``sg1`` field ciphertext with raw AES-GCM under each of ``keys``: the plaintext of the
    first that opens it, else None."""
    version, key_id, epoch, b64 = ciphertext.split(".")
    assert version == "sg1"
    raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    nonce, body = raw[:12], raw[12:]
    aad = field_aad(schema_id, field_path, subject, int(epoch), key_id)
    for key in keys:
        if len(key) not in (16, 24, 32):
            continue
        try:
            return AESGCM(key).decrypt(nonce, body, aad)
        except (InvalidTag, ValueError, binascii.Error):
            continue
    return None
