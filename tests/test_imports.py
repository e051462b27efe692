"""The import contracts of pyproject.toml ([tool.importlinter]): kept by the code, and each one able to
fail (checked against the real graph with one forbidden import added). Plus what import-linter does not
check: no module-level import cycle anywhere in ``stream``, and the cores loading no I/O client at run time."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import Contract

ROOT = Path(__file__).resolve().parents[1]
TYPES: dict[str, type[Contract]] = {
    "forbidden": ForbiddenContract, "layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract,
}


def _config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("stream", include_external_packages=True, exclude_type_checking_imports=True,
                             cache_dir=None)


def _contract(contract_id: str) -> Contract:
    """The contract as import-linter reads it from pyproject.toml."""
    config = read_configuration(str(ROOT / "pyproject.toml"))
    (options,) = [c for c in config["contracts_options"] if c["id"] == contract_id]
    rest = {k: v for k, v in options.items() if k not in ("id", "name", "type")}
    return TYPES[options["type"]](options["name"], config["session_options"], rest)


def test_lint_imports_keeps_every_contract() -> None:
    """What CI runs (``lint-imports``), from the repository root."""
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
    assert {c["id"] for c in _config()["contracts"]} == {"pure-cores", "layers", "acyclic"}


@pytest.mark.parametrize(("contract_id", "importer", "imported"), [
    ("pure-cores", "stream.crypto.fields", "redis"),  # direct
    ("pure-cores", "stream.learn.model", "stream.redisdb"),  # indirect: redisdb imports redis
    ("pure-cores", "stream.retention.core", "stream.kafka"),  # indirect: confluent_kafka
    ("pure-cores", "stream.crypto.tokens", "stream.storage.pseudonyms"),
    ("pure-cores", "stream.gateway.core", "stream.components"),  # indirect: storage, redis
    ("layers", "stream.retention.core", "stream.apps.shredder"),
    ("layers", "stream.config", "stream.apps.registry"),  # the cycle broken in issue 21
    ("layers", "stream.storage.keys", "stream.commands.common"),
    ("acyclic", "stream.ldp.oracle", "stream.ldp.grr"),  # the cycle broken in issue 21
    ("acyclic", "stream.apps.learner", "stream.apps.federated"),  # likewise
])
def test_each_contract_catches_a_forbidden_import(contract_id: str, importer: str, imported: str) -> None:
    assert _contract(contract_id).check(_graph(), verbose=False).kept  # kept as the code is
    graph = _graph()  # (a check removes the ignored imports from the graph it is given)
    graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    assert not _contract(contract_id).check(graph, verbose=False).kept


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    mods = sorted(m for m in graph.modules if m == "stream" or m.startswith("stream."))
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i.startswith("stream")) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in mods:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_no_module_level_import_cycle_anywhere() -> None:
    """Across packages too (acyclic_siblings compares the modules of one package), with imports inside
    functions counted."""
    graph = _graph()
    assert _cycles(graph) == []
    graph.add_import(importer="stream.config", imported="stream.apps.registry")  # the cycle of issue 21
    assert _cycles(graph) == [["stream.apps.registry", "stream.config", "stream.ops.logging"]]


def test_the_cores_load_no_io_client() -> None:
    """At run time (a fresh interpreter): importing the cores and the gateway's core loads neither redis
    nor confluent_kafka nor faust."""
    code = ("import sys, stream.crypto, stream.crypto.fields, stream.crypto.tokens, stream.gateway.core, "
            "stream.retention.core, stream.retention.receipts, stream.learn, stream.ldp, stream.ldp.choice; "
            "print(sorted(m for m in ('redis', 'confluent_kafka', 'faust') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
