"""Wiring: build the pure core's parts from Settings (keyring, key store, DEK provider, gateway).

Long-running workers pass ``listen=True`` to :func:`build_dek_provider` / :func:`build_gateway`:
the provider then drops keys the shredder announces on ``{prefix}:shredded`` at once
(:func:`start_invalidation`; the staleness bound remains the guarantee). The listener is
reachable as ``invalidation_listener(provider)``.

Every provider built here has a key-store identity guard (``provider.guard``,
:mod:`stream.crypto.keystore`): when Redis lost data its whole cache is dropped and the
gateway redoes the batch. The privatizer's memo cache joins the same mechanism with
:func:`guard_privatizer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from stream.config import Settings
from stream.crypto.deks import DEK_CACHE_MAX_ENTRIES, DekProvider
from stream.crypto.keyring import Keyring
from stream.crypto.keystore import KeyStoreGuard
from stream.crypto.kms import LocalKMS, WrapCounter
from stream.crypto.tokens import Tokenizer
from stream.gateway.core import Gateway
from stream.redisdb import DEADLINE_SHARDS, RedisClient, client_for
from stream.schema import load_schema
from stream.storage.invalidation import ShredListener
from stream.storage.keys import WAITAOF_TIMEOUT_MS, RedisKeyStore, RedisWrapCounter, identity_probe
from stream.storage.pseudonyms import Pseudonyms

#: KEK wraps a worker reserves at a time (one INCRBY), for data keys and tk2 secrets alike.
WRAP_BLOCK = 4096

if TYPE_CHECKING:
    from stream.ldp.ledger import Charge, LedgerStore
    from stream.ldp.privatizer import Privatizer

__all__ = [
    "GuardedMemoStore",
    "build_dek_provider",
    "build_gateway",
    "build_keystore_guard",
    "build_pseudonyms",
    "guard_privatizer",
    "invalidation_listener",
    "person_tokens",
    "redis_client",
    "start_invalidation",
]

#: Listeners started by start_invalidation, by id() of their provider (a DekProvider has no slot for it).
_LISTENERS: dict[int, ShredListener] = {}


def redis_client(settings: Settings, role: str) -> RedisClient:
    """The Redis client of a worker of ``role`` (its ACL user where the passwords name one per role;
    one server or a cluster: :func:`stream.redisdb.client_for`)."""
    return client_for(settings, role)


def build_dek_provider(
    settings: Settings,
    keyring: Keyring | None = None,
    *,
    client: RedisClient | None = None,
    clock: Callable[[], float] = time.time,
    listen: bool = False,
    guard: bool = True,
    tokenizer: Tokenizer | None = None,
    role: str = "gateway",
) -> DekProvider:
    """The DEK provider of ``settings``. ``listen=True`` (long-running workers) also subscribes it to
    the shredder's invalidation channel (:func:`start_invalidation`; ``tokenizer``'s memo is cleared
    there too). ``guard=False`` builds it without a key-store identity guard (tests only). ``role``:
    whose Redis user it logs in as (``"reader"`` for readers: unwraps only)."""
    keyring = keyring or Keyring.from_settings(settings)
    client = client or redis_client(settings, role)
    store = RedisKeyStore(client, prefix=settings.redis_key_prefix, shards=DEADLINE_SHARDS)
    provider = DekProvider(
        store,
        LocalKMS(keyring),
        epoch_seconds=settings.epoch_seconds,
        retention_seconds=settings.retention_seconds,
        max_staleness_seconds=settings.dek_cache_max_staleness_seconds,
        max_entries=DEK_CACHE_MAX_ENTRIES,
        clock=clock,
        guard=build_keystore_guard(settings, client, role=role) if guard else None,
        wrap_counter=RedisWrapCounter(client, settings.redis_key_prefix, warn_at=settings.kek_wrap_warn_at,
                                      refuse_at=settings.kek_wrap_limit),
        wrap_block=WRAP_BLOCK,
    )
    if listen:
        start_invalidation(settings, provider, tokenizer, role=role)
    return provider


def build_keystore_guard(settings: Settings, client: RedisClient | None = None, *,
                         role: str = "gateway") -> KeyStoreGuard:
    """A key-store identity guard on ``settings``' Redis (see :mod:`stream.crypto.keystore`)."""
    probe = identity_probe(
        client or redis_client(settings, role), settings.redis_key_prefix,
        waitaof_timeout_ms=WAITAOF_TIMEOUT_MS,
    )
    return KeyStoreGuard(probe)


