"""Snapshots round-trip, and a consumer never unpickles bytes it has not authenticated: a flipped
byte anywhere, a wrong key or a forged payload raise SnapshotError before any unpickling. Loading
needs only the public key, and even a validly signed payload cannot run code: the restricted
unpickler refuses every global outside the model's classes (os.system never runs)."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import stream.learn.snapshot as snapshot_module
from stream.crypto.signing import sign
from stream.errors import SnapshotError
from stream.learn import ModelSnapshot, PropensityModel
from stream.learn.snapshot import SNAPSHOT_FORMAT
from tests.support.learn import clickstream_policy, private_examples

EXAMPLES, _CLEAN = private_examples(800, epsilon=4.0, label_epsilon=4.0, seed=11)

# -- a payload that must never be loaded ---------------------------------------------------------
EXECUTED: list[str] = []


def _payload_ran(tag: str) -> None:
    EXECUTED.append(tag)


class _Evil:
    """Unpickling this calls _payload_ran: stands in for arbitrary code execution."""

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_payload_ran, ("unpickled",))


def _forge(header: dict[str, Any], payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """A snapshot in the documented layout: magic | header length | header | pickle | Ed25519 signature."""
    head = orjson.dumps(header)
    body = snapshot_module._MAGIC + len(head).to_bytes(4, "big") + head + payload
    return body + sign(key, "model-snapshot.v2", body)


@pytest.fixture()
def trained() -> PropensityModel:
    model = PropensityModel.for_policy(clickstream_policy(4.0))
    for ex in EXAMPLES[:600]:
        model.learn_one(ex)
    return model


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every unpickling attempt of the snapshot module (and refuse it)."""
    calls: list[bytes] = []

    def spy(data: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(data)
        raise AssertionError("unpickled")

    monkeypatch.setattr(snapshot_module, "_unpickle", spy)
    return calls


def _snapshot(model: PropensityModel) -> ModelSnapshot:
    return ModelSnapshot.capture(
        model,
        metrics={"roc_auc": 0.71, "log_loss": 0.43, "n": 600},
        label_epsilon=4.0,
        feature_epsilon={"event_type": 4.0, "price": 4.0},
    )


def test_round_trip_gives_identical_predictions(trained: PropensityModel, key: Ed25519PrivateKey) -> None:
    snap = _snapshot(trained)
    data = snap.to_bytes(key)
    back = ModelSnapshot.from_bytes(data, key)
    assert (back.name, back.created_at, back.examples_seen) == (snap.name, snap.created_at, 600)
    assert back.metrics == snap.metrics and back.epsilon == snap.epsilon
    assert back.epsilon["label"] == 4.0 and "post-processing" in back.epsilon["note"]
    assert back.created_at.endswith("Z")
    for ex in EXAMPLES[600:]:
        assert back.model.predict_proba_one(ex) == trained.predict_proba_one(ex)
    assert back.model.weights() == trained.weights()
    event = {
        "event_type": "purchase",
        "category": "books",
        "device": "desktop",
        "country": "LU",
        "price": 12.5,
    }
    assert back.model.predict_proba_event(event, 5) == trained.predict_proba_event(event, 5)
    # the loaded model keeps learning from where it stopped
    back.model.learn_one(EXAMPLES[700])
    assert back.model.examples_seen == 601


def test_read_header_needs_no_key_and_does_not_unpickle(
    trained: PropensityModel, key: Ed25519PrivateKey, no_unpickling: list[bytes]
) -> None:
    data = _snapshot(trained).to_bytes(key)
    header = ModelSnapshot.read_header(data)
    assert header["format"] == SNAPSHOT_FORMAT
    assert header["name"] == "purchase-propensity" and header["examples_seen"] == 600
    assert header["metrics"] == {"roc_auc": 0.71, "log_loss": 0.43, "n": 600.0}
    assert header["epsilon"]["features"] == {"event_type": 4.0, "price": 4.0}
    assert len(header["model_sha256"]) == 64 and header["key_id"].startswith("k")
    assert no_unpickling == []


def test_a_flipped_byte_anywhere_is_refused_before_unpickling(
    trained: PropensityModel, key: Ed25519PrivateKey, no_unpickling: list[bytes]
) -> None:
    data = _snapshot(trained).to_bytes(key)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(SnapshotError):
            ModelSnapshot.from_bytes(bytes(bad), key)
    for cut in (0, 1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(SnapshotError):
            ModelSnapshot.from_bytes(data[:cut], key)
    with pytest.raises(SnapshotError):
        ModelSnapshot.from_bytes(data + b"\x00", key)
    assert no_unpickling == []


def test_a_wrong_key_is_refused_before_unpickling(
    trained: PropensityModel, key: Ed25519PrivateKey, no_unpickling: list[bytes]
) -> None:
    data = _snapshot(trained).to_bytes(key)
    with pytest.raises(SnapshotError, match="authentication"):
        ModelSnapshot.from_bytes(data, Ed25519PrivateKey.generate().public_key())
    assert no_unpickling == []


def test_a_forged_payload_is_never_executed(trained: PropensityModel, key: Ed25519PrivateKey) -> None:
    evil = pickle.dumps(_Evil())
    header = _snapshot(trained).header()
    header["model_sha256"] = hashlib.sha256(evil).hexdigest()
    EXECUTED.clear()
    # signed by an attacker's key: refused, the payload never runs
    with pytest.raises(SnapshotError):
        ModelSnapshot.from_bytes(_forge(header, evil, Ed25519PrivateKey.generate()), key)
    # unsigned garbage tag: refused
    forged = _forge(header, evil, Ed25519PrivateKey.generate())[:-64] + bytes(64)
    with pytest.raises(SnapshotError):
        ModelSnapshot.from_bytes(forged, key)
    # read_header on it does not run it either
    assert ModelSnapshot.read_header(forged)["format"] == SNAPSHOT_FORMAT
    assert EXECUTED == []
    # validly signed: still refused by the restricted unpickler, never run
    with pytest.raises(SnapshotError, match="allow-list"):
        ModelSnapshot.from_bytes(_forge(header, evil, key), key)
    assert EXECUTED == []
    # control: the payload is live - plain pickle would have run it (so the checks above mattered)
    pickle.loads(evil)
    assert EXECUTED == ["unpickled"]


def test_an_authenticated_payload_must_match_its_header(trained: PropensityModel, key: Ed25519PrivateKey) -> None:
    payload = pickle.dumps(trained)
    header = _snapshot(trained).header()
    header["model_sha256"] = "0" * 64
    with pytest.raises(SnapshotError, match="does not match"):
        ModelSnapshot.from_bytes(_forge(header, payload, key), key)
    header["model_sha256"] = hashlib.sha256(payload).hexdigest()
    header["format"] = "streamgate-model-snapshot.v0"
    with pytest.raises(SnapshotError):
        ModelSnapshot.from_bytes(_forge(header, payload, key), key)
    header["format"] = SNAPSHOT_FORMAT
    assert ModelSnapshot.from_bytes(_forge(header, payload, key), key).model.examples_seen == 600


@pytest.mark.parametrize("data", [b"", b"hello", b"SGSNAP\x00\x01", b"\x80\x04K\x01." + bytes(40)])
def test_read_header_refuses_non_snapshots(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        ModelSnapshot.read_header(data)


def test_keys_must_be_real_keys(trained: PropensityModel) -> None:
    snap = _snapshot(trained)
    with pytest.raises(TypeError):
        snap.to_bytes(os.urandom(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ModelSnapshot.from_bytes(snap.to_bytes(Ed25519PrivateKey.generate()), os.urandom(32))  # type: ignore[arg-type]


class _System:
    """Unpickling runs ``os.system(cmd)``: the audit's planted payload."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (self.cmd,))


def _dotted_global(module: str, name: str) -> bytes:
    """Protocol-4 pickle calling ``module.name("x")`` via STACK_GLOBAL (dotted names reach attributes)."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s("x") + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


def test_a_validly_signed_planted_pickle_is_refused_without_running(
    trained: PropensityModel, key: Ed25519PrivateKey, tmp_path: Any
) -> None:
    """The audit's finding: a pickle that runs os.system, signed with the *real* snapshot key (as if the
    learner's key leaked), is refused by the restricted unpickler; the command never runs."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_System(f"touch {marker}"), protocol=pickle.HIGHEST_PROTOCOL)
    payloads = [
        evil,
        pickle.dumps(_System(f"touch {marker}"), protocol=0),
        _dotted_global("stream.learn.model", "math.floor"),  # a module attribute reached through an allowed module
        _dotted_global("builtins", "eval"),
        _dotted_global("stream.learn.losses", "corrected_label"),  # an allowed module's function, not a class
        _dotted_global("river.compose.pipeline", "Pipeline.__init__"),
    ]
    for payload in payloads:
        header = _snapshot(trained).header()
        header["model_sha256"] = hashlib.sha256(payload).hexdigest()
        with pytest.raises(SnapshotError, match="allow-list"):
            ModelSnapshot.from_bytes(_forge(header, payload, key), key.public_key())
    assert not marker.exists()
    # control: the same bytes, unpickled the old way, do run the command
    pickle.loads(evil)
    assert marker.exists()


def test_loading_needs_only_the_public_key(trained: PropensityModel, key: Ed25519PrivateKey) -> None:
    data = _snapshot(trained).to_bytes(key)
    assert ModelSnapshot.from_bytes(data, key.public_key()).model.weights() == trained.weights()


@pytest.mark.parametrize("kw", [{"scale": True, "optimizer": "sgd"}, {"correction": False, "debias": False}])
def test_every_model_configuration_loads_through_the_allow_list(kw: dict[str, Any], key: Ed25519PrivateKey) -> None:
    model = PropensityModel.for_policy(clickstream_policy(4.0), **kw)
    for ex in EXAMPLES[:200]:
        model.learn_one(ex)
    back = ModelSnapshot.from_bytes(_snapshot(model).to_bytes(key), key.public_key()).model
    assert back.weights() == model.weights()
