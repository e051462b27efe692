"""docker-compose.yml, the Dockerfile and ops/ parse and agree with each other and with the code:
every service has its config, Prometheus scrapes exactly the workers on their ports, the alert
rules are valid (``promtool check rules`` and the alerts' unit tests ``promtool test rules`` when
promtool is on PATH, else a schema check), name
only series streamgate declares, and each has a runbook; the Grafana provisioning points at the
compose Prometheus and the dashboard queries only declared series. (The live cross-check of the
same names against a running worker's /metrics is in test_ops_metrics.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.config import Settings
from stream.ops.metrics import SERIES, exposed_names

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"
WORKERS = ("gateway", "privatizer", "shredder", "learner")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")
_PROM_BUILTINS = {"up"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = _yaml(REPO / "docker-compose.yml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    files = sorted((OPS / "rules").glob("*.yml"))
    assert files, "no alert rule files in ops/rules/"
    out: list[dict[str, Any]] = []
    for f in files:
        doc = _yaml(f)
        assert set(doc) == {"groups"}, f
        for g in doc["groups"]:
            assert set(g) <= {"name", "rules", "interval"} and g["name"] and g["rules"], g
            out += g["rules"]
    return out


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (everything that looks like a metric, minus label names
    and functions: names followed by '(' are functions, names inside {} or by/without () are labels)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", stripped))
    keywords = {"and", "or", "unless", "by", "without", "bool", "offset", "e", "inf", "nan", "le"}
    return {n for n in names if n not in keywords and not re.fullmatch(r"\d+(e\d+)?", n)
            and not re.fullmatch(r"\d+(ms|s|m|h|d|w|y)", n)}


# --------------------------------------------------------------------------- compose
def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "topics", *WORKERS, "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kenv = _env(kafka)
    assert "controller" in kenv["KAFKA_PROCESS_ROLES"] and "broker" in kenv["KAFKA_PROCESS_ROLES"]  # KRaft
    assert "PLAINTEXT://kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]  # the internal network listener
    assert "kafka-data" in " ".join(kafka["volumes"])
    redis_svc = services["redis"]
    assert "--appendonly" in redis_svc["command"] and redis_svc["command"][redis_svc["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])
    assert services["topics"]["command"] == ["streamgate", "topics", "apply"]
    assert set(compose["volumes"]) >= {"kafka-data", "redis-data"}


@pytest.mark.parametrize("worker", WORKERS)
def test_compose_workers(compose: dict[str, Any], worker: str) -> None:
    svc = compose["services"][worker]
    assert svc["build"] == "." and (REPO / "Dockerfile").is_file()
    assert svc["command"] == ["streamgate", worker]
    env = _env(svc)
    assert env["STREAMGATE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STREAMGATE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["STREAMGATE_WEB_BIND"] == "0.0.0.0"
    assert "STREAMGATE_MASTER_KEY" not in env  # never a key in the repository
    assert env["STREAMGATE_MASTER_KEY_FILE"] == "/run/secrets/master_key"
    assert "master_key" in svc["secrets"] and "master_key" in compose["secrets"]
    port = int(env["STREAMGATE_WEB_PORT"])
    assert port == Settings(web_port=None).web_port_for(worker)  # the same port as the worker's default
    assert str(port) in svc["expose"]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    deps = svc["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy" and deps["redis"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    """Every host path a service mounts is in the repository (the key file excepted: it is a secret)."""
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            host = vol.split(":", 1)[0]
            if host.startswith("./"):
                assert (REPO / host).exists(), f"{name} mounts {host}, which does not exist"
    assert "/keyring.json" in compose["secrets"]["master_key"]["file"]  # generated by the user, never committed
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if re.fullmatch(r"keyring.*\.json", Path(f).name)], "a keyring in the repository"
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".secrets" in dockerignore and "**/keyring*.json" in dockerignore


def test_dockerfile_installs_the_package_without_keys() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and "pip install" in text
    for var in ("STREAMGATE_MASTER_KEY=", "STREAMGATE_MASTER_KEY "):
        assert var not in text
    assert "USER " in text  # not root
    assert "STREAMGATE_WEB_BIND=0.0.0.0" in text


# --------------------------------------------------------------------------- prometheus
def test_prometheus_scrapes_every_worker(compose: dict[str, Any]) -> None:
    prom = _yaml(OPS / "prometheus.yml")
    targets: dict[str, str] = {}
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                targets[host] = port
                if host in WORKERS:
                    assert job.get("metrics_path", "/metrics") == "/metrics"
    for worker in WORKERS:
        assert worker in targets, f"prometheus does not scrape {worker}"
        assert targets[worker] == _env(compose["services"][worker])["STREAMGATE_WEB_PORT"]
    for host in targets:
        assert host in compose["services"] or host == "localhost", f"scrape target {host} is no compose service"
    # the rule files Prometheus loads are the ones compose mounts
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./"))
    assert mounts["./ops/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_dir = mounts["./ops/rules"]
    assert prom["rule_files"] == [f"{rules_dir}/*.yml"]


# --------------------------------------------------------------------------- alert rules
def test_alert_rules_schema(rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and len(names) >= 8
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r["alert"]
        assert re.fullmatch(r"Streamgate[A-Za-z]+", r["alert"])
        assert isinstance(r["expr"], str) and r["expr"].strip()
        assert _DURATION.match(r["for"]), r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook_url"} <= set(r["annotations"])
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}")


def test_alert_topics_are_covered(rules: list[dict[str, Any]]) -> None:
    """The issue's list: lag, DLQ rate, Redis errors, shredder falling behind, budget exhaustion."""
    used = {n for r in rules for n in _metric_names(r["expr"])}
    for series in ("streamgate_consumer_lag", "streamgate_dead_letters_total", "streamgate_redis_errors_total",
                   "streamgate_shred_overdue_seconds", "streamgate_ldp_suppressed_total"):
        assert series in used, series


