"""One frozen Settings object. Every value can be set from the environment
with the ``STREAMGATE_`` prefix (e.g. ``STREAMGATE_KAFKA_BOOTSTRAP``); secrets
are ``SecretStr`` so they never print."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "TopicNames", "default_state_dir"]


def default_state_dir() -> Path:
    """``STREAMGATE_HOME`` if set, else ``~/.streamgate``."""
    home = os.environ.get("STREAMGATE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".streamgate"


class TopicNames(BaseSettings):
    """Topic names (DESIGN.md, "Topics"); each overridable, e.g. ``STREAMGATE_TOPIC_RAW``."""

    model_config = SettingsConfigDict(env_prefix="STREAMGATE_TOPIC_", frozen=True, extra="ignore")

    raw: str = "clicks.raw"
    protected: str = "clicks.protected"
    dlq: str = "clicks.dlq"
    features: str = "features.private"
    frequencies: str = "analytics.frequencies"
    partials: str = "analytics.partials"
    snapshots: str = "models.snapshots"
    updates: str = "models.updates"
    erasure: str = "privacy.erasure"
    audit: str = "ops.audit"
    metrics: str = "ops.metrics"


class Settings(BaseSettings):
    """streamgate settings. Documented in the README ("Settings")."""

    model_config = SettingsConfigDict(env_prefix="STREAMGATE_", frozen=True, extra="ignore")

    # --- where things are -------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset = the embedded dev broker (streamgate dev up)."
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for the key store; unset = the embedded dev Redis."
    )
    redis_cluster: bool = Field(
        default=False,
        description="REDIS_URL names one node of a Redis Cluster (redis-py's RedisCluster finds the rest). Keys "
        "are hash-tagged per person token, so every script stays in one slot (stream.redisdb).",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Where the dev stack keeps pid files, logs, state and the default keyring "
        "(keyring.json); default STREAMGATE_HOME, else ~/.streamgate.",
    )

    # --- Kafka authentication (docker-compose.yml: SASL/PLAIN, one principal per process) ----
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL/PLAIN user of this process's Kafka principal; unset = no SASL."
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="File holding that SASL user's password (a Docker secret)."
    )

    # --- keys ---------------------------------------------------------------
    master_key: SecretStr | None = Field(
        default=None,
        description="KEK: base64 of 32 bytes, or a keyring 'id1:b64,id2:b64' (oldest first, newest wraps).",
    )
    master_key_file: Path | None = Field(
        default=None, description="KEK keyring file written by `streamgate keys generate` (used if MASTER_KEY is unset); "
        "unset = <state_dir>/keyring.json when that file exists."
    )
    key_file: Path | None = Field(
        default=None,
        description="This process's role credential (gateway, privatizer, reader, eraser, shredder, learner, "
        "verifier) written by `streamgate keys roles`; used if MASTER_KEY and MASTER_KEY_FILE are unset.",
    )

    # --- retention / keys ---------------------------------------------------
    retention_seconds: int = Field(default=30 * 86400, gt=0, description="How long a data key lives after its epoch ends.")
    epoch_seconds: int = Field(default=86400, gt=0, description="Length of a retention epoch (one DEK per person per epoch).")
    dek_cache_max_staleness_seconds: float = Field(
        default=30.0, ge=0, description="An in-process cached data key is re-checked against Redis at least this often."
    )
    dek_cache_max_entries: int = Field(default=200_000, gt=0)
    kek_wrap_warn_at: int = Field(
        default=2**30, gt=0, description="Wraps under one KEK at which a rotation warning is logged (stream.crypto.kms)."
    )
    kek_wrap_limit: int = Field(
        default=2**31, gt=0,
        description="Wraps under one KEK beyond which new data keys are refused (fail closed) until the KEK is rotated.",
    )
    pseudonym_tokens: bool = Field(
        default=True,
        description="Person tokens are tk2: keyed by a per-person secret in Redis that erasure destroys, so an "
        "erased person's retained records can no longer be linked to their user_id, not even with the master key "
        "(stream.crypto.tokens). Opting out (false) costs that: tk1 tokens are a keyring-only HMAC, so any "
        "keyring holder can recompute an erased person's token from their user_id for ever.",
    )
    dek_waitaof_timeout_ms: int = Field(
        default=1000, ge=0, le=1500,
        description="A batch that loaded or created data keys waits (WAITAOF, Redis >= 7.2 with AOF) at most this "
        "long for Redis to fsync them before it is emitted; not confirmed = batch held. 0 = off; skipped if "
        "unsupported. At most 1500 (below the 2 s Redis socket timeout).",
    )
    redis_key_prefix: str = Field(
        default="sg", pattern=r"^[^:{}]+$",
        description="Prefix of every Redis key streamgate writes (no ':' and no braces).",
    )
    redis_deadline_shards: int = Field(
        default=16, gt=0, le=1024,
        description="Shards of the deadline index (<prefix>:deadlines:{shard-NN}, shard = crc32(person token) mod "
        "this); the shredder scans every shard. Raising it is safe; lowering it strands the higher shards.",
    )

    # --- gateway -------------------------------------------------------------
    schema_name: str = Field(default="clickstream-event.v1", description="Input schema of the raw topic.")
    max_event_bytes: int = Field(default=64 * 1024, gt=0, description="Larger raw records are dead-lettered (too_large).")
    batch_max_events: int = Field(default=2000, gt=0, description="Gateway batch size (events per consume/produce cycle).")
    batch_max_wait_seconds: float = Field(
        default=0.005, ge=0,
        description="Longest wait to fill a batch (every worker): a record waits in the worker up to this long "
        "before it is processed at low rates; under load batches fill before it expires. Latency vs. per-batch "
        "overhead (streamgate bench latency).",
    )
    retry_backoff_seconds: float = Field(default=0.5, gt=0, description="First backoff when a dependency is down.")
    retry_backoff_max_seconds: float = Field(default=10.0, gt=0)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="at_least_once: idempotent producer + commit after delivery (dedupe downstream by event_id); "
        "exactly_once: Kafka transactions (needs a broker that hides aborted records).",
    )
    consumer_group: str = Field(default="streamgate-gateway")

    # --- engine (every worker) -------------------------------------------------
    stall_seconds: float = Field(
        default=30.0, gt=0,
        description="A worker with work waiting (lag, held or unacknowledged records) that made no progress "
        "for this long reports not ready (/readyz, streamgate_ready, a log line).",
    )
    max_client_recoveries: int = Field(
        default=3, ge=0,
        description="Fatal Kafka client errors survived (clients recreated, resumed from committed offsets) "
        "within 120 s; one more exits the worker non-zero.",
    )
    producer_max_message_bytes: int = Field(
        default=1_000_000, gt=0,
        description="The producer's message.max.bytes; checked at start-up against the largest dead letter "
        "an accepted input can produce.",
    )
    session_timeout_ms: int = Field(default=6000, gt=0, description="Consumer group session timeout.")
    topic_partitions: int = Field(default=4, gt=0, description="Partitions for topics streamgate creates.")
    web_port: int | None = Field(
        default=None,
        description="Web server port (health, metrics) of a worker; unset = the worker's default "
        "(gateway 6066, privatizer 6067, shredder 6068, learner 6069); 0 = disabled.",
    )
    web_bind: str = Field(default="127.0.0.1", description="Address the workers' web servers bind to.")

    # --- privatizer (local differential privacy) ----------------------------
    ldp_epsilon: float = Field(
        default=1.0, gt=0, le=20,
        description="Default epsilon of one LDP report of one attribute (a schema's x-privacy.epsilon overrides it).",
    )
    ldp_budget_epsilon: float = Field(
        default=8.0, gt=0,
        description="Superseded by STREAMGATE_LDP_PERSON_EPSILON (one ledger per person and epoch across "
        "attributes and the label); the privatizer no longer reads it.",
    )
    ldp_person_epsilon: float = Field(
        default=12.0, gt=0,
        description="Person-level cap: the total longitudinal epsilon one person's memoized responses (every ldp "
        "attribute and the label) may spend per retention epoch, in one ledger that erasure does not refund; "
        "beyond it reports carry data-independent stand-ins. The schema's per-attribute epsilons price a memo, "
        "so they say how the cap is shared.",
    )
    ldp_window_seconds: float = Field(default=60.0, gt=0, description="Tumbling window of the frequency estimates.")
    ldp_seed: int | None = Field(
        default=None, description="Seed of the LDP randomness, for tests and benchmarks only; unset = the OS CSPRNG."
    )
    privatizer_consumer_group: str = Field(default="streamgate-privatizer")

    # --- online learning (labelled examples in the privatizer, the learner worker) ------------
    learn_examples: bool = Field(
        default=True,
        description="The privatizer also emits labelled training examples to features.private.",
    )
    learn_model: Literal["joint-nb", "logistic"] = Field(
        default="joint-nb",
        description="joint-nb: one private-example.v2 per person and epoch (one attribute drawn at random, its value "
        "and the label randomized together at learn_label_epsilon), naive Bayes from debiased counts; logistic: a "
        "private-example.v1 per event (the feature report plus a randomized label), a logistic regression.",
    )
    learn_label_epsilon: float = Field(
        default=1.0, gt=0, le=20,
        description="joint-nb: epsilon of a person's one training example per epoch (every attribute and the label), "
        "charged to the person's ledger once. logistic: epsilon of the randomized-response label (memoized per "
        "person, epoch and label value; charged to the person's ledger as the pseudo-attribute session_purchase).",
    )
    learn_session_gap_seconds: float = Field(
        default=1800.0, gt=0,
        description="A session ends after this much inactivity (ingestion time); its examples are then labelled "
        "and released, whatever the label.",
    )
    learn_max_pending: int = Field(
        default=200_000, gt=0,
        description="Most unlabelled examples the privatizer holds in memory; beyond it the least recently active "
        "sessions' examples are dropped (counted), never labelled early.",
    )
    learner_consumer_group: str = Field(default="streamgate-learner")
    learn_model_name: str = Field(
        default="purchase-propensity", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Name of the learner's model (key of its snapshots on models.snapshots).",
    )
    learn_snapshot_every: int = Field(
        default=10_000, gt=0, description="The learner publishes a model snapshot every this many examples learned."
    )
    learn_snapshot_interval_seconds: float = Field(
        default=60.0, gt=0,
        description="... and at least this often while it learns (and on shutdown).",
    )
    learn_federated: bool = Field(
        default=False,
        description="Federated learning: learners in one group each train on their partitions and publish signed "
        "local updates to models.updates; the member holding the model's partition of models.updates merges them "
        "(FedAvg by example count) into the global model on models.snapshots, which every learner adopts.",
    )
    learn_update_every: int = Field(
        default=1000, gt=0, description="Federated: a learner publishes a local update every this many examples ..."
    )
    learn_update_interval_seconds: float = Field(
        default=5.0, gt=0, description="... and at least this often while it learns (and before a rebalance, at shutdown)."
    )
    learn_aggregate_wait_seconds: float = Field(
        default=2.0, gt=0,
        description="Federated: the aggregator merges a round once every recently active learner sent an update, or "
        "this long after the round's first update.",
    )
    learn_correction: bool = Field(
        default=True, description="Learn with the noise-corrected loss (Natarajan et al. 2013) for the RR label."
    )
    learn_debias: bool = Field(
        default=True, description="Debias the randomized categorical features (unbiased indicators) before learning."
    )

    # --- shredder (retention, erasure) ----------------------------------------
    shredder_consumer_group: str = Field(default="streamgate-shredder")
    shredder_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the shredder scans the deadline index for due keys."
    )
    shredder_batch_size: int = Field(
        default=500, gt=0, description="Keys claimed and destroyed per atomic Redis step (one receipt batch)."
    )
    shredder_lead_seconds: float = Field(
        default=10.0, ge=0,
        description="Keys are destroyed up to this long before their deadline (so the shredder, not Redis's lazy "
        "expiry, destroys them and the receipt names the key id).",
    )
    shredder_lease_seconds: float = Field(
        default=60.0, gt=0,
        description="A claimed key whose receipt is not delivered after this long is finished by another shredder.",
    )
    shredder_instance_id: str | None = Field(
        default=None,
        description="Stable id of this shredder instance (receipts' worker; a restart resumes its own pending "
        "work at once); unset = the host name.",
    )
    topics_config: Path | None = Field(
        default=None,
        description="Topics config file (partitions, retention.ms, segment.ms, cleanup.policy, keyed_by_subject); "
        "unset = the packaged ops/topics.yaml.",
    )

    # --- ops ------------------------------------------------------------------
    metrics_interval_seconds: float = Field(
        default=10.0, gt=0, description="Cadence of each worker's snapshot to the ops.metrics topic."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Worker log format; json = one allow-listed JSON object per line."
    )

    topics: TopicNames = Field(default_factory=TopicNames)

    def web_port_for(self, worker: str) -> int:
        """The web port of ``worker`` (``gateway``, ``privatizer``, ``shredder``, ``learner``); 0 = disabled."""
        if self.web_port is not None:
            return self.web_port
        from stream.apps.registry import WORKERS

        return WORKERS[worker].port if worker in WORKERS else 6070

    def kafka_security(self) -> dict[str, str]:
        """librdkafka settings of the SASL principal (``security.protocol``, ``sasl.*``), ``{}`` without one."""
        if not self.kafka_sasl_username:
            return {}
        if self.kafka_sasl_password_file is None:
            from stream.errors import ConfigError

            raise ConfigError("STREAMGATE_KAFKA_SASL_USERNAME needs STREAMGATE_KAFKA_SASL_PASSWORD_FILE")
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                "sasl.username": self.kafka_sasl_username,
                "sasl.password": self.kafka_sasl_password_file.read_text().strip()}

    def kafka_bootstrap_or_dev(self) -> str:
        """The configured bootstrap, else the running embedded broker's (raises DevStackError if none)."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        from stream.dev.stack import DevStack

        return DevStack(self.state_dir).require_running().kafka_bootstrap

    def redis_url_or_dev(self) -> str:
        if self.redis_url:
            return self.redis_url
        from stream.dev.stack import DevStack

        return DevStack(self.state_dir).require_running().redis_url


def settings_markdown() -> str:
    """docs/settings.md: every setting, its environment variable, default and description."""
    rows = ["# Settings", "",
            "Every setting is an environment variable (`STREAMGATE_` + the name in capitals); topic names are",
            "`STREAMGATE_TOPIC_<NAME>`. Generated from `stream/config.py` by",
            "`python -c 'from stream.config import settings_markdown as m; print(m(), end=\"\")' > docs/settings.md`",
            "(a test checks it is current).", "",
            "| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "topics":
            continue
        default = field.default if field.default_factory is None else "(computed)"
        shown = "unset" if default is None else f"`{default}`"
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `STREAMGATE_{name.upper()}` | {shown} | {desc} |")
    rows += ["", "| topic variable | default |", "|---|---|"]
    for name, field in TopicNames.model_fields.items():
        rows.append(f"| `STREAMGATE_TOPIC_{name.upper()}` | `{field.default}` |")
    return "\n".join(rows) + "\n"
