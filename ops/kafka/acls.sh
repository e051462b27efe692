#!/bin/sh
# Kafka ACLs of the compose stack (run once by the `acls` service, as the super user `admin`).
# GENERATED from the worker registry (stream/apps/registry.py) by
#   python -m stream.ops.acls > ops/kafka/acls.sh
# (tests/ops/test_ops_acls.py checks it is current and covers every topic and group a worker uses).
# The broker denies everything not allowed here (allow.everyone.if.no.acl.found=false), so each
# principal can do exactly its job. One line per grant: principal operation resource name pattern.
# Read/Write imply Describe.
set -eu
ADMIN=/run/secrets/kafka_admin_properties
BOOTSTRAP=kafka:9092

acl() {
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN" --add \
    --allow-principal "User:$1" --operation "$2" "--$3" "$4" --resource-pattern-type "$5" >/dev/null
}

# gateway: worker; the only writer of clicks.protected
acl gateway     Read      topic            clicks.raw                    literal
acl gateway     Write     topic            clicks.protected              literal
acl gateway     Write     topic            clicks.dlq                    literal
acl gateway     Write     topic            ops.metrics                   literal
acl gateway     Read      group            streamgate-gateway            literal
acl gateway     Write     transactional-id streamgate-gateway            prefixed
acl gateway     Describe  transactional-id streamgate-gateway            prefixed
# privatizer: worker; reads its open windows back from analytics.partials at start
acl privatizer  Read      topic            clicks.protected              literal
acl privatizer  Read      topic            analytics.partials            literal
acl privatizer  Write     topic            features.private              literal
acl privatizer  Write     topic            analytics.frequencies         literal
acl privatizer  Write     topic            analytics.partials            literal
acl privatizer  Write     topic            ops.metrics                   literal
acl privatizer  Read      group            streamgate-privatizer         literal
acl privatizer  Read      group            streamgate-reader             literal
# shredder: worker
acl shredder    Read      topic            privacy.erasure               literal
acl shredder    Write     topic            ops.audit                     literal
acl shredder    Write     topic            ops.metrics                   literal
acl shredder    Read      group            streamgate-shredder           literal
# learner: worker; drift records on ops.audit are unsigned (`streamgate audit` never shows them as receipts); federated: local updates on models.updates, merged by the aggregators' group
acl learner     Read      topic            features.private              literal
acl learner     Read      topic            models.updates                literal
acl learner     Read      topic            models.snapshots              literal
acl learner     Write     topic            models.snapshots              literal
acl learner     Write     topic            ops.metrics                   literal
acl learner     Write     topic            ops.audit                     literal
acl learner     Write     topic            models.updates                literal
acl learner     Read      group            streamgate-learner            literal
acl learner     Read      group            streamgate-learner-aggregator literal
acl learner     Read      group            streamgate-snapshot-reader    literal
# producer: person (host CLI, EXTERNAL listener)
acl producer    Write     topic            clicks.raw                    literal
# eraser: person (host CLI, EXTERNAL listener)
acl eraser      Write     topic            privacy.erasure               literal
acl eraser      Read      topic            ops.audit                     literal
acl eraser      Read      group            streamgate-reader             literal
# reader: person (host CLI, EXTERNAL listener)
acl reader      Read      topic            clicks.protected              literal
acl reader      Read      topic            clicks.dlq                    literal
acl reader      Read      group            streamgate-reader             literal
# verifier: person (host CLI, EXTERNAL listener)
acl verifier    Read      topic            ops.audit                     literal
acl verifier    Read      topic            models.snapshots              literal
acl verifier    Read      group            streamgate-reader             literal
acl verifier    Read      group            streamgate-snapshot-reader    literal
echo "ACLs applied"
