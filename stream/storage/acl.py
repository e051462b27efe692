"""Redis ACL users, one per worker role: each only its key patterns, commands and channel.

Built from the key layout of :mod:`stream.redisdb` (``<prefix>`` is ``STREAMGATE_REDIS_KEY_PREFIX``).
Scripts run with their caller's rights (Redis 7 checks every command a script runs against the
user), so ``EVALSHA`` opens nothing beyond the patterns below (kinds of :func:`stream.redisdb.key_patterns`).

==========  ==========================================================================================
role        may touch
==========  ==========================================================================================
gateway     data keys and the deadline index (create, read), pseudonym secrets, token index and erased
            markers, ε ledgers, KEK wrap counters, the pseudonyms-wrapped marker (read), the key-store
            marker; subscribes to the shred channel
privatizer  ε ledgers, the key-store marker; subscribes
shredder    what it destroys (data keys, memos, old budgets, pseudonym secrets and index, erased
            markers), the deadline index and its outbox, erasure records and their floor; publishes
reader      data keys, read only (``GET``/``MGET``), the key-store marker and ``dlq replay``'s claims
            (``<prefix>:replayed:*``); subscribes
learner     no user: it does not use Redis
==========  ==========================================================================================

ε ledgers are granted in a selector of their own (Redis 7): ``GET``, ``INCRBY`` and ``EXPIREAT``
only, what the charge and exhaust scripts of :mod:`stream.storage.ldp` run; no ``SET``, ``DEL``,
``UNLINK``, ``RENAME``, ``RESTORE`` on them.

No role has ``FLUSHALL``, ``KEYS``, ``CONFIG``, ``ACL``, ``DEBUG`` or another role's keys. Limits that
ACLs cannot express (they grant commands, never argument values), stated in docs/privacy.md and each
tested in tests/storage/test_storage_acl.py: a role that may ``SET`` a key may overwrite it (the
gateway could replace a data key: an unsigned erasure of one key); ``INCRBY`` takes a negative
amount and ``EXPIREAT`` a past time (a gateway or privatizer can lower or expire a ledger: a
refund); patterns cannot tell one person's keys from another's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import redis

from stream.redisdb import RedisClient, check_prefix, key_patterns, shred_channel

__all__ = ["ACL_ROLES", "acl_file", "acl_rules", "apply_acls", "compose_acl_template"]

_BASE = ("+ping", "+hello", "+auth", "+client|setinfo", "+client|setname", "+client|id", "+select",
         "+evalsha", "+eval", "+script|load", "+script|exists", "+info", "+multi", "+exec", "+discard")
_SUB = ("+subscribe", "+psubscribe", "+unsubscribe", "+punsubscribe")

#: The selector of the roles that charge ledgers: only what stream.storage.ldp's scripts run.
_LEDGER_COMMANDS = ("+evalsha", "+eval", "+get", "+incrby", "+expireat")
_LEDGER_ROLES = frozenset({"gateway", "privatizer"})

# role -> (key kinds (stream.redisdb.key_patterns) with %R/%W/%RW permission; extra commands; may publish)
_SPEC: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...], bool]] = {
    "gateway": (
        (("RW", "dek"), ("W", "deadlines"), ("RW", "pid"), ("RW", "ptok"), ("RW", "perased"), ("RW", "gone"),
         ("RW", "kek-wraps"), ("R", "pwrapped"), ("RW", "keystore")),
        ("+get", "+mget", "+set", "+expireat", "+zadd", "+incrby", "+hget", "+hset", "+hsetnx", "+hincrbyfloat",
         "+waitaof", *_SUB),
        False,
    ),
    "privatizer": (  # ledgers (their selector) and the key-store marker: nothing per person else
        (("RW", "keystore"),),
        ("+get", "+set", "+waitaof", *_SUB),
        False,
    ),
    "shredder": (
        (("RW", "dek"), ("RW", "memo"), ("RW", "budget"), ("RW", "pid"), ("RW", "ptok"), ("RW", "gone"),
         ("RW", "perased"), ("RW", "deadlines"), ("RW", "pending"), ("RW", "erasure"),
         ("RW", "erasing"), ("RW", "erasure-floor"), ("RW", "keystore")),
        ("+get", "+mget", "+set", "+del", "+unlink", "+exists", "+expireat", "+zscore", "+zrem", "+zrange",
         "+zrangebyscore", "+zcount", "+zcard", "+zscan", "+hget", "+hset", "+hsetnx", "+hdel", "+hgetall", "+hlen",
         "+hscan", "+publish", "+waitaof", *_SUB),
        True,
    ),
    "reader": (
        (("R", "dek"), ("RW", "keystore"), ("RW", "replayed")),
        ("+get", "+mget", "+set", "+del", *_SUB),  # writes: the key-store marker, `dlq replay`'s claims
        False,
    ),
}

_UNKNOWN = re.compile(r"modifier '([^']+)': Unknown command")

#: The roles with a Redis user (the learner has none).
ACL_ROLES: tuple[str, ...] = tuple(_SPEC)


def acl_rules(role: str, prefix: str) -> list[str]:
    """The ``ACL SETUSER <role>`` rules of ``role`` (after ``reset on <password>``)."""
    check_prefix(prefix)
    try:
        patterns, commands, publish = _SPEC[role]
    except KeyError:
        raise ValueError(f"no Redis user for role {role!r} (one of {', '.join(ACL_ROLES)})") from None
    rules = ["resetkeys", "resetchannels", "-@all", *_BASE, *commands]
    globs = key_patterns(prefix)
    rules += [f"%{perm}~{globs[kind]}" for perm, kind in patterns]
    if role in _LEDGER_ROLES:
        rules.append("(" + " ".join([f"%RW~{globs['ledger']}", *_LEDGER_COMMANDS]) + ")")
    rules.append(f"&{shred_channel(prefix)}")
    if not publish:
        rules.append("-publish")
    return rules


def acl_file(prefix: str, passwords: Mapping[str, str], *, placeholder: bool = False) -> str:
    """A Redis ACL file (``--aclfile``): the default user off, one user per role in ``passwords``.
    ``placeholder``: the password field is ``#@<ROLE>@`` (ops/redis/start.sh puts the SHA-256 there)."""
    lines = ["user default off nopass resetkeys -@all"]
    for role in ACL_ROLES:
        if role not in passwords:
            continue
        secret = f"#@{role.upper()}@" if placeholder else "#" + hashlib.sha256(passwords[role].encode()).hexdigest()
        lines.append(" ".join(["user", role, "on", secret, *acl_rules(role, prefix)]))
    return "\n".join(lines) + "\n"