class GuardedMemoStore:
    """A ledger store that tells the guard when ledgers were charged (their durability is then confirmed)."""

    def __init__(self, inner: LedgerStore, guard: KeyStoreGuard) -> None:
        self.inner = inner
        self.guard = guard

    def charge(self, charges: Sequence[Charge], budget_micro: int) -> list[bool]:
        out = self.inner.charge(charges, budget_micro)
        if charges:
            self.guard.note_loaded()
        return out

    def __getattr__(self, name: str) -> Any:  # prefix, memo_key, ... of the wrapped store
        return getattr(self.inner, name)


def guard_privatizer(settings: Settings, privatizer: Privatizer, client: RedisClient | None = None,
                     guard: KeyStoreGuard | None = None) -> KeyStoreGuard:
    """Put ``privatizer``'s memo cache under a key-store identity guard: a batch (``process``,
    ``label_examples``) is returned only if Redis kept its identity throughout, and the memo
    cache is emptied when it changed. Returns the guard (its ``resets`` is the metric); idempotent."""
    existing: KeyStoreGuard | None = getattr(privatizer, "guard", None)
    if existing is not None:
        return existing
    guard = guard or build_keystore_guard(settings, client, role="privatizer")
    seen = [guard.resets]

    def on_reset() -> None:  # also called once when the guard first learns the identity: nothing was lost then
        privatizer.cache.invalidate()
        if guard.resets != seen[0]:
            seen[0] = guard.resets
            privatizer.ledgers_lost()  # a lost ledger must not refund: its epoch reports no more

    guard.on_reset(on_reset)
    privatizer.store = GuardedMemoStore(privatizer.store, guard)
    process, label_examples = privatizer.process, privatizer.label_examples

    def guarded_process(records: Any) -> Any:
        return guard.run(lambda: process(records))

    def guarded_label_examples(items: Any) -> Any:
        return guard.run(lambda: label_examples(items))

    # instance attributes shadow the methods; the engine calls them as before
    setattr(privatizer, "process", guarded_process)  # noqa: B010
    setattr(privatizer, "label_examples", guarded_label_examples)  # noqa: B010
    setattr(privatizer, "guard", guard)  # noqa: B010
    return guard


def start_invalidation(settings: Settings, provider: DekProvider, tokenizer: Tokenizer | None = None, *,
                       role: str = "gateway") -> ShredListener:
    """Start a daemon :class:`ShredListener` that drops ``provider``'s cached keys when the shredder
    announces them (one key, or every key of a person), and everything after a reconnect. With a
    ``tokenizer``, an erasure (``{token}:*``) also drops its memo entries of that person (a tk2
    person then gets a new token), and a reconnect its whole memo."""

    def on_shred(subject: str, epoch: int | None) -> None:
        if epoch is None:
            provider.invalidate(subject)
            if tokenizer is not None:
                tokenizer.forget(subject)
        else:
            provider.invalidate_key(subject, epoch)

    def on_reset() -> None:
        provider.invalidate()
        if tokenizer is not None:
            tokenizer.clear_memo()

    listener = ShredListener(
        lambda: redis_client(settings, role), settings.redis_key_prefix, on_shred, on_reset=on_reset
    ).start()
    _LISTENERS[id(provider)] = listener
    return listener


def invalidation_listener(provider: DekProvider) -> ShredListener | None:
    """The listener :func:`start_invalidation` attached to ``provider``, if any."""
    return _LISTENERS.get(id(provider))


