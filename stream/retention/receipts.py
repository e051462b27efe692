"""Audit receipts on ``ops.audit`` (schema ``schemas/audit-receipt.v1.json``).

One receipt per destroyed key (``kind="key_shredded"``, ``reason`` ``retention`` or
``erasure``) and one per erasure request (``kind="erasure"``, also for a person with
no keys, and for a rejected request). Receipts carry the person *token* (never a raw
identifier), the epoch, the key id (``null`` if Redis had already expired the key),
the request id, the time the key died (RFC 3339, by the shredder's injected clock)
and the worker.

Idempotency key: ``receipt_id`` is deterministic::

    receipt_id = sha256("audit-receipt.v1|" + kind + "|" + reason + "|" + subject + "|"
                        + epoch + "|" + key_id + "|" + request_id).hexdigest()

with ``""`` for absent values. A crash between delivering a receipt and recording
that it was delivered re-delivers the *same* receipt (same id, same content);
consumers (and ``streamgate audit``) dedupe by ``receipt_id``.

Authenticity: ``receipt_id`` is no MAC (anyone can compute it). The shredder signs every
receipt with its Ed25519 receipt key (:mod:`stream.crypto.signing`, signer ``receipt``):
``signer`` is the key's public id and ``signature`` covers the canonical receipt - the
receipt without ``signature`` as JSON with sorted keys and no whitespace. Ed25519 is
deterministic, so a re-delivered receipt carries the same signature. ``streamgate audit``
verifies with the public key and flags anything unsigned or forged. The learner signs its
``drift`` records with :func:`sign_receipt` too, but with its own snapshot key: they verify with
that key (the console does), never with the receipt key, so none passes as a shredder receipt.

A refused erasure request gets a ``kind="erasure_rejected"`` record that names no person
(``subject`` null, and ``request_id`` null unless the request was authenticated).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream.crypto.signing import (
    SignatureError,
    decode_signature,
    encode_signature,
    public_key_id,
    sign,
    verify,
)

__all__ = [
    "RECEIPT_CONTEXT",
    "RECEIPT_SCHEMA",
    "dedupe",
    "erasure_receipt",
    "key_receipt",
    "receipt_id",
    "receipt_message",
    "rejection_receipt",
    "rfc3339",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_SCHEMA = "audit-receipt.v1"
#: Signature context of receipts (:mod:`stream.crypto.signing`).
RECEIPT_CONTEXT = "audit-receipt.v1"


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with millisecond precision, e.g. ``2026-11-27T03:01:18.123Z``."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def receipt_id(kind: str, reason: str, subject: str | None, epoch: int | None, key_id: str | None,
               request_id: str | None) -> str:
    """The deterministic idempotency key of a receipt (see the module docstring)."""
    parts = [RECEIPT_SCHEMA, kind, reason, subject or "", "" if epoch is None else str(epoch), key_id or "",
             request_id or ""]
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def key_receipt(*, reason: str, subject: str, epoch: int, key_id: str | None, request_id: str | None,
                at: float, worker: str, deadline: int | None) -> dict[str, Any]:
    """The receipt of one destroyed (subject, epoch) key (DEK + LDP memo + budget)."""
    return {
        "schema": RECEIPT_SCHEMA,
        "receipt_id": receipt_id("key_shredded", reason, subject, epoch, key_id, request_id),
        "kind": "key_shredded",
        "reason": reason,
        "subject": subject,
        "epoch": epoch,
        "key_id": key_id,
        "expired_before_shred": key_id is None,
        "deadline": deadline,
        "request_id": request_id,
        "at": rfc3339(at),
        "worker": worker,
    }


def erasure_receipt(*, subject: str | None, request_id: str | None, at: float, worker: str,
                    keys_shredded: int, status: str = "completed", error: str | None = None,
                    requested_at: str | None = None, discriminator: str | None = None) -> dict[str, Any]:
    """The receipt of one erasure request. ``status`` is ``completed`` or ``rejected`` (with an
    ``error`` code); ``discriminator`` makes the id of a rejected request unique (its topic
    coordinates) when it has no usable request id."""
    rid = receipt_id("erasure", "erasure", subject, None, None,
                     request_id if discriminator is None else f"{request_id or ''}@{discriminator}")
    return {
        "schema": RECEIPT_SCHEMA,
        "receipt_id": rid,
        "kind": "erasure",
        "reason": "erasure",
        "status": status,
        "error": error,
        "subject": subject,
        "epoch": None,
        "key_id": None,
        "keys_shredded": keys_shredded,
        "request_id": request_id,
        "requested_at": requested_at,
        "at": rfc3339(at),
        "worker": worker,
    }


def rejection_receipt(*, error: str, at: float, worker: str, discriminator: str,
                      request_id: str | None = None) -> dict[str, Any]:
    """The record of a refused erasure request: no person, no identifier (``request_id`` only when the
    request was authenticated); ``discriminator`` (its topic coordinates) makes the id unique."""
    return {
        "schema": RECEIPT_SCHEMA,
        "receipt_id": receipt_id("erasure_rejected", "erasure", None, None, None,
                                 f"{request_id or ''}@{discriminator}"),
        "kind": "erasure_rejected",
        "reason": "erasure",
        "status": "rejected",
        "error": error,
        "subject": None,
        "epoch": None,
        "key_id": None,
        "keys_shredded": 0,
        "request_id": request_id,
        "at": rfc3339(at),
        "worker": worker,
    }


def receipt_message(receipt: dict[str, Any]) -> bytes:
    """The canonical bytes a receipt's signature covers: every field but ``signature``, as JSON with
    sorted keys."""
    return orjson.dumps({k: v for k, v in receipt.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)


def sign_receipt(receipt: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``receipt`` plus ``signer`` (public key id) and ``signature`` (Ed25519, base64url)."""
    out = {k: v for k, v in receipt.items() if k != "signature"}
    out["signer"] = public_key_id(key)
    out["signature"] = encode_signature(sign(key, RECEIPT_CONTEXT, receipt_message(out)))
    return out


def verify_receipt(receipt: Any, key: Ed25519PublicKey) -> bool:
    """Whether ``receipt`` carries a valid signature by ``key`` (unsigned, altered, forged: False)."""
    if not isinstance(receipt, dict):
        return False
    try:
        verify(key, RECEIPT_CONTEXT, receipt_message(receipt), decode_signature(receipt.get("signature")))
    except (SignatureError, TypeError):
        return False
    return True


def dedupe(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First receipt of each ``receipt_id``, in order."""
    seen: set[str] = set()
    out = []
    for r in receipts:
        rid = r.get("receipt_id")
        if isinstance(rid, str) and rid in seen:
            continue
        if isinstance(rid, str):
            seen.add(rid)
        out.append(r)
    return out