def apply_acls(client: RedisClient, prefix: str, passwords: Mapping[str, str], *, default_off: bool = True) -> None:
    """Create (or reset) one user per role in ``passwords`` with its rules, then (``default_off``)
    switch the unauthenticated default user off. ``client`` must be allowed ``ACL SETUSER``."""
    for role, password in passwords.items():
        rules = acl_rules(role, prefix)
        while True:
            try:
                client.execute_command("ACL", "SETUSER", role, "reset", "on", ">" + password, *rules)
                break
            except redis.ResponseError as exc:  # a command this server does not have (WAITAOF before 7.2)
                unknown = _UNKNOWN.search(str(exc))
                if unknown is None or unknown.group(1) not in rules:
                    raise
                rules.remove(unknown.group(1))
    if default_off:
        client.execute_command("ACL", "SETUSER", "default", "off")


def compose_acl_template(prefix: str = "sg") -> str:
    """ops/redis/users.acl: the users of docker-compose.yml with password placeholders (ops/redis/start.sh)."""
    head = ("# Redis ACL users of docker-compose.yml, one per worker role (stream/storage/acl.py). Generated:\n"
            "#   python -c 'from stream.storage.acl import compose_acl_template as t; print(t(), end=\"\")' "
            "> ops/redis/users.acl\n"
            "# ops/redis/start.sh puts each role's password hash (SHA-256 of /run/secrets/redis_<role>) at #@<ROLE>@.\n")
    return head + acl_file(prefix, dict.fromkeys(ACL_ROLES, ""), placeholder=True)
