"""Invalid raw records, for the demo, tests and benchmarks.

Each kind still carries the person's PII somewhere (inside a field that fails,
under an unknown key, in broken JSON...), so a run that mixes them in proves
the dead-letter path never leaks plaintext either.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

__all__ = ["FAULT_KINDS", "make_invalid"]

FAULT_KINDS = (
    "not_json",
    "not_utf8",
    "not_object",
    "unknown_field",
    "missing_field",
    "bad_email",
    "bad_type",
    "too_large",
    "empty",
)


def make_invalid(event: dict[str, Any], rng: random.Random, kind: str | None = None) -> tuple[str, bytes]:
    """(kind, raw bytes) of an invalid variant of a valid ``event``."""
    kind = kind or rng.choice(FAULT_KINDS)
    ev = dict(event)
    if kind == "not_json":
        raw = orjson.dumps(ev)[:-7]  # truncated: the user_id / email is still in there
    elif kind == "not_utf8":
        raw = orjson.dumps(ev).replace(b'"page"', b'"p\xffge"')
    elif kind == "not_object":
        raw = orjson.dumps([ev])
    elif kind == "unknown_field":
        ev[str(ev.get("email") or ev["user_id"])] = "leak?"  # PII as a key
        raw = orjson.dumps(ev)
    elif kind == "missing_field":
        ev.pop("page", None)
        raw = orjson.dumps(ev)
    elif kind == "bad_email":
        ev["email"] = f"not-an-email {ev['user_id']}"
        raw = orjson.dumps(ev)
    elif kind == "bad_type":
        ev["quantity"] = f"{ev['user_id']}"
        raw = orjson.dumps(ev)
    elif kind == "too_large":
        ev["user_agent"] = "x" * (70 * 1024)
        raw = orjson.dumps(ev)
    elif kind == "empty":
        raw = b""
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return kind, raw
