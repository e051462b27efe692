#!/bin/sh
# Creates the compose stack's secrets in .secrets/ (never commit it; .dockerignore excludes it):
#
#   keyring.json          the master keyring: stays on this machine, mounted into no container;
#                         it only issues the role credentials below (`streamgate keys roles`)
#   roles/<role>.json     one least-privilege credential per role (README, "Key roles"); compose
#                         mounts gateway/privatizer/shredder/learner, one per worker; eraser,
#                         reader and verifier are for people running the CLI
#   kafka/<user>.password SASL/PLAIN password of each Kafka principal
#   kafka/jaas.conf       the broker's user table; kafka/admin.properties: the ACL job's client
#   redis/<role>.password password of each Redis ACL user (ops/redis/users.acl); reader: for the CLI
#
# Every file is mode 0600. Files a container reads are owned by that container's user: uid 10001
# (streamgate image) or uid 1000 (apache/kafka image) - run this with sudo, or run the printed
# chown yourself. Compose bind-mounts file secrets with their host owner and mode.
# Re-run after `streamgate keys generate --rotate` (new KEK wrapping keys for the roles).
set -eu
DIR=${1:-.secrets}
umask 077
mkdir -p "$DIR/roles" "$DIR/kafka" "$DIR/redis"
[ -f "$DIR/keyring.json" ] || streamgate keys generate --out "$DIR/keyring.json"
STREAMGATE_MASTER_KEY_FILE="$DIR/keyring.json" streamgate keys roles --out "$DIR/roles" --force

USERS="admin gateway privatizer shredder learner producer eraser reader verifier"
for u in $USERS; do
  [ -s "$DIR/kafka/$u.password" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$DIR/kafka/$u.password"
done
for u in gateway privatizer shredder reader; do
  [ -s "$DIR/redis/$u.password" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$DIR/redis/$u.password"
done
admin_pw=$(cat "$DIR/kafka/admin.password")
{
  echo "KafkaServer {"
  echo "  org.apache.kafka.common.security.plain.PlainLoginModule required"
  printf '  username="admin" password="%s"' "$admin_pw"
  for u in $USERS; do printf '\n  user_%s="%s"' "$u" "$(cat "$DIR/kafka/$u.password")"; done
  printf ';\n};\n'
} > "$DIR/kafka/jaas.conf"
{
  echo "security.protocol=SASL_PLAINTEXT"
  echo "sasl.mechanism=PLAIN"
  printf 'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="%s";\n' "$admin_pw"
} > "$DIR/kafka/admin.properties"
chmod 0600 "$DIR"/keyring.json "$DIR"/roles/*.json "$DIR"/kafka/* "$DIR"/redis/*

# owners: the workers (and the `topics` job, as admin) run as uid 10001, the broker and the ACL job as uid 1000
workers="$DIR/roles/gateway.json $DIR/roles/privatizer.json $DIR/roles/shredder.json $DIR/roles/learner.json"
for u in admin gateway privatizer shredder learner; do workers="$workers $DIR/kafka/$u.password"; done
# the Redis passwords: read by the workers (uid 10001) and by the redis container's start script (as root)
for u in gateway privatizer shredder; do workers="$workers $DIR/redis/$u.password"; done
broker="$DIR/kafka/jaas.conf $DIR/kafka/admin.properties"
# shellcheck disable=SC2086
if ! { chown 10001 $workers && chown 1000 $broker; } 2>/dev/null; then
  echo "run as root to give the containers their files:"
  echo "  sudo chown 10001 $workers"
  echo "  sudo chown 1000 $broker"
fi
echo "secrets in $DIR (mode 0600). For the CLI: STREAMGATE_KEY_FILE=$DIR/roles/<eraser|reader|verifier>.json"
