"""Tokenizer: format, stability, domain separation, the batch memo."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.crypto.keyring import Keyring
from stream.crypto.tokens import Tokenizer

RING = Keyring.generate()
TOKEN_RE = re.compile(r"tk1_[A-Za-z0-9_-]{22}")


@given(st.text(), st.text(min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_format_and_stability(value: str, domain: str) -> None:
    tok = Tokenizer(RING).token(domain, value)
    assert TOKEN_RE.fullmatch(tok)
    assert Tokenizer(RING).token(domain, value) == tok  # a new instance, same keyring: same token
    assert Tokenizer(RING.rotated()).token(domain, value) == tok  # KEK rotation keeps tokens
    assert Tokenizer(Keyring.generate()).token(domain, value) != tok  # another root: another token


def test_domains_separate() -> None:
    t = Tokenizer(RING)
    assert t.token("user", "42") != t.token("session", "42")
    assert t.token("user", "42") != t.token("user", "43")


def test_batch_matches_single_and_respects_domains() -> None:
    t = Tokenizer(RING, memo_size=4)
    values = [f"user-{i % 7}" for i in range(50)]
    expected = [t.token("user", v) for v in values]
    assert t.tokens("user", values) == expected
    assert t.tokens("user", values) == expected  # from the memo
    # the memo is keyed by domain too
    assert t.tokens("session", values[:3]) == [t.token("session", v) for v in values[:3]]
    assert t.tokens("session", values[:3]) != expected[:3]
    assert len(t._memo) <= 4
    assert Tokenizer(RING, memo_size=0).tokens("user", values) == expected
    assert t.tokens("user", []) == []


def test_bad_input_does_not_echo() -> None:
    t = Tokenizer(RING)
    with pytest.raises(TypeError) as info:
        t.token("user", 123456789)  # type: ignore[arg-type]
    assert "123456789" not in str(info.value)
    with pytest.raises(ValueError):
        t.token("", "x")


def test_repr_hides_keys() -> None:
    t = Tokenizer(RING)
    t.token("user", "x")
    assert "user" in repr(t)
    assert RING.derive("token/user").hex() not in repr(t)


def test_forget_drops_only_the_erased_persons_memo_entries():
    tk = Tokenizer(Keyring.generate())
    a, _b = tk.tokens("user_id", ["alice", "bob"])
    tk.tokens("session_id", ["alice"])  # same string, other domain, other token: stays
    assert tk.forget(a) == 1
    assert ("user_id", "alice") not in tk._memo and ("user_id", "bob") in tk._memo
    assert ("session_id", "alice") in tk._memo
    assert tk.tokens("user_id", ["alice"]) == [a]  # tk1: recomputed, same token
