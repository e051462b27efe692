"""Keys, tokens and field encryption: the recipe layer over ``cryptography``'s primitives.

* :mod:`~stream.crypto.keyring` - the KEK keyring (rotation, HKDF purpose keys).
* :mod:`~stream.crypto.kms` - envelope wrapping of data keys (:class:`LocalKMS`, :class:`KMS` seam).
* :mod:`~stream.crypto.deks` - per-person, per-epoch data keys in a key store, cached, shreddable.
* :mod:`~stream.crypto.keystore` - the key-store identity guard (drops caches when the store lost data).
* :mod:`~stream.crypto.fields` - the ``sg1`` AEAD ciphertext format of one field value.
* :mod:`~stream.crypto.tokens` - keyed HMAC tokens (``tk1_``, ``tk2_``) for identifiers.

Callers get safe defaults and typed, opaque errors (:mod:`stream.errors`); no error message
carries a key or a field value. No I/O here: the stores on Redis are in :mod:`stream.storage`.
"""

from stream.crypto.deks import DataKey, DekProvider, DekStats, KeyStore, MemoryKeyStore
from stream.crypto.fields import (
    CIPHERTEXT_PREFIX,
    CiphertextHeader,
    decrypt_value,
    encrypt_value,
    is_ciphertext,
    parse_ciphertext,
)
from stream.crypto.keyring import Keyring, key_fingerprint
from stream.crypto.keystore import KeyStoreGuard
from stream.crypto.kms import KMS, LocalKMS
from stream.crypto.tokens import TOKEN_PREFIX, Tokenizer

__all__ = [
    "CIPHERTEXT_PREFIX",
    "KMS",
    "TOKEN_PREFIX",
    "CiphertextHeader",
    "DataKey",
    "DekProvider",
    "DekStats",
    "KeyStore",
    "KeyStoreGuard",
    "Keyring",
    "LocalKMS",
    "MemoryKeyStore",
    "Tokenizer",
    "decrypt_value",
    "encrypt_value",
    "is_ciphertext",
    "key_fingerprint",
    "parse_ciphertext",
]
