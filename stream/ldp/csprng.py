"""A cryptographically secure noise source: the ChaCha20 keystream, vectorized into numpy.

Every noise draw of the privatizer comes from :class:`ChaChaRandom`: a 256-bit key
(from the OS CSPRNG, :func:`secrets.token_bytes`) and ChaCha20 (RFC 7539, via
``cryptography``) in counter mode over zero bytes. Its output reveals nothing
about its key or about other draws, unlike numpy's PCG64, whose state can be
recovered from published outputs. Only test and benchmark entry points may
pass a ``seed`` (the key is then SHA-256 of it, for reproducibility); the
worker builder refuses one.

It offers the subset of :class:`numpy.random.Generator` the mechanisms use:
:meth:`random` (53-bit uniforms in [0, 1)), :meth:`integers` (exactly uniform integers:
64-bit words below the largest multiple of the span, reduced modulo it) and
:meth:`uint32` (raw 32-bit words, for Bernoulli draws by threshold: the
probability is then quantized to ``2^-32``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["ChaChaRandom"]

_CHUNK = 1 << 16  # keystream bytes drawn per refill


class ChaChaRandom:
    """ChaCha20 keystream as a numpy random source (thread-safe; see the module docstring)."""

    def __init__(self, seed: int | bytes | None = None) -> None:
        if seed is None:
            key = secrets.token_bytes(32)
        else:
            raw = seed if isinstance(seed, bytes) else str(int(seed)).encode()
            key = hashlib.sha256(b"streamgate/ldp-test-seed\x00" + raw).digest()
        nonce = b"\x00" * 16  # 64-bit counter + 64-bit nonce; one key per generator, never reused
        self._enc = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        self._lock = threading.Lock()
        self.seeded = seed is not None

    def bytes(self, n: int) -> bytes:
        """``n`` keystream bytes."""
        with self._lock:
            return self._enc.update(b"\x00" * n)

    def _words64(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * n), dtype="<u8")

    def uint32(self, size: int) -> np.ndarray:
        """``size`` uniform 32-bit words (uint32 array)."""
        return np.frombuffer(self.bytes(4 * int(size)), dtype="<u4")

    def random(self, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Uniform floats in [0, 1) with 53 random bits (shape ``size``)."""
        shape = () if size is None else (size if isinstance(size, tuple) else (int(size),))
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        out = (self._words64(n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return out.reshape(shape)

    def integers(self, low: int, high: int | None = None, size: int | None = None,
                 dtype: type = np.int64) -> np.ndarray:
        """Uniform integers in ``[low, high)`` (numpy's argument order)."""
        if high is None:
            low, high = 0, low
        span = int(high) - int(low)
        if span <= 0:
            raise ValueError("high must be > low")
        if span > 1 << 62:
            raise ValueError("span must be at most 2^62")
        n = 1 if size is None else int(size)
        rest = (1 << 64) % span
        got: list[np.ndarray] = []
        have = 0
        while have < n:
            w = self._words64(n - have + 8)
            if rest:  # keep words below the largest multiple of span: no modulo bias
                w = w[w < np.uint64((1 << 64) - rest)]
            w = w[: n - have]
            got.append(w)
            have += w.shape[0]
        vals = np.concatenate(got) % np.uint64(span) if got else np.zeros(0, dtype=np.uint64)
        out: np.ndarray = (vals.astype(np.int64) + int(low)).astype(dtype)
        return out if size is not None else out[0]

    def shuffle(self, items: list[Any]) -> None:
        """Fisher-Yates shuffle in place from the keystream."""
        n = len(items)
        if n < 2:
            return
        u = self.random(n - 1)
        for i in range(n - 1, 0, -1):
            j = int(u[n - 1 - i] * (i + 1))
            items[i], items[j] = items[j], items[i]

    def __repr__(self) -> str:
        return f"ChaChaRandom(seeded={self.seeded})"