def test_alert_rules_name_only_declared_series(rules: list[dict[str, Any]]) -> None:
    declared = exposed_names()
    for r in rules:
        names = _metric_names(r["expr"])
        assert names, r["alert"]
        unknown = names - declared - _PROM_BUILTINS
        assert not unknown, f"{r['alert']} names undeclared series {sorted(unknown)}"


def test_every_alert_has_a_runbook(rules: list[dict[str, Any]]) -> None:
    books = {p.stem for p in (OPS / "runbooks").glob("*.md")}
    for r in rules:
        url = r["annotations"]["runbook_url"]
        assert url == f"ops/runbooks/{r['alert']}.md" and (REPO / url).is_file(), r["alert"]
        text = (REPO / url).read_text()
        assert text.startswith(f"# {r['alert']}\n") and "## Check" in text and "## Fix" in text
    assert books == {r["alert"] for r in rules}, "a runbook without an alert, or the reverse"


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (the schema checks above still ran); "
                    "Debian: the 'prometheus' package ships it")
    for f in sorted((OPS / "rules").glob("*.yml")):
        r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    # the config, with the rule path as mounted in compose rewritten to the repository's
    prom = (OPS / "prometheus.yml").read_text().replace("/etc/prometheus/rules/", f"{OPS / 'rules'}/")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(prom)
    r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # the alerts' unit tests: each fires on the series it should, with its labels and annotations
    tests = sorted((OPS / "rules" / "tests").glob("*.yml"))
    assert tests
    r = subprocess.run([promtool, "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_unit_tests_cover_the_required_alerts() -> None:
    """Lag, DLQ rate, Redis errors, shredder behind, budget exhaustion each have a promtool unit test."""
    tested = set()
    for f in (OPS / "rules" / "tests").glob("*.yml"):
        doc = _yaml(f)
        assert doc["rule_files"] == ["../streamgate.yml"] or all((f.parent / p).is_file() for p in doc["rule_files"])
        tested |= {a["alertname"] for t in doc["tests"] for a in t.get("alert_rule_test", [])}
    assert {"StreamgateConsumerLagHigh", "StreamgateDeadLetterRateHigh", "StreamgateRedisErrors",
            "StreamgateShredderBehind", "StreamgateBudgetExhaustion"} <= tested


# --------------------------------------------------------------------------- grafana
def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in graf["volumes"] if v.startswith("./"))
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    dash_mount = mounts["./ops/grafana/dashboards"]
    ds = _yaml(OPS / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    prom_ds = [d for d in ds if d["type"] == "prometheus"]
    assert len(prom_ds) == 1
    assert prom_ds[0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    providers = _yaml(OPS / "grafana/provisioning/dashboards/streamgate.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == [dash_mount]
    home = _env(graf).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    assert home.startswith(dash_mount) and (OPS / "grafana/dashboards" / Path(home).name).is_file()
    # every dashboard panel uses the provisioned datasource
    for dash_file in (OPS / "grafana/dashboards").glob("*.json"):
        for panel in json.loads(dash_file.read_text())["panels"]:
            assert panel["datasource"]["uid"] == prom_ds[0]["uid"], panel["title"]


def test_dashboard_queries_name_declared_series() -> None:
    declared = exposed_names()
    dashes = sorted((OPS / "grafana/dashboards").glob("*.json"))
    assert dashes
    covered: set[str] = set()
    for dash_file in dashes:
        dash = json.loads(dash_file.read_text())
        assert dash["uid"] and dash["title"] and dash["panels"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dash["panels"]:
            assert panel["targets"], panel["title"]
            for t in panel["targets"]:
                names = _metric_names(t["expr"])
                assert names and not names - declared, (panel["title"], sorted(names - declared))
                covered |= names
    # the dashboard shows every declared family (info and snapshot bookkeeping aside)
    families = {s.name for s in SERIES} - {"streamgate_worker_info", "streamgate_metrics_snapshots_total"}
    shown = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in covered}
    assert families <= shown | {n for n in covered}, sorted(families - shown)


def test_metric_names_parser() -> None:
    expr = 'sum by (worker, le) (rate(streamgate_batch_duration_seconds_bucket{worker="gateway"}[5m])) > 1e-9 and up'
    assert _metric_names(expr) == {"streamgate_batch_duration_seconds_bucket", "up"}
