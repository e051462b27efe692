#!/bin/sh
# Kafka ACLs of the compose stack (run once by the `acls` service, as the super user `admin`).
# The broker denies everything not allowed here (allow.everyone.if.no.acl.found=false), so each
# principal can do exactly its job. One line per grant: principal operation resource name pattern.
# Read/Write imply Describe. tests/ops/test_ops_configs.py parses the `acl` lines.
set -eu
ADMIN=/run/secrets/kafka_admin_properties
BOOTSTRAP=kafka:9092

acl() {
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN" --add \
    --allow-principal "User:$1" --operation "$2" "--$3" "$4" --resource-pattern-type "$5" >/dev/null
}

# gateway: clicks.raw -> clicks.protected / clicks.dlq (the only writer of clicks.protected)
acl gateway     Read      topic           clicks.raw             literal
acl gateway     Write     topic           clicks.protected       literal
acl gateway     Write     topic           clicks.dlq             literal
acl gateway     Write     topic           ops.metrics            literal
acl gateway     Read      group           streamgate-gateway     literal
acl gateway     Write     transactional-id streamgate-gateway    prefixed
acl gateway     Describe  transactional-id streamgate-gateway    prefixed
# privatizer: clicks.protected -> features.private / analytics.frequencies
acl privatizer  Read      topic           clicks.protected       literal
acl privatizer  Write     topic           features.private       literal
acl privatizer  Write     topic           analytics.frequencies  literal
acl privatizer  Write     topic           ops.metrics            literal
acl privatizer  Read      group           streamgate-privatizer  literal
# shredder: privacy.erasure -> receipts on ops.audit (tombstones: add Write on compacted topics
# keyed by the person token, if ops/topics.yaml declares any)
acl shredder    Read      topic           privacy.erasure        literal
acl shredder    Write     topic           ops.audit              literal
acl shredder    Write     topic           ops.metrics            literal
acl shredder    Read      group           streamgate-shredder    literal
# learner: features.private -> models.snapshots (+ drift records on ops.audit: unsigned, so
# `streamgate audit` never shows them as receipts; moving them to their own topic would let the
# shredder be the only writer of ops.audit)
acl learner     Read      topic           features.private       literal
acl learner     Read      topic           models.snapshots       literal
acl learner     Write     topic           models.snapshots       literal
acl learner     Write     topic           ops.audit              literal
acl learner     Write     topic           ops.metrics            literal
acl learner     Read      group           streamgate-learner     literal
acl learner     Read      group           streamgate-snapshot-reader literal
# federated learning (STREAMGATE_LEARN_FEDERATED): local updates, and the aggregators' group
acl learner     Read      topic           models.updates         literal
acl learner     Write     topic           models.updates         literal
acl learner     Read      group           streamgate-learner-aggregator literal
# people (host CLI through the EXTERNAL listener)
acl producer    Write     topic           clicks.raw             literal
acl eraser      Write     topic           privacy.erasure        literal
acl eraser      Read      topic           ops.audit              literal
acl eraser      Read      group           streamgate-reader      literal
acl reader      Read      topic           clicks.protected       literal
acl reader      Read      topic           clicks.dlq             literal
acl reader      Read      group           streamgate-reader      literal
acl verifier    Read      topic           ops.audit              literal
acl verifier    Read      topic           models.snapshots       literal
acl verifier    Read      group           streamgate-reader      literal
acl verifier    Read      group           streamgate-snapshot-reader literal
echo "ACLs applied"
