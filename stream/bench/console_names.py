"""The console's state under a flood of names: ``python -m stream.bench.console_names``.

For each name count, one :class:`stream.console.state.ConsoleState` is fed that many distinct
worker names (one metrics snapshot each), model names (one snapshot header each) and audit
kinds/reasons (one record each), then one view is built. Printed: the state's entries (instances,
series points, model points, audit rows), and the time per name relative to the smallest count of
the same run (flat: the work per record does not grow with the names seen). No Kafka, no Redis.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from stream.config import Settings
from stream.console.state import ConsoleState
from stream.ldp.policy import LdpPolicy
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import snapshot_record
from stream.schema import load_schema

T0 = 1_800_000_000.0


def entries(st: ConsoleState) -> int:
    return (len(st._instances) + sum(len(s) for s in st._series.values())
            + sum(len(m) for m in st._models.values()) + len(st._audit))


def flood(policy: LdpPolicy, n: int) -> tuple[int, float]:
    """(entries, seconds) for ``n`` distinct names of each kind."""
    base = snapshot_record(WorkerMetrics("gateway"), "gateway")
    records: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for i in range(n):
        snap = dict(base, ts=T0 + i, pid=i, host="h", worker=f"w{i}", ready=True, reason=None, events_in=i)
        at = datetime.fromtimestamp(T0 + i, UTC).isoformat().replace("+00:00", "Z")
        records.append((snap, {"name": f"m{i}", "created_at": at, "examples_seen": i, "metrics": {}},
                        {"kind": f"k{i}", "reason": f"r{i}", "receipt_id": f"{i:064x}"}))
    st = ConsoleState(policy)
    t = time.perf_counter()
    for snap, header, audit in records:
        st.add_metrics(snap)
        st.add_snapshot(header, None)
        st.add_audit(audit, None)
    st.view(T0 + n)
    return entries(st), time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, nargs="+", default=[100, 400, 5000])
    args = p.parse_args(argv)
    s = Settings()
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)
    base: float | None = None
    for n in args.names:
        ent, secs = flood(policy, n)
        per = secs / n
        base = per if base is None else base
        print(f"names={n:>6}  state entries={ent:>6}  {per * 1e6:8.1f} us per name  x{per / base:.2f} of the first")


if __name__ == "__main__":
    main()
