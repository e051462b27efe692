"""The I/O adapters beneath the pure cores (crypto, ldp, learn, retention): their Redis stores and
the Kafka topics config.

* :mod:`.keys` - data keys, the key-store identity probe, the KEK wrap counter (:mod:`stream.crypto`).
* :mod:`.pseudonyms` - the per-person secrets of ``tk2`` tokens (:mod:`stream.crypto.tokens`).
* :mod:`.retention` - the shredder's store (:mod:`stream.retention.core`); :mod:`.invalidation`, its
  pub/sub listener.
* :mod:`.topics` - the topics config (``ops/topics.yaml``) and ``streamgate topics apply``.

Every Redis key name is built in :mod:`stream.redisdb`; the cores never import ``redis``, ``confluent_kafka``
or this package (import-linter contracts in ``pyproject.toml``).
"""