def build_gateway(
    settings: Settings,
    *,
    keyring: Keyring | None = None,
    client: RedisClient | None = None,
    clock: Callable[[], float] = time.time,
    listen: bool = False,
) -> Gateway:
    """The gateway core of ``settings``; ``listen=True`` for a long-running worker (see module docstring)."""
    keyring = keyring or Keyring.from_settings(settings)
    client = client or redis_client(settings, "gateway")
    schema = load_schema(settings.schema_name)
    tokenizer = Tokenizer(keyring)
    provider = build_dek_provider(settings, keyring, client=client, clock=clock, listen=listen, tokenizer=tokenizer)
    if settings.pseudonym_tokens:
        # a person returning after an erasure starts with exhausted ledgers (stream.ldp.ledger)
        from stream.ldp.ledger import LEDGER_PURPOSE
        from stream.storage.ldp import LedgerExhauster

        ledgers = LedgerExhauster(client, settings.redis_key_prefix, keyring.derive(LEDGER_PURPOSE),
                                  budget_epsilon=settings.ldp_person_epsilon, epoch_seconds=settings.epoch_seconds,
                                  retention_seconds=settings.retention_seconds)
        tokenizer.pseudonyms = build_pseudonyms(settings, keyring, client=client, clock=clock, guard=provider.guard,
                                                on_erased=ledgers.exhaust, wrap_counter=provider.wrap_counter)
    resolver = None
    if settings.schema_registry_url:
        from stream.registry import SchemaResolver

        resolver = SchemaResolver.from_url(settings.schema_registry_url, schema)
    pass_headers = frozenset(h.strip() for h in settings.gateway_pass_headers.split(",") if h.strip())
    return Gateway(schema, tokenizer, provider, max_event_bytes=settings.max_event_bytes, clock=clock,
                   resolver=resolver, pass_headers=pass_headers)


def build_pseudonyms(settings: Settings, keyring: Keyring | None = None, *, client: RedisClient | None = None,
                     clock: Callable[[], float] = time.time, guard: KeyStoreGuard | None = None,
                     on_erased: Callable[[dict[str, int], float], object] | None = None,
                     wrap_counter: WrapCounter | None = None, role: str = "gateway") -> Pseudonyms:
    """The tk2 pseudonym store of ``settings``' person domain (:class:`stream.storage.pseudonyms.Pseudonyms`);
    ``guard`` drops its cache when Redis lost data (pass the DEK provider's); ``on_erased``: the
    gateway's ledger exhauster; ``role``: whose Redis user it logs in as without a ``client``."""
    return Pseudonyms(keyring or Keyring.from_settings(settings), client or redis_client(settings, role),
                      settings.redis_key_prefix, domain=load_schema(settings.schema_name).subject_domain,
                      max_staleness_seconds=settings.dek_cache_max_staleness_seconds, clock=clock, guard=guard,
                      on_erased=on_erased, wrap_counter=wrap_counter, wrap_block=WRAP_BLOCK)


def person_tokens(settings: Settings, user_id: str, keyring: Keyring | None = None, *,
                  client: RedisClient | None = None, legacy: bool = True) -> list[str]:
    """The tokens ``user_id``'s records may carry, found without creating anything (``decrypt --user``,
    ``audit --user``, ``erase``). With ``pseudonym_tokens``: the tk2 token while the person has a secret
    (none: never seen, erased or expired), then (``legacy``) the tk1 token of records written before the
    switch. Off: the tk1 token."""
    keyring = keyring or Keyring.from_settings(settings)
    out: list[str] = []
    if settings.pseudonym_tokens:
        tok = build_pseudonyms(settings, keyring, client=client).lookup(user_id)
        out += [tok] if tok is not None else []
        if not legacy:
            return out
    return [*out, Tokenizer(keyring).token(load_schema(settings.schema_name).subject_domain, user_id)]

