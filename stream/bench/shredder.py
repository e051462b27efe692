"""``python -m stream.bench.shredder``: the shredder's claim-and-destroy rate on one Redis server.

Each round writes ``--keys`` due people (a data key, a memo and a deadline-index member each,
spread over the 16 shards as the gateway spreads them) under a fresh prefix, then claims and
destroys them with :meth:`RedisShredStore.claim_due` in batches of ``--batch`` (the outbox
entries are then removed, as delivered receipts would remove them; no Kafka). Printed per round:
keys/s (wall clock), keys per CPU-second of this process, and keys per CPU-second of this
process and the Redis server together (from ``/proc``; on an idle machine the wall-clock rate
approaches this one, since the client and the server mostly take turns).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from stream.bench.procs import _proc_cpu, listener_pid
from stream.redisdb import RedisClient, connect, deadline_shard, deadlines_key, dek_key, memo_key
from stream.storage.retention import RedisShredStore

__all__ = ["ShredRound", "run_shredder_bench"]


@dataclass(frozen=True)
class ShredRound:
    keys: int
    wall_seconds: float
    cpu_seconds: float  # this process
    server_cpu_seconds: float | None  # the Redis server (None: not a local process)

    @property
    def rate(self) -> float:
        return self.keys / self.wall_seconds

    @property
    def cpu_rate(self) -> float:
        return self.keys / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")

    @property
    def total_cpu_rate(self) -> float | None:
        if self.server_cpu_seconds is None:
            return None
        both = self.cpu_seconds + self.server_cpu_seconds
        return self.keys / both if both > 0 else float("nan")


def _fill(client: RedisClient, prefix: str, keys: int, shards: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        subject = f"tk1_{i:022x}"
        pipe.set(dek_key(prefix, subject, 5), b"1." + f"{i:016x}".encode() + b"." + os.urandom(60))
        pipe.hset(memo_key(prefix, subject, 5), "a", "1")
        pipe.zadd(deadlines_key(prefix, deadline_shard(subject, shards)), {f"{subject}:5": 1000})
        if i % 2000 == 1999:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    pipe.execute()


def run_shredder_bench(redis_url: str, *, keys: int = 20_000, batch: int = 500, rounds: int = 3,
                       shards: int = 16, say: Callable[[str], None] = print) -> list[ShredRound]:
    client = connect(redis_url)
    server = listener_pid(redis_url)
    out: list[ShredRound] = []
    for r in range(rounds):
        prefix = f"sgbench-shred-{os.getpid()}-{r}"
        store = RedisShredStore(client, prefix, shards=shards)
        _fill(client, prefix, keys, shards)
        s0 = _proc_cpu(server) if server else None
        c0, t0 = time.process_time(), time.perf_counter()
        got = 0
        while True:
            claimed = store.claim_due(2000, batch, at=2000.0, worker="bench", lease_until=3000.0)
            got += len(claimed)
            store.done(claimed)
            if len(claimed) < batch:
                break
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s1 = _proc_cpu(server) if server else None
        if got != keys:
            raise RuntimeError(f"claimed {got} of {keys} due keys")
        out.append(ShredRound(keys, wall, cpu, None if s0 is None or s1 is None else s1 - s0))
        both = out[-1].total_cpu_rate
        say(f"round {r + 1}: {out[-1].rate:>9,.0f} keys/s   {out[-1].cpu_rate:>9,.0f} keys per CPU-s (this process)"
            f"   {'n/a' if both is None else f'{both:,.0f}':>9} keys per CPU-s (with the server)"
            f"   load {os.getloadavg()[0]:.2f}")
        for k in client.scan_iter(f"{prefix}:*", count=5000):
            client.delete(k)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.shredder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500, help="STREAMGATE_SHREDDER_BATCH_SIZE")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default=None, help="default: STREAMGATE_REDIS_URL, else an embedded server")
    args = ap.parse_args(argv)
    from stream.commands.common import bench_settings
    from stream.config import Settings

    base = Settings()
    url = args.redis_url or base.redis_url
    if url:
        run_shredder_bench(url, keys=args.keys, batch=args.batch, rounds=args.rounds)
        return
    with bench_settings(base) as s:
        run_shredder_bench(s.redis_url_or_dev(), keys=args.keys, batch=args.batch, rounds=args.rounds)


if __name__ == "__main__":
    main()
