"""Every Redis key name is built in stream/redisdb.py: the names match the documented layout, a person's
keys share one hash slot, and no other module of ``stream`` spells a key name (in an f-string or in a
Lua script)."""

from __future__ import annotations

import ast
from pathlib import Path

from stream import redisdb
from stream.redisdb import key_slot

STREAM = Path(redisdb.__file__).resolve().parent
# the segments of the layout (stream/redisdb.py's docstring) that only a key name contains
SEGMENTS = (":dek:", ":memo:", ":budget:", ":ptok:", ":pid:", ":perased:", ":ledger:", ":erasure:", ":kek-wraps:",
            ":keystore", ":deadlines:", ":shredder:pending:", ":shredded", ":replayed:")


def test_names_follow_the_layout() -> None:
    p, tok, lid = "sg", "tk2_abc", "0f" * 16
    assert redisdb.dek_key(p, tok, 7) == "sg:dek:{tk2_abc}:7"
    assert redisdb.memo_key(p, tok, 7) == "sg:memo:{tk2_abc}:7"
    assert redisdb.budget_key(p, tok, 7) == "sg:budget:{tk2_abc}:7"
    assert redisdb.ptok_key(p, tok) == "sg:ptok:{tk2_abc}"
    head, tail = redisdb.ptok_affixes(p)
    assert head + tok + tail == redisdb.ptok_key(p, tok)
    assert redisdb.pid_key(p, lid) == f"sg:pid:{{{lid}}}"
    assert redisdb.perased_key(p, lid) == f"sg:perased:{{{lid}}}"
    assert redisdb.erasure_key(p, "req-1") == "sg:erasure:req-1"
    assert redisdb.kek_wraps_key(p, "k1") == "sg:kek-wraps:k1"
    assert redisdb.keystore_key(p) == "sg:keystore"
    assert redisdb.keystore_key(p, 5) == f"sg:keystore:{{{redisdb.slot_tag(5)}}}"
    assert redisdb.shred_channel(p) == "sg:shredded"
    assert redisdb.deadlines_key(p, 3) == "sg:deadlines:{shard-03}"
    assert redisdb.pending_key(p, 3) == "sg:shredder:pending:{shard-03}"
    ledger = redisdb.ledger_key(p, tok, "L1")
    assert ledger.startswith("sg:ledger:{") and tok not in ledger  # the ledger never names the token


def test_a_persons_keys_share_a_slot() -> None:
    """Every script over one person runs in one slot: data keys, memos, budgets, the token index and the
    ledgers of a token; the secret and the erased marker of a lookup id."""
    for i in range(200):
        tok, lid = f"tk2_{i:022d}", f"{i:032x}"
        slots = {key_slot(name.encode()) for name in (
            redisdb.dek_key("sg", tok, 1), redisdb.memo_key("sg", tok, 2), redisdb.budget_key("sg", tok, 3),
            redisdb.ptok_key("sg", tok), redisdb.ledger_key("sg", tok, "L"))}
        assert slots == {redisdb.person_slot(tok)}
        assert key_slot(redisdb.pid_key("sg", lid).encode()) == key_slot(redisdb.perased_key("sg", lid).encode())
        assert key_slot(redisdb.keystore_key("sg", i).encode()) == i


def _strings_naming_keys(path: Path) -> list[tuple[int, str]]:
    """f-strings, and Lua scripts (string constants calling redis), that contain a key-name segment."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call" in node.value:
            text = node.value
        else:
            continue
        if any(seg in text for seg in SEGMENTS):
            found.append((node.lineno, text))
    return found


def test_no_module_but_redisdb_spells_a_key_name() -> None:
    offenders = {}
    for path in sorted(STREAM.rglob("*.py")):
        rel = path.relative_to(STREAM).as_posix()
        if rel == "redisdb.py":
            continue
        if hits := _strings_naming_keys(path):
            offenders[rel] = hits
    assert offenders == {}
    # the check sees a name spelled elsewhere
    assert _strings_naming_keys(STREAM / "redisdb.py")
