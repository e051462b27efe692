"""Redis-backed stores: the I/O adapters beneath the pure cores (crypto, ldp, learn, retention).

Every Redis key name is built here or in :mod:`stream.redisdb`; the cores never import ``redis``.
"""
