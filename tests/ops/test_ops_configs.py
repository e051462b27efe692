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

from stream.apps.registry import web_listen, web_port
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
    assert "INTERNAL://kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]  # the internal network listener
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
    if worker == "learner":  # no Redis user, not on Redis's network
        assert "STREAMGATE_REDIS_URL" not in env and svc["networks"] == ["streamgate"]
    else:  # connects as its role's ACL user (stream/storage/acl.py) with its password secret
        assert env["STREAMGATE_REDIS_URL"] == f"redis://{worker}@redis:6379/0"
        assert env["STREAMGATE_REDIS_PASSWORD_FILE"] == f"/run/secrets/redis_{worker}"
        assert compose["secrets"][f"redis_{worker}"]["file"] == f"./.secrets/redis/{worker}.password"
        assert "redis" in svc["networks"]
    assert "STREAMGATE_MASTER_KEY" not in env  # never a key in the repository
    assert "STREAMGATE_MASTER_KEY_FILE" not in env  # no worker holds the master keyring
    assert env["STREAMGATE_KEY_FILE"] == f"/run/secrets/key_{worker}"  # its own role credential only
    assert sorted(svc["secrets"]) == sorted([f"kafka_{worker}", f"key_{worker}"]
                                            + ([f"redis_{worker}"] if worker != "learner" else []))
    assert compose["secrets"][f"key_{worker}"]["file"] == f"./.secrets/roles/{worker}.json"
    assert env["STREAMGATE_KAFKA_SASL_USERNAME"] == worker
    assert env["STREAMGATE_KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka_{worker}"
    bind, port = web_listen(Settings(web_port=env["STREAMGATE_WEB_PORT"]), worker)
    assert bind == "0.0.0.0"  # reachable from Prometheus on the compose network
    assert port == web_port(Settings(web_port=None), worker)  # the same port as the worker's default
    assert str(port) in svc["expose"]
    replicas = svc.get("deploy", {}).get("replicas", 1)
    if replicas > 1:  # replicas share the consumer group; a published host port would collide
        assert "ports" not in svc
    if worker == "learner":  # several learners train one model only when federated
        assert replicas > 1 and env["STREAMGATE_LEARN_FEDERATED"] == "true"
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    deps = svc["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy" and deps["redis"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    assert deps["acls"]["condition"] == "service_completed_successfully"


def test_compose_redis_has_acl_users_and_its_own_network(compose: dict[str, Any]) -> None:
    from stream.storage.acl import compose_acl_template

    services = compose["services"]
    redis_svc = services["redis"]
    assert redis_svc["networks"] == ["redis"] and redis_svc["command"][:2] == ["sh", "/opt/streamgate/start.sh"]
    assert sorted(redis_svc["secrets"]) == ["redis_gateway", "redis_privatizer", "redis_reader", "redis_shredder"]
    on_redis_net = {name for name, svc in services.items() if "redis" in svc.get("networks", [])}
    assert on_redis_net == {"redis", "gateway", "privatizer", "shredder"}  # not prometheus, grafana, learner, kafka
    prom = services["prometheus"]
    assert not [a for a in prom["command"] if "lifecycle" in a]  # no HTTP reload or shutdown
    assert all(str(p).startswith("127.0.0.1:") for svc in ("prometheus", "grafana") for p in services[svc]["ports"])
    assert (OPS / "redis" / "users.acl").read_text() == compose_acl_template(), (
        "ops/redis/users.acl is stale: regenerate it with the command at its top")


def test_redis_start_script_writes_an_acl_file_redis_loads(tmp_path: Path) -> None:
    """ops/redis/start.sh with test secrets: the file it writes is loaded by a real redis-server, each
    role authenticates with its own password only, and the default user is off."""
    import os
    import time

    import redis

    from stream.dev.stack import find_redis_binary, free_port

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    pw = {r: f"pw-{r}-{i}" for i, r in enumerate(("gateway", "privatizer", "shredder", "reader"))}
    for role, p in pw.items():
        (secrets_dir / f"redis_{role}").write_text(p + "\n")
    out = tmp_path / "users.acl"
    env = dict(os.environ, STREAMGATE_ACL_TEMPLATE=str(OPS / "redis" / "users.acl"), STREAMGATE_SECRETS_DIR=str(secrets_dir),
               STREAMGATE_ACL_FILE=str(out), STREAMGATE_ACL_ONLY="1")
    run = subprocess.run(["sh", str(OPS / "redis" / "start.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert "#@" not in text and not any(p in text for p in pw.values())  # hashes only
    binary = find_redis_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    if tuple(int(x) for x in re.search(r"v=(\d+)\.(\d+)", version).groups()) < (7, 2):  # type: ignore[union-attr]
        out.write_text(text.replace(" +client|setinfo", "").replace(" +waitaof", ""))  # commands it lacks
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--aclfile", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port).ping()
            except redis.exceptions.AuthenticationError:
                break  # up, and the default user is off
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis did not start with the ACL file"
                time.sleep(0.1)
        for role, p in pw.items():
            assert redis.Redis(port=port, username=role, password=p).ping()
            other = pw["reader" if role != "reader" else "gateway"]
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(port=port, username=role, password=other).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_scales_the_partitioned_workers_out(compose: dict[str, Any]) -> None:
    replicas = {w: compose["services"][w].get("deploy", {}).get("replicas", 1) for w in WORKERS}
    assert replicas["gateway"] >= 2 and replicas["privatizer"] >= 2 and replicas["learner"] >= 2
    assert replicas["shredder"] == 1


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    """Every host path a service mounts is in the repository (the key file excepted: it is a secret)."""
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            host = vol.split(":", 1)[0]
            if host.startswith("./"):
                assert (REPO / host).exists(), f"{name} mounts {host}, which does not exist"
    secret_files = [v["file"] for v in compose["secrets"].values()]
    assert all(f.startswith("./.secrets/") for f in secret_files)  # generated by ops/secrets.sh, never committed
    assert not [f for f in secret_files if f.endswith("/keyring.json")]  # the master keyring is mounted nowhere
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
    assert "STREAMGATE_WEB_PORT=0.0.0.0: " in text  # every worker's default port, on every address


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
        for sd in job.get("dns_sd_configs", []):  # replicated workers: every container behind the name
            assert sd["type"] == "A" and len(sd["names"]) == 1
            targets[sd["names"][0]] = str(sd["port"])
            assert job.get("metrics_path", "/metrics") == "/metrics"
    for worker in WORKERS:
        assert worker in targets, f"prometheus does not scrape {worker}"
        assert targets[worker] == _env(compose["services"][worker])["STREAMGATE_WEB_PORT"].rpartition(":")[2]
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
                   "streamgate_shred_overdue_seconds", "streamgate_ldp_over_budget_total"):
        assert series in used, series
    # never incremented by any worker (an event past the cap is counted in over_budget): an alert on it cannot fire
    assert "streamgate_ldp_suppressed_total" not in used


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
            "StreamgateShredderBehind", "StreamgateBudgetExhaustion", "StreamgateWorkerAbsent",
            "StreamgateScrapeFailing"} <= tested


def test_a_worker_without_series_is_alerted_for_every_compose_worker(
        rules: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    """A dead worker has no series (streamgate_ready == 0 cannot fire): the absence rule names each worker
    compose runs, by the series every worker exports, and the scrape rule covers every streamgate job."""
    absent = next(r for r in rules if r["alert"] == "StreamgateWorkerAbsent")
    named = re.findall(r'absent_over_time\(streamgate_ready\{worker="([a-z]+)"\}\[\d+m\]\)', absent["expr"])
    assert sorted(named) == sorted(WORKERS) and set(WORKERS) <= set(compose["services"])
    assert any(s.name == "streamgate_ready" and s.labels == ("worker",) for s in SERIES)
    scrape = next(r for r in rules if r["alert"] == "StreamgateScrapeFailing")
    jobs = {job["job_name"] for job in _yaml(OPS / "prometheus.yml")["scrape_configs"]}
    assert 'job=~"streamgate-.+"' in scrape["expr"] and {f"streamgate-{w}" for w in WORKERS} <= jobs


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
    # the dashboard shows every declared family (info, snapshot bookkeeping and the never incremented
    # suppressed counter aside)
    families = {s.name for s in SERIES} - {"streamgate_worker_info", "streamgate_metrics_snapshots_total",
                                           "streamgate_ldp_suppressed_total"}
    assert "streamgate_ldp_suppressed_total" not in covered
    shown = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in covered}
    assert families <= shown | {n for n in covered}, sorted(families - shown)


def test_metric_names_parser() -> None:
    expr = 'sum by (worker, le) (rate(streamgate_batch_duration_seconds_bucket{worker="gateway"}[5m])) > 1e-9 and up'
    assert _metric_names(expr) == {"streamgate_batch_duration_seconds_bucket", "up"}


# --------------------------------------------------------------------------- Kafka SASL + ACLs, secrets
# Checked as configuration only: there is no Docker engine here, so the SASL handshake, the ACL job
# and the secrets' ownership inside the containers are not exercised live.
_ACL_LINE = re.compile(r"^acl\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def _acls() -> list[tuple[str, str, str, str, str]]:
    lines = (OPS / "kafka" / "acls.sh").read_text().splitlines()
    out = [m.groups() for m in map(_ACL_LINE.match, lines) if m]
    assert out, "no acl lines in ops/kafka/acls.sh"
    return out  # type: ignore[return-value]


def _writers(topic: str) -> set[str]:
    return {p for p, op, kind, name, _ in _acls() if kind == "topic" and name == topic and op in ("Write", "All")}


def test_compose_kafka_authenticates_and_authorizes_every_client(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _env(kafka)
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    for name, proto in protocols.items():
        if name == env["KAFKA_CONTROLLER_LISTENER_NAMES"]:
            assert listeners[name].startswith("localhost:")  # PLAINTEXT only inside the container
        else:
            assert proto == "SASL_PLAINTEXT", name
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL" and env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:admin", "User:ANONYMOUS"}
    assert "/run/secrets/kafka_jaas" in env["KAFKA_OPTS"] and "kafka_jaas" in kafka["secrets"]
    assert "--command-config" in " ".join(kafka["healthcheck"]["test"])
    acls = compose["services"]["acls"]
    assert acls["command"] == ["sh", "/opt/streamgate/acls.sh"] and "./ops/kafka/acls.sh:" in acls["volumes"][0]
    topics_env = _env(compose["services"]["topics"])
    assert topics_env["STREAMGATE_KAFKA_SASL_USERNAME"] == "admin"


def test_acls_give_each_principal_only_its_job() -> None:
    t = Settings().topics
    assert _writers(t.protected) == {"gateway"}
    assert _writers(t.erasure) == {"eraser"}
    # receipts: the shredder; the learner also writes its drift records there (unsigned: `streamgate
    # audit` never shows them as receipts, and receipts are authenticated by signature, not by ACL)
    assert _writers(t.audit) == {"shredder", "learner"}
    assert _writers(t.raw) == {"producer"}
    assert _writers(t.snapshots) == {"learner"}
    assert _writers(t.updates) == {"learner"}  # federated learning: local updates, read by the aggregating learner
    assert _writers(t.dlq) == {"gateway"}
    for principal, op, kind, name, pattern in _acls():
        assert op in {"Read", "Write", "Describe"} and name != "*", (principal, op, name)
        assert kind in {"topic", "group", "transactional-id"} and pattern in {"literal", "prefixed"}
    groups = {(p, n) for p, _, kind, n, _ in _acls() if kind == "group"}
    s = Settings()
    for worker, group in (("gateway", s.consumer_group), ("privatizer", s.privatizer_consumer_group),
                          ("shredder", s.shredder_consumer_group), ("learner", s.learner_consumer_group)):
        assert (worker, group) in groups
    from stream.apps.federated import aggregator_group

    assert ("learner", aggregator_group(s)) in groups
    assert not [p for p, op, _, name, _ in _acls() if p in {"eraser", "verifier"} and name == t.protected]


def test_secrets_script_writes_0600_role_credentials_and_a_matching_user_table(tmp_path: Path) -> None:
    import os
    import stat
    import sys

    from stream.crypto.keyring import ROLES, Keyring, RoleKeyring

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               PYTHONPATH=str(REPO), STREAMGATE_STATE_DIR=str(tmp_path / "state"))
    for k in ("STREAMGATE_MASTER_KEY", "STREAMGATE_MASTER_KEY_FILE", "STREAMGATE_KEY_FILE"):
        env.pop(k, None)
    run = subprocess.run(["sh", str(OPS / "secrets.sh"), str(tmp_path / ".secrets")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    secrets = tmp_path / ".secrets"
    files = [p for p in secrets.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    for role in ROLES:
        cred = Keyring.load(secrets / "roles" / f"{role}.json")
        assert isinstance(cred, RoleKeyring) and cred.role == role
    jaas = (secrets / "kafka" / "jaas.conf").read_text()
    principals = {p for p, *_ in _acls()}
    for user in principals | {"admin"}:
        assert f'user_{user}="' in jaas
        assert (secrets / "kafka" / f"{user}.password").read_text() in jaas
    assert "sasl.mechanism=PLAIN" in (secrets / "kafka" / "admin.properties").read_text()
    for role in ("gateway", "privatizer", "shredder", "reader"):  # Redis ACL users (ops/redis/users.acl)
        assert len((secrets / "redis" / f"{role}.password").read_text()) >= 32  # 32 random bytes, base64 less +/=
    before = {p: p.read_bytes() for p in (secrets / "keyring.json", secrets / "kafka" / "admin.password")}
    again = subprocess.run(["sh", str(OPS / "secrets.sh"), str(secrets)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr  # idempotent: keeps the master keyring and passwords
    assert {p: p.read_bytes() for p in before} == before


def test_docs_never_make_a_key_world_readable() -> None:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert not re.search(r"chmod\s+0?6[4-7][4-7]", doc.read_text()), doc.name
    ops = (REPO / "docs" / "operations.md").read_text()
    assert "**Key roles**" in ops and "| verifier |" in ops
