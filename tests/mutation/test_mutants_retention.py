"""Mutation check of the retention and crypto core (issue 27): each mutant breaks one privacy
property in a copy of the source tree, and the tests named beside it must fail there (and pass on
the unmutated copy: the baseline). A mutant whose anchor text is gone (the code moved) fails the
check loudly instead of passing unapplied.

The copies reuse this session's broker and single Redis (``STREAMGATE_KAFKA_BOOTSTRAP`` /
``STREAMGATE_REDIS_URL``) and run the single-server variants only. About 2 minutes on a loaded
2-core machine; marked slow.

    pytest -q tests/mutation/test_mutants_retention.py -p no:cacheprovider
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    patches: tuple[tuple[str, str, str], ...]  # (file, anchor text, replacement)
    killers: tuple[str, ...]  # pytest node ids that must fail under the mutant


MUTANTS = [
    Mutant("erasure skips the deadline-index scan", (
        ("stream/storage/retention.py", "members = sorted(set(self.subject_members(subject)) | ",
         "members = sorted(set() | "),
        ("stream/retention/core.py", 'members = {m for m in self.deadlines if m.rpartition(":")[0] == subject}',
         "members: set[str] = set()"),
    ), (
        "tests/retention/test_retention_core.py::"
        "test_erasure_finds_keys_outside_the_retention_window_through_the_deadline_index",
        "tests/retention/test_retention_redis.py::"
        "test_erasure_destroys_keys_outside_the_retention_window_found_only_by_the_deadline_index[single]",
    )),
    Mutant("erasure keeps the pseudonym secret", (
        ("stream/storage/retention.py", "        if lookup is not None:\n            lookup_id = bytes(lookup)",
         "        if False:\n            lookup_id = bytes(lookup)"),
    ), (
        "tests/retention/test_retention_dump.py::"
        "test_an_erasure_stopped_before_its_receipts_leaves_no_secret_in_the_outbox_or_marker[single]",
        "tests/retention/test_retention_unlink.py::"
        "test_after_erasure_nobody_can_link_the_retained_token_to_the_user_id[single]",
    )),
    Mutant("one global data key", (
        ("stream/crypto/deks.py", "items.append((rand[start : start + _KEY_BYTES], ",
         "items.append((b'\\x42' * 32, "),
    ), (
        "tests/gateway/test_core.py::test_round_trip_tokens_and_per_person_ciphertexts",
        "tests/retention/test_retention_dump.py::"
        "test_events_encrypted_under_a_stale_cached_key_after_the_erasure_are_unreadable_too[single]",
    )),
    Mutant("field ciphertexts bound to nothing (no AAD)", (
        ("stream/crypto/fields.py", "body = nonce + key.aead.encrypt(nonce, plaintext, head + tail)",
         "body = nonce + key.aead.encrypt(nonce, plaintext, b'')"),
        ("stream/crypto/fields.py", "_b2a(nonce + encrypt(nonce, plaintext, head + tail)",
         "_b2a(nonce + encrypt(nonce, plaintext, b'')"),
        ("stream/crypto/fields.py", "plaintext = key.aead.decrypt(parsed.nonce, parsed.body, head + _key_parts(key)[1])",
         "plaintext = key.aead.decrypt(parsed.nonce, parsed.body, b'')"),
    ), (
        "tests/crypto/test_crypto_fields.py::test_random_nonce_and_per_person_keys",
        "tests/gateway/test_core.py::test_tamper_move_and_flip_all_fail_with_the_one_error",
    )),
    Mutant("wrapped data keys bound to nothing (no AAD)", (
        ("stream/crypto/deks.py", "def _wrap_aad_of(person: bytes, key_id: bytes) -> bytes:\n    return ",
         "def _wrap_aad_of(person: bytes, key_id: bytes) -> bytes:\n    return b'' and "),
    ), (
        "tests/crypto/test_crypto_deks.py::test_unwrappable_stored_key_fails_closed",
    )),
]


def _copy(tmp: Path) -> Path:
    root = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("stream", "tests", "schemas"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _run(root: Path, node_ids: list[str], stack_addresses) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "STREAMGATE_KAFKA_BOOTSTRAP": stack_addresses.kafka_bootstrap,
           "STREAMGATE_REDIS_URL": stack_addresses.redis_url}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--tb=line",
                           "-n", "0", *node_ids], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_the_killing_tests_pass_on_the_unmutated_copy(tmp_path: Path, stack_addresses) -> None:
    root = _copy(tmp_path)
    result = _run(root, sorted({k for m in MUTANTS for k in m.killers}), stack_addresses)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_is_killed(mutant: Mutant, tmp_path: Path, stack_addresses) -> None:
    root = _copy(tmp_path)
    for rel, anchor, replacement in mutant.patches:
        path = root / rel
        text = path.read_text()
        assert text.count(anchor) == 1, f"{mutant.name}: the anchor is not in {rel} exactly once (code moved?)"
        path.write_text(text.replace(anchor, replacement))
    for killer in mutant.killers:  # each named test kills it on its own
        result = _run(root, [killer], stack_addresses)
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        # killed by a failing assertion, not by a crash in setup (an "error") or nothing collected
        assert result.returncode == 1 and "1 failed" in summary and "error" not in summary, (
            f"{mutant.name} survived {killer} (exit {result.returncode})\n"
            + result.stdout[-3000:] + result.stderr[-2000:])
