"""Wiring: build the pure core's parts from Settings (keyring, key store, DEK provider, gateway)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stream.config import Settings
from stream.crypto.deks import DekProvider, RedisKeyStore
from stream.crypto.keyring import Keyring
from stream.crypto.kms import LocalKMS
from stream.crypto.tokens import Tokenizer
from stream.gateway.core import Gateway
from stream.schema import load_schema

__all__ = ["build_dek_provider", "build_gateway", "redis_client"]


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url_or_dev(),
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=10,
        # fail fast: the gateway holds the batch and retries with its own backoff (fail closed)
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def build_dek_provider(
    settings: Settings,
    keyring: Keyring | None = None,
    *,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> DekProvider:
    keyring = keyring or Keyring.from_settings(settings)
    store = RedisKeyStore(client or redis_client(settings), prefix=settings.redis_key_prefix)
    return DekProvider(
        store,
        LocalKMS(keyring),
        epoch_seconds=settings.epoch_seconds,
        retention_seconds=settings.retention_seconds,
        max_staleness_seconds=settings.dek_cache_max_staleness_seconds,
        max_entries=settings.dek_cache_max_entries,
        clock=clock,
    )


def build_gateway(
    settings: Settings,
    *,
    keyring: Keyring | None = None,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> Gateway:
    keyring = keyring or Keyring.from_settings(settings)
    return Gateway(
        load_schema(settings.schema_name),
        Tokenizer(keyring),
        build_dek_provider(settings, keyring, client=client, clock=clock),
        max_event_bytes=settings.max_event_bytes,
        clock=clock,
    )
