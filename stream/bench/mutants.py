"""``python -m stream.bench.mutants``: break each privacy mechanism of the LDP core and check the suite kills it.

Each mutant is one textual change to one source file, applied to a copy of the tree (``stream/``, ``tests/``,
``schemas/``, ``pyproject.toml`` in a temporary directory: the working tree is never touched); the LDP tests
(no broker, no Redis) then run against the copy with ``-x``. A mutant is *killed* when a test fails, and the
table names the first failing test. Exit status 1 if any mutant survives. About 3-5 minutes on a loaded
2-core machine (``tests/mutation/test_mutants.py`` runs it in the slow job).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MUTANTS", "Mutant", "run_mutants"]

REPO = Path(__file__).resolve().parents[2]

#: The LDP tests that run against every mutant (fast first; the coverage Monte Carlo last).
TESTS = [
    "tests/ldp/test_ldp_privatizer.py",
    "tests/ldp/test_ldp_release.py",
    "tests/ldp/test_ldp_spend.py",
    "tests/ldp/test_ldp_published.py",
    "tests/ldp/test_ldp_aggregate.py",
    "tests/ldp/test_ldp_linkage.py",
    "tests/ldp/test_ldp_coverage.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str


MUTANTS = [
    Mutant("shared noise: equal values share one draw (across reports and people)", "stream/ldp/privatizer.py",
           "            tx, vx = self._randomize(specs[si][8], col) if col else ([], [])",
           "            u = {repr(v): i for i, v in enumerate(col)}; t0, v0 = self._randomize(specs[si][8], col) if col "
           "else ([], []); tx = [t0[u[repr(v)]] for v in col]; vx = [v0[u[repr(v)]] for v in col]"),
    Mutant("no shuffle of a batch's reports", "stream/ldp/privatizer.py",
           "        self._shuffle.shuffle(assembled)", "        pass"),
    Mutant("no shuffle of a release", "stream/ldp/release.py",
           "        self._shuffle.shuffle(out)", "        pass"),
    Mutant("over-spending: a report is released even past the cap", "stream/ldp/privatizer.py",
           "        kept = [r for r, ok in zip(rows, paid, strict=True) if ok]", "        kept = rows"),
    Mutant("over-spending: the ledger checks the cap before the charge", "stream/ldp/ledger.py",
           "            if spent + c.cost_micro > budget_micro:", "            if spent > budget_micro:"),
    Mutant("biased estimator: frequencies 5 % high", "stream/ldp/aggregate.py",
           "            est = attr.oracle.estimate(counts, n)", "            est = attr.oracle.estimate(counts, n) * 1.05"),
    Mutant("biased estimator: numeric mean off by half its std error", "stream/ldp/aggregate.py",
           "            mean = float(total or 0.0) / n",
           "            mean = float(total or 0.0) / n; mean += 0.5 * _numeric_std_error(attr, n, mean)"),
    Mutant("error bars 30 % too narrow", "stream/ldp/aggregate.py",
           "            var = attr.oracle.variance(n, np.clip(est, 0.0, 1.0))",
           "            var = attr.oracle.variance(n, np.clip(est, 0.0, 1.0)) * 0.49"),
    Mutant("a window of one person is published", "stream/ldp/aggregate.py",
           "        if win.n_people < self.min_people:", "        if False:"),
    Mutant("partials written for every batch", "stream/apps/privatizer.py",
           "            elif len(part.people_since) >= self.min_people:", "            else:"),
    Mutant("the ε histogram's noise 2x weaker (sensitivity 1, not 2)", "stream/ldp/privatizer.py",
           "        a = math.exp(-self.NOISE_EPSILON / 2.0)", "        a = math.exp(-self.NOISE_EPSILON)"),
    Mutant("after a restore, people who report again are counted twice", "stream/ldp/aggregate.py",
           "        return max(len(self.people), self.restored_people)",
           "        return len(self.people) + self.restored_people"),
    Mutant("one attribute memoized per person: price reuses one response per (person, value)",
           "stream/ldp/privatizer.py",
           '                parts.append(prefixes[si] + texts[si][j] + b"}")',
           '                tv = self.__dict__.setdefault("_memo", {}).setdefault((lid, si, _value), '
           '(texts[si][j], values[si][j])) if names[si] == "price" else (texts[si][j], values[si][j]); '
           'parts.append(prefixes[si] + tv[0] + b"}"); '
           'attr_reports.append((ts_ms, names[si], tv[1], person)); continue'),
    Mutant("a window's source names the process: one published again after a crash counts twice",
           "stream/apps/privatizer.py",
           '        worker, source = f"{self.worker_id}/p{tp[1]}", f"{self.group()}/{tp[0]}/{tp[1]}"',
           '        worker = source = f"{self.worker_id}/p{tp[1]}"'),
    Mutant("the ε histogram is published exact", "stream/ldp/privatizer.py",
           "        counts = [max(0, c + self._geometric()) for c in exact[\"counts\"]]",
           "        counts = list(exact[\"counts\"])"),
]


def _copy_tree(dst: Path) -> None:
    for name in ("stream", "tests", "schemas"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dst / name)


def _run_one(m: Mutant, tests: list[str]) -> tuple[bool, str, float]:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sg-mutant-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        target = root / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            raise RuntimeError(f"mutant {m.name!r}: the original text is not found once in {m.path}")
        target.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not integration",
             "--rootdir", str(root), *tests],
            cwd=root, env=env, capture_output=True, text=True, timeout=900,
        )
    killer = ""
    found = re.search(r"^FAILED (\S+)", proc.stdout, re.M) or re.search(r"^ERROR (\S+)", proc.stdout, re.M)
    if found:
        killer = found.group(1)
    return proc.returncode != 0, killer, time.monotonic() - t0


def run_mutants(mutants: list[Mutant] | None = None, tests: list[str] | None = None,
                say: object = print) -> list[tuple[Mutant, bool, str, float]]:
    rows = []
    for m in mutants or MUTANTS:
        killed, killer, secs = _run_one(m, tests or TESTS)
        rows.append((m, killed, killer, secs))
        say(f"{'killed ' if killed else 'SURVIVED'}  {m.name:<62} {killer}  ({secs:.0f} s)")  # type: ignore[operator]
    return rows


def main() -> int:
    rows = run_mutants()
    survived = [m for m, killed, _k, _s in rows if not killed]
    print(f"{len(rows) - len(survived)}/{len(rows)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
